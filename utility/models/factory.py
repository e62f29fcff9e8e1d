"""The one place a network is built from a name: construct, load a weights file, freeze the encoder.

Finetuning (classification and segmentation) and ``get_model`` all come through
:func:`build_network`, so loading rules and freezing behave the same everywhere.
"""
from __future__ import annotations

import re
from pathlib import Path

from torch import nn

from utility.models.encoders import Classifier, build_encoder
from utility.models.weights import load_into_classifier

_UNET_NAME = re.compile(r"^unet", re.IGNORECASE)


def is_unet_name(model_name: str) -> bool:
    return bool(_UNET_NAME.match(model_name.strip()))


def build_network(model_name: str, classes: int, in_channels: int = 3, weights: str | Path | None = None,
                  allow_partial: bool = False, frozen_encoder: bool = False, unfreeze_last_n: int = 0,
                  segmentation: bool | None = None, head_dropout: float = 0.0) -> tuple[nn.Module, list[str]]:
    """(network, notes about what did not load). ``segmentation``: a U-Net whose encoder is
    ``model_name`` (None: decided by a ``unet_`` name); else an encoder + linear head classifier.
    ``frozen_encoder`` freezes the encoder's blocks but the last ``unfreeze_last_n`` (BN included)."""
    if segmentation is None:
        segmentation = is_unet_name(model_name)
    model: nn.Module
    if segmentation:
        from utility.models.unet import UNet, encoder_of, load_into_unet  # smp only when needed

        model = UNet(encoder_of(model_name), classes, in_channels)
        notes = load_into_unet(model, Path(weights), allow_partial) if weights is not None else []
    else:
        encoder, width = build_encoder(model_name, in_channels)
        model = Classifier(encoder, width, classes, head_dropout)
        notes = load_into_classifier(model, Path(weights), allow_partial) if weights is not None else []
    if frozen_encoder:
        model.freeze_encoder(unfreeze_last_n)  # type: ignore[operator]
    return model, notes


def get_model(model_name: str, enc_weights: str | Path | None, classes: int,
              frozen_encoder: bool = False, in_channels: int = 3) -> nn.Module:
    """A plain network (no loss, no augmentation) from a pretraining encoder file or a finetuned
    model file. ``model_name`` is an encoder name (``resnet50``) or ``unet_<encoder>_backbone``;
    ``enc_weights=None`` gives random initialisation. Any mismatch is an error."""
    return build_network(model_name, classes, in_channels, enc_weights, False, frozen_encoder)[0]
