"""Percentile bootstrap over subjects (patients), not samples.

A resample draws S subjects with replacement out of the S subjects of a test set and recomputes the
metric on *all* the samples of the drawn subjects (a subject drawn twice counts twice). Every metric
here is a function of per-sample statistics, so a resample is a weight per subject (how often it was
drawn): additive statistics (confusion counts) are summed per subject once and a resample is one
matrix product; rank statistics (AUC) take the weight of each sample. Nothing loops over resamples in
Python beyond fixed-size chunks, which bound memory.

The draws are exactly those of ``scipy.stats.bootstrap`` on the subject indices with the same
generator (``rng.integers(0, S, (chunk, S))`` per chunk; scipy's ``batch`` = our chunk), and the interval
is the same percentile interval; tests/test_bootstrap.py checks both against scipy.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Optional, Protocol

import numpy as np
from scipy import sparse

CHUNK_ELEMENTS = 2_000_000   # resamples x samples per chunk (float64: 16 MB)


@dataclass(frozen=True)
class BootstrapSettings:
    """How many resamples, the interval's level, the generator's seed (a run's seed)."""

    resamples: int = 1000
    level: float = 0.95
    seed: int = 0


class Samples(Protocol):
    """Per-sample statistics of one evaluation, as a metrics module defines them."""

    def additive(self) -> Any:
        """[N, F] statistics whose weighted sum over samples determines the additive metrics."""

    def rows(self, sums: np.ndarray, take: Callable[[np.ndarray], np.ndarray]) -> dict[str, np.ndarray]:
        """Metric name -> [B] values, from the weighted sums ``[B, F]`` and (for rank metrics)
        ``take(index)``: the weights ``[len(index), B]`` of those samples in each resample."""


def subject_codes(subjects: Any) -> tuple[np.ndarray, int]:
    """(code per sample in 0..S-1, S) for subject ids in any hashable form."""
    _, codes = np.unique(np.asarray(subjects).astype(str), return_inverse=True)
    codes = codes.reshape(-1).astype(np.int64)
    return codes, int(codes.max()) + 1 if codes.size else 0


def counts_of(draws: np.ndarray, n_subjects: int) -> np.ndarray:
    """[B, S] float64: how often each subject occurs in each row of drawn subject indices ``[B, S]``."""
    b = draws.shape[0]
    flat = (draws + np.arange(b)[:, None] * n_subjects).reshape(-1)
    return np.bincount(flat, minlength=b * n_subjects).reshape(b, n_subjects).astype(np.float64)


def default_chunk(resamples: int, n_samples: int, n_subjects: int) -> int:
    return max(1, min(resamples, CHUNK_ELEMENTS // max(n_samples, n_subjects, 1)))


class Resampler:
    """Evaluates a :class:`Samples` on the whole set and on subject resamples of it."""

    def __init__(self, samples: Samples, subjects: Any) -> None:
        self.samples = samples
        self.codes, self.n_subjects = subject_codes(subjects)
        x = samples.additive()
        member = sparse.csr_matrix((np.ones(len(self.codes)), (self.codes, np.arange(len(self.codes)))),
                                   shape=(self.n_subjects, len(self.codes)))
        per_subject = member @ (x if sparse.issparse(x) else sparse.csr_matrix(x))
        self._per_subject_t = sparse.csr_matrix(per_subject.T)    # [F, S]

    def rows(self, counts: np.ndarray) -> dict[str, np.ndarray]:
        """Metric values of each resample, ``counts [B, S]`` = times each subject was drawn."""
        sums = np.asarray((self._per_subject_t @ counts.T).T)
        by_subject = np.ascontiguousarray(counts.T)                # [S, B]: a sample's weights are a row
        return self.samples.rows(sums, lambda index: by_subject[self.codes[index]])

    def point(self) -> dict[str, float]:
        """The metrics of the whole set (every subject once): the numbers the run reports."""
        return {k: float(v[0]) for k, v in self.rows(np.ones((1, self.n_subjects))).items()}

    def distribution(self, settings: BootstrapSettings, chunk: Optional[int] = None) -> dict[str, np.ndarray]:
        """Metric name -> [resamples] values over subject resamples, seeded by ``settings.seed``."""
        rng = np.random.default_rng(settings.seed)
        chunk = chunk or default_chunk(settings.resamples, len(self.codes), self.n_subjects)
        parts: list[dict[str, np.ndarray]] = []
        for start in range(0, settings.resamples, chunk):
            size = min(chunk, settings.resamples - start)
            parts.append(self.rows(counts_of(rng.integers(0, self.n_subjects, (size, self.n_subjects)),
                                             self.n_subjects)))
        if not parts:
            return {}
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def percentile_ci(values: np.ndarray, level: float) -> tuple[float, float, int]:
    """(low, high, undefined): the percentile interval of the finite resample values (numpy's default
    linear interpolation, as scipy's), and how many resamples left the metric undefined (NaN)."""
    v = np.asarray(values, dtype=np.float64)
    finite = v[~np.isnan(v)]
    if not finite.size:
        return math.nan, math.nan, int(v.size)
    alpha = (1 - level) / 2
    low, high = np.percentile(finite, [alpha * 100, (1 - alpha) * 100])
    return float(low), float(high), int(v.size - finite.size)


def two_sided_p(delta: np.ndarray) -> float:
    """Bootstrap p-value of 'no difference': twice the smaller share of resampled differences on either
    side of 0, with the usual +1 in numerator and denominator (never 0); NaN without finite values."""
    d = np.asarray(delta, dtype=np.float64)
    d = d[~np.isnan(d)]
    if not d.size:
        return math.nan
    tail = min(int(np.count_nonzero(d <= 0)), int(np.count_nonzero(d >= 0)))
    return min(1.0, 2 * (tail + 1) / (d.size + 1))
