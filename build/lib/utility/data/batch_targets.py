"""Vectorised versions of the built-in target readers (``folders``, ``csv``, ``imagenet``): one pass over
the indexed path strings instead of one Python call (and several ``Path`` objects) per image.

Each gives exactly what calling its per-file reader on every image would give, as :class:`Labels`
(a code per sample into the distinct targets), and raises the same errors naming the same first
file. A reader registered by a user (also one that replaces a built-in name) runs per file as before.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np
import pandas as pd

from utility.data.compact import PathArray
from utility.data.labeltable import read_table
from utility.data.targets import (_READERS, ReaderContext, _solution_table, csv_target, folder_target,
                                  imagenet_target, task_file)
from utility.errors import UserError


@dataclass
class Labels:
    """Per sample a code into ``values``; each value is what the per-file reader returns."""

    codes: np.ndarray
    values: list[Any]


def labels_from_strings(strings: Sequence[str]) -> Labels:
    codes, uniques = pd.factorize(np.asarray(strings, dtype=object), sort=False)
    return Labels(codes.astype(np.int64), list(uniques))


def factorize(targets: Sequence[Any]) -> Labels:
    """Labels from one per-file reader result per sample (lists count as tuples)."""
    index: dict[Any, int] = {}
    values: list[Any] = []
    codes = np.empty(len(targets), np.int64)
    for i, t in enumerate(targets):
        key: Any = (type(t), tuple(t) if isinstance(t, list) else t)
        try:
            code = index.setdefault(key, len(values))
        except TypeError:  # unhashable: its own value
            code = len(values)
        if code == len(values):
            values.append(t)
        codes[i] = code
    return Labels(codes, values)


def relative_strings(files: PathArray, base: Path) -> Optional[list[str]]:
    """Each file's path relative to ``base`` (lexically, as ``Path.relative_to``), or None when
    some file is not below it (the per-file reader then runs and reports it)."""
    b = str(base)
    rels = files.rel_strings()
    if files.root == b:
        return rels
    if files.root.startswith(b + "/"):
        pre = files.root[len(b) + 1:] + "/"
        return [pre + r for r in rels]
    if files.root in ("", "."):
        cut = len(b) + 1
        if all(s.startswith(b + "/") for s in rels):
            return [s[cut:] for s in rels]
    return None


BatchReader = Callable[[PathArray, ReaderContext], Optional[Labels]]
_BATCH: dict[str, tuple[Callable, BatchReader]] = {}


def _batch(name: str, per_file: Callable) -> Callable[[BatchReader], BatchReader]:
    def deco(fn: BatchReader) -> BatchReader:
        _BATCH[name] = (per_file, fn)
        return fn
    return deco


def batch_reader_of(name: str) -> Optional[BatchReader]:
    """The vectorised reader of a built-in reader name, unless that name was re-registered."""
    pair = _BATCH.get(name)
    if pair is None or _READERS.get(name) is not pair[0]:
        return None
    return pair[1]


@_batch("folders", folder_target)
def folders_batch(files: PathArray, ctx: ReaderContext) -> Optional[Labels]:
    rels = relative_strings(files, ctx.split_dir)
    if rels is None:
        return None
    for i, r in enumerate(rels):
        if "/" not in r:
            raise UserError(f"{files[i]}: with the 'folders' layout every image must be inside a class folder "
                            f"of {ctx.split_dir}")
    return labels_from_strings([r.partition("/")[0] for r in rels])


def _file_keys(files: PathArray, ctx: ReaderContext) -> Optional[list[str]]:
    """``targets.key_for(path, layout, data_dir)`` of every file."""
    match = ctx.task.layout.match
    if match == "relpath":
        if not str(ctx.data_dir).startswith("/"):
            return files.strings()
        return relative_strings(files, ctx.data_dir)
    names = [r.rpartition("/")[2] for r in files.rel_strings()]
    return [n.split(".")[0] for n in names] if match == "stem" else names


@_batch("csv", csv_target)
def csv_batch(files: PathArray, ctx: ReaderContext) -> Optional[Labels]:
    task = ctx.task
    layout = task.layout
    table = read_table(task_file(task, ctx.data_dir, layout.labels_file, "labels_file"), layout.model_dump_json())
    keys = _file_keys(files, ctx)
    if keys is None:
        return None
    table.check_unique(keys, files)
    pos = table.lookup(keys)
    missing = np.flatnonzero(pos < 0)
    if missing.size:
        raise LookupError(f"{files[int(missing[0])].name} has no row in {layout.labels_file}")
    lab = labels_from_strings(table.labels[pos])
    if task.type == "multilabel":
        sep = layout.label_separator
        lab.values = [[s for s in v.split(sep) if s] for v in lab.values]
    return lab


def _is_wnid(name: str) -> bool:
    return name.startswith("n") and name[1:].isdigit()


@_batch("imagenet", imagenet_target)
def imagenet_batch(files: PathArray, ctx: ReaderContext) -> Optional[Labels]:
    rels = files.rel_strings()
    root_name = files.root.rpartition("/")[2]
    parents = [r.rsplit("/", 2)[-2] if "/" in r else root_name for r in rels]
    wnid = {p: _is_wnid(p) for p in set(parents)}
    if all(wnid.values()):
        return labels_from_strings(parents)
    task = ctx.task
    sol = _solution_table(task_file(task, ctx.data_dir, task.layout.solution_file, "solution_file"))
    out = []
    for i, (p, r) in enumerate(zip(parents, rels)):
        if wnid[p]:
            out.append(p)
            continue
        name = r.rpartition("/")[2]
        stem = name.split(".")[0]
        if stem not in sol:
            raise LookupError(f"{name} has no row in {task.layout.solution_file}")
        out.append(sol[stem])
    return labels_from_strings(out)
