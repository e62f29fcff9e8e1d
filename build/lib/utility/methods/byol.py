"""BYOL (Grill et al. 2020): an online encoder + projector + predictor regresses the projection a
momentum (EMA) target gives of the other view; no negatives. Defaults of the paper: projector and
predictor 4096 -> 256 (Linear-BN-ReLU-Linear), tau cosine-scheduled from 0.996 to 1 over training.
The loss is per image, so DDP's gradient averaging of each process's mean gives the global-batch
gradient; the target is updated after every optimizer step from the (identical) online weights, so it
stays identical on every rank."""
from __future__ import annotations

from typing import Annotated

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from utility.methods.heads import mlp
from utility.methods.momentum import MomentumNet, cosine_tau
from utility.methods.ssl_base import MethodSettings, SSLMethod


class BYOLSettings(MethodSettings):
    proj_hidden: Annotated[int, Field(ge=1)] = 4096
    proj_dim: Annotated[int, Field(ge=1)] = 256
    pred_hidden: Annotated[int, Field(ge=1)] = 4096
    tau_base: Annotated[float, Field(ge=0, le=1)] = Field(
        0.996, description="EMA rate at the start; cosine schedule to 1 at the last step")


class BYOLNet(MomentumNet):
    """Returns (p1, p2, t1, t2): online predictions and target projections of both views."""

    def __init__(self, encoder: nn.Module, projector: nn.Module, predictor: nn.Module) -> None:
        super().__init__(encoder, projector)
        self.predictor = predictor

    def forward(self, x1: torch.Tensor, x2: torch.Tensor):
        x, n = torch.cat([x1, x2]), x1.shape[0]
        p = self.predictor(self.projector(self.encoder(x)))
        t = self.target(x)
        return p[:n], p[n:], t[:n], t[n:]


def regression(p: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Per-image 2 - 2 cos(p, t), averaged."""
    return (2 - 2 * F.cosine_similarity(p, t.detach(), dim=1)).mean()


def byol_loss(p1: torch.Tensor, p2: torch.Tensor, t1: torch.Tensor, t2: torch.Tensor) -> torch.Tensor:
    """Symmetrised: view 1 predicts view 2's target and vice versa (the paper's L + L~)."""
    return regression(p1, t2) + regression(p2, t1)


class BYOLMethod(SSLMethod):
    name, label, Settings = "byol", "BYOL", BYOLSettings

    @classmethod
    def build_model(cls, encoder: nn.Module, width: int, s: BYOLSettings) -> nn.Module:
        return BYOLNet(encoder, mlp([width, s.proj_hidden, s.proj_dim]), mlp([s.proj_dim, s.pred_hidden, s.proj_dim]))

    def objective(self, out) -> torch.Tensor:
        return byol_loss(*out)

    def after_step(self, model: nn.Module, step: int, total_steps: int) -> None:
        # tau for the update after step k (1-based) is the schedule at k - 1: tau_base at the first step
        model.update_target(cosine_tau(self.settings.tau_base, step - 1, total_steps))
