"""Encoders by name and the classification network (encoder + linear head), with encoder freezing."""
from __future__ import annotations

from typing import Any

import torch
import torchvision
from torch import nn

from utility.errors import UserError

TORCHVISION_ENCODERS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152",
                        "resnext50_32x4d", "wide_resnet50_2")


def build_encoder(name: str, in_channels: int = 3) -> tuple[nn.Module, int]:
    """A randomly initialised encoder returning pooled features, and its feature width.

    torchvision ResNets by their names (their state-dict keys match the predecessor's encoder
    files); ViTs (``vit:img=16,patch=4,dim=64,depth=4`` or a timm ViT name: utility/models/vit.py); any
    other name, or ``timm:<name>``, comes from timm (no download: random init).
    """
    key = name.lower()
    if key in TORCHVISION_ENCODERS:
        net = getattr(torchvision.models, key)(weights=None)
        width = net.fc.in_features
        net.fc = nn.Identity()
        if in_channels != 3:
            old = net.conv1
            net.conv1 = nn.Conv2d(in_channels, old.out_channels, old.kernel_size, old.stride,
                                  old.padding, bias=False)
        return net, width
    from utility.models.vit import build_vit, is_vit_name

    if is_vit_name(name):
        return build_vit(name, in_channels)
    import timm

    tname = name.split(":", 1)[1] if key.startswith("timm:") else name
    if not timm.is_model(tname):
        raise UserError(f"unknown model_name '{name}'; use a torchvision ResNet "
                        f"({', '.join(TORCHVISION_ENCODERS)}) or a timm model name (timm:<name>)")
    net = timm.create_model(tname, pretrained=False, num_classes=0, in_chans=in_channels)
    return net, int(net.num_features)


def encoder_blocks(encoder: nn.Module) -> list[nn.Module]:
    """Top-level children that hold parameters, input to output (ResNet: conv1, bn1, layer1..4; ViT:
    the stem, then each transformer block, the last one with the final norm)."""
    from utility.models.vit import is_vit, vit_groups

    if is_vit(encoder):
        return vit_groups(encoder)
    return [m for m in encoder.children() if any(True for _ in m.parameters())]


class FreezableEncoder:
    """Mixin for networks with an ``encoder`` attribute (Classifier, U-Net): ``freeze_encoder``
    stops gradients to the encoder's blocks (all but the last ``unfreeze_last_n``) and keeps those
    blocks in eval mode (BatchNorm statistics frozen too) whatever ``train()`` is called with."""

    frozen_blocks: list

    def _freeze_root(self) -> nn.Module:
        """The module whose top-level blocks are frozen (a network's encoder by default)."""
        return self.encoder  # type: ignore[attr-defined]

    def freeze_encoder(self, unfreeze_last_n: int = 0) -> None:
        blocks = encoder_blocks(self._freeze_root())
        keep = blocks[len(blocks) - unfreeze_last_n:] if unfreeze_last_n > 0 else []
        self.frozen_blocks = [b for b in blocks if all(b is not k for k in keep)]
        for b in self.frozen_blocks:
            for p in b.parameters():
                p.requires_grad_(False)
        self.train(self.training)  # type: ignore[attr-defined]

    def train(self, mode: bool = True):
        super().train(mode)  # type: ignore[misc]
        for b in getattr(self, "frozen_blocks", []):
            b.eval()
        return self


HEAD_NORMS = ("none", "batchnorm")


class NormedLinear(nn.Linear):
    """A linear head after a BatchNorm without affine parameters (MAE's linear-probing protocol): frozen
    features of very different scales per dimension (a ViT's LayerNorm'd tokens) are standardised with
    the training batches' statistics (running statistics at evaluation), so a short probe can fit them.
    A subclass of ``nn.Linear`` so the head's ``weight``/``bias`` keep their names in model files."""

    def __init__(self, width: int, num_classes: int) -> None:
        super().__init__(width, num_classes)
        self.norm = nn.BatchNorm1d(width, affine=False, eps=1e-6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(self.norm(x))


class Classifier(FreezableEncoder, nn.Module):
    """Encoder + linear head (``head_norm`` "batchnorm": :class:`NormedLinear`). With a frozen encoder, the
    encoder stays in eval mode (BatchNorm statistics frozen too) whatever ``train()`` is called with; only
    unfrozen blocks (and the head) train."""

    def __init__(self, encoder: nn.Module, width: int, num_classes: int, dropout: float = 0.0,
                 head_norm: str = "none") -> None:
        super().__init__()
        if head_norm not in HEAD_NORMS:
            raise UserError(f"head_norm '{head_norm}' is not one of {', '.join(HEAD_NORMS)}")
        self.encoder = encoder
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.head = NormedLinear(width, num_classes) if head_norm == "batchnorm" else nn.Linear(width, num_classes)
        self.frozen_blocks: list[nn.Module] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.encoder(x)))


def count_parameters(model: nn.Module) -> dict[str, Any]:
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"total": total, "trainable": trainable}
