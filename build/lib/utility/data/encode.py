"""Class names / indices -> targets: a class index per sample (multiclass, int64 array) or a multi-hot
uint8 matrix (multilabel). Each distinct raw target is encoded once and the codes gathered, so a
1.28 M-image split costs one lookup per class, not per image.

With a class subset (ImageNet-100, ``class_stride``) samples of other classes are dropped; otherwise
an unknown label is a user error naming the first file (in index order) that carries it.
"""
from __future__ import annotations

from typing import Any, Optional

import numpy as np

from utility.data.batch_targets import Labels
from utility.data.compact import PathArray, take
from utility.errors import UserError


def index_of(label: Any, lookup: dict[str, int], n: int) -> Optional[int]:
    if isinstance(label, (int, np.integer)) and not isinstance(label, bool):
        return int(label) if 0 <= label < n else None
    s = str(label).strip()
    if s in lookup:
        return lookup[s]
    names_are_numbers = any(k.lstrip("-").isdigit() for k in lookup)
    if s.lstrip("-").isdigit() and not names_are_numbers:  # an index into the class list
        v = int(s)
        return v if 0 <= v < n else None
    return None


def _shown(classes: list[str]) -> str:
    return f"{', '.join(classes[:6])}{', ...' if len(classes) > 6 else ''}"


def encode_multiclass(files: PathArray, labels: Labels, classes: list[str], subset: bool
                      ) -> tuple[PathArray, np.ndarray]:
    lookup = {c: i for i, c in enumerate(classes)}
    lut = np.asarray([(-1 if (i := index_of(v, lookup, len(classes))) is None else i) for v in labels.values]
                     + [-1], dtype=np.int64)
    targets = lut[labels.codes] if len(labels.codes) else np.zeros(0, np.int64)
    bad = targets < 0
    if not bad.any():
        return files, targets
    if subset:
        keep = np.flatnonzero(~bad)
        return take(files, keep), targets[keep]
    first = int(np.flatnonzero(bad)[0])
    raw = labels.values[labels.codes[first]]
    raise UserError(f"{files[first]}: label {raw!r} is outside the task's classes "
                    f"({len(classes)} classes: {_shown(classes)})")


def encode_multilabel(files: PathArray, labels: Labels, classes: list[str]) -> np.ndarray:
    lookup = {c: i for i, c in enumerate(classes)}
    table = np.zeros((len(labels.values), len(classes)), dtype=np.uint8)
    failed: dict[int, Any] = {}
    for u, t in enumerate(labels.values):
        for lab in (t if isinstance(t, (list, tuple)) else [t]):
            i = index_of(lab, lookup, len(classes))
            if i is None:
                failed[u] = lab
                break
            table[u, i] = 1
    if failed:
        first = int(np.flatnonzero(np.isin(labels.codes, list(failed)))[0])
        lab = failed[int(labels.codes[first])]
        raise UserError(f"{files[first]}: label {lab!r} is not one of the task's {len(classes)} labels "
                        f"({_shown(classes)})")
    return table[labels.codes] if len(labels.codes) else np.zeros((0, len(classes)), np.uint8)
