"""A study grid makes many comparisons at once: Holm's and Benjamini-Hochberg's adjusted p-values over
the whole grid, and Hedges' g as the seed-level effect size.

The family is every distinct comparison in summary.csv: one per (task, mode, grid point, metric,
unordered pair of sources) with a finite p-value ("A vs B" and "B vs A" are one comparison and get the
same adjusted value). Holm controls the family-wise error rate; Benjamini-Hochberg the false discovery
rate. The seed-level tests (``p_vs_``) and the subject bootstraps (``p_subjects_vs_``) are adjusted as
two separate families.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np


def _family(p: Sequence[float]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(p as float64, an all-NaN output, the indices of the finite p-values in ascending order)."""
    arr = np.asarray(p, dtype=np.float64)
    idx = np.flatnonzero(~np.isnan(arr))
    return arr, np.full(arr.shape, math.nan), idx[np.argsort(arr[idx], kind="stable")]


def holm(p: Sequence[float]) -> np.ndarray:
    """Holm's step-down adjusted p-values (NaN stays NaN and does not count in the family)."""
    p, out, order = _family(p)
    m = len(order)
    if m:
        steps = (m - np.arange(m)) * p[order]
        out[order] = np.minimum(1.0, np.maximum.accumulate(steps))
    return out


def benjamini_hochberg(p: Sequence[float]) -> np.ndarray:
    """Benjamini-Hochberg step-up adjusted p-values (q-values); NaN as in :func:`holm`."""
    p, out, order = _family(p)
    m = len(order)
    if m:
        scaled = p[order] * m / np.arange(1, m + 1)
        out[order] = np.minimum(1.0, np.minimum.accumulate(scaled[::-1])[::-1])
    return out


def hedges_g(a: Sequence[float], b: Sequence[float]) -> float:
    """(mean a - mean b) / pooled SD, times the small-sample correction J = 1 - 3 / (4 (na + nb) - 9)
    (Hedges & Olkin); NaN with fewer than 2 values a side or no spread."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    na, nb = len(a), len(b)
    if na < 2 or nb < 2:
        return math.nan
    pooled = math.sqrt(((na - 1) * a.var(ddof=1) + (nb - 1) * b.var(ddof=1)) / (na + nb - 2))
    if pooled == 0:
        return math.nan
    return float((1 - 3 / (4 * (na + nb) - 9)) * (a.mean() - b.mean()) / pooled)


def adjust_summary(rows: list[dict[str, Any]], grid_keys: Sequence[str]) -> None:
    """Add ``p_holm_vs_<o>``/``p_bh_vs_<o>`` (seed-level) and ``p_subjects_holm_vs_<o>``/
    ``p_subjects_bh_vs_<o>`` (subject bootstrap) to every summary row that has the raw p-value."""
    for raw, holm_col, bh_col in (("p_vs_", "p_holm_vs_", "p_bh_vs_"),
                                  ("p_subjects_vs_", "p_subjects_holm_vs_", "p_subjects_bh_vs_")):
        family: dict[tuple, float] = {}
        where: list[tuple[dict[str, Any], str, tuple]] = []
        for row in rows:
            for col in [c for c in row if c.startswith(raw)]:
                other = col[len(raw):]
                key = (row["task"], row["mode"], *(str(row.get(g)) for g in grid_keys), row["metric"],
                       frozenset((row["source"], other)))
                p = row[col]
                if isinstance(p, float) and not math.isnan(p):
                    family.setdefault(key, p)
                where.append((row, other, key))
        keys = list(family)
        adj_h = dict(zip(keys, holm([family[k] for k in keys])))
        adj_b = dict(zip(keys, benjamini_hochberg([family[k] for k in keys])))
        for row, other, key in where:
            row[f"{holm_col}{other}"] = float(adj_h.get(key, math.nan))
            row[f"{bh_col}{other}"] = float(adj_b.get(key, math.nan))

