"""The two-view augmentation every joint-embedding method trains on (SimCLR, Barlow Twins, BYOL,
VICReg, MoCo v2): each image gives two independently augmented views, made on the training device
in one batched call with per-sample parameters."""
from __future__ import annotations

import kornia.augmentation as K
import torch
from torch import nn


class TwoViews(nn.Module):
    """RandomResizedCrop(image_size), flip (hflip_p, 0.5), colour jitter (strength s, probability p), grayscale
    0.2 (off for grayscale data), optional Gaussian blur: each image its own parameters."""

    def __init__(self, image_size: int, jitter_strength: float = 1.0, jitter_p: float = 0.8,
                 grayscale_data: bool = False, blur_p: float = 0.0, crop_scale=(0.08, 1.0),
                 hflip_p: float = 0.5) -> None:
        super().__init__()
        self.image_size = image_size
        self._args = dict(jitter_strength=jitter_strength, jitter_p=jitter_p, grayscale_data=grayscale_data,
                          blur_p=blur_p, hflip_p=hflip_p)
        s = jitter_strength
        ops: list[nn.Module] = [K.RandomResizedCrop((image_size, image_size), scale=tuple(crop_scale))]
        if hflip_p > 0:
            ops.append(K.RandomHorizontalFlip(p=hflip_p))
        if grayscale_data:
            ops.append(K.ColorJitter(0.8 * s, 0.8 * s, 0.0, 0.0, p=jitter_p))
        else:
            ops.append(K.ColorJitter(0.8 * s, 0.8 * s, 0.8 * s, 0.2 * s, p=jitter_p))
            ops.append(K.RandomGrayscale(p=0.2))
        if blur_p > 0:
            k = max(3, (image_size // 10) | 1)
            ops.append(K.RandomGaussianBlur((k, k), (0.1, 2.0), p=blur_p))
        self.ops = K.AugmentationSequential(*ops, same_on_batch=False)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = x.clamp(0, 1)
        return self.ops(x), self.ops(x)

    def resized(self, image_size: int, crop_scale) -> "TwoViews":
        """The same augmentation at another crop size and scale (DINO's local crops)."""
        return TwoViews(image_size, crop_scale=crop_scale, **self._args)

    @torch.no_grad()
    def many(self, x: torch.Tensor, n: int) -> list[torch.Tensor]:
        """``n`` independent views of every image."""
        x = x.clamp(0, 1)
        return [self.ops(x) for _ in range(n)]
