"""Vision Transformers (timm's VisionTransformer, random init, nothing downloaded) as encoders.

A ViT is named like any encoder: a timm name (``vit_small_patch16_224``, ``timm:vit_base_patch14_dinov2``)
or a small one spelled out, ``vit:img=16,patch=4,dim=64,depth=4,heads=4`` (``img`` default 224, ``heads``
default dim // 32 or 1, ``mlp`` ratio default 4, ``pool=token`` (class token, default) or ``pool=avg`` (mean
of the patch tokens, MAE's choice: its class token gets no loss of its own)). Every ViT is built with ``dynamic_img_size``: an input
whose grid differs from the position embedding's (another shape_desired, DINO's local crops) gets the
embedding bilinearly interpolated to its grid, so one encoder serves every input size whose sides are
multiples of the patch. The encoder returns the class token after the final norm (``[B, dim]``), as
the ResNets return pooled features, so the classifier, the monitor, kNN and the probes need nothing new.

Freezing and layer-wise learning rates see a ViT as groups: the stem (patch embedding, class/register
tokens, position embedding), one group per transformer block, and the final norm with the last block.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from utility.errors import UserError

SPEC_KEYS = {"img": "img_size", "patch": "patch_size", "dim": "embed_dim", "depth": "depth", "heads": "num_heads",
             "mlp": "mlp_ratio", "pool": "global_pool"}
POOLS = ("token", "avg")


def parse_vit_spec(name: str) -> dict:
    """``vit:img=16,patch=4,dim=64,depth=4,heads=4`` -> timm VisionTransformer keyword arguments."""
    body = name.split(":", 1)[1].strip()
    kw: dict = {"img_size": 224}
    for item in filter(None, (s.strip() for s in body.split(","))):
        key, _, value = item.partition("=")
        if key not in SPEC_KEYS or not value:
            raise UserError(f"model name '{name}': '{item}' is not one of "
                            f"{', '.join(k + '=<n>' for k in SPEC_KEYS)}")
        if key == "pool":
            if value not in POOLS:
                raise UserError(f"model name '{name}': pool must be token (the class token) or avg (mean of the "
                                f"patch tokens), got '{value}'")
            kw["global_pool"] = value
            continue
        try:
            kw[SPEC_KEYS[key]] = float(value) if key == "mlp" else int(value)
        except ValueError:
            raise UserError(f"model name '{name}': {key} must be a number, got '{value}'") from None
    for need in ("patch_size", "embed_dim", "depth"):
        if need not in kw:
            raise UserError(f"model name '{name}' lacks {[k for k, v in SPEC_KEYS.items() if v == need][0]}=<n> "
                            "(e.g. vit:img=16,patch=4,dim=64,depth=4,heads=4)")
    kw.setdefault("num_heads", max(kw["embed_dim"] // 32, 1))
    if kw["embed_dim"] % kw["num_heads"] or kw["img_size"] % kw["patch_size"]:
        raise UserError(f"model name '{name}': dim must be a multiple of heads and img a multiple of patch")
    return kw


def build_vit(name: str, in_channels: int) -> tuple[nn.Module, int]:
    """A randomly initialised ViT (``vit:...`` spec or a timm ViT name) returning its class token."""
    import timm
    from timm.models.vision_transformer import VisionTransformer

    common = {"num_classes": 0, "in_chans": in_channels, "dynamic_img_size": True}
    if name.lower().startswith("vit:"):
        net = VisionTransformer(**parse_vit_spec(name), **common)
    else:
        tname = name.split(":", 1)[1] if name.lower().startswith("timm:") else name
        net = timm.create_model(tname, pretrained=False, **common)
    return net, int(net.num_features)


def is_vit_name(name: str) -> bool:
    """True for our ``vit:`` spec and timm ViT/DeiT names (built by :func:`build_vit`)."""
    key = name.strip().lower()
    tname = key.split(":", 1)[1] if key.startswith("timm:") else key
    return key.startswith("vit:") or tname.startswith(("vit_", "deit_", "deit3_"))


def is_vit(encoder: nn.Module) -> bool:
    """A token-sequence encoder with the timm ViT layout (patch_embed, blocks, norm)."""
    return all(hasattr(encoder, a) for a in ("patch_embed", "blocks", "norm")) and \
        isinstance(getattr(encoder, "blocks"), nn.Sequential)


class _Group(nn.Module):
    """A view on some modules and parameters of an encoder (not part of its state dict): one freezable block."""

    def __init__(self, modules: list[nn.Module], params: dict[str, nn.Parameter]) -> None:
        super().__init__()
        self.parts = nn.ModuleList(modules)
        for k, p in params.items():
            self.register_parameter(k, p)


def vit_groups(encoder: nn.Module) -> list[nn.Module]:
    """Stem (patch embedding + tokens + position embedding), block 0..L-2, block L-1 with the final norm."""
    own = {k: p for k, p in encoder.named_parameters(recurse=False)}
    stem = [encoder.patch_embed] + [m for m in (getattr(encoder, "norm_pre", None),) if m is not None]
    blocks = list(encoder.blocks)
    tail = [m for m in (getattr(encoder, "norm", None), getattr(encoder, "fc_norm", None)) if m is not None]
    groups = [_Group(stem, own)] + [_Group([b], {}) for b in blocks[:-1]] + [_Group([blocks[-1], *tail], {})]
    return [g for g in groups if any(True for _ in g.parameters())]


def layer_id(param_name: str, depth: int, encoder_prefix: str = "encoder.") -> int:
    """Layer of a parameter for layer-wise lr decay (BEiT/MAE): stem 0, block i -> i + 1, the rest depth + 1."""
    if not param_name.startswith(encoder_prefix):
        return depth + 1
    rest = param_name[len(encoder_prefix):]
    if rest.startswith(("patch_embed", "cls_token", "reg_token", "pos_embed", "norm_pre")):
        return 0
    if rest.startswith("blocks."):
        return int(rest.split(".")[1]) + 1
    return depth + 1


def layer_decay_scales(model: nn.Module, decay: float, encoder_prefix: str = "encoder.") -> Optional[dict[str, float]]:
    """lr multiplier of each parameter name: decay ** (depth + 1 - layer); None when the encoder is no ViT."""
    enc = getattr(model, "encoder", None)
    if enc is None or not is_vit(enc):
        return None
    depth = len(enc.blocks)
    return {n: decay ** (depth + 1 - layer_id(n, depth, encoder_prefix)) for n, _ in model.named_parameters()}


def lr_scales_of(model: nn.Module, decay: Optional[float], model_name: str) -> Optional[dict[str, float]]:
    """Layer-wise lr decay multipliers (finetuning key ``layer_decay``); refused for encoders that are no ViT."""
    if decay is None:
        return None
    scales = layer_decay_scales(model, decay)
    if scales is None:
        raise UserError(f"layer_decay is for ViT encoders (transformer blocks); model_name {model_name} has none")
    return scales


def tokens_to_grid(tokens: torch.Tensor, prefix: int, grid: tuple[int, int]) -> torch.Tensor:
    """[B, prefix + h*w, D] -> [B, D, h, w]: the patch tokens as a feature map (Grad-CAM's reshape)."""
    x = tokens[:, prefix:]
    return x.reshape(x.shape[0], grid[0], grid[1], x.shape[-1]).permute(0, 3, 1, 2)
