"""Compact index columns: paths and targets in a few numpy arrays instead of one Python object per sample.

Why: a list of 12 M ``pathlib.Path`` objects takes about 5 GB in every process, and DataLoader
workers and DDP ranks touch those objects (reference counts), so their copy-on-write pages get copied
and a worker's memory grows over the epoch. A :class:`PathArray` is one bytes blob and one offsets
array (about 9 bytes per sample plus the path bytes); reading an item creates a fresh ``Path`` and
never writes to the shared pages.

Both behave as read-only sequences (``len``, ``[i]``, iteration, ``==``), so code that indexed lists of
paths keeps working; :func:`take` and :func:`concat` select and join them without per-sample objects.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np

SEP = 0  # byte between entries in the blob (never part of a path)


def _decode(b: bytes) -> str:
    return os.fsdecode(b)


def join_root(root: str, rel: str) -> str:
    """``str(Path(root) / rel)`` for a normalised ``root`` and a normalised relative ``rel``."""
    if root in ("", "."):
        return rel
    return root + rel if root.endswith("/") else f"{root}/{rel}"


class PathArray(Sequence[Path]):
    """Paths as ``root`` + relative strings held in one NUL-separated bytes blob with start offsets.

    Entry i is ``blob[offsets[i]:offsets[i+1]-1]``; ``root`` is '' when the entries are full paths.
    """

    __slots__ = ("root", "blob", "offsets")

    def __init__(self, root: str, blob: np.ndarray, offsets: np.ndarray) -> None:
        self.root = root
        self.blob = blob
        self.offsets = offsets

    # construction ---------------------------------------------------------------------------------
    @classmethod
    def from_strings(cls, rels: Sequence[str], root: str = "") -> "PathArray":
        if not len(rels):
            return cls(root, np.zeros(0, np.uint8), np.zeros(1, np.int64))
        raw = os.fsencode("\0".join(rels) + "\0")
        blob = np.frombuffer(raw, dtype=np.uint8).copy()
        ends = np.flatnonzero(blob == SEP)
        offsets = np.empty(len(ends) + 1, np.int64)
        offsets[0] = 0
        offsets[1:] = ends + 1
        if len(ends) != len(rels):
            raise ValueError("a path holds a NUL byte")
        return cls(root, blob, offsets)

    @classmethod
    def from_paths(cls, paths: Iterable[Any]) -> "PathArray":
        if isinstance(paths, PathArray):
            return paths
        return cls.from_strings([str(p) for p in paths])

    # sequence protocol ----------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.offsets) - 1

    def rel(self, i: int) -> str:
        a, b = self.offsets[i], self.offsets[i + 1] - 1
        return _decode(self.blob[a:b].tobytes())

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return take(self, np.arange(len(self))[i])
        n = len(self)
        i = int(i)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"index {i} out of range for {n} paths")
        return Path(join_root(self.root, self.rel(i)))

    def rel_strings(self) -> list[str]:
        """Every entry's relative string (one decode of the blob)."""
        if not len(self):
            return []
        return _decode(self.blob.tobytes()).split("\0")[:-1]

    def strings(self) -> list[str]:
        """Every entry as a full path string."""
        rels = self.rel_strings()
        if self.root in ("", "."):
            return rels
        prefix = self.root if self.root.endswith("/") else self.root + "/"
        return [prefix + r for r in rels]

    def __iter__(self) -> Iterator[Path]:
        for s in self.strings():
            yield Path(s)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, PathArray):
            if len(self) != len(other):
                return False
            if self.root == other.root:
                return bool(np.array_equal(self.offsets, other.offsets) and np.array_equal(self.blob, other.blob))
            return self.strings() == other.strings()
        if isinstance(other, (list, tuple)):
            return list(self) == list(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __add__(self, other: Any) -> Any:
        if isinstance(other, PathArray):
            return concat([self, other])
        return list(self) + list(other)

    def __repr__(self) -> str:
        return f"PathArray({len(self)} paths under {self.root!r})"

    @property
    def nbytes(self) -> int:
        return int(self.blob.nbytes + self.offsets.nbytes)


class MaskTargets(Sequence[tuple]):
    """Per sample a tuple of mask paths (segmentation): one flat PathArray plus group offsets."""

    __slots__ = ("flat", "groups")

    def __init__(self, flat: PathArray, groups: np.ndarray) -> None:
        self.flat, self.groups = flat, groups

    @classmethod
    def from_tuples(cls, items: Sequence[Sequence[str]]) -> "MaskTargets":
        lens = np.fromiter((len(t) for t in items), np.int64, count=len(items))
        groups = np.zeros(len(items) + 1, np.int64)
        np.cumsum(lens, out=groups[1:])
        return cls(PathArray.from_strings([str(m) for t in items for m in t]), groups)

    def __len__(self) -> int:
        return len(self.groups) - 1

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return take(self, np.arange(len(self))[i])
        i = int(i) + (len(self) if int(i) < 0 else 0)
        return tuple(self.flat.rel(j) for j in range(self.groups[i], self.groups[i + 1]))

    def __iter__(self) -> Iterator[tuple]:
        flat = self.flat.rel_strings()
        g = self.groups.tolist()
        for a, b in zip(g[:-1], g[1:]):
            yield tuple(flat[a:b])

    def __eq__(self, other: object) -> bool:
        if isinstance(other, (MaskTargets, list, tuple)):
            return list(self) == list(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def counts(self) -> np.ndarray:
        return np.diff(self.groups)

    @property
    def nbytes(self) -> int:
        return self.flat.nbytes + int(self.groups.nbytes)


def _gather(blob: np.ndarray, offsets: np.ndarray, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The blob segments ``idx`` (each with its trailing separator) and their new offsets."""
    starts = offsets[idx]
    lens = offsets[idx + 1] - starts
    new = np.zeros(len(idx) + 1, np.int64)
    np.cumsum(lens, out=new[1:])
    pos = np.repeat(starts - new[:-1], lens) + np.arange(int(new[-1]), dtype=np.int64)
    return blob[pos], new


def take(column: Any, idx: Any) -> Any:
    """``column`` restricted to positions ``idx`` (in that order)."""
    idx = np.asarray(idx, dtype=np.int64).reshape(-1)
    if isinstance(column, PathArray):
        blob, offsets = _gather(column.blob, column.offsets, idx)
        return PathArray(column.root, blob, offsets)
    if isinstance(column, MaskTargets):
        g = column.groups
        counts = g[idx + 1] - g[idx]
        groups = np.zeros(len(idx) + 1, np.int64)
        np.cumsum(counts, out=groups[1:])
        flat_idx = np.repeat(g[idx] - groups[:-1], counts) + np.arange(int(groups[-1]), dtype=np.int64)
        return MaskTargets(take(column.flat, flat_idx), groups)
    return np.asarray(column)[idx]


def _full(p: PathArray) -> PathArray:
    return p if p.root in ("", ".") else PathArray.from_strings(p.strings())


def concat(columns: Sequence[Any]) -> Any:
    """One column holding ``columns`` one after the other."""
    first = columns[0]
    if isinstance(first, PathArray):
        parts = list(columns) if all(c.root == first.root for c in columns) else [_full(c) for c in columns]
        offsets, shift = [np.zeros(1, np.int64)], 0
        for c in parts:
            offsets.append(c.offsets[1:] + shift)
            shift += len(c.blob)
        return PathArray(parts[0].root, np.concatenate([c.blob for c in parts]), np.concatenate(offsets))
    if isinstance(first, MaskTargets):
        flat = concat([c.flat for c in columns])
        counts = np.concatenate([c.counts() for c in columns])
        groups = np.zeros(len(counts) + 1, np.int64)
        np.cumsum(counts, out=groups[1:])
        return MaskTargets(flat, groups)
    return np.concatenate([np.asarray(c) for c in columns])


def as_targets(targets: Any) -> Any:
    """A target column from what a caller hands over: class indices -> int64 array, multi-hot
    vectors -> uint8 matrix (float32 when not 0/1), mask-path tuples -> :class:`MaskTargets`."""
    if isinstance(targets, (np.ndarray, MaskTargets)):
        return targets
    items = list(targets)
    if not items:
        return np.zeros(0, np.int64)
    first = items[0]
    if isinstance(first, tuple) and (not first or isinstance(first[0], str)):
        return MaskTargets.from_tuples(items)
    if isinstance(first, (int, np.integer)) and not isinstance(first, bool):
        return np.asarray(items, dtype=np.int64)
    arr = np.asarray(items, dtype=np.float32)
    return arr.astype(np.uint8) if np.isin(arr, (0.0, 1.0)).all() else arr


def nbytes(column: Any) -> int:
    return int(column.nbytes)
