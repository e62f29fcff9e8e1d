"""Weights & Biases: online when the user has logged in (``WANDB_API_KEY``, or the netrc entry
``wandb login`` writes), offline otherwise, so that nothing leaves the machine by surprise;
``WANDB_MODE`` (online, offline, disabled) overrides both. Files go to ``<run dir>/wandb/``; an
offline run is uploaded later with ``wandb sync <run dir>/wandb/offline-run-*``. A resumed run reuses
its run id (offline: one folder per attempt, all with that id, synced into one run)."""
from __future__ import annotations

import netrc
import os
from pathlib import Path
from typing import Any, Mapping, Optional
from urllib.parse import urlparse

from utility.tracking.base import RunInfo, Tracker

DEFAULT_HOST = "https://api.wandb.ai"


def logged_in(environ: Mapping[str, str] = os.environ) -> bool:
    """An API key in the environment, or a netrc entry for the W&B host (``WANDB_BASE_URL``)."""
    if environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(environ.get("WANDB_BASE_URL") or DEFAULT_HOST).hostname or ""
    path = environ.get("NETRC") or os.path.join(environ.get("HOME") or os.path.expanduser("~"), ".netrc")
    try:
        return netrc.netrc(path).authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


def wandb_mode(environ: Mapping[str, str] = os.environ) -> str:
    return environ.get("WANDB_MODE") or ("online" if logged_in(environ) else "offline")


class WandbTracker(Tracker):
    name = "wandb"

    def __init__(self) -> None:
        self.run: Optional[Any] = None

    @staticmethod
    def load() -> Any:
        import wandb

        return wandb

    def start(self, info: RunInfo) -> dict[str, Any]:
        wandb = self.load()
        mode = wandb_mode()
        prev_id = info.previous.get("id")
        self.run = wandb.init(project=info.project, name=info.name, id=prev_id, resume="allow" if prev_id else None,
                              dir=str(info.run_dir), mode=mode, job_type=info.kind,
                              settings=wandb.Settings(console="off", silent=True))
        for axis in ("epoch", "global_step"):
            self.run.define_metric(axis)
        self.run.define_metric("epoch/*", step_metric="epoch")
        self.run.define_metric("train/*", step_metric="global_step")
        where = f"; upload with: wandb sync {Path(self.run.dir).parent}" if mode == "offline" else ""
        print(f"wandb: {mode} run {self.run.id} (project {info.project}){where}")
        return {"id": self.run.id, "mode": mode}

    def log_params(self, params: dict[str, Any]) -> None:
        self.run.config.update(params, allow_val_change=True)

    def log_metrics(self, rows: list[tuple[int, dict[str, float]]], step_name: str) -> None:
        for step, metrics in rows:
            self.run.log({step_name: step, **metrics})

    def log_summary(self, metrics: dict[str, float], step: int) -> None:
        self.run.summary.update(metrics)

    def finish(self, finished: bool) -> None:
        self.run.finish(exit_code=0 if finished else 1)
