"""The run directory and what is written into it: CSV logs with the predecessor's columns first,
TensorBoard events, crash.log. Only rank 0 writes."""
from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

from utility.distributed import is_main


RowObserver = Callable[[Path, dict[str, Any]], None]  # (log file, row): a run's callbacks (on_row)


def _notify(on_row: Optional[RowObserver], path: Path, columns: list[str], row: dict[str, Any]) -> None:
    if on_row is not None:
        on_row(path, {c: row.get(c, "") for c in columns})


def fmt(v: Any) -> str:
    if isinstance(v, float):
        return "nan" if math.isnan(v) else repr(float(v))  # np.float64's repr is 'np.float64(...)'
    return str(v)  # quoting (commas, quotes, newlines) is the csv writer's job


class CsvLog:
    """Append-only CSV with a fixed header. On resume, rows past the checkpoint are dropped first
    so that no row appears twice. ``on_row(path, row)`` follows every row written (trackers)."""

    def __init__(self, path: Path, columns: list[str], enabled: bool = True,
                 on_row: Optional[RowObserver] = None) -> None:
        self.path, self.on_row = path, on_row
        self.columns = list(columns)
        self.enabled = enabled and is_main()
        self._fh = None

    def _open(self) -> None:
        if self._fh is not None or not self.enabled:
            return
        new = not self.path.exists() or self.path.stat().st_size == 0
        self._fh = self.path.open("a", newline="")
        if new:
            csv.writer(self._fh, lineterminator="\n").writerow(self.columns)
            self._fh.flush()

    def write(self, row: dict[str, Any]) -> None:
        if not self.enabled:
            return
        self._open()
        csv.writer(self._fh, lineterminator="\n").writerow([fmt(row.get(c, "")) for c in self.columns])
        self._fh.flush()
        _notify(self.on_row, self.path, self.columns, row)

    def keep_rows(self, keep: Callable[[dict[str, str]], bool]) -> None:
        """Rewrite the file keeping only rows for which ``keep`` is true (resume)."""
        if not self.enabled or not self.path.exists():
            return
        self.close()
        with self.path.open(newline="") as fh:
            rows = list(csv.DictReader(fh))
        kept = [r for r in rows if keep(r)]
        if len(kept) == len(rows):
            return
        tmp = self.path.with_suffix(".tmp")
        with tmp.open("w", newline="") as fh:
            w = csv.writer(fh, lineterminator="\n")
            w.writerow(self.columns)
            w.writerows([r.get(c, "") or "" for c in self.columns] for r in kept)
        tmp.replace(self.path)

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


class TensorBoard:
    """Lazy SummaryWriter (importing tensorboard costs a second; skipped entirely off rank 0)."""

    def __init__(self, logdir: Path, enabled: bool = True) -> None:
        self.logdir = logdir
        self.enabled = enabled and is_main()
        self._w = None

    def scalars(self, values: dict[str, float], step: int, prefix: str) -> None:
        if not self.enabled:
            return
        if self._w is None:
            from torch.utils.tensorboard import SummaryWriter

            self._w = SummaryWriter(log_dir=str(self.logdir))
        for k, v in values.items():
            if isinstance(v, (int, float)) and not (isinstance(v, float) and math.isnan(v)):
                self._w.add_scalar(f"{prefix}/{k}", v, step)

    def flush(self) -> None:
        if self._w is not None:
            self._w.flush()

    def close(self) -> None:
        if self._w is not None:
            self._w.close()
            self._w = None


def write_table(path: Path, columns: list[str], rows: Iterable[dict[str, Any]],
                on_row: Optional[RowObserver] = None) -> None:
    """A whole CSV at once (test logs, predictions), written atomically; ``on_row`` as for CsvLog."""
    if not is_main():
        return
    rows = list(rows)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", newline="") as fh:  # a real CSV writer: names may hold commas, quotes, newlines
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(columns)
        w.writerows([fmt(r.get(c, "")) for c in columns] for r in rows)
    tmp.replace(path)
    for r in rows:
        _notify(on_row, path, columns, r)
