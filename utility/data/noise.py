"""Noise injection (``noise_injection: [sigma, p]``), per image on the training device."""
from __future__ import annotations

import torch


def add_noise(x: torch.Tensor, sigma: float, p: float, kind: str = "gaussian", clip: bool = False) -> torch.Tensor:
    """Per-sample noise with probability p. Rician: |x + n1 + i n2| (magnitude MRI noise). ``clip``: the
    noisy images clipped to [0, 1] afterwards (the predecessor's recipe)."""
    if sigma <= 0 or p <= 0:
        return x
    hit = (torch.rand(x.shape[0], *([1] * (x.dim() - 1)), device=x.device) < p).to(x.dtype)
    if kind == "rician":
        noisy = torch.sqrt((x + sigma * torch.randn_like(x)) ** 2 + (sigma * torch.randn_like(x)) ** 2)
    else:
        noisy = x + sigma * torch.randn_like(x)
    if clip:
        noisy = noisy.clamp(0.0, 1.0)
    return hit * noisy + (1 - hit) * x
