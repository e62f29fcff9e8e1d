"""Labels files (CSV/TSV of path + label), read once with pandas and joined to the indexed files with
vectorised key matching, not a Python loop over ``Path`` objects (112 k rows of ChestX-ray8's
Data_Entry_2017.csv join in well under a second).

Keys follow ``layout.match``: ``basename`` (file name), ``stem`` (file name up to the first dot) or
``relpath`` (path relative to the task root). A key that appears in two rows of the file is an error
naming the file when an indexed image has that key (a second row used to count the image twice, or
silently give it the last row's labels); duplicates of images that are not indexed are ignored.
"""
from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from functools import cached_property, lru_cache
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import pandas as pd

from utility.config.tasks import LayoutSpec
from utility.errors import UserError

# a path string that pathlib would rewrite (empty, absolute, '//', trailing '/', '.' parts)
_IRREGULAR = re.compile(r"^$|^/|//|/$|(^|/)\.(/|$)")
_IRREGULAR_LINES = re.compile(_IRREGULAR.pattern, re.MULTILINE)


def delimiter_of(path: Path, given: Optional[str]) -> str:
    if given:
        return given
    return "\t" if path.suffix.lower() in (".tsv", ".tab") else ","


def posix(strings: Sequence[str]) -> list[str]:
    """``Path(s).as_posix()`` of each string; pathlib runs only for the few that need rewriting
    (found with one regex scan over all strings joined, not one search per string)."""
    out = list(strings)
    if not out:
        return out
    text = "\n".join(out)
    edges = (text[:1] in ("/", "\n", "") or text.startswith("./") or text.endswith(("/", "\n", "/.")) or text == ".")
    if not edges and not any(c in text for c in ("//", "/\n", "\n/", "\n\n", "/.", "\n.")):
        return out  # plain relative paths throughout (substring tests, no regex scan)
    hits = [m.start() for m in _IRREGULAR_LINES.finditer(text)]
    if not hits:
        return out
    starts = np.zeros(len(out), np.int64)
    np.cumsum(np.fromiter(map(len, out), np.int64, count=len(out))[:-1] + 1, out=starts[1:])
    rows = np.unique(np.searchsorted(starts, hits, side="right") - 1) if text.count("\n") == len(out) - 1 \
        else range(len(out))  # a string holding a newline: check each
    for i in rows:
        s = out[int(i)]
        if _IRREGULAR.search(s):
            out[int(i)] = Path(s).as_posix() if s else "."
    return out


def keys_of(paths: Sequence[str], match: str) -> list[str]:
    """The join key of each path string under ``match`` (as ``targets.key_for`` computes it)."""
    norm = posix(paths)
    if match == "relpath":
        return norm
    names = [s.rpartition("/")[2] if s not in (".", "/") else "" for s in norm]
    if match == "stem":
        return [n.split(".")[0] for n in names]
    return names


@dataclass(frozen=True)
class LabelTable:
    """One labels file: a key and the label text (stripped) per usable row, in file order."""

    path: Path
    keys: np.ndarray      # object array of str
    labels: np.ndarray    # object array of str

    @cached_property
    def _last_row(self) -> dict[str, int]:
        return dict(zip(self.keys.tolist(), range(len(self.keys))))  # a repeated key: its last row

    def as_dict(self) -> dict[str, str]:
        """key -> label (the last row wins; :meth:`check_unique` refuses used duplicates)."""
        return dict(zip(self.keys.tolist(), self.labels.tolist()))

    def check_unique(self, wanted_keys: Sequence[str], files: Sequence[Any]) -> None:
        """A key of an indexed file that names two rows is an error naming the file."""
        if len(self._last_row) == len(self.keys):
            return
        dup_keys = set(self.keys[pd.Index(self.keys).duplicated(keep=False)].tolist())
        for i, key in enumerate(wanted_keys):
            if key in dup_keys:
                n = int(np.count_nonzero(self.keys == key))
                raise UserError(f"{files[i]}: labels file {self.path} has {n} rows for '{key}' (one row per image; "
                                "remove the extra rows)")

    def lookup(self, wanted_keys: Sequence[str]) -> np.ndarray:
        """Row position of each key, -1 where the file has no row."""
        rows = self._last_row
        return np.fromiter((rows.get(k, -1) for k in wanted_keys), np.int64, count=len(wanted_keys))


def _rows_csv(path: Path, delim: str, skip: int, pc: int, lc: int) -> tuple[list[str], list[str]]:
    """The csv module (ragged rows, which pandas refuses): rows too short are skipped."""
    with path.open(newline="") as fh:
        rows = list(csv.reader(fh, delimiter=delim))[skip:]
    rows = [r for r in rows if len(r) > max(pc, lc)]
    return [r[pc] for r in rows], [r[lc] for r in rows]


def _rows_pandas(path: Path, delim: str, skip: int, pc: int, lc: int) -> tuple[list[str], list[str]]:
    try:
        df = pd.read_csv(path, sep=delim, header=None, skiprows=skip, usecols=[pc, lc], dtype=object,
                         keep_default_na=False, na_filter=False, skip_blank_lines=True, engine="c")
    except pd.errors.EmptyDataError:
        return [], []
    paths, labels = df[pc].tolist(), df[lc].tolist()
    if "" in paths or "" in labels:  # pandas fills a short row with '': tell it from an empty field
        raise ValueError("short rows")
    return paths, labels


def read_table(path: Path, layout_json: str) -> LabelTable:
    """Read a labels file once per process and version of the file; rows too short for the path or
    label column are skipped."""
    try:
        st = path.stat()
    except OSError:
        raise UserError(f"labels file not found: {path}") from None
    if not path.is_file():
        raise UserError(f"labels file not found: {path}")
    return _read_table(path, layout_json, st.st_mtime_ns, st.st_size)


@lru_cache(maxsize=8)
def _read_table(path: Path, layout_json: str, mtime_ns: int, size: int) -> LabelTable:
    layout = LayoutSpec.model_validate_json(layout_json)
    delim = delimiter_of(path, layout.delimiter)
    try:
        with path.open(newline="") as fh:
            header = next(csv.reader(fh, delimiter=delim), None)
    except UnicodeDecodeError as exc:
        raise UserError(f"labels file {path} is not UTF-8 text: {exc}") from None
    if header is None:
        raise UserError(f"labels file {path} is empty")
    has_header = layout.header if layout.header is not None else (
        isinstance(layout.path_column, str) or isinstance(layout.label_column, str)
        or not any(Path(h).suffix for h in header[:1]))

    def col(spec: int | str) -> int:
        if isinstance(spec, int):
            return spec
        if spec not in header:
            raise UserError(f"labels file {path} has no column '{spec}' (columns: {', '.join(header)})")
        return header.index(spec)

    pc, lc = col(layout.path_column), col(layout.label_column)
    skip = 1 if has_header else 0
    try:
        paths, labels = _rows_pandas(path, delim, skip, pc, lc)
    except (pd.errors.ParserError, ValueError):
        paths, labels = _rows_csv(path, delim, skip, pc, lc)
    except UnicodeDecodeError as exc:
        raise UserError(f"labels file {path} is not UTF-8 text: {exc}") from None
    return LabelTable(path, np.asarray(keys_of(paths, layout.match), dtype=object),
                      np.asarray([s.strip() for s in labels], dtype=object))


def rows_with(path: Path, layout: LayoutSpec, column: str, value: Optional[str]) -> list[str]:
    """Keys of the rows whose ``column`` equals ``value`` (csv_rows splits with a split column)."""
    delim = "\t" if path.suffix.lower() in (".tsv", ".tab") else (layout.delimiter or ",")
    df = pd.read_csv(path, sep=delim, header=0, dtype=object, keep_default_na=False, na_filter=False)
    if len(df) and column not in df.columns:
        raise UserError(f"labels file {path} has no column '{column}'")
    if not len(df):
        return []
    pc = layout.path_column
    pcol = df[pc] if isinstance(pc, str) else df.iloc[:, pc]
    return keys_of(pcol[df[column] == value].tolist(), layout.match)
