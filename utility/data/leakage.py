"""Leakage between splits, checked before training: subjects in more than one split, identical image
files (content hash) in more than one split, and the membership written out for audit.

Why: splits made from folders or files the user arranged (train/, val/, test/, list files) can hold
the same patient on both sides; the tool's own seeded splits never do (utility/data/splits.py), so
these checks only ever fire for what came from outside.
"""
from __future__ import annotations

import hashlib
import os
from collections import defaultdict
from pathlib import Path
from typing import Mapping, Optional, Sequence

import numpy as np
import pandas as pd

from utility.data.index import Split
from utility.data.subjects import VOLUME_SLICE

AUTO_DUPLICATE_LIMIT = 200_000  # files; above it the content check runs only when asked (it reads them all)


def subject_overlap(splits: Mapping[str, Split]) -> tuple[int, list[str]]:
    """(how many subjects are in more than one split, up to three examples 'id (train, test)')."""
    ids = {name: s.unique_subjects() for name, s in splits.items()}
    names = list(ids)
    shared = np.zeros(0, dtype=str)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            shared = np.union1d(shared, np.intersect1d(ids[a], ids[b], assume_unique=True))
    examples = [f"{sid} ({', '.join(n for n in names if np.isin(sid, ids[n]))})" for sid in shared[:3].tolist()]
    return len(shared), examples


def overlap_message(count: int, examples: Sequence[str]) -> str:
    return (f"{count} subject(s) are in more than one of the splits, e.g. {'; '.join(examples)}: "
            "their images would leak between training and evaluation")


def file_digest(path: str, chunk: int = 1 << 20) -> str:
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def _files(split: Split) -> list[str]:
    """The distinct files of a split (a NIfTI slice 'f.nii.gz::k' is its volume file)."""
    return sorted({VOLUME_SLICE.sub("", p) for p in split.paths.strings()})


def duplicate_files(splits: Mapping[str, Split]) -> list[tuple[str, ...]]:
    """Groups of files with identical content that lie in more than one split. Only files whose size
    occurs in more than one split are read (size first, then a BLAKE2 hash of the whole file)."""
    rows = [(name, f) for name, s in splits.items() for f in _files(s)]
    sizes = {}
    for _, f in rows:
        try:
            sizes[f] = os.stat(f).st_size
        except OSError:
            sizes[f] = -1  # missing or unreadable: the loader's bad-file policy reports it
    by_size: dict[int, list[tuple[str, str]]] = defaultdict(list)
    for name, f in rows:
        if sizes[f] >= 0:
            by_size[sizes[f]].append((name, f))
    groups: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for members in by_size.values():
        if len({n for n, _ in members}) < 2:
            continue
        for name, f in members:
            try:
                groups[file_digest(f)].append((name, f))
            except OSError:
                continue
    return [tuple(f"{n}:{f}" for n, f in g) for g in groups.values() if len({n for n, _ in g}) > 1]


def write_membership(path: Path, splits: Mapping[str, Split]) -> None:
    """``splits.csv.gz``: path (relative to the task folder), subject, split [, session]; one row per
    sample, built from whole columns (a million rows in seconds); written atomically."""
    frames = []
    with_sessions = any(s.sessions is not None for s in splits.values())
    for name, s in splits.items():
        cols = {"path": s.relative_paths(), "subject": s.subject_ids(), "split": name}
        if with_sessions:
            cols["session"] = s.sessions.ids() if s.sessions is not None else ""
        frames.append(pd.DataFrame(cols))
    df = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["path", "subject", "split"])
    tmp = path.with_name(f".{path.name}.tmp")
    df.to_csv(tmp, index=False, compression={"method": "gzip", "compresslevel": 1, "mtime": 0})
    os.replace(tmp, path)


def split_sizes(splits: Mapping[str, Split]) -> dict[str, tuple[int, int]]:
    """split -> (samples, subjects)."""
    return {name: (len(s), s.subject_count()) for name, s in splits.items()}


def sizes_text(sizes: Mapping[str, tuple[int, int]]) -> str:
    return ", ".join(f"{k} {n} samples / {m} subjects" for k, (n, m) in sizes.items())


def want_duplicates(flag: Optional[bool], splits: Mapping[str, Split]) -> bool:
    return flag if flag is not None else sum(len(s) for s in splits.values()) <= AUTO_DUPLICATE_LIMIT
