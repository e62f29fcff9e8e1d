"""Trackers by name (the config key ``trackers``). A tracker's module is imported only when a run
asks for it; its library only when the run starts."""
from __future__ import annotations

from utility.errors import UserError
from utility.registry import Registry
from utility.tracking.base import Tracker

INSTALL_HINT = "pip install -r requirements-trackers.txt"

TRACKERS: Registry[type[Tracker]] = Registry(
    "tracker", lambda name, known: f"unknown tracker '{name}' in config key 'trackers'; known: {', '.join(sorted(known))}")
TRACKERS.lazy("wandb", "utility.tracking.wandb_tracker:WandbTracker")
TRACKERS.lazy("mlflow", "utility.tracking.mlflow_tracker:MlflowTracker")


def register_tracker(name: str, target: str) -> None:
    """``target`` is ``"package.module:Class"`` (a :class:`Tracker` subclass)."""
    TRACKERS.lazy(name, target)


def tracker_names() -> list[str]:
    return sorted(TRACKERS)


def tracker_class(name: str) -> type[Tracker]:
    return TRACKERS.find(name)


def require_trackers(names: list[str]) -> None:
    """Refuse, before any work, a run that names a tracker whose library cannot be imported."""
    for name in names:
        try:
            tracker_class(name).load()
        except ImportError as exc:
            raise UserError(f"tracker '{name}' (config key 'trackers') is not installed ({exc}); "
                            f"install the optional trackers with: {INSTALL_HINT} "
                            f"(or remove '{name}' from trackers)") from None
