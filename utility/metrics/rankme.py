"""RankMe (Garrido et al. 2023): the effective rank of a set of embeddings, exp of the entropy of their
normalised singular values. A collapsed encoder (all images on a point or a low-dimensional subspace) has
a RankMe near 1 (or the subspace's dimension) whatever the labels; a healthy one approaches min(N, D).
Label-free, so it can watch any pretraining."""
from __future__ import annotations

import torch

EPS = 1e-7  # the paper's epsilon inside p_k


def rankme(features: torch.Tensor) -> float:
    """exp(-sum_k p_k log p_k), p_k = sigma_k / sum(sigma) + eps, sigma the singular values of [N, D] (float64)."""
    s = torch.linalg.svdvals(features.detach().double().cpu())
    total = s.sum()
    if total <= 0:
        return 1.0
    p = s / total + EPS
    return float(torch.exp(-(p * p.log()).sum()))
