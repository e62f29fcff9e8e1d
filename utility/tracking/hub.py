"""The trackers named in a run's config follow its CSV logs (rank 0 only):

- params: the resolved config (config.yaml), flattened;
- ``train.log`` rows -> ``train/<column>`` at ``global_step`` (sent in batches);
- ``val.log`` rows -> ``epoch/<column>`` at ``epoch`` (TensorBoard's names);
- ``test.log`` / ``test_best.log`` -> ``test_last/<column>`` / ``test_best/<column>`` (summary).

What identifies each tracker run is kept in ``<run dir>/trackers.json`` so that a resumed run
continues the same tracker run. A tracker that fails (server down, disk full) warns once and is
dropped for the rest of the run; the run and its files never depend on a tracker.
"""
from __future__ import annotations

import json
import numbers
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from utility.paths import output_root
from utility.tracking.base import RunInfo, Tracker, flatten
from utility.tracking.registry import tracker_class
from utility.distributed import is_main
from utility.training.callbacks import Callback

STATE_FILE = "trackers.json"
TRAIN_BATCH_ROWS = 200  # train.log rows per call (one HTTP request per step would slow a remote server down)
TEST_LOGS = {"test.log": "test_last", "test_best.log": "test_best"}


def numbers_of(row: dict[str, Any], skip: tuple[str, ...] = ()) -> dict[str, float]:
    return {k: float(v) for k, v in row.items()
            if k not in skip and isinstance(v, numbers.Real) and not isinstance(v, bool)}


def prefixed(prefix: str, metrics: dict[str, float]) -> dict[str, float]:
    return {f"{prefix}/{k}": v for k, v in metrics.items()}


class Tracking(Callback):
    """The trackers of one run, a callback on its trainer: started at run start (or continued on
    resume), fed every CSV row, ended at run end (also when the run failed)."""

    def __init__(self, run_dir: Path, trackers: dict[str, Tracker], cfg: Any = None) -> None:
        self.run_dir, self.trackers, self.cfg = run_dir, trackers, cfg
        self.pending: list[tuple[int, dict[str, float]]] = []

    def on_run_start(self, trainer: Any, resumed: bool) -> None:
        self.start(resumed)

    def on_run_end(self, trainer: Any, finished: bool) -> None:
        self.close(finished)

    def start(self, resumed: bool) -> None:
        """Start (or, ``resumed``, continue) each tracker run and give it the params."""
        if not self.trackers:
            return
        info = run_info(self.cfg, self.run_dir)
        state = read_state(self.run_dir) if resumed else {}
        for name in list(self.trackers):
            started = self.call(name, "start", replace(info, previous=dict(state.get(name) or {})))
            if started is not None:
                state[name] = started
        try:
            write_state(self.run_dir, state)
        except OSError as exc:  # the run's own files will say more; the trackers go on without resume
            print(f"warning: {self.run_dir / STATE_FILE} not written ({exc}); a resumed run starts new tracker "
                  "runs", file=sys.stderr, flush=True)
        self.call_all("log_params", flatten(self.cfg.model_dump(mode="json")))

    def call(self, name: str, method: str, *args: Any) -> Any:
        """``tracker.method(*args)``; a failure warns once and drops the tracker."""
        tracker = self.trackers.get(name)
        if tracker is None:
            return None
        try:
            return getattr(tracker, method)(*args)
        except Exception as exc:  # never let a tracker end the run
            del self.trackers[name]
            print(f"warning: tracker {name} failed ({method}: {type(exc).__name__}: {exc}); it logs nothing "
                  "more for this run (the run and its files go on)", file=sys.stderr, flush=True)
            return None

    def call_all(self, method: str, *args: Any) -> None:
        for name in list(self.trackers):
            self.call(name, method, *args)

    def on_row(self, path: Path, row: dict[str, Any]) -> None:
        if not self.trackers or path.parent != self.run_dir:
            return
        try:
            self._route(path, row)
        except Exception as exc:  # a row we cannot read: stop tracking, never the run
            print(f"warning: trackers stopped ({path.name}: {type(exc).__name__}: {exc}); the run goes on",
                  file=sys.stderr, flush=True)
            self.trackers = {}

    def _route(self, path: Path, row: dict[str, Any]) -> None:
        if path.name == "train.log":
            self.pending.append((int(row["global_step"]),
                                 prefixed("train", numbers_of(row, ("epoch", "step", "global_step")))))
            if len(self.pending) >= TRAIN_BATCH_ROWS:
                self.flush()
        elif path.name == "val.log":
            self.flush()
            self.call_all("log_metrics", [(int(row["epoch"]), prefixed("epoch", numbers_of(row, ("epoch",))))],
                          "epoch")
        elif path.name in TEST_LOGS:
            self.flush()
            self.call_all("log_summary", prefixed(TEST_LOGS[path.name], numbers_of(row)), int(row["epoch"]))

    def flush(self) -> None:
        if self.pending:
            rows, self.pending = self.pending, []
            self.call_all("log_metrics", rows, "global_step")

    def close(self, finished: bool) -> None:
        """Send what is buffered and end every tracker run (``finished``: the run completed)."""
        self.flush()
        self.call_all("finish", finished)
        self.trackers = {}


def run_info(cfg: Any, run_dir: Path) -> RunInfo:
    """Name and kind from where the run directory lies: <output_root>/<kind>/<name>[/fold_<i>]."""
    root = output_root(getattr(cfg, "output_root", None))
    try:
        parts = run_dir.resolve().relative_to(root.resolve()).parts
    except ValueError:
        parts = (run_dir.parent.name, run_dir.name)
    kind = parts[0] if len(parts) > 1 else "run"
    name = "/".join(parts[1:]) or cfg.name
    project = getattr(cfg, "tracker_project", None) or (cfg.name.split("/")[0] if "/" in cfg.name else kind)
    return RunInfo(name=name, project=project, kind=kind, run_dir=run_dir, output_root=root)


def read_state(run_dir: Path) -> dict[str, Any]:
    try:
        data = json.loads((run_dir / STATE_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def write_state(run_dir: Path, state: dict[str, Any]) -> None:
    tmp = run_dir / (STATE_FILE + ".tmp")
    tmp.write_text(json.dumps(state, indent=1) + "\n")
    tmp.replace(run_dir / STATE_FILE)


def tracking_for(cfg: Any, run_dir: Path) -> Tracking:
    """The trainer callback for the trackers of ``cfg.trackers`` (rank 0); elsewhere, or with none,
    one that does nothing."""
    names = list(getattr(cfg, "trackers", None) or [])
    if not names or not is_main():
        return Tracking(run_dir, {})
    return Tracking(run_dir, {n: tracker_class(n)() for n in names}, cfg)
