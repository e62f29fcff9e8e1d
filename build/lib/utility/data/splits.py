"""Seeded stratified subsets and k-fold splits (size variants, carve-outs, cross-validation)."""
from __future__ import annotations

from typing import Hashable, Sequence

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
