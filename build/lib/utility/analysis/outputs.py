"""Writing a command's results: CSV tables (columns in first-seen order) and the output folder."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

from utility.training.rundir import write_table


def columns(rows: Iterable[dict[str, Any]]) -> list[str]:
    cols: dict[str, None] = {}
    for r in rows:
        cols.update(dict.fromkeys(r))
    return list(cols)


def write_csv(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_table(path, columns(rows), rows)
    return path


def announce(command: str, paths: Iterable[Path]) -> None:
    for p in paths:
        print(f"{command}: wrote {p}")
