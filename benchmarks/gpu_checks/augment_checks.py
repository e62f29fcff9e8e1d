"""Device-side augmentation (batched, Kornia, on the training device) against the per-sample CPU path
(albumentations in the loader workers): the same distribution of crops and flips, and masks that stay
aligned with their images; ``tf_device: auto`` picks the device path with CUDA."""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
from scipy import stats

from .common import Ctx, expect, register
from utility.data.augment import AugPreset, CpuAugment, CropSpec, DeviceAugment, build_augment
from utility.runs.startup import resolve_tf_device

PRESET = AugPreset(random_resized_crop=CropSpec(scale=(0.4, 1.0)), hflip=0.5, rotation=15, rotation_p=0.5)


def squares(n: int, size: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Images whose channel 0 is a bright square (the mask) and channel 1 a left-to-right ramp (flips)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.zeros(n, 3, size, size)
    mask = torch.zeros(n, size, size, dtype=torch.long)
    x[:, 1] = torch.linspace(0, 1, size)[None, None, :]
    for i in range(n):
        w = int(torch.randint(size // 4, size // 2, (1,), generator=g))
        r, c = (int(v) for v in torch.randint(0, size - w, (2,), generator=g))
        mask[i, r:r + w, c:c + w] = 1
    x[:, 0] = 0.1 + 0.8 * mask.float()
    return x, mask


def summary(x: torch.Tensor, mask: torch.Tensor) -> dict[str, np.ndarray]:
    """Per-sample: mask/image agreement, foreground share, flipped (ramp decreasing)."""
    from_image = (x[:, 0] > 0.5).long()
    half = x.shape[-1] // 2
    ramp = x[:, 1, :, half:].mean((1, 2)) - x[:, 1, :, :half].mean((1, 2))
    return {"agree": (from_image == mask).float().mean((1, 2)).numpy(),
            "fg": mask.float().mean((1, 2)).numpy(), "flipped": (ramp < 0).numpy()}


def augment_check(ctx: Ctx) -> dict[str, Any]:
    n, size = (64, 32) if ctx.tiny else (512, 64)
    x, mask = squares(n, size)
    torch.manual_seed(0)
    dev = DeviceAugment(PRESET, (size, size)).to(ctx.device)
    xd, md = dev(x.to(ctx.device), mask.to(ctx.device))
    d = summary(xd.cpu(), md.cpu())
    cpu = CpuAugment(PRESET, (size, size))
    outs = []
    for i in range(n):
        cpu.reseed(i)
        outs.append(cpu(x[i], mask[i]))
    c = summary(torch.stack([o[0] for o in outs]), torch.stack([o[1] for o in outs]))
    ks = stats.ks_2samp(d["fg"], c["fg"])
    flip_d, flip_c = float(d["flipped"].mean()), float(c["flipped"].mean())
    sigma = float(np.sqrt(0.25 / n) * np.sqrt(2))
    figs = {"device": str(ctx.device), "n": n, "align_device": float(d["agree"].mean()),
            "align_cpu": float(c["agree"].mean()), "fg_mean_device": float(d["fg"].mean()),
            "fg_mean_cpu": float(c["fg"].mean()), "fg_ks_p": float(ks.pvalue), "flip_device": flip_d,
            "flip_cpu": flip_c}
    # resampling blurs the square's edge in the image (bilinear) but not in the mask (nearest):
    # a mask left unflipped or uncropped disagrees on about twice the square's area (0.1..0.5 of pixels)
    for path, s in (("device", d), ("cpu", c)):
        figs[f"align_min_{path}"] = float(s["agree"].min())
        expect(float(s["agree"].min()) >= 0.9 and float(s["agree"].mean()) >= 0.97,
               f"{path} path: a mask is not aligned with its image", figs)
    expect(ks.pvalue > 1e-3, "foreground share distributions differ (crop scale)", figs)
    expect(abs(flip_d - flip_c) <= 4 * sigma, "flip rates differ", figs)
    return figs


def tf_device_auto_check(ctx: Ctx) -> dict[str, Any]:
    chosen = resolve_tf_device("auto", "auto")
    dev, cpu = build_augment("default", (32, 32), False, None, chosen)
    figs = {"tf_device_auto": chosen, "device_augment": type(dev).__name__, "loader_augment": type(cpu).__name__}
    expect(chosen == "gpu" and isinstance(dev, DeviceAugment) and cpu is None,
           "tf_device auto did not choose the device path", figs)
    return figs


register("augment_device_vs_cpu", augment_check, est_s=10)
register("augment_tf_device_auto", tf_device_auto_check, cuda_only=True, est_s=2)
