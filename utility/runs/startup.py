"""Where a run's start-up time goes: indexing, cache planning, the first batch, and which augmentation
path runs. Printed as it happens and appended to ``<run dir>/startup.log`` (one CSV row per phase:
``datetime,phase,seconds,note``; a resumed run appends its own rows).

Also the index cache of a run (utility/data/index_cache.py): ``index_cache_dir`` (default
``<output_root>/index_cache``; ``off`` disables it) and ``reindex``.
"""
from __future__ import annotations

import csv
import datetime as _dt
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import torch
import yaml

from utility.data.index_cache import IndexCache
from utility.paths import output_root, resolve_user_path
from utility.distributed import is_main

FIELDS = ["datetime", "phase", "seconds", "note"]


def index_cache_for(cfg: Any) -> Optional[IndexCache]:
    where = cfg.index_cache_dir
    if isinstance(where, str) and where.lower() in ("off", "none", "false"):
        return None
    folder = resolve_user_path(where) if where else output_root(cfg.output_root) / "index_cache"
    return IndexCache(folder, reindex=cfg.reindex)


def resolve_tf_device(tf_device: str, device: str, run_dir: Optional[Path] = None) -> str:
    """auto: batched augmentation on the device with CUDA, per sample in the loader workers otherwise
    (on a CPU the batched path runs at about half the speed of per-sample albumentations). A run
    being resumed keeps the path its config.yaml records, so its numbers do not change mid-run."""
    if tf_device != "auto":
        return tf_device
    recorded = _recorded(run_dir / "config.yaml") if run_dir is not None else None
    if recorded in ("gpu", "cpu"):
        return recorded
    return "gpu" if torch.cuda.is_available() and device != "cpu" else "cpu"


def _recorded(path: Path) -> Optional[str]:
    try:
        old = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return None
    return old.get("tf_device") if isinstance(old, dict) else None


def augmentation_path(tf_device: str, requested: str) -> str:
    how = ("batched on the training device (kornia)" if tf_device == "gpu"
           else "per sample in the loader workers (albumentations)")
    return f"{how}; tf_device {requested}" + (f" -> {tf_device}" if requested != tf_device else "")


class Startup:
    """Collects phase timings; appends them to startup.log once the run dir holds the run's config."""

    def __init__(self, verbose: bool = True) -> None:
        self.rows: list[list[str]] = []
        self.verbose = verbose and is_main()
        self.run_dir: Optional[Path] = None

    def add(self, phase: str, seconds: Optional[float], note: str = "") -> None:
        row = [_dt.datetime.now().strftime("%Y-%m-%d %H:%M:%S"), phase,
               "" if seconds is None else f"{seconds:.3f}", note]
        self.rows.append(row)
        if self.verbose:
            took = "" if seconds is None else f" {seconds:.2f} s"
            print(f"start-up: {phase}{took}" + (f" ({note})" if note else ""), flush=True)
        self._flush()

    @contextmanager
    def phase(self, name: str, note: Callable[[], str] | str = "") -> Iterator[None]:
        t = time.perf_counter()
        yield
        self.add(name, time.perf_counter() - t, note() if callable(note) else note)

    def attach(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self._flush()

    def _flush(self) -> None:
        # only into a directory that holds our run (config.yaml is written when training starts), so a
        # run that fails earlier leaves nothing that would make its directory look foreign
        if self.run_dir is None or not is_main() or not (self.run_dir / "config.yaml").is_file():
            return
        path = self.run_dir / "startup.log"
        new = not path.exists()
        with path.open("a", newline="") as fh:
            w = csv.writer(fh)
            if new:
                w.writerow(FIELDS)
            w.writerows(self.rows)
        self.rows = []

    def time_first_batch(self, loader: Any) -> "FirstBatchTimer":
        return FirstBatchTimer(loader, lambda s: self.add("first batch", s, "from the start of the loader"))


class FirstBatchTimer:
    """The loader, unchanged, that reports how long its first batch took (once)."""

    def __init__(self, loader: Any, report: Callable[[float], None]) -> None:
        self._loader = loader
        self._report: Optional[Callable[[float], None]] = report

    def __getattr__(self, name: str) -> Any:
        return getattr(self._loader, name)

    def __len__(self) -> int:
        return len(self._loader)

    def __iter__(self) -> Iterator[Any]:
        it = iter(self._loader)
        if self._report is None:
            yield from it
            return
        t = time.perf_counter()
        try:
            first = next(it)
        except StopIteration:
            return
        report, self._report = self._report, None
        report(time.perf_counter() - t)
        yield first
        yield from it
