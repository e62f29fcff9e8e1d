"""The subject (patient) of every sample of a split, for uncertainty over subjects.

The index gives each sample a subject (``Split.subject_ids``): from the task's subject rule, or, for a
task without one, the sample itself (its path relative to the task folder). The one place this choice is made, so callers never guess.
"""
from __future__ import annotations

from typing import Any

import numpy as np


def sample_subjects(split: Any) -> np.ndarray:
    """One ``str`` per sample of ``split``, in the split's order."""
    return np.asarray(split.subject_ids()).astype(str)
