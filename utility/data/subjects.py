"""Subjects (patients) of samples: one integer code per sample into one vocabulary array.

Why: slices of one patient are near-duplicates; a split that puts some in train and some in val
inflates the validation score. Every split the tool draws (utility/data/splits.py) keeps a subject's
samples together, so each sample needs its subject. A task names where it comes from
(``subject:`` in the task YAML, :class:`utility.config.tasks.SubjectRule`): a labels-table column,
a regex on the path relative to the task folder, a DICOM attribute, or a project function.

Stored compactly: ``codes`` (int32 per sample, 4 bytes) index ``vocab`` (a numpy string array, one
entry per distinct subject); no Python object per sample. A task without a rule stores nothing:
each sample is its own subject (a NIfTI slice ``file.nii.gz::<k>`` is a sample of subject ``file``).
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import pandas as pd

from utility.config.tasks import IdRule, TaskSpec
from utility.data.compact import PathArray
from utility.errors import UserError

VOLUME_SLICE = re.compile(r"::\d+$")


class IdColumn:
    """Per sample an id: ``vocab[codes[i]]``. Selections share the vocabulary (never copied per sample)."""

    __slots__ = ("codes", "vocab")

    def __init__(self, codes: np.ndarray, vocab: np.ndarray) -> None:
        self.codes = np.asarray(codes, dtype=np.int32)
        self.vocab = np.asarray(vocab, dtype=str) if np.asarray(vocab).dtype.kind != "U" else np.asarray(vocab)

    @classmethod
    def from_strings(cls, ids: Sequence[str] | np.ndarray) -> "IdColumn":
        arr = np.asarray(ids, dtype=str) if len(ids) else np.zeros(0, "U1")
        vocab, codes = np.unique(arr, return_inverse=True)
        return cls(codes.reshape(-1), vocab)

    def __len__(self) -> int:
        return len(self.codes)

    def take(self, idx: Any) -> "IdColumn":
        return IdColumn(self.codes[np.asarray(idx, dtype=np.int64).reshape(-1)], self.vocab)

    def ids(self) -> np.ndarray:
        return self.vocab[self.codes] if len(self.codes) else np.zeros(0, dtype=str)

    @property
    def nbytes(self) -> int:
        return int(self.codes.nbytes + self.vocab.nbytes)


def concat_ids(columns: Sequence[Optional[IdColumn]], lengths: Sequence[int]) -> Optional[IdColumn]:
    """One column of ``columns`` one after the other (vocabularies merged); None when all are None."""
    if all(c is None for c in columns):
        return None
    if any(c is None for c in columns):
        raise ValueError("cannot join splits with and without subjects")
    vocab, inv = np.unique(np.concatenate([c.vocab for c in columns]), return_inverse=True)  # type: ignore[union-attr]
    out, start = [], 0
    for c in columns:
        out.append(inv[start + c.codes])  # type: ignore[union-attr]
        start += len(c.vocab)  # type: ignore[union-attr]
    return IdColumn(np.concatenate(out) if out else np.zeros(0, np.int32), vocab)


def relative_to(full: Sequence[str], home: str) -> list[str]:
    """Each full path string relative to the task folder ``home`` (unchanged when outside it)."""
    prefix = home.rstrip("/") + "/"
    n = len(prefix)
    return [s[n:] if s.startswith(prefix) else s for s in full]


def relative_paths(files: PathArray, home: str) -> list[str]:
    """The entries of ``files`` relative to ``home``; when the array's root lies under ``home`` only
    that root is cut (no per-path prefix test)."""
    root, home = files.root.rstrip("/"), home.rstrip("/")
    if root and home and (root == home or root.startswith(home + "/")):
        sub = root[len(home) + 1:]
        rels = files.rel_strings()
        return [f"{sub}/{r}" for r in rels] if sub else rels
    return relative_to(files.strings(), home) if home else files.strings()


def volume_subjects(rels: list[str]) -> Optional[IdColumn]:
    """No rule but NIfTI slices: the slices of one volume are one subject (the volume file)."""
    if not any("::" in r for r in rels):
        return None
    return IdColumn.from_strings([VOLUME_SLICE.sub("", r) for r in rels])


def read_ids(rule: IdRule, task: TaskSpec, data_dir: Path, split_dir: Path, files: PathArray, what: str) -> IdColumn:
    """The id of every file under ``rule``; a file without one is a UserError naming it."""
    rels = relative_paths(files, str(data_dir))
    where = f"task {task.name}, {what}"
    if rule.regex is not None:
        return _by_regex(rule.regex, rels, where)
    if rule.column is not None:
        return _by_column(rule.column, task, data_dir, rels, where)
    full = files.strings()
    if rule.dicom is not None:
        return IdColumn.from_strings([_dicom_value(Path(f), rule.dicom, task, data_dir, split_dir, where) for f in full])
    return _by_reader(rule.reader or "", task, data_dir, split_dir, rels, where)


def _check(values: Any, rels: list[str], where: str, how: str) -> IdColumn:
    """Codes and sorted vocabulary by hashing (pandas.factorize), not a sort of every string."""
    codes, vocab = pd.factorize(pd.Series(values, dtype=object), sort=True)
    vocab = np.asarray([str(v) for v in vocab], dtype=str)
    bad = codes < 0
    if "" in vocab:
        bad |= codes == int(np.flatnonzero(vocab == "")[0])
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise UserError(f"{where}: {int(bad.sum())} file(s) have no subject ({how}), e.g. {rels[i]}")
    return IdColumn(codes, vocab) if len(codes) else IdColumn.from_strings([])


def _by_regex(pattern: str, rels: list[str], where: str) -> IdColumn:
    rx = re.compile(pattern)
    search, g = rx.search, (1 if rx.groups else 0)
    got = [m.group(g) if (m := search(r)) else None for r in rels]  # 4x faster than Series.str.extract
    return _check(got, rels, where, f"subject regex {pattern!r} does not match")


def _by_column(column: str, task: TaskSpec, data_dir: Path, rels: list[str], where: str) -> IdColumn:
    """The column's value in the labels-table row of each file (keys as the task's layout.match;
    relative paths: an absolute path would send every key through pathlib)."""
    from utility.data.labeltable import keys_of, read_table

    layout = task.layout
    lf = data_dir / (layout.labels_file or "")
    table = read_table(lf, layout.model_copy(update={"label_column": column}).model_dump_json())
    rows = table.lookup(keys_of(rels, layout.match))
    values = np.where(rows >= 0, table.labels[np.maximum(rows, 0)], None) if len(rows) else np.zeros(0, object)
    return _check(values, rels, where, f"no row in {lf}")


def _dicom_value(path: Path, keyword: str, task: TaskSpec, data_dir: Path, split_dir: Path, where: str) -> str:
    import warnings

    import pydicom

    dcm = path
    if path.suffix.lower() != ".dcm":  # a slice exported from a DICOM: its DICOM under layout.dicom_root
        layout = task.layout
        if layout.dicom_root is None:
            raise UserError(f"{where}: subject.dicom needs DICOM images or layout.dicom_root ({path} is not .dcm)")
        root = Path(os.path.expandvars(layout.dicom_root)).expanduser()
        root = root if root.is_absolute() else data_dir / root
        pattern, repl = layout.dicom_path or (r"\.npy$", ".dcm")
        rel = path.relative_to(split_dir).as_posix() if path.is_relative_to(split_dir) else path.name
        dcm = root / re.sub(pattern, repl, rel)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(str(dcm), stop_before_pixels=True, specific_tags=[keyword])
    except Exception as exc:
        raise UserError(f"{where}: cannot read the DICOM header of {dcm}: {type(exc).__name__}: {exc}") from None
    value = str(getattr(ds, keyword, "") or "").strip()
    if not value:
        raise UserError(f"{where}: {dcm} has no {keyword} (subject.dicom)")
    return value


def _by_reader(name: str, task: TaskSpec, data_dir: Path, split_dir: Path, rels: list[str], where: str) -> IdColumn:
    from utility.data.targets import ReaderContext, _import_reader_module

    module, _, attr = name.rpartition(":")
    fn = getattr(_import_reader_module(name, module, task.source_file), attr, None)
    if not callable(fn):
        raise UserError(f"{where}: subject reader '{name}': {module} has no function '{attr}'")
    values = list(fn(rels, ReaderContext(task=task, data_dir=data_dir, split_dir=split_dir)))
    if len(values) != len(rels):
        raise UserError(f"{where}: subject reader '{name}' gave {len(values)} ids for {len(rels)} files")
    return _check(values, rels, where, f"subject reader '{name}' gave none")
