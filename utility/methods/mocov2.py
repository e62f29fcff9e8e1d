"""MoCo v2 (Chen et al. 2020): a query (online encoder + MLP head) is contrasted with the key of the
other view from a momentum encoder and a queue of earlier keys. Defaults of the paper: queue 65536
keys of 128 dims, momentum 0.999, temperature 0.2, MLP head (2048 hidden, no BatchNorm).

Under DDP each process's InfoNCE is the mean over its queries (DDP's averaging gives the global-batch
gradient); the keys of all processes are gathered and enqueued in rank order on every rank, so the
queue is identical everywhere. The queue is method state saved in checkpoint_last.pt. Not done: the
official shuffle-BN of the key encoder under DDP (each process's key encoder normalises its own batch).
"""
from __future__ import annotations

from typing import Annotated, Any

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from utility.config.schemas import Temperature
from utility.errors import UserError
from utility.methods.heads import mlp
from utility.methods.momentum import MomentumNet
from utility.methods.ntxent import gather
from utility.methods.ssl_base import MethodSettings, SSLMethod

QUEUE_SEED = 0  # the queue starts as seeded random unit vectors (the same on every rank)


class MoCoV2Settings(MethodSettings):
    queue_size: Annotated[int, Field(ge=1)] = 65536
    proj_hidden: Annotated[int, Field(ge=1)] = 2048
    proj_dim: Annotated[int, Field(ge=1)] = 128
    momentum: Annotated[float, Field(ge=0, le=1)] = Field(0.999, description="EMA rate of the key encoder")
    temperature: Temperature = 0.2


class MoCoNet(MomentumNet):
    """Returns (q, k): queries of view 1 (online) and keys of view 2 (momentum encoder, no gradient)."""

    def forward(self, x1: torch.Tensor, x2: torch.Tensor):
        return self.projector(self.encoder(x1)), self.target(x2)


def moco_loss(q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor, temperature: float) -> torch.Tensor:
    """InfoNCE: logit 0 is q.k (the positive), then q against every queued key; all unit vectors."""
    q, k = F.normalize(q, dim=1), F.normalize(k.detach(), dim=1)
    logits = torch.cat([(q * k).sum(1, keepdim=True), q @ queue.t()], dim=1) / temperature
    return F.cross_entropy(logits, torch.zeros(q.shape[0], dtype=torch.long, device=q.device))


class MoCoV2Method(SSLMethod):
    name, label, Settings = "mocov2", "MoCo v2", MoCoV2Settings

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        g = torch.Generator().manual_seed(QUEUE_SEED)
        s = self.settings
        self.queue = F.normalize(torch.randn(s.queue_size, s.proj_dim, generator=g), dim=1)
        self.ptr = 0

    @classmethod
    def build_model(cls, encoder: nn.Module, width: int, s: MoCoV2Settings) -> nn.Module:
        return MoCoNet(encoder, mlp([width, s.proj_hidden, s.proj_dim], bn=False))

    @classmethod
    def check(cls, s: MoCoV2Settings, n_images: int, batch_size: int) -> None:
        if s.queue_size > n_images:
            raise UserError(f"method_settings.queue_size {s.queue_size} is larger than the {n_images} images "
                            f"to pretrain on: the queue would hold keys of the same images several times; use "
                            f"queue_size <= {n_images}")
        if s.queue_size < batch_size:
            raise UserError(f"method_settings.queue_size {s.queue_size} is smaller than batch_size {batch_size}: "
                            "one step's keys would overwrite each other in the queue")

    def objective(self, out) -> torch.Tensor:
        q, k = out
        self.queue = self.queue.to(q.device)
        loss = moco_loss(q, k, self.queue.clone(), self.settings.temperature)
        self.enqueue(F.normalize(gather(k.detach()), dim=1))
        return loss

    @torch.no_grad()
    def enqueue(self, keys: torch.Tensor) -> None:
        """The global batch's keys replace the oldest ones (a ring buffer)."""
        idx = (self.ptr + torch.arange(keys.shape[0], device=keys.device)) % self.queue.shape[0]
        self.queue[idx] = keys.to(self.queue.dtype)
        self.ptr = int((self.ptr + keys.shape[0]) % self.queue.shape[0])

    def after_step(self, model: nn.Module, step: int, total_steps: int) -> None:
        model.update_target(self.settings.momentum)

    def state_dict(self) -> dict[str, Any]:
        return {"queue": self.queue.detach().cpu(), "ptr": self.ptr}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.queue = state["queue"].to(self.queue.device).clone()
        self.ptr = int(state["ptr"])
