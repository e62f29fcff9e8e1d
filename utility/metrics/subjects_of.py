"""The subject (patient) of every sample of a split, for uncertainty over subjects.

The index gives each sample a subject when the task has a subject rule (``Split.subject_ids``); a split
without one, or an index from before subjects existed, treats each sample as its own subject: its path
relative to the data folder. The one place this choice is made, so callers never guess.
"""
from __future__ import annotations

from typing import Any

import numpy as np


def sample_subjects(split: Any) -> np.ndarray:
    """One ``str`` per sample of ``split``, in the split's order."""
    ids = getattr(split, "subject_ids", None)
    if callable(ids):
        return np.asarray(ids()).astype(str)
    paths = split.paths
    rel = paths.rel_strings() if hasattr(paths, "rel_strings") else [str(p) for p in paths]
    return np.asarray(rel, dtype=str)
