"""After training: the test split with the last and the best model, bad-file reports, fold summaries."""
from __future__ import annotations

import csv
import math
import statistics
import sys
from pathlib import Path
from typing import Any, Optional

from utility.data.badfiles import BadFiles
from utility.distributed import is_main
from utility.training.engine import Trainer
from utility.training.rundir import write_table


def test_last_and_best(trainer: Trainer, loader: Any, run_dir: Path, metric: str) -> dict[str, float]:
    """Evaluate the test split with the last model (test.log) and the best one (test_best.log);
    returns the last model's metrics and leaves the last weights in the model."""
    last_epoch = trainer.epoch
    last_state = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}
    out: dict[str, float] = {}
    for which, log_name in (("last", "test.log"), ("best", "test_best.log")):
        epoch = trainer.load_weights(which)
        if epoch is None:
            print(f"note: no best checkpoint ({metric} was never finite); test_best.log not written")
            continue
        m = trainer.evaluate(loader, f"test_{which}", "test")
        row = {**m, "epoch": epoch, "model": which}
        write_table(run_dir / log_name, list(row), [row], trainer.callbacks.on_row)
        trainer.tb.scalars(m, epoch, f"test_{which}")
        if which == "last":
            out = m
        if trainer.opts.verbose and is_main():
            head = "  ".join(f"{k} {v:.4f}" for k, v in list(m.items())[:5])
            print(f"test ({which} model, epoch {epoch}): {head}")
    trainer.model.load_state_dict(last_state)
    trainer.epoch = last_epoch
    return out


def report_bad_files(bad: Optional[BadFiles], epoch: Optional[int] = None) -> None:
    line = bad.write_report() if bad is not None else None
    if line:
        print(f"epoch {epoch}: {line}" if epoch is not None else line, file=sys.stderr)


def read_test_row(path: Path) -> dict[str, float]:
    if not path.exists():
        return {}
    with path.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    out = {}
    for k, v in (rows[0] if rows else {}).items():
        try:
            out[k] = float(v)
        except (TypeError, ValueError):
            pass
    return out


def write_folds_summary(path: Path, folds: list[int], results: list[dict[str, float]]) -> None:
    """One row per fold, then mean and (population) std over the folds, NaN values left out."""
    keys = [k for k in results[0] if k not in ("epoch",)]
    rows: list[dict[str, Any]] = [{"fold": str(i), **r} for i, r in zip(folds, results)]
    for stat, fn in (("mean", statistics.fmean), ("std", statistics.pstdev)):
        row: dict[str, Any] = {"fold": stat}
        for k in keys:
            vals = [r[k] for r in results if k in r and not math.isnan(r[k])]
            row[k] = fn(vals) if vals else float("nan")
        rows.append(row)
    write_table(path, ["fold", *keys], rows)
