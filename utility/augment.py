"""Random augmentation on the training device, batched, with per-sample random parameters.

Presets are YAML files in config/augmentations/ (tasks name one). Kornia draws parameters per
sample (``same_on_batch=False``), so every image gets its own crop, flip and rotation — the
predecessor drew one set per GPU chunk. The same code runs on the CPU when there is no CUDA.
"""
from __future__ import annotations

from typing import Any, Optional

import kornia.augmentation as K
import torch
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from torch import nn

from utility.errors import UserError
from utility.paths import CONFIG_DIR

AUG_DIR = CONFIG_DIR / "augmentations"


class CropSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    scale: tuple[float, float] = (0.8, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)


class AugPreset(BaseModel):
    """One augmentation preset (all probabilities per sample)."""

    model_config = ConfigDict(extra="forbid")
    description: str = ""
    random_resized_crop: Optional[CropSpec] = None
    hflip: float = Field(0.0, ge=0, le=1)
    vflip: float = Field(0.0, ge=0, le=1)
    rotation: float = Field(0.0, ge=0, le=180, description="max degrees, both directions")
    rotation_p: float = Field(0.5, ge=0, le=1)


def load_preset(name: str) -> AugPreset:
    path = AUG_DIR / f"{name}.yaml"
    if not path.is_file():
        names = sorted(p.stem for p in AUG_DIR.glob("*.yaml"))
        raise UserError(f"unknown augmentation preset '{name}' (presets: {', '.join(names)})")
    try:
        return AugPreset.model_validate(yaml.safe_load(path.read_text()) or {})
    except ValidationError as exc:
        err = exc.errors()[0]
        raise UserError(f"augmentation preset {path}: '{'.'.join(map(str, err['loc']))}': {err['msg']}") from None


class DeviceAugment(nn.Module):
    """Batched augmentation + optional Gaussian noise injection [sigma, p]."""

    def __init__(self, preset: AugPreset, shape: tuple[int, int],
                 noise: Optional[tuple[float, float]] = None) -> None:
        super().__init__()
        ops: list[nn.Module] = []
        if preset.random_resized_crop is not None:
            c = preset.random_resized_crop
            ops.append(K.RandomResizedCrop(size=shape, scale=c.scale, ratio=c.ratio, p=1.0))
        if preset.hflip > 0:
            ops.append(K.RandomHorizontalFlip(p=preset.hflip))
        if preset.vflip > 0:
            ops.append(K.RandomVerticalFlip(p=preset.vflip))
        if preset.rotation > 0:
            ops.append(K.RandomRotation(degrees=preset.rotation, p=preset.rotation_p))
        self.ops = K.AugmentationSequential(*ops, same_on_batch=False) if ops else None
        self.noise = noise

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.ops is not None:
            x = self.ops(x)
        if self.noise is not None and self.noise[0] > 0 and self.noise[1] > 0:
            sigma, p = self.noise
            hit = (torch.rand(x.shape[0], 1, 1, 1, device=x.device) < p).to(x.dtype)
            x = x + hit * sigma * torch.randn_like(x)
        return x


def build_augment(preset_name: str, shape: tuple[int, int], no_augs: bool,
                  noise: Optional[tuple[float, float]]) -> Optional[DeviceAugment]:
    """The train-time augmentation, or None when there is nothing to do."""
    preset = AugPreset() if no_augs else load_preset(preset_name)
    aug = DeviceAugment(preset, shape, noise)
    return aug if (aug.ops is not None or aug.noise) else None


def describe(aug: Any) -> str:
    return "none" if aug is None else str(aug.ops)
