"""Random augmentation, never cached, from one preset (config/augmentations/<name>.yaml).

tf_device: gpu -> :class:`DeviceAugment`: on the training device, on whole batches, with per-sample
random parameters (Kornia, ``same_on_batch=False``: every image its own crop, flip, rotation; the
predecessor drew one set per GPU chunk). Segmentation masks get the same geometry with nearest
interpolation. Without CUDA the same batched path runs on the CPU.
tf_device: cpu -> :class:`CpuAugment`: per sample in the DataLoader workers (albumentations),
co-transforming masks.
Noise injection [sigma, p] (Gaussian, or Rician for MRI magnitude images) runs on the device in both.
"""
from __future__ import annotations

import sys
from typing import Any, Optional

import kornia.augmentation as K
import numpy as np
import torch
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from torch import nn

from utility.data.noise import add_noise  # noqa: F401  (re-exported)
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
    noise_type: str = Field("gaussian", pattern="^(gaussian|rician)$", description="for noise_injection")


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
    """Batched augmentation of images [B,C,H,W] (and masks [B,H,W] integer labels) + noise."""

    def __init__(self, preset: AugPreset, shape: tuple[int, int],
                 noise: Optional[tuple[float, float]] = None, geometric: bool = True, clip: bool = False) -> None:
        super().__init__()
        ops: list[nn.Module] = []
        if geometric and preset.random_resized_crop is not None:
            c = preset.random_resized_crop
            ops.append(K.RandomResizedCrop(size=shape, scale=c.scale, ratio=c.ratio, p=1.0))
        if geometric and preset.hflip > 0:
            ops.append(K.RandomHorizontalFlip(p=preset.hflip))
        if geometric and preset.vflip > 0:
            ops.append(K.RandomVerticalFlip(p=preset.vflip))
        if geometric and preset.rotation > 0:
            ops.append(K.RandomRotation(degrees=preset.rotation, p=preset.rotation_p))
        self.ops = K.AugmentationSequential(*ops, same_on_batch=False) if ops else None
        self.ops_mask = (K.AugmentationSequential(*ops, data_keys=["input", "mask"], same_on_batch=False)
                         if ops else None)
        self.noise = noise
        self.noise_type = preset.noise_type
        self.clip = clip

    @torch.no_grad()
    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None):
        if mask is not None and self.ops_mask is not None:
            x, m = self.ops_mask(x, mask[:, None].float())
            mask = m[:, 0].round().long()
        elif self.ops is not None:
            x = self.ops(x)
        if self.noise is not None:
            x = add_noise(x, self.noise[0], self.noise[1], self.noise_type, self.clip)
        return x if mask is None else (x, mask)


class CpuAugment:
    """Per-sample albumentations in the loader (tf_device: cpu); masks co-transformed (nearest)."""

    def __init__(self, preset: AugPreset, shape: tuple[int, int]) -> None:
        import albumentations as A

        ops = []
        if preset.random_resized_crop is not None:
            c = preset.random_resized_crop
            ops.append(A.RandomResizedCrop(size=shape, scale=c.scale, ratio=c.ratio))
        if preset.hflip > 0:
            ops.append(A.HorizontalFlip(p=preset.hflip))
        if preset.vflip > 0:
            ops.append(A.VerticalFlip(p=preset.vflip))
        if preset.rotation > 0:
            ops.append(A.Rotate(limit=preset.rotation, p=preset.rotation_p, border_mode=0))
        self.compose = A.Compose(ops) if ops else None

    def reseed(self, seed: int) -> None:
        """Draw this sample's parameters from ``seed`` (the dataset passes one per sample and epoch),
        so results do not depend on num_workers or on which worker loads which sample."""
        if self.compose is not None:
            self.compose.set_random_seed(seed)

    def __call__(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None):
        if self.compose is None:
            return x if mask is None else (x, mask)
        # numpy transposes: torch's permute().contiguous() is far slower inside loader workers
        img = np.ascontiguousarray(x.numpy().transpose(1, 2, 0))
        if mask is None:
            out = self.compose(image=img)
            return torch.from_numpy(np.ascontiguousarray(out["image"].transpose(2, 0, 1)))
        out = self.compose(image=img, mask=mask.numpy().astype("int32"))
        return (torch.from_numpy(np.ascontiguousarray(out["image"].transpose(2, 0, 1))),
                torch.from_numpy(out["mask"]).long())


def build_augment(preset_name: str, shape: tuple[int, int], no_augs: bool,
                  noise: Optional[tuple[float, float]], tf_device: str = "gpu", recipe: Any = None,
                  task_name: str = ""):
    """(device-side augmentation or None, loader-side per-sample augmentation or None).

    ``recipe`` (utility/config/recipe.py): under the predecessor's, its per-task pipeline on the device
    whatever tf_device says (utility/data/predecessor_augment.py), noise clipped to [0, 1], and
    ``no_augs`` switches the noise off too, as it did there; a task it had no pipeline for keeps its preset."""
    if recipe is not None and recipe.predecessor_augmentation:
        from utility.data.predecessor_augment import PredecessorAugment, family_of

        if no_augs:
            return None, None
        family = family_of(task_name)
        if family is not None:
            return PredecessorAugment(family, shape, noise), None
        print(f"recipe: predecessor: the predecessor had no augmentation for task {task_name}; "
              f"using its preset '{preset_name}'", file=sys.stderr)
    clip = recipe is not None and recipe.clip_noise
    preset = AugPreset() if no_augs else load_preset(preset_name)
    if tf_device == "cpu":
        cpu = CpuAugment(preset, shape)
        dev = DeviceAugment(preset, shape, noise, geometric=False, clip=clip) if noise else None
        return dev, (cpu if cpu.compose is not None else None)
    dev = DeviceAugment(preset, shape, noise, clip=clip)
    return (dev if (dev.ops is not None or dev.noise) else None), None


def describe(aug: Any) -> str:
    return "none" if aug is None else str(aug.ops)
