"""Projection and prediction heads: small MLPs named by their layer widths."""
from __future__ import annotations

from torch import nn


def mlp(dims: list[int], bn: bool = True, bias: bool = True, last_bias: bool = True) -> nn.Sequential:
    """Linear layers through ``dims`` ([in, hidden..., out]) with BatchNorm (if ``bn``) and ReLU between
    them, none after the last: the shape of every SSL head here (SimCLR 'mlp', Barlow Twins' projector,
    VICReg's expander, BYOL's projector and predictor, MoCo v2's MLP)."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
        last = i == len(dims) - 2
        layers.append(nn.Linear(a, b, bias=last_bias if last else (bias and not bn)))
        if not last:
            if bn:
                layers.append(nn.BatchNorm1d(b))
            layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


def widths(width: int, hidden: int, out: int, layers: int) -> list[int]:
    """[width, hidden, ..., out] with ``layers`` Linear layers (at least 1)."""
    return [width] + [hidden] * max(layers - 1, 0) + [out]
