"""Broken or unreadable files: skipped (a zero image stands in so batch shapes hold, and the sample
is left out of loss and metrics), counted, listed with the reason in ``bad_files.csv`` in the run
directory, summarised in one line per epoch; too many in one split stop the run with a clear error.
In debug mode the dataset raises on the first one instead (with its path)."""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Any, Optional

import torch

from utility.errors import UserError


class BadFiles:
    def __init__(self, paths: dict[str, list[Path]], max_fraction: float, run_dir: Optional[Path]) -> None:
        self.paths = paths
        self.max_fraction = max_fraction
        self.run_dir = run_dir
        self.seen: dict[str, dict[int, str]] = {k: {} for k in paths}
        self.reported = 0

    def record(self, split: str, batch: dict[str, Any]) -> None:
        reasons = batch.get("bad") or []
        idx = batch["index"]
        idx = idx.tolist() if isinstance(idx, torch.Tensor) else list(idx)
        seen = self.seen.setdefault(split, {})
        for i, reason in zip(idx, reasons):
            if reason:
                seen[int(i)] = reason
        total = len(self.paths.get(split, [])) or 1
        if len(seen) > self.max_fraction * total and seen:
            self.write_report()  # the list of culprits first, then stop
            first_i, first_reason = next(iter(seen.items()))
            raise UserError(
                f"{len(seen)} of {total} files of split '{split}' are unreadable or hold NaN/Inf "
                f"(more than max_bad_fraction {self.max_fraction}); e.g. {self._path(split, first_i)}: "
                f"{first_reason}" + (f"; all of them in {self.run_dir / 'bad_files.csv'}" if self.run_dir else ""))

    def _path(self, split: str, i: int) -> str:
        files = self.paths.get(split, [])
        return str(files[i]) if i < len(files) else f"#{i}"

    @property
    def count(self) -> int:
        return sum(len(v) for v in self.seen.values())

    def write_report(self) -> Optional[str]:
        """Rewrite bad_files.csv and return a one-line summary (None when all files were fine)."""
        if not self.count:
            return None
        if self.run_dir is not None:
            rows = [[split, self._path(split, i), reason]
                    for split, items in self.seen.items() for i, reason in sorted(items.items())]
            with (self.run_dir / "bad_files.csv").open("w", newline="") as fh:  # names may hold commas/quotes
                w = csv.writer(fh, lineterminator="\n")
                w.writerow(["split", "file", "reason"])
                w.writerows(rows)
        parts = ", ".join(f"{split} {len(v)}" for split, v in self.seen.items() if v)
        return f"skipped unreadable/NaN files so far: {parts} (see bad_files.csv)"


def drop_invalid(batch: dict[str, Any], split: str, bad: Optional[BadFiles]) -> Optional[dict[str, Any]]:
    """The batch without its invalid samples (recorded in ``bad``); None if none is left."""
    valid = batch["valid"]
    if bool(valid.all()):
        return batch
    if bad is not None:
        bad.record(split, batch)
    keep = valid.nonzero().flatten()
    if keep.numel() == 0:
        return None
    return {k: (v[keep] if isinstance(v, torch.Tensor) else [v[i] for i in keep.tolist()])
            for k, v in batch.items()}
