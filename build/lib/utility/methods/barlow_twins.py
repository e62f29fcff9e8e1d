"""Barlow Twins (Zbontar et al. 2021): the cross-correlation of the two views' batch-normalised
projections is driven to the identity. Defaults of the paper: a 3-layer 8192-wide projector,
lambda 0.0051. The normalisation and the correlation are over the global batch (every process's
projections, gathered with their gradients): the official code's SyncBatchNorm + all_reduce of c."""
from __future__ import annotations

from typing import Annotated

import torch
from pydantic import Field
from torch import nn

from utility.methods.heads import mlp, widths
from utility.methods.ntxent import gather
from utility.methods.ssl_base import JointEmbedding, MethodSettings, SSLMethod

BN_EPS = 1e-5  # BatchNorm1d's eps (the paper's affine-free BatchNorm of the projections)


class BarlowTwinsSettings(MethodSettings):
    proj_hidden: Annotated[int, Field(ge=1)] = 8192
    proj_dim: Annotated[int, Field(ge=1)] = 8192
    proj_layers: Annotated[int, Field(ge=1)] = 3
    lambd: Annotated[float, Field(ge=0)] = Field(0.0051, description="weight of the off-diagonal terms")


def batch_standardise(z: torch.Tensor) -> torch.Tensor:
    """What BatchNorm1d(affine=False) does in training mode: per feature, over the batch, biased variance."""
    return (z - z.mean(0)) / torch.sqrt(z.var(0, unbiased=False) + BN_EPS)


def barlow_twins_loss(z1: torch.Tensor, z2: torch.Tensor, lambd: float) -> torch.Tensor:
    """sum_i (1 - C_ii)^2 + lambd * sum_{i != j} C_ij^2, C the [d, d] cross-correlation over the global batch."""
    z1, z2 = gather(z1), gather(z2)
    c = batch_standardise(z1).t() @ batch_standardise(z2) / z1.shape[0]
    diag = torch.diagonal(c)
    on = (diag - 1).pow(2).sum()
    off = c.pow(2).sum() - diag.pow(2).sum()
    return on + lambd * off


class BarlowTwinsMethod(SSLMethod):
    name, label, Settings = "barlow_twins", "Barlow Twins", BarlowTwinsSettings

    @classmethod
    def build_model(cls, encoder: nn.Module, width: int, s: BarlowTwinsSettings) -> nn.Module:
        return JointEmbedding(encoder, mlp(widths(width, s.proj_hidden, s.proj_dim, s.proj_layers), bn=True,
                                           last_bias=False))

    def objective(self, out) -> torch.Tensor:
        return barlow_twins_loss(out[0], out[1], self.settings.lambd)
