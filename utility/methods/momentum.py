"""Momentum (EMA) targets for BYOL and MoCo v2: a copy of encoder + projector that follows the online
network after every optimizer step, ``target = tau * target + (1 - tau) * online``, and receives no
gradients. The copies are submodules of the model, so resume checkpoints hold them."""
from __future__ import annotations

import copy
import math

import torch
from torch import nn


class MomentumNet(nn.Module):
    """``encoder`` + ``projector`` (online, trained) and ``target_encoder`` + ``target_projector``
    (EMA copies, no gradients). Subclasses define ``forward``."""

    def __init__(self, encoder: nn.Module, projector: nn.Module) -> None:
        super().__init__()
        self.encoder, self.projector = encoder, projector
        self.target_encoder = copy.deepcopy(encoder)
        self.target_projector = copy.deepcopy(projector)
        for p in self.target_parameters():
            p.requires_grad_(False)

    def online_parameters(self) -> list[nn.Parameter]:
        return [*self.encoder.parameters(), *self.projector.parameters()]

    def target_parameters(self) -> list[nn.Parameter]:
        return [*self.target_encoder.parameters(), *self.target_projector.parameters()]

    def target(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.target_projector(self.target_encoder(x))

    @torch.no_grad()
    def sync_target(self) -> None:
        """The target encoder := the online encoder (after the online one was loaded from a file, so the
        teacher does not start from the random weights it was copied from)."""
        self.target_encoder.load_state_dict(self.encoder.state_dict())

    @torch.no_grad()
    def update_target(self, tau: float) -> None:
        """EMA step of the target's parameters (its BatchNorm statistics come from its own forward)."""
        online, target = self.online_parameters(), self.target_parameters()
        torch._foreach_mul_(target, tau)
        torch._foreach_add_(target, online, alpha=1.0 - tau)


def cosine_tau(base: float, step: int, total_steps: int) -> float:
    """BYOL's schedule: tau = 1 - (1 - base) * (cos(pi * step / total) + 1) / 2, from ``base`` at step 0
    to 1 at the last step."""
    k = min(max(step, 0), max(total_steps, 1))
    return 1.0 - (1.0 - base) * (math.cos(math.pi * k / max(total_steps, 1)) + 1.0) / 2.0
