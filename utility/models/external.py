"""Released foundation models as sources: explicit key mappings from their files to our encoders.

Nothing is downloaded: the user passes a file (``model_path``) and names its layout (``model_path_format``).
Each mapping renames keys only; the result is then loaded key for key by utility/models/weights.py, so a
file that does not fill the encoder completely is refused as any other (``allow_partial_load`` to override).

- ``timm``: a timm or torchvision state dict of the same architecture (``timm.create_model(...).state_dict()``,
  ``torchvision.models.resnet50().state_dict()``); the classifier (``head.*``, ``fc.*``) is dropped.
- ``dinov2``: the DINOv2 release files (``dinov2_vits14_pretrain.pth``: ``mask_token``, ``blocks.<i>`` or chunked
  ``blocks.<chunk>.<i>``, ``register_tokens``) or a DINO/DINOv2 training checkpoint's ``teacher`` entry
  (``backbone.*``; the heads are dropped); to timm's ViT names (use a timm DINOv2 model name such as
  ``vit_small_patch14_dinov2``, or ``vit_small_patch14_reg4_dinov2`` for registers).
- ``radimagenet_resnet50``: a RadImageNet ResNet-50 port saved as a PyTorch state dict whose ResNet is an
  ``nn.Sequential`` of torchvision's children (``backbone.0`` conv1, ``.1`` bn1, ``.4``-``.7`` layer1-4; with or
  without the ``backbone.`` prefix), to torchvision's names.

ViTs: a position embedding stored for another grid (another pretraining resolution) is resampled
(bicubic, timm's ``resample_abs_pos_embed``) to the encoder's grid; the note says so.
"""
from __future__ import annotations

import re
from typing import Mapping

import torch

from utility.errors import UserError

FORMATS = ("auto", "timm", "dinov2", "radimagenet_resnet50")
RESNET_CHILDREN = {"0": "conv1", "1": "bn1", "4": "layer1", "5": "layer2", "6": "layer3", "7": "layer4"}
_CHUNKED = re.compile(r"^blocks\.\d+\.(\d+)\.")


def _strip(sd: Mapping[str, torch.Tensor], prefixes: tuple[str, ...]) -> dict[str, torch.Tensor]:
    out = dict(sd)
    for p in prefixes:
        if out and all(k.startswith(p) for k in out):
            out = {k[len(p):]: v for k, v in out.items()}
    return out


def from_timm(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in _strip(sd, ("module.",)).items() if not k.startswith(("head.", "fc."))}


def from_dinov2(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    sd = {k: v for k, v in _strip(sd, ("module.",)).items()}
    if any(k.startswith("backbone.") for k in sd):  # a training checkpoint's teacher: backbone + heads
        sd = {k[len("backbone."):]: v for k, v in sd.items() if k.startswith("backbone.")}
    out = {}
    for k, v in sd.items():
        if k == "mask_token":  # iBOT's masked-token embedding: used in pretraining only
            continue
        if _CHUNKED.match(k):  # BlockChunk (FSDP) layout: blocks.<chunk>.<i>.* -> blocks.<i>.*
            k = re.sub(r"^blocks\.\d+\.", "blocks.", k)
        out["reg_token" if k == "register_tokens" else k] = v
    return out


def from_radimagenet(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    sd = _strip(sd, ("module.", "backbone.", "encoder."))
    out = {}
    for k, v in sd.items():
        head, _, rest = k.partition(".")
        if head not in RESNET_CHILDREN:
            out[k] = v  # left as it is: reported as unexpected by the loader, never dropped unseen
            continue
        out[f"{RESNET_CHILDREN[head]}.{rest}"] = v
    return out


def resample_pos_embed(sd: dict[str, torch.Tensor], own: Mapping[str, torch.Tensor], prefix_tokens: int,
                       notes: list[str]) -> dict[str, torch.Tensor]:
    """The file's position embedding on the encoder's grid (the prefix tokens' entries kept)."""
    if "pos_embed" not in sd or "pos_embed" not in own or sd["pos_embed"].shape == own["pos_embed"].shape:
        return sd
    from timm.layers import resample_abs_pos_embed

    old, new = sd["pos_embed"], own["pos_embed"]
    g_old, g_new = old.shape[1] - prefix_tokens, new.shape[1] - prefix_tokens
    side_old, side_new = int(round(g_old ** 0.5)), int(round(g_new ** 0.5))
    if side_old ** 2 != g_old or side_new ** 2 != g_new or old.shape[-1] != new.shape[-1]:
        return sd  # not square grids or another width: left for the loader to report
    sd = dict(sd)
    sd["pos_embed"] = resample_abs_pos_embed(old, (side_new, side_new), (side_old, side_old),
                                             num_prefix_tokens=prefix_tokens)
    notes.append(f"pos_embed resampled from a {side_old}x{side_old} to a {side_new}x{side_new} grid (bicubic)")
    return sd


def map_external(sd: Mapping[str, torch.Tensor], fmt: str, encoder: torch.nn.Module) -> tuple[dict[str, torch.Tensor],
                                                                                              list[str]]:
    """(the file's encoder keys in our names, notes on what was changed) for ``model_path_format``."""
    if fmt not in FORMATS:
        raise UserError(f"model_path_format '{fmt}' is not one of {', '.join(FORMATS)}")
    mapped = {"timm": from_timm, "dinov2": from_dinov2, "radimagenet_resnet50": from_radimagenet}[fmt](sd)
    notes: list[str] = []
    no_embed_class = bool(getattr(encoder, "no_embed_class", False))
    if no_embed_class and "pos_embed" in mapped and "cls_token" in mapped:
        grid = mapped["pos_embed"].shape[1] - 1  # DINOv2 with registers: its class token has a position entry
        if round(grid ** 0.5) ** 2 == grid:
            mapped["cls_token"] = mapped["cls_token"] + mapped["pos_embed"][:, :1]
            mapped["pos_embed"] = mapped["pos_embed"][:, 1:]
            notes.append("the class token's position entry folded into cls_token (timm keeps none)")
    prefix = 0 if no_embed_class else int(getattr(encoder, "num_prefix_tokens", 0))
    mapped = resample_pos_embed(mapped, encoder.state_dict(), prefix, notes)
    return mapped, notes
