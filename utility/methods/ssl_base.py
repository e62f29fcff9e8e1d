"""What every self-supervised method shares: the two views of a batch, the loss in float32, and
the plug-in contract the registry (utility/methods/ssl_registry.py) and utility/runs/pretrain.py use.

A method is one class: ``name``, its ``Settings`` (a pydantic model: the keys of ``method_settings``,
defaults from the paper), ``build_model`` (encoder + heads, the network the engine trains),
``objective`` (the model's outputs -> a loss), optionally ``after_step`` (called after every optimizer
step through the trainer callback runs/callbacks.MethodSteps: EMA targets), ``state_dict``/``load_state_dict`` (state outside the model that
resume must restore: MoCo's queue) and ``check`` (refuse settings the data cannot serve).
"""
from __future__ import annotations

from typing import Any, ClassVar, Optional

import torch
from pydantic import BaseModel, ConfigDict
from torch import nn

from utility.data.badfiles import BadFiles, drop_invalid
from utility.data.preprocess import conform_channels
from utility.methods.base import NoEvaluation
from utility.methods.views import TwoViews
from utility.training.engine import StepContext
from utility.training.checkpoint import atomic_save


class MethodSettings(BaseModel):
    """Base of every method's settings: unknown keys are refused (the registry names the closest)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class SSLMethod(NoEvaluation):
    """One pretraining step for the engine: two views -> ``model(v1, v2)`` -> ``objective``."""

    name: ClassVar[str] = ""
    label: ClassVar[str] = ""              # how messages name the method
    Settings: ClassVar[type[MethodSettings]] = MethodSettings
    min_batch: ClassVar[int] = 2           # images per process: BatchNorm needs 2, contrastive losses too
    batch_why: ClassVar[str] = "its BatchNorm layers and batch statistics need several images"
    # settings the predecessor's configs held as top-level keys (not ``method_settings``); read by the
    # one compatibility shim, ``ssl_registry.settings_given``
    TOP_LEVEL_KEYS: ClassVar[tuple[str, ...]] = ()

    def __init__(self, views: TwoViews, settings: Any, in_channels: int = 3,
                 bad: Optional[BadFiles] = None) -> None:
        self.views, self.settings, self.in_channels, self.bad = views, settings, in_channels, bad

    @classmethod
    def create(cls, views: TwoViews, settings: Any, in_channels: int, bad: Optional[BadFiles]) -> "SSLMethod":
        """The method as the pretraining run builds it from its resolved settings."""
        return cls(views, settings, in_channels, bad)

    # ------------------------------------------------------------------ what a method provides
    @classmethod
    def build_model(cls, encoder: nn.Module, width: int, settings: Any) -> nn.Module:
        """The network the engine trains; ``.encoder`` is what pretraining hands on."""
        raise NotImplementedError

    @classmethod
    def check(cls, settings: Any, n_images: int, batch_size: int) -> None:
        """Raise UserError for settings this data cannot serve (before any work)."""

    def objective(self, out: Any) -> torch.Tensor:
        """The loss from the model's outputs (called in float32, autocast off)."""
        raise NotImplementedError

    def after_step(self, model: nn.Module, step: int, total_steps: int) -> None:
        """After every optimizer step, with the plain model (EMA/momentum targets); most methods need nothing."""

    def exported(self) -> str:
        """The model's submodule that pretraining hands on (encoder_pretrained.tar, encoder_<N>.tar, the
        monitor): the online encoder, unless a method's paper evaluates another one (DINO: the teacher)."""
        return "encoder"

    # ------------------------------------------------------------------ the shared step
    def valid_images(self, batch: dict[str, Any], ctx: StepContext, least: int) -> Optional[torch.Tensor]:
        """The batch's valid images as 3 channels on the device, or None when fewer than ``least`` remain."""
        batch = drop_invalid(batch, "train", self.bad)
        if batch is None or batch["image"].shape[0] < least:
            return None
        return conform_channels(batch["image"].to(ctx.device, non_blocking=True), 3)

    def two_views(self, batch: dict[str, Any], ctx: StepContext) -> Optional[tuple[torch.Tensor, torch.Tensor, int]]:
        """Both views of the batch's valid images on the device, or None when fewer than 2 remain."""
        x = self.valid_images(batch, ctx, 2)
        if x is None:
            return None
        with torch.autocast(ctx.device.type, enabled=False):
            v1, v2 = self.views(x.float())
        if self.in_channels == 1:
            v1, v2 = conform_channels(v1, 1), conform_channels(v2, 1)
        return v1, v2, int(x.shape[0])

    def train_loss(self, model: nn.Module, batch: dict[str, Any], ctx: StepContext):
        got = self.two_views(batch, ctx)
        if got is None:
            return None, 0
        v1, v2, n = got
        out = model(v1, v2)
        with torch.autocast(ctx.device.type, enabled=False):
            return self.objective(as_float(out)), n


class JointEmbedding(nn.Module):
    """Encoder + projector giving the projections of both views (SimCLR, Barlow Twins, VICReg); both
    views go through in one batch."""

    def __init__(self, encoder: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder
        self.projector = head

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.projector(self.encoder(torch.cat([x1, x2])))
        return z[: x1.shape[0]], z[x1.shape[0]:]


def as_float(out: Any) -> Any:
    """The model's outputs (a tensor or a tuple of them) in float32."""
    if isinstance(out, torch.Tensor):
        return out.float()
    return type(out)(as_float(o) for o in out)


def plain(model: nn.Module) -> nn.Module:
    """The network inside a DataParallel/DDP wrapper."""
    return model.module if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)) else model


def save_encoder(model: nn.Module, path, part: str = "encoder") -> None:
    """Encoder state dict only (``part``: which of the model's encoders, SSLMethod.exported), no ``module.``
    prefix: what finetuning's model_path and get_model read."""
    enc = getattr(plain(model), part)
    atomic_save({k: v.detach().cpu() for k, v in enc.state_dict().items()}, path)
