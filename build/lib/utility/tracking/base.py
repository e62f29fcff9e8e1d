"""What an experiment tracker provides: start or continue a tracker run, take the params, take
metric rows, take the test rows, finish. The hub (utility/tracking/hub.py) calls these on rank 0 only
and shields the run from every failure, so a tracker module only talks to its library."""
from __future__ import annotations

import json
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar


@dataclass
class RunInfo:
    """Where a tracker run comes from. ``previous`` is what :meth:`Tracker.start` returned in an
    earlier attempt of the same run (read from the run directory when resuming), else empty."""

    name: str          # the run's name, e.g. E1/PT_SimCLR_FT_digits (k-fold: .../fold_0)
    project: str       # wandb project, MLflow experiment
    kind: str          # finetuning or pretraining
    run_dir: Path
    output_root: Path  # where the default local stores live (MLflow: <output_root>/mlruns)
    previous: dict[str, Any] = field(default_factory=dict)


class Tracker(ABC):
    """One experiment tracker. Its library is imported only in :meth:`load` and :meth:`start`,
    so the tool imports and runs without it."""

    name: ClassVar[str]

    @staticmethod
    @abstractmethod
    def load() -> Any:
        """Import the tracker's library (ImportError when it is not installed)."""

    @abstractmethod
    def start(self, info: RunInfo) -> dict[str, Any]:
        """Start a new tracker run or continue ``info.previous``; return what identifies it
        (stored in the run directory for a later resume)."""

    @abstractmethod
    def log_params(self, params: dict[str, Any]) -> None:
        """The resolved config, flattened (``{"lr": 0.001, "shape_desired": [16, 16]}``)."""

    @abstractmethod
    def log_metrics(self, rows: list[tuple[int, dict[str, float]]], step_name: str) -> None:
        """Log rows, each ``(step, metrics)`` on the axis ``step_name`` (epoch or global_step)."""

    @abstractmethod
    def log_summary(self, metrics: dict[str, float], step: int) -> None:
        """A final result (the test rows), ``step`` the epoch of the model tested."""

    @abstractmethod
    def finish(self, finished: bool) -> None:
        """End the tracker run: completed, or stopped before its end (it may be resumed)."""


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mappings become dotted keys; every other value stays as it is."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def param_text(v: Any) -> str:
    """A param as text: strings as they are, everything else as JSON (null, true, [16, 16], 0.001)."""
    return v if isinstance(v, str) else json.dumps(v)
