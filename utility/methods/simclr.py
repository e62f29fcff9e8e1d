"""SimCLR: encoder + projection head, two views per image made on the training device with
per-sample parameters, and the step the shared engine runs (NT-Xent over all ranks' views)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import kornia.augmentation as K
import torch
from torch import nn

from utility.data.badfiles import BadFiles, drop_invalid
from utility.data.preprocess import conform_channels
from utility.methods.base import NoEvaluation
from utility.training.engine import StepContext
from utility.methods.ntxent import nt_xent
from utility.training.checkpoint import atomic_save


def projection_head(width: int, hidden: int, out: int, kind: str) -> nn.Module:
    """'predecessor': Linear-ReLU-Linear-Sigmoid-Linear without biases (its default);
    'mlp': Linear-BN-ReLU-Linear (the SimCLR paper's 2-layer head)."""
    if kind == "predecessor":
        return nn.Sequential(nn.Linear(width, hidden, bias=False), nn.ReLU(),
                             nn.Linear(hidden, hidden, bias=False), nn.Sigmoid(),
                             nn.Linear(hidden, out, bias=False))
    return nn.Sequential(nn.Linear(width, hidden, bias=False), nn.BatchNorm1d(hidden), nn.ReLU(),
                         nn.Linear(hidden, out))


class SimCLRModel(nn.Module):
    """Returns projections of both views; the encoder alone is what pretraining hands on."""

    def __init__(self, encoder: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder
        self.projector = head

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.projector(self.encoder(torch.cat([x1, x2])))
        return z[: x1.shape[0]], z[x1.shape[0]:]


class SimCLRViews(nn.Module):
    """RandomResizedCrop(image_size), flip (hflip_p, 0.5), colour jitter (strength s, probability p), grayscale
    0.2 (off for grayscale data), optional Gaussian blur: each image its own parameters."""

    def __init__(self, image_size: int, jitter_strength: float = 1.0, jitter_p: float = 0.8,
                 grayscale_data: bool = False, blur_p: float = 0.0, crop_scale=(0.08, 1.0),
                 hflip_p: float = 0.5) -> None:
        super().__init__()
        s = jitter_strength
        ops: list[nn.Module] = [K.RandomResizedCrop((image_size, image_size), scale=tuple(crop_scale))]
        if hflip_p > 0:
            ops.append(K.RandomHorizontalFlip(p=hflip_p))
        if grayscale_data:
            ops.append(K.ColorJitter(0.8 * s, 0.8 * s, 0.0, 0.0, p=jitter_p))
        else:
            ops.append(K.ColorJitter(0.8 * s, 0.8 * s, 0.8 * s, 0.2 * s, p=jitter_p))
            ops.append(K.RandomGrayscale(p=0.2))
        if blur_p > 0:
            k = max(3, (image_size // 10) | 1)
            ops.append(K.RandomGaussianBlur((k, k), (0.1, 2.0), p=blur_p))
        self.ops = K.AugmentationSequential(*ops, same_on_batch=False)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = x.clamp(0, 1)
        return self.ops(x), self.ops(x)


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


class SimCLRMethod(NoEvaluation):
    """One SimCLR step for the engine. ``gather``: negatives from every rank (DDP); off gives the
    predecessor's per-replica loss (``loss_device: per_replica`` or ``gpu``): per DDP rank, and per
    GPU replica under DataParallel."""

    def __init__(self, views: SimCLRViews, temperature: float, in_channels: int = 3, gather: bool = True,
                 bad: Optional[BadFiles] = None) -> None:
        self.views, self.temperature, self.in_channels, self.gather = views, temperature, in_channels, gather
        self.bad = bad

    def train_loss(self, model: nn.Module, batch: dict[str, Any], ctx: StepContext):
        batch = drop_invalid(batch, "train", self.bad)
        if batch is None or batch["image"].shape[0] < 2:
            return None, 0
        x = batch["image"]
        x = conform_channels(x.to(ctx.device, non_blocking=True), 3)
        with torch.autocast(ctx.device.type, enabled=False):
            v1, v2 = self.views(x.float())
        if self.in_channels == 1:
            v1, v2 = conform_channels(v1, 1), conform_channels(v2, 1)
        z1, z2 = model(v1, v2)
        replicas = dp_replicas(model)
        if not self.gather and replicas > 1:
            return per_replica_nt_xent(z1, z2, self.temperature, replicas), int(x.shape[0])
        return nt_xent(z1, z2, self.temperature, self.gather), int(x.shape[0])


def save_encoder(model: SimCLRModel, path: Path) -> None:
    """Encoder state dict only, no ``module.`` prefix: what finetuning's model_path and get_model read."""
    atomic_save({k: v.detach().cpu() for k, v in model.encoder.state_dict().items()}, path)
