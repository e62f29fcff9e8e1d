"""The one place a network is built from a name: construct, load a weights file, freeze the encoder.

Finetuning (classification and segmentation) and ``get_model`` all come through
:func:`build_network`, so loading rules and freezing behave the same everywhere.
"""
from __future__ import annotations

import re
import sys
from pathlib import Path

from torch import nn

from utility.errors import UserError
from utility.paths import resolve_user_path
from utility.models.encoders import Classifier, build_encoder
from utility.models.weights import load_into_classifier, read_state_dict

_UNET_NAME = re.compile(r"^unet", re.IGNORECASE)


def is_unet_name(model_name: str) -> bool:
    return bool(_UNET_NAME.match(model_name.strip()))


UNET_DECODERS = ("auto", "smp", "predecessor")


def build_network(model_name: str, classes: int, in_channels: int = 3, weights: str | Path | None = None,
                  allow_partial: bool = False, frozen_encoder: bool = False, unfreeze_last_n: int = 0,
                  segmentation: bool | None = None, head_dropout: float = 0.0,
                  unet_decoder: str = "auto", weights_format: str = "auto",
                  head_norm: str = "none") -> tuple[nn.Module, list[str]]:
    """(network, notes about what did not load). ``segmentation``: a U-Net whose encoder is
    ``model_name`` (None: decided by a ``unet_`` name); else an encoder + linear head classifier.
    ``unet_decoder``: ``smp`` (ours), ``predecessor`` (the predecessor's backboned_unet layout) or
    ``auto`` (predecessor when ``weights`` is a predecessor U-Net file, else smp).
    ``frozen_encoder`` freezes the encoder's blocks but the last ``unfreeze_last_n`` (BN included).
    ``weights_format``: the layout of a released model's file (utility/models/external.py); auto = ours.
    ``head_norm``: "batchnorm" puts a BatchNorm without affine parameters before the classifier's head."""
    if segmentation is None:
        segmentation = is_unet_name(model_name)
    if segmentation and head_norm != "none":
        raise UserError(f"head_norm '{head_norm}' is for classification heads; a segmentation network has none")
    if unet_decoder not in UNET_DECODERS:
        raise UserError(f"unet_decoder '{unet_decoder}' is not one of {', '.join(UNET_DECODERS)}")
    sd = read_state_dict(Path(weights)) if weights is not None else None
    model: nn.Module
    notes: list[str] = []
    if segmentation:
        from utility.models.predecessor_unet import (PredecessorUNet, decoder_of, load_into_predecessor_unet,
                                                     predecessor_unet_state)
        from utility.models.unet import UNet, encoder_of, load_into_unet  # smp only when needed

        from utility.models.vit import is_vit_name

        pred_state = predecessor_unet_state(sd) if sd is not None else None
        if is_vit_name(encoder_of(model_name)):  # a ViT: the multi-level decoder on its blocks
            from utility.models.vit_seg import ViTSegNet

            model = ViTSegNet(encoder_of(model_name), classes, in_channels)
            if sd is not None:
                sd, mapped = _external(sd, weights_format, model.encoder)
                notes = mapped + load_into_unet(model, Path(weights), allow_partial, sd)  # type: ignore[arg-type]
        elif unet_decoder == "predecessor" or (unet_decoder == "auto" and pred_state is not None):
            decoder = decoder_of(pred_state) if pred_state is not None else {}
            model = PredecessorUNet(encoder_of(model_name), classes, in_channels, **decoder)
            if sd is not None:
                notes = load_into_predecessor_unet(model, Path(weights), sd, allow_partial)
        else:
            model = UNet(encoder_of(model_name), classes, in_channels)
            if sd is not None:
                sd, mapped = _external(sd, weights_format, model.encoder_core)
                notes = load_into_unet(model, Path(weights), allow_partial, sd) + mapped
    else:
        encoder, width = build_encoder(model_name, in_channels)
        model = Classifier(encoder, width, classes, head_dropout, head_norm)
        if weights is not None:
            sd, mapped = _external(sd, weights_format, encoder)
            notes = load_into_classifier(model, Path(weights), allow_partial, sd) + mapped
    if frozen_encoder:
        model.freeze_encoder(unfreeze_last_n)  # type: ignore[operator]
    return model, notes


def _external(sd, fmt: str, encoder: nn.Module):
    """The file's keys mapped from a released model's layout, and what the mapping changed (as notes)."""
    if fmt == "auto":
        return sd, []
    from utility.models.external import map_external

    return map_external(sd, fmt, encoder)


def get_model(model_name: str, enc_weights: str | Path | None, classes: int,
              frozen_encoder: bool = False, in_channels: int = 3, allow_partial_load: bool = False,
              unet_decoder: str = "auto", head_norm: str | None = None) -> nn.Module:
    """A plain network (no loss, no augmentation) from a pretraining encoder file or a finetuned
    model file (ours or the predecessor's). ``model_name`` is an encoder name (``resnet50``) or
    ``unet_<encoder>_backbone``; ``enc_weights=None`` gives random initialisation. Any weight that
    does not load is an error naming the keys; with ``allow_partial_load=True`` what fits is
    loaded and the keys not loaded are printed. A relative ``enc_weights`` is looked up in the current
    directory, then in the repository (``make demo`` writes its SimCLR encoder to
    logs_and_checkpoints/pretraining/demo/SimCLR/encoder_pretrained.tar). ``in_channels=1`` builds the
    encoder for grayscale input (the demo digits); the default 3 expects RGB (repeat a gray channel).
    ``head_norm``: the classifier head's input normalisation (finetuning key ``head_norm``); None takes it
    from the file (a model finetuned with ``head_norm: batchnorm`` holds ``head.norm`` statistics)."""
    if enc_weights is not None:
        enc_weights = resolve_user_path(enc_weights)
    if head_norm is None:
        head_norm = "none"
        if enc_weights is not None and not is_unet_name(model_name):
            head_norm = "batchnorm" if "head.norm.running_mean" in read_state_dict(Path(enc_weights)) else "none"
    model, notes = build_network(model_name, classes, in_channels, enc_weights, allow_partial_load,
                                 frozen_encoder, unet_decoder=unet_decoder, head_norm=head_norm)
    if notes and not allow_partial_load:
        raise UserError(f"{enc_weights}: " + "; ".join(notes) + " (allow_partial_load=True loads what fits)")
    for note in notes:
        print(f"warning: loading {enc_weights}: {note}", file=sys.stderr)
    return model
