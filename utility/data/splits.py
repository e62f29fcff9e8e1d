"""Seeded stratified subsets and k-fold splits (size variants, carve-outs, cross-validation), per
sample and grouped by subject (every split keeps a subject's samples on one side)."""
from __future__ import annotations

from typing import Hashable, Optional, Sequence

import numpy as np


def _groups(strata: Sequence[Hashable], rng: np.random.Generator) -> dict[Hashable, np.ndarray]:
    """Sample indices per stratum (ascending), strata ordered by str(key), each permuted by ``rng``.

    Vectorised (np.unique + one stable argsort), with the same groups, order and random draws as
    collecting the indices one by one, so a seed selects the same samples as before."""
    arr = np.asarray(strata)
    if arr.size == 0:
        return {}
    keys, inv = np.unique(arr, return_inverse=True)
    inv = inv.reshape(-1)
    order = np.argsort(inv, kind="stable")
    members = np.split(order, np.cumsum(np.bincount(inv, minlength=len(keys)))[:-1])
    key_list = keys.tolist()
    names = [str(k) for k in key_list]
    seq = sorted(range(len(key_list)), key=lambda g: names[g])
    return {key_list[g]: rng.permutation(members[g].astype(np.int64)) for g in seq}


def stratified_fraction(strata: Sequence[Hashable], fraction: float, seed: int) -> list[int]:
    """Indices of a seeded subset holding ``round(fraction * N)`` samples (at least 1), spread over
    the strata in proportion to their sizes (largest-remainder rounding, so totals are exact)."""
    n = len(strata)
    if n == 0:
        return []
    rng = np.random.default_rng(seed)
    groups = _groups(strata, rng)
    total = max(1, int(round(fraction * n)))
    quotas = {k: fraction * len(v) for k, v in groups.items()}
    take = {k: int(np.floor(q)) for k, q in quotas.items()}
    rest = total - sum(take.values())
    keys = list(groups)
    tie = rng.random(len(keys))
    order = sorted(range(len(keys)), key=lambda i: (-(quotas[keys[i]] - take[keys[i]]), tie[i]))
    for i in order[:max(rest, 0)]:
        take[keys[i]] += 1
    picked = [v[: take[k]] for k, v in groups.items()]
    return np.sort(np.concatenate(picked)).tolist()


def kfold_indices(strata: Sequence[Hashable], k: int, fold: int, seed: int) -> tuple[list[int], list[int]]:
    """(train, val) indices of fold ``fold`` of a seeded stratified k-fold split."""
    if not 0 <= fold < k:
        raise ValueError(f"fold {fold} outside 0..{k - 1}")
    rng = np.random.default_rng(seed)
    assign = np.empty(len(strata), dtype=np.int64)
    offset = 0
    for members in _groups(strata, rng).values():  # deal each stratum round-robin over the folds
        assign[members] = (np.arange(len(members)) + offset) % k
        offset += len(members)
    val = np.flatnonzero(assign == fold).tolist()
    train = np.flatnonzero(assign != fold).tolist()
    return train, val


# ----------------------------------------------------------------------------- grouped by subject
# Every split keeps a subject's samples on one side. With one sample per subject these are the
# per-sample functions above (same seed, same samples as before subjects existed).

def _unique_groups(groups: np.ndarray) -> bool:
    return len(np.unique(groups)) == len(groups)


def subject_strata(strata: Sequence[Hashable], groups: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(subject index per sample, one stratum per subject): a subject's stratum is its rarest one
    over the whole set, so subjects with a rare class are spread like that class."""
    arr = np.asarray(strata)
    _, subj = np.unique(np.asarray(groups), return_inverse=True)
    subj = subj.reshape(-1)
    keys, sc = np.unique(arr, return_inverse=True)
    sc = sc.reshape(-1)
    freq = np.bincount(sc)[sc]
    order = np.lexsort((sc, freq, subj))  # per subject: rarest stratum first (ties: lowest key)
    first = order[np.r_[True, subj[order][1:] != subj[order][:-1]]]
    return subj, keys[sc[first]]


def grouped_fraction(strata: Sequence[Hashable], groups: Sequence[int], fraction: float, seed: int) -> list[int]:
    """Indices of the samples of a seeded ``fraction`` of the subjects (at least one), stratified
    over the subjects' strata (:func:`subject_strata`)."""
    g = np.asarray(groups)
    if len(g) == 0 or _unique_groups(g):
        return stratified_fraction(strata, fraction, seed)
    subj, sstrata = subject_strata(strata, g)
    chosen = np.zeros(len(sstrata), bool)
    chosen[stratified_fraction(sstrata, fraction, seed)] = True
    return np.flatnonzero(chosen[subj]).tolist()


def grouped_kfold(strata: Sequence[Hashable], groups: Sequence[int], k: int, fold: int, seed: int
                  ) -> tuple[list[int], list[int]]:
    """(train, val) of fold ``fold`` of a seeded stratified group k-fold: within each subject stratum
    (rarest first) the subjects, shuffled then largest first, go one by one to the fold holding the
    fewest samples of that stratum so far (ties: fewest samples overall, then lowest fold)."""
    g = np.asarray(groups)
    if len(g) == 0 or _unique_groups(g):
        return kfold_indices(strata, k, fold, seed)
    if not 0 <= fold < k:
        raise ValueError(f"fold {fold} outside 0..{k - 1}")
    subj, sstrata = subject_strata(strata, g)
    sizes = np.bincount(subj)
    if len(sizes) < k:
        raise ValueError(f"{k} folds but only {len(sizes)} subjects")
    rng = np.random.default_rng(seed)
    assign = np.empty(len(sizes), np.int64)
    total = np.zeros(k, np.int64)
    for members in _groups(sstrata, rng).values():
        members = members[np.argsort(-sizes[members], kind="stable")]
        per = np.zeros(k, np.int64)
        for s in members.tolist():
            f = int(np.lexsort((np.arange(k), total, per))[0])
            assign[s] = f
            per[f] += sizes[s]
            total[f] += sizes[s]
    in_val = assign[subj] == fold
    return np.flatnonzero(~in_val).tolist(), np.flatnonzero(in_val).tolist()


def grouped_random_subset(groups: Optional[np.ndarray], n: int, fraction: float, seed: int) -> np.ndarray:
    """Sorted sample indices of a seeded random ``fraction`` of the subjects (no stratification:
    pretraining images are unlabeled); ``groups`` None: each sample its own subject, as before."""
    rng = np.random.default_rng(seed)
    if groups is None or _unique_groups(groups):
        k = max(1, int(round(fraction * n)))
        return np.sort(rng.choice(n, size=k, replace=False))
    _, subj = np.unique(groups, return_inverse=True)
    m = int(subj.max()) + 1
    chosen = np.zeros(m, bool)
    chosen[rng.choice(m, size=max(1, int(round(fraction * m))), replace=False)] = True
    return np.flatnonzero(chosen[subj.reshape(-1)])
