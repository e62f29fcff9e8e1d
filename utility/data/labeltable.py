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
from functools import lru_cache
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import pandas as pd

from utility.config.tasks import LayoutSpec
from utility.errors import UserError

# a path string that pathlib would rewrite (empty, absolute, '//', trailing '/', '.' parts)
_IRREGULAR = re.compile(r"^$|^/|//|/$|(^|/)\.(/|$)")


def delimiter_of(path: Path, given: Optional[str]) -> str:
    if given:
        return given
    return "\t" if path.suffix.lower() in (".tsv", ".tab") else ","


def posix(strings: Sequence[str]) -> list[str]:
    """``Path(s).as_posix()`` of each string; pathlib runs only for the few that need rewriting."""
    out = list(strings)
    for i, s in enumerate(out):
        if _IRREGULAR.search(s):
            out[i] = Path(s).as_posix() if s else "."
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

    def duplicated(self) -> np.ndarray:
        return pd.Index(self.keys).duplicated(keep=False)

    def as_dict(self) -> dict[str, str]:
        """key -> label (the last row wins; :meth:`check_unique` refuses used duplicates)."""
        return dict(zip(self.keys.tolist(), self.labels.tolist()))

    def check_unique(self, wanted_keys: Sequence[str], files: Sequence[str]) -> None:
        """A key of an indexed file that names two rows is an error naming the file."""
        dup = self.duplicated()
        if not dup.any():
            return
        dup_keys = set(self.keys[dup].tolist())
        for key, f in zip(wanted_keys, files):
            if key in dup_keys:
                n = int(np.count_nonzero(self.keys == key))
                raise UserError(f"{f}: labels file {self.path} has {n} rows for '{key}' (one row per image; "
                                "remove the extra rows)")

    def lookup(self, wanted_keys: Sequence[str]) -> np.ndarray:
        """Row position of each key, -1 where the file has no row (duplicates: the last row)."""
        last = ~pd.Index(self.keys).duplicated(keep="last")
        index = pd.Index(self.keys[last])
        rows = np.flatnonzero(last)
        pos = index.get_indexer(pd.Index(list(wanted_keys), dtype=object))
        return np.where(pos >= 0, rows[np.maximum(pos, 0)], -1)


def _read_rows_pandas(path: Path, delim: str) -> pd.DataFrame:
    return pd.read_csv(path, sep=delim, header=None, dtype=object, keep_default_na=False, na_filter=False,
                       skip_blank_lines=True, engine="c", quotechar='"', doublequote=True)


def _read_rows_csv(path: Path, delim: str) -> pd.DataFrame:
    """Ragged rows (pandas refuses them): the csv module, rows padded with None."""
    with path.open(newline="") as fh:
        rows = [r for r in csv.reader(fh, delimiter=delim) if r]
    width = max((len(r) for r in rows), default=0)
    return pd.DataFrame([r + [None] * (width - len(r)) for r in rows], dtype=object)


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
        df = _read_rows_pandas(path, delim)
    except pd.errors.EmptyDataError:
        raise UserError(f"labels file {path} is empty") from None
    except pd.errors.ParserError:
        df = _read_rows_csv(path, delim)
    except UnicodeDecodeError as exc:
        raise UserError(f"labels file {path} is not UTF-8 text: {exc}") from None
    if df.empty:
        raise UserError(f"labels file {path} is empty")
    header = [("" if v is None else str(v)) for v in df.iloc[0].tolist()]
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
    body = df.iloc[1:] if has_header else df
    if max(pc, lc) >= body.shape[1]:
        return LabelTable(path, np.zeros(0, object), np.zeros(0, object))
    pcol, lcol = body.iloc[:, pc], body.iloc[:, lc]
    usable = (pcol.map(lambda v: isinstance(v, str)) & lcol.map(lambda v: isinstance(v, str))).to_numpy(bool)
    keys = keys_of(pcol[usable].tolist(), layout.match)
    labels = lcol[usable].str.strip()
    return LabelTable(path, np.asarray(keys, dtype=object), labels.to_numpy(dtype=object))


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
