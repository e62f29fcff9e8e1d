"""The predecessor's finetuning augmentation (``recipe: predecessor``): one pipeline per task family,
every op applied per image with probability 0.2, then noise injection clipped to [0, 1].

Facts from the predecessor's per-task pipelines (torchvision for ImageNet, CTBR and CX8; albumentations
for LiTS and BraTS, with the same parameters): random resized crop to the output shape (scale 0.08-1,
aspect 3/4-4/3), horizontal flip, colour jitter (brightness, contrast, saturation 0.1, hue 0.2),
grayscale, Gaussian blur (3x3 kernel, sigma 0.1-2), sharpness factor 2. :data:`PIPELINES` says which
family has which ops. Here the ops run batched (kornia) with per-image random parameters; masks get the
same geometry (nearest), colour ops touch images only. Ops that need three channels are skipped on
single-channel inputs.
"""
from __future__ import annotations

from typing import Optional

import kornia.augmentation as K
import torch
from torch import nn

from utility.data.noise import add_noise

P = 0.2  # every op's probability
CROP = {"scale": (0.08, 1.0), "ratio": (3 / 4, 4 / 3)}
JITTER = {"brightness": 0.1, "contrast": 0.1, "saturation": 0.1, "hue": 0.2}
BLUR = {"kernel_size": (3, 3), "sigma": (0.1, 2.0)}
SHARPNESS = 2.0
# task family (task name prefix) -> ops in the predecessor's order; noise: gaussian or rician
PIPELINES: dict[str, tuple[tuple[str, ...], str]] = {
    "ImageNet": (("crop", "hflip", "jitter", "grayscale", "blur", "sharpness"), "gaussian"),
    "CTBR": (("crop", "hflip", "jitter", "blur", "sharpness"), "gaussian"),
    "CX8": (("crop", "hflip", "jitter", "blur", "sharpness"), "gaussian"),
    "LiTS": (("crop", "hflip", "jitter", "blur"), "gaussian"),
    "BraTS": (("crop", "hflip", "blur"), "rician"),
}
COLOUR_OPS = ("jitter", "grayscale")


def family_of(task_name: str) -> Optional[str]:
    """The predecessor's pipeline a task uses (by name prefix: ``BraTS-M`` -> BraTS), or None."""
    return next((f for f in PIPELINES if task_name.startswith(f)), None)


def _op(name: str) -> nn.Module:
    if name == "hflip":
        return K.RandomHorizontalFlip(p=P)
    if name == "jitter":
        return K.ColorJitter(**JITTER, p=P)
    if name == "grayscale":
        return K.RandomGrayscale(p=P)
    if name == "blur":
        return K.RandomGaussianBlur(BLUR["kernel_size"], BLUR["sigma"], p=P)
    if name == "sharpness":
        return K.RandomSharpness(sharpness=(SHARPNESS, SHARPNESS), p=P)
    raise ValueError(f"unknown op {name}")


class PredecessorAugment(nn.Module):
    """Batched predecessor pipeline for images [B,C,H,W] (and masks [B,H,W]) + clipped noise."""

    def __init__(self, family: str, shape: tuple[int, int], noise: Optional[tuple[float, float]]) -> None:
        super().__init__()
        ops, self.noise_type = PIPELINES[family]
        self.family, self.op_names = family, ops
        # kornia's crop takes its p per batch; per image: crop the chosen images only (p = 1 on them)
        crop = [K.RandomResizedCrop(size=shape, **CROP, p=1.0)] if "crop" in ops else []
        rest = [(o, _op(o)) for o in ops if o != "crop"]
        groups = {"crop": crop, "rgb": [m for _, m in rest], "mono": [m for o, m in rest if o not in COLOUR_OPS]}
        self.seqs = nn.ModuleDict()
        for key, mods in groups.items():
            if mods:
                self.seqs[key] = K.AugmentationSequential(*mods, same_on_batch=False)
                self.seqs[key + "_mask"] = K.AugmentationSequential(*mods, data_keys=["input", "mask"],
                                                                    same_on_batch=False)
        self.noise = noise

    def _run(self, key: str, x: torch.Tensor, mask: Optional[torch.Tensor]):
        if key not in self.seqs:
            return x, mask
        if mask is None:
            return self.seqs[key](x), None
        out, m = self.seqs[key + "_mask"](x, mask[:, None].float())
        return out, m[:, 0].round().long()

    @torch.no_grad()
    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None):
        if "crop" in self.seqs:
            hit = torch.rand(x.shape[0], device=x.device) < P
            if hit.any():
                x = x.clone()
                cx, cm = self._run("crop", x[hit], None if mask is None else mask[hit])
                x[hit] = cx.to(x.dtype)
                if mask is not None:
                    mask = mask.clone()
                    mask[hit] = cm
        x, mask = self._run("rgb" if x.shape[1] == 3 else "mono", x, mask)
        if self.noise is not None:
            x = add_noise(x, self.noise[0], self.noise[1], self.noise_type, clip=True)
        return x if mask is None else (x, mask)
