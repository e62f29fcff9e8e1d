"""VICReg (Bardes et al. 2022): invariance (MSE between the views' embeddings), variance (a hinge
keeping each dimension's standard deviation over the batch at 1) and covariance (off-diagonal
covariance squared) terms. Defaults of the paper: 25/25/1 and a 3-layer 8192-wide expander. All
three terms are over the global batch (every process's embeddings, gathered with their gradients),
as the official code's FullGatherLayer does."""
from __future__ import annotations

from typing import Annotated

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from utility.methods.heads import mlp, widths
from utility.methods.ntxent import gather
from utility.methods.ssl_base import JointEmbedding, MethodSettings, SSLMethod

STD_EPS = 1e-4


class VICRegSettings(MethodSettings):
    expander_hidden: Annotated[int, Field(ge=1)] = Field(8192, description="width of the expander's hidden layers")
    expander_dim: Annotated[int, Field(ge=1)] = Field(8192, description="width of the embedding the loss sees")
    expander_layers: Annotated[int, Field(ge=1)] = Field(3, description="linear layers of the expander")
    sim_coeff: Annotated[float, Field(ge=0)] = Field(25.0, description="weight of the invariance (MSE) term")
    std_coeff: Annotated[float, Field(ge=0)] = Field(25.0, description="weight of the variance (hinge on the std) term")
    cov_coeff: Annotated[float, Field(ge=0)] = Field(1.0, description="weight of the covariance (off-diagonal) term")


def variance_term(z: torch.Tensor) -> torch.Tensor:
    return F.relu(1 - torch.sqrt(z.var(0) + STD_EPS)).mean()


def covariance_term(z: torch.Tensor) -> torch.Tensor:
    z = z - z.mean(0)
    cov = z.t() @ z / (z.shape[0] - 1)
    return (cov.pow(2).sum() - torch.diagonal(cov).pow(2).sum()) / z.shape[1]


def vicreg_loss(z1: torch.Tensor, z2: torch.Tensor, sim: float = 25.0, std: float = 25.0,
                cov: float = 1.0) -> torch.Tensor:
    z1, z2 = gather(z1), gather(z2)
    invariance = F.mse_loss(z1, z2)
    variance = (variance_term(z1) + variance_term(z2)) / 2
    covariance = covariance_term(z1) + covariance_term(z2)
    return sim * invariance + std * variance + cov * covariance


class VICRegMethod(SSLMethod):
    name, label, Settings = "vicreg", "VICReg", VICRegSettings

    @classmethod
    def build_model(cls, encoder: nn.Module, width: int, s: VICRegSettings) -> nn.Module:
        dims = widths(width, s.expander_hidden, s.expander_dim, s.expander_layers)
        return JointEmbedding(encoder, mlp(dims, bn=True, last_bias=False))

    def objective(self, out) -> torch.Tensor:
        s = self.settings
        return vicreg_loss(out[0], out[1], s.sim_coeff, s.std_coeff, s.cov_coeff)
