"""Encoders by name, the classification network, weight files, and ``get_model`` for other code.

Weight files are plain dicts loaded with ``weights_only=True``. Accepted by ``model_path`` and
``get_model``:
- a pretraining encoder file (``encoder_pretrained.tar``): the encoder's state dict, keys like a
  torchvision ResNet without ``fc`` (``conv1.weight``, ``layer1.0...``), no ``module.`` prefix;
- a torchvision-style state dict (with ``fc.*``: the classifier is dropped);
- a finetuned model (``finetuned_model.tar``): keys ``encoder.*`` and ``head.*``;
- a resume checkpoint of ours (the ``model`` entry is used).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import torch
import torchvision
from torch import nn

from utility.errors import UserError

TORCHVISION_ENCODERS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152",
                        "resnext50_32x4d", "wide_resnet50_2")


def build_encoder(name: str, in_channels: int = 3) -> tuple[nn.Module, int]:
    """A randomly initialised encoder returning pooled features, and its feature width.

    torchvision ResNets by their names (their state-dict keys match the predecessor's encoder
    files); any other name, or ``timm:<name>``, comes from timm (no download: random init).
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
    import timm

    tname = name.split(":", 1)[1] if key.startswith("timm:") else name
    if not timm.is_model(tname):
        raise UserError(f"unknown model_name '{name}'; use a torchvision ResNet "
                        f"({', '.join(TORCHVISION_ENCODERS)}) or a timm model name (timm:<name>)")
    net = timm.create_model(tname, pretrained=False, num_classes=0, in_chans=in_channels)
    return net, int(net.num_features)


def encoder_blocks(encoder: nn.Module) -> list[nn.Module]:
    """Top-level children that hold parameters, input to output (ResNet: conv1, bn1, layer1..4)."""
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


class Classifier(FreezableEncoder, nn.Module):
    """Encoder + linear head. With a frozen encoder, the encoder stays in eval mode (BatchNorm
    statistics frozen too) whatever ``train()`` is called with; only unfrozen blocks train."""

    def __init__(self, encoder: nn.Module, width: int, num_classes: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.encoder = encoder
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.head = nn.Linear(width, num_classes)
        self.frozen_blocks: list[nn.Module] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.encoder(x)))


# ----------------------------------------------------------------------------- weight files

def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Load a weights file safely and unwrap the usual containers."""
    if not path.is_file():
        raise UserError(f"model_path not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle errors, truncated files, non-tensor objects
        raise UserError(f"cannot load weights from {path}: {type(exc).__name__}: "
                        f"{str(exc).splitlines()[0][:200]}") from None
    for wrapper in ("model", "state_dict", "encoder", "model_state_dict"):
        if isinstance(obj, Mapping) and isinstance(obj.get(wrapper), Mapping):
            obj = obj[wrapper]
            break
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise UserError(f"{path} does not hold a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def split_state_dict(sd: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(encoder part, head part) of any accepted file layout."""
    if any(k.startswith("encoder.") for k in sd):
        enc = {k[len("encoder."):]: v for k, v in sd.items() if k.startswith("encoder.")}
        head = {k[len("head."):]: v for k, v in sd.items() if k.startswith("head.")}
        return enc, head
    enc = {k: v for k, v in sd.items() if not k.startswith("fc.")}
    return enc, {}


def load_encoder_weights(encoder: nn.Module, enc_sd: Mapping[str, torch.Tensor], source: Path,
                         allow_partial: bool) -> list[str]:
    """Load into ``encoder``; report mismatches and fail on them unless partial loading is allowed."""
    own = encoder.state_dict()
    shape_bad = [k for k, v in enc_sd.items() if k in own and own[k].shape != v.shape]
    usable = {k: v for k, v in enc_sd.items() if k in own and k not in shape_bad}
    missing = [k for k in own if k not in usable and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in enc_sd if k not in own]
    problems = []
    if missing:
        problems.append(f"{len(missing)} encoder weights missing from the file (e.g. {missing[0]})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys in the file (e.g. {unexpected[0]})")
    if shape_bad:
        k = shape_bad[0]
        problems.append(f"{len(shape_bad)} shape mismatches (e.g. {k}: file {tuple(enc_sd[k].shape)}, "
                        f"model {tuple(own[k].shape)})")
    if problems and (not allow_partial or not usable):
        raise UserError(f"{source} does not fit this encoder: " + "; ".join(problems)
                        + ". Is model_name right? (allow_partial_load: true loads what fits)")
    encoder.load_state_dict(usable, strict=False)
    return problems


def load_into_classifier(model: Classifier, path: Path, allow_partial: bool) -> list[str]:
    """Encoder weights always; head weights too when the file has a head of the same shape."""
    enc, head = split_state_dict(read_state_dict(path))
    notes = load_encoder_weights(model.encoder, enc, path, allow_partial)
    if head:
        own = model.head.state_dict()
        if all(k in head and head[k].shape == v.shape for k, v in own.items()):
            model.head.load_state_dict({k: head[k] for k in own})
        else:
            notes.append("the file's head has another number of classes; a new head is trained")
    return notes


def get_model(model_name: str, enc_weights: str | Path | None, classes: int,
              frozen_encoder: bool = False, in_channels: int = 3) -> nn.Module:
    """A plain network (no loss, no augmentation) from a pretraining encoder file or a finetuned
    model file. ``model_name`` is an encoder name (``resnet50``) or ``unet_<encoder>_backbone``
    once segmentation is available; ``enc_weights=None`` gives random initialisation."""
    if model_name.lower().startswith("unet"):
        from utility.unet import get_unet

        return get_unet(model_name, enc_weights, classes, frozen_encoder, in_channels)
    encoder, width = build_encoder(model_name, in_channels)
    model = Classifier(encoder, width, classes)
    if enc_weights is not None:
        load_into_classifier(model, Path(enc_weights), allow_partial=False)
    if frozen_encoder:
        model.freeze_encoder()
    return model


def count_parameters(model: nn.Module) -> dict[str, Any]:
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"total": total, "trainable": trainable}
