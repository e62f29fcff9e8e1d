"""Linear CKA between the blocks of two encoders, accumulated over minibatches with the unbiased
HSIC estimator (Nguyen, Raghu & Kornblith 2021, "Do wide and deep networks learn the same things?").

For a minibatch of n >= 4 samples with linear Gram matrices K = X X^T, L = Y Y^T and their copies
K~, L~ with zeroed diagonals, HSIC_1(K, L) = [tr(K~ L~) + 1^T K~ 1 * 1^T L~ 1 / ((n-1)(n-2))
- 2/(n-2) * 1^T K~ L~ 1] / (n (n-3)) (Song et al. 2012). Over minibatches b,
CKA(X, Y) = sum_b HSIC_1(K_b, L_b) / sqrt(sum_b HSIC_1(K_b, K_b) * sum_b HSIC_1(L_b, L_b)).
It is 1 for identical features and does not change under orthogonal transforms or isotropic scaling
of either side. Features are each block's output averaged over space (utility/analysis/features.py).
Minibatches with fewer than 4 samples are skipped (the estimator needs n >= 4).

``estimator="biased"`` gives instead the linear CKA of Kornblith et al. (2019) that most papers report,
with the biased HSIC_0(K, L) = tr(K H L H) / (n-1)^2 (H the centring matrix) in the same accumulation;
on one batch holding all samples it is ||Y_c^T X_c||_F^2 / (||X_c^T X_c||_F ||Y_c^T Y_c||_F) for the
centred features. The biased estimator is inflated for small n relative to the feature width; the
debiased one is not, which is why it is the default. Outputs name the estimator.
"""
from __future__ import annotations

from typing import Any, Iterable

import numpy as np
import torch

from utility.analysis.features import BlockTap, batches
from utility.data.preprocess import conform_channels

MIN_BATCH = 4


def gram(x: torch.Tensor) -> torch.Tensor:
    x = x.double().flatten(1)
    return x @ x.T


def hsic1(k: torch.Tensor, l: torch.Tensor) -> torch.Tensor:
    """Unbiased HSIC of two Gram matrices (n >= 4)."""
    n = k.shape[0]
    k = k.clone().fill_diagonal_(0)
    l = l.clone().fill_diagonal_(0)
    kl = k @ l
    ones = torch.ones(n, dtype=k.dtype, device=k.device)
    term = kl.trace() + k.sum() * l.sum() / ((n - 1) * (n - 2)) - 2.0 / (n - 2) * (ones @ kl @ ones)
    return term / (n * (n - 3))


def hsic0(k: torch.Tensor, l: torch.Tensor) -> torch.Tensor:
    """Biased HSIC of two Gram matrices: tr(K H L H) / (n-1)^2."""
    n = k.shape[0]
    h = torch.eye(n, dtype=k.dtype, device=k.device) - 1.0 / n
    return (k @ h @ l @ h).trace() / (n - 1) ** 2


ESTIMATORS = {"debiased": hsic1, "biased": hsic0}
ESTIMATOR_NAMES = {"debiased": "debiased linear CKA (unbiased HSIC, Nguyen et al. 2021)",
                   "biased": "linear CKA (biased HSIC, Kornblith et al. 2019)"}


class MinibatchCKA:
    """Accumulates HSIC terms for every pair (block a of model A, block b of model B)."""

    def __init__(self, names_a: list[str], names_b: list[str], estimator: str = "debiased") -> None:
        self.names_a, self.names_b = names_a, names_b
        self.estimator, self.hsic = estimator, ESTIMATORS[estimator]
        self.xy = np.zeros((len(names_a), len(names_b)))
        self.xx = np.zeros(len(names_a))
        self.yy = np.zeros(len(names_b))
        self.batches = 0
        self.skipped = 0

    def update(self, feats_a: dict[str, torch.Tensor], feats_b: dict[str, torch.Tensor]) -> None:
        n = next(iter(feats_a.values())).shape[0]
        if n < MIN_BATCH:
            self.skipped += n
            return
        ka = [gram(feats_a[a]) for a in self.names_a]
        kb = [gram(feats_b[b]) for b in self.names_b]
        for i, k in enumerate(ka):
            self.xx[i] += float(self.hsic(k, k))
            for j, l in enumerate(kb):
                self.xy[i, j] += float(self.hsic(k, l))
        for j, l in enumerate(kb):
            self.yy[j] += float(self.hsic(l, l))
        self.batches += 1

    def result(self) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):
            return self.xy / np.sqrt(np.outer(self.xx, self.yy))


def cka(x_batches: Iterable[np.ndarray | torch.Tensor], y_batches: Iterable[np.ndarray | torch.Tensor],
        estimator: str = "debiased") -> float:
    """Minibatch linear CKA of one pair of feature sets given as matching minibatches."""
    acc = MinibatchCKA(["x"], ["y"], estimator)
    for x, y in zip(x_batches, y_batches):
        acc.update({"x": torch.as_tensor(np.asarray(x))}, {"y": torch.as_tensor(np.asarray(y))})
    return float(acc.result()[0, 0])


def cka_matrix(model_a: Any, model_b: Any, names_a: list[str], names_b: list[str], loader: Any,
               device: torch.device, in_channels: tuple[int, int], estimator: str = "debiased") -> MinibatchCKA:
    """Both encoders see the same batches; every block of one against every block of the other."""
    acc = MinibatchCKA(names_a, names_b, estimator)
    tap_a, tap_b = BlockTap(model_a, names_a), BlockTap(model_b, names_b)
    try:
        with torch.no_grad():
            for x, _, _ in batches(loader, device, in_channels[0]):
                model_a.encoder(x)
                model_b.encoder(conform_channels(x, in_channels[1]))
                acc.update(dict(tap_a.out), dict(tap_b.out))
    finally:
        tap_a.close()
        tap_b.close()
    return acc
