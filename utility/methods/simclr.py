"""SimCLR: encoder + projection head, two views per image made on the training device with
per-sample parameters, and the step the shared engine runs (NT-Xent over all ranks' views)."""
from __future__ import annotations

from typing import Any, Optional

import torch
from torch import nn

from utility.config.schemas import Temperature
from utility.data.badfiles import BadFiles
from utility.methods.heads import mlp
from utility.methods.ntxent import nt_xent
from utility.methods.ssl_base import JointEmbedding, MethodSettings, SSLMethod, save_encoder
from utility.methods.views import TwoViews
from utility.training.engine import StepContext

PER_REPLICA = ("per_replica", "gpu")  # loss_device values: one NT-Xent per GPU replica

__all__ = ["SimCLRMethod", "SimCLRModel", "SimCLRSettings", "SimCLRViews", "projection_head", "save_encoder",
           "per_replica_nt_xent", "PER_REPLICA"]


def projection_head(width: int, hidden: int, out: int, kind: str) -> nn.Module:
    """'predecessor': Linear-ReLU-Linear-Sigmoid-Linear without biases (its default);
    'mlp': Linear-BN-ReLU-Linear (the SimCLR paper's 2-layer head)."""
    if kind == "predecessor":
        return nn.Sequential(nn.Linear(width, hidden, bias=False), nn.ReLU(),
                             nn.Linear(hidden, hidden, bias=False), nn.Sigmoid(),
                             nn.Linear(hidden, out, bias=False))
    return mlp([width, hidden, out], bn=True)


SimCLRModel = JointEmbedding  # encoder + projector, projections of both views
SimCLRViews = TwoViews  # its old name; the augmentation is every method's (utility/methods/views.py)


def dp_replicas(model: nn.Module) -> int:
    """How many GPU replicas a DataParallel module splits each batch over (1 for anything else)."""
    if isinstance(model, nn.DataParallel) and model.device_ids:
        return len(model.device_ids)
    return 1


def per_replica_nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float, replicas: int) -> torch.Tensor:
    """The predecessor's ``loss_device: gpu`` under DataParallel: one NT-Xent per replica over the images
    that replica saw (DataParallel splits the batch like ``Tensor.chunk``), then the mean over replicas."""
    parts = [nt_xent(a, b, temperature, gather_ranks=False) for a, b in zip(z1.chunk(replicas), z2.chunk(replicas))]
    return torch.stack(parts).mean()


class SimCLRSettings(MethodSettings):
    """SimCLR's settings are top-level config keys (the predecessor's), not ``method_settings``."""

    temperature: Temperature = 0.5
    projection_head: str = "predecessor"
    projection_hidden: Optional[int] = None
    projection_dim: int = 256
    loss_device: str = "gather"


class SimCLRMethod(SSLMethod):
    """One SimCLR step for the engine. ``gather``: negatives from every rank (DDP); off gives the
    predecessor's per-replica loss (``loss_device: per_replica`` or ``gpu``): per DDP rank, and per
    GPU replica under DataParallel."""

    name, label, Settings = "simclr", "SimCLR", SimCLRSettings
    TOP_LEVEL_KEYS = tuple(SimCLRSettings.model_fields)
    batch_why = "NT-Xent contrasts each image with the others in its batch"

    def __init__(self, views: TwoViews, temperature: float, in_channels: int = 3, gather: bool = True,
                 bad: Optional[BadFiles] = None) -> None:
        super().__init__(views, None, in_channels, bad)
        self.temperature, self.gather = temperature, gather

    @classmethod
    def create(cls, views: TwoViews, settings: SimCLRSettings, in_channels: int,
               bad: Optional[BadFiles]) -> "SimCLRMethod":
        return cls(views, settings.temperature, in_channels, settings.loss_device not in PER_REPLICA, bad)

    @classmethod
    def build_model(cls, encoder: nn.Module, width: int, settings: SimCLRSettings) -> nn.Module:
        head = projection_head(width, settings.projection_hidden or width, settings.projection_dim,
                               settings.projection_head)
        return SimCLRModel(encoder, head)

    def objective(self, out) -> torch.Tensor:
        return nt_xent(out[0], out[1], self.temperature, self.gather)

    def train_loss(self, model: nn.Module, batch: dict[str, Any], ctx: StepContext):
        got = self.two_views(batch, ctx)
        if got is None:
            return None, 0
        v1, v2, n = got
        z1, z2 = model(v1, v2)
        replicas = dp_replicas(model)
        if not self.gather and replicas > 1:
            return per_replica_nt_xent(z1, z2, self.temperature, replicas), n
        return nt_xent(z1, z2, self.temperature, self.gather), n
