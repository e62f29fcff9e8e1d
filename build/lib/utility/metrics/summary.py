"""Collect the test results of many finetuning runs into one table (side by side)."""
from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Sequence

DEFAULT_COLUMNS = ("accuracy", "balanced_accuracy", "f1_macro", "auc_macro", "auc_avg_overall",
                   "dice_mean_fg", "avg_val_loss")


def read_row(path: Path) -> dict[str, str]:
    with path.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    return rows[0] if rows else {}


def find_runs(paths: Sequence[Path]) -> list[Path]:
    """Run directories (holding test.log) at or below the given paths, sorted."""
    runs: set[Path] = set()
    for p in paths:
        if (p / "test.log").is_file():
            runs.add(p)
        elif p.is_dir():
            runs.update(t.parent for t in p.rglob("test.log"))
    return sorted(runs)


def summarize(paths: Sequence[Path], columns: Sequence[str] | None = None, which: str = "last",
              out_csv: Path | None = None) -> str:
    runs = find_runs(paths)
    if not runs:
        return "no finished runs (no test.log) under: " + ", ".join(map(str, paths))
    log = "test.log" if which == "last" else "test_best.log"
    rows = [(r, read_row(r / log)) for r in runs if (r / log).is_file()]
    present = [c for c in (columns or DEFAULT_COLUMNS) if any(c in row for _, row in rows)]
    names = [str(r.relative_to(r.parents[1])) if len(r.parents) > 1 else str(r) for r, _ in rows]
    width = max(len(n) for n in names + ["run"])
    lines = [f"{'run':<{width}}  " + "  ".join(f"{c:>17}" for c in present)]
    for name, (_, row) in zip(names, rows):
        vals = []
        for c in present:
            try:
                v = float(row.get(c, "nan"))
                vals.append(f"{v:>17.4f}" if not math.isnan(v) else f"{'nan':>17}")
            except ValueError:
                vals.append(f"{row.get(c, ''):>17}")
        lines.append(f"{name:<{width}}  " + "  ".join(vals))
    if out_csv is not None:
        with out_csv.open("w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["run", *present])
            for name, (_, row) in zip(names, rows):
                w.writerow([name, *(row.get(c, "") for c in present)])
    return "\n".join(lines)
