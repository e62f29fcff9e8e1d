"""Deterministic preprocessing: channel conformity, resize, normalisation. Cacheable by design."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CT_RANGE = (-1024.0, 3072.0)


def conform_channels(x: torch.Tensor, channels: int) -> torch.Tensor:
    """[C, H, W] or [B, C, H, W] -> ``channels`` channels (gray repeated, RGB -> luminance)."""
    c = x.shape[-3]
    if c == channels:
        return x
    if channels == 3 and c == 1:
        return x.expand(*x.shape[:-3], 3, *x.shape[-2:])
    if channels == 1 and c == 3:
        w = torch.tensor([0.299, 0.587, 0.114], dtype=x.dtype, device=x.device).view(3, 1, 1)
        return (x * w).sum(dim=-3, keepdim=True)
    if channels == 3 and c == 2:
        return torch.cat([x, x[..., :1, :, :]], dim=-3)
    raise ValueError(f"cannot conform {c} channels to {channels}")


def resize(x: torch.Tensor, shape: tuple[int, int], mode: str = "bilinear") -> torch.Tensor:
    """[C, H, W] -> [C, *shape]; antialiased when shrinking, nearest for masks."""
    if tuple(x.shape[-2:]) == tuple(shape):
        return x
    if mode == "nearest":
        return F.interpolate(x[None], size=shape, mode="nearest-exact")[0]
    return F.interpolate(x[None], size=shape, mode="bilinear", align_corners=False, antialias=True)[0]


def _minmax(x: torch.Tensor) -> torch.Tensor:
    lo, hi = x.amin(), x.amax()
    span = hi - lo
    # constant image -> zeros, never NaN; a resized constant image differs by float rounding only
    # (~1e-7 relative), which must not be stretched to [0, 1]
    if not torch.isfinite(span) or span <= 1e-5 * torch.maximum(lo.abs(), hi.abs()) or span <= 0:
        return torch.zeros_like(x)
    return (x - lo) / span


def normalize(x: torch.Tensor, name: str, window: tuple[float, float] | None = None,
              value_range: float = 255.0) -> torch.Tensor:
    """Apply the predecessor's normalizers to a [C, H, W] float tensor.

    naive: per-image min-max to [0, 1]; 01_clipped_CT: clip to [-1024, 3072] HU then to [0, 1];
    windowed: clip to [low, high] then to [0, 1]; imagenet: scale by the format's range to [0, 1],
    then ImageNet mean/std (gray images use the mean of the three).
    """
    if name == "naive":
        return _minmax(x)
    if name == "01_clipped_CT":
        lo, hi = CT_RANGE
        return (x.clamp(lo, hi) - lo) / (hi - lo)
    if name == "windowed":
        if window is None:
            raise ValueError("normalizer 'windowed' needs window: [low, high]")
        lo, hi = window
        return (x.clamp(lo, hi) - lo) / (hi - lo)
    if name == "imagenet":
        x = (x / value_range).clamp(0, 1)
        mean = torch.tensor(IMAGENET_MEAN, dtype=x.dtype)
        std = torch.tensor(IMAGENET_STD, dtype=x.dtype)
        if x.shape[0] == 1:
            mean, std = mean.mean().view(1), std.mean().view(1)
        return (x - mean.view(-1, 1, 1)) / std.view(-1, 1, 1)
    raise ValueError(f"unknown normalizer {name!r}")


def value_range_of(arr: np.ndarray) -> float:
    """Full-scale value of the source: 255 for 8-bit data, 65535 for 16-bit, else the max."""
    m = float(arr.max()) if arr.size else 1.0
    if m <= 1.0:
        return 1.0
    return 255.0 if m <= 255 else (65535.0 if m <= 65535 else m)
