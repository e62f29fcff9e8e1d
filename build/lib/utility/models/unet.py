"""The segmentation network: a U-Net whose encoder is one of our backbones.

Built with segmentation_models_pytorch (smp) 0.6.0, ``encoder_weights=None`` (nothing is downloaded).
Why smp rather than an own decoder: smp's ResNet encoders *are* torchvision ResNets (same module
names, ``fc``/``avgpool`` removed), so our encoder files — a torchvision ResNet state dict without
``fc``, as SimCLR writes it — load into ``unet.encoder`` key for key, and smp's decoder is the
well-tested standard U-Net one. The plain network's state dict has ``encoder.*``, ``decoder.*``
and ``segmentation_head.*``.

Encoders: the torchvision ResNets of :data:`utility.models.encoders.TORCHVISION_ENCODERS` (``wide_resnet50_2``
registered here, smp lacks it), other smp encoder names, and timm models (``timm:<name>`` or a timm
name; smp's ``tu-<name>``, whose weights live under ``encoder.model``).
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Mapping

import torch
from torch import nn

from utility.errors import UserError
from utility.models.encoders import TORCHVISION_ENCODERS, FreezableEncoder
from utility.models.weights import load_encoder_weights, read_state_dict, split_state_dict

_UNET_NAME = re.compile(r"^unet_(?P<enc>.+?)(_backbone)?$", re.IGNORECASE)


def _smp():
    import segmentation_models_pytorch as smp
    from segmentation_models_pytorch.encoders import encoders

    if "wide_resnet50_2" not in encoders:  # torchvision's wide ResNet-50: resnet50 with 2x inner width
        from copy import deepcopy

        entry = deepcopy(encoders["resnet50"])
        entry["params"]["width_per_group"] = 128
        entry["pretrained_settings"] = {}
        encoders["wide_resnet50_2"] = entry
    return smp


def encoder_of(model_name: str) -> str:
    """``unet_resnet50_backbone`` / ``unet_resnet50`` / ``resnet50`` -> ``resnet50``."""
    m = _UNET_NAME.match(model_name.strip())
    return m["enc"] if m else model_name.strip()


def smp_encoder_name(encoder: str) -> str:
    smp = _smp()
    key = encoder.lower()
    if key in TORCHVISION_ENCODERS or key in smp.encoders.get_encoder_names():
        return key
    if key.startswith("tu-"):
        return encoder
    import timm

    tname = encoder.split(":", 1)[1] if key.startswith("timm:") else encoder
    if timm.is_model(tname):
        return f"tu-{tname}"
    raise UserError(f"unknown encoder '{encoder}' for the U-Net; use a torchvision ResNet "
                    f"({', '.join(TORCHVISION_ENCODERS)}), an smp encoder name or timm:<name>")


class UNet(FreezableEncoder, nn.Module):
    """smp U-Net (``encoder``, ``decoder``, ``segmentation_head``) -> logits [B, classes, H, W].

    ``classes`` includes background. ``freeze_encoder(unfreeze_last_n)`` as for the classifier:
    encoder blocks (ResNet: conv1, bn1, layer1..4) get no gradients and their BatchNorm stays in
    eval mode. Inputs whose sides are not multiples of 32 are padded and the output cropped back."""

    def __init__(self, encoder: str, classes: int, in_channels: int = 3, decoder_channels=None) -> None:
        super().__init__()
        smp = _smp()
        self.encoder_name = smp_encoder_name(encoder)
        kw = {"decoder_channels": tuple(decoder_channels)} if decoder_channels else {}
        net = smp.Unet(self.encoder_name, encoder_weights=None, in_channels=in_channels, classes=classes, **kw)
        self.encoder, self.decoder, self.segmentation_head = net.encoder, net.decoder, net.segmentation_head
        self.frozen_blocks: list[nn.Module] = []

    @property
    def encoder_core(self) -> nn.Module:
        """The module whose state dict matches our encoder files (timm encoders sit one level down)."""
        return getattr(self.encoder, "model", self.encoder) if self.encoder_name.startswith("tu-") else self.encoder

    def _freeze_root(self) -> nn.Module:
        return self.encoder_core

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        features = self.encoder(pad_to_multiple(x, 32))
        out = self.segmentation_head(self.decoder(features))
        return out[..., :h, :w]


def pad_to_multiple(x: torch.Tensor, k: int) -> torch.Tensor:
    """Pad the bottom/right of [.., H, W] to multiples of ``k`` (reflect where possible)."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % k, (-w) % k
    if ph or pw:
        x = nn.functional.pad(x, (0, pw, 0, ph), mode="reflect" if min(h, w) > max(ph, pw) else "constant")
    return x


def is_unet_state(sd: Mapping[str, torch.Tensor]) -> bool:
    return any(k.startswith(("decoder.", "segmentation_head.")) for k in sd)


def load_into_unet(model: UNet, path: Path, allow_partial: bool,
                   sd: Mapping[str, torch.Tensor] | None = None) -> list[str]:
    """An encoder file (encoder_pretrained.tar, torchvision state dict, finetuned classifier) fills
    the encoder; a finetuned U-Net file fills everything. Mismatches fail unless ``allow_partial``."""
    sd = read_state_dict(path) if sd is None else sd
    if any(k.startswith(("unet.upsample_blocks.", "upsample_blocks.")) for k in sd):
        raise UserError(f"{path} holds the predecessor's U-Net (unet.upsample_blocks.*), which does not fit "
                        "smp's decoder: use unet_decoder: predecessor (or auto)")
    if not is_unet_state(sd):
        enc, _ = split_state_dict(sd)
        if model.encoder_core is not model.encoder and enc and all(k.startswith("model.") for k in enc):
            enc = {k[len("model."):]: v for k, v in enc.items()}
        return load_encoder_weights(model.encoder_core, enc, path, allow_partial)
    enc = {k[len("encoder."):]: v for k, v in sd.items() if k.startswith("encoder.")}
    notes = load_encoder_weights(model.encoder, enc, path, allow_partial)
    rest_own = {k: v for k, v in model.state_dict().items() if not k.startswith("encoder.")}
    rest = {k: v for k, v in sd.items() if not k.startswith("encoder.")}
    bad = [k for k, v in rest_own.items() if k not in rest or rest[k].shape != v.shape]
    extra = [k for k in rest if k not in rest_own]
    if bad or extra:
        k = (bad or extra)[0]
        what = (f"{k}: file {tuple(rest[k].shape)}, model {tuple(rest_own[k].shape)}"
                if k in rest and k in rest_own else k)
        msg = (f"{path}: the U-Net decoder/head does not fit ({len(bad)} missing or differently shaped, "
               f"{len(extra)} unexpected; e.g. {what}) - another number of classes or encoder?")
        if not allow_partial:
            raise UserError(msg + " (allow_partial_load: true loads what fits)")
        notes.append(msg)
    model.load_state_dict({k: v for k, v in rest.items() if k in rest_own and rest_own[k].shape == v.shape},
                          strict=False)
    return notes
