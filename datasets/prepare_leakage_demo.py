"""Write the leakage demonstration data (config/studies/leakage_demo.yaml, docs/subjects.md): patients
that each contribute several near-identical slices, and a stand-in "pretrained" encoder.

    datasets/leakage/all/<class>/p<patient>_s<slice>.png      40 patients x 6 slices, 16 px
    datasets/leakage/encoder_lowpass.tar                      ResNet-18 encoder (see below)

Each patient has an individual appearance (smooth blobs and a fixed texture); its slices differ by a
one-pixel shift and a little noise. The class is a patient property that the images do NOT show (as
an outcome that no scan predicts): on new patients every model is at chance (50 %). A split drawn per
image puts slices of one patient on both sides, so a model that recognises patients scores well on
validation and test images anyway.

``encoder_lowpass.tar`` stands in for a pretraining source: a seeded random ResNet-18 whose first
layer is a smoothing filter (one sign and a random gain per channel). It keeps the patients' smooth
anatomy, so it recognises patients better than a random encoder; it knows nothing about the class.
Nothing is downloaded; the same seed writes the same files. Existing files are left as they are.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image


def patient(rng: np.random.Generator, size: int) -> np.ndarray:
    """A patient's base image in [0, 1]: three smooth blobs plus a fixed texture."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    img = np.zeros((size, size), np.float32)
    for _ in range(3):
        cy, cx = rng.uniform(0, size, 2)
        w = rng.uniform(size / 8, size / 3)
        img += rng.uniform(0.3, 1.0) * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * w * w))
    img += 0.35 * rng.random((size, size)).astype(np.float32)
    return img / img.max()


def slices(img: np.ndarray, n: int, rng: np.random.Generator) -> list[np.ndarray]:
    out = []
    for _ in range(n):
        s = np.roll(img, tuple(rng.integers(-1, 2, 2)), axis=(0, 1)) + rng.normal(0, 0.02, img.shape)
        out.append((np.clip(s / 1.3, 0, 1) * 255).astype(np.uint8))
    return out


def write(out: Path, patients: int = 40, per_patient: int = 6, size: int = 16, seed: int = 0) -> int:
    rng = np.random.default_rng(seed)
    written = 0
    labels = rng.permutation(np.arange(patients) % 2)  # half each; not visible in the images
    for p in range(patients):
        base = patient(rng, size)
        label = int(labels[p])
        for k, img in enumerate(slices(base, per_patient, rng)):
            path = out / "all" / ("pos" if label else "neg") / f"p{p:03d}_s{k}.png"
            if path.exists():
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img, mode="L").save(path)
            written += 1
    return written + write_encoder(out / "encoder_lowpass.tar", seed)


def write_encoder(path: Path, seed: int) -> int:
    """The stand-in pretrained encoder (module docstring); 0 when it exists."""
    if path.exists():
        return 0
    import torch
    import torchvision

    torch.manual_seed(seed)
    enc = torchvision.models.resnet18(weights=None)  # the project's encoder: torchvision keys, fc removed
    enc.fc = torch.nn.Identity()
    with torch.no_grad():
        w = enc.conv1.weight
        sign = torch.sign(w.sum(dim=(1, 2, 3), keepdim=True))
        w.copy_(w.abs().mean() * sign.expand_as(w) * torch.rand(w.shape[0], 1, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(enc.state_dict(), path)
    return 1


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "leakage")
    args = ap.parse_args()
    n = write(args.out)
    print(f"leakage demo data: {n} new files written to {args.out}" if n else f"leakage demo data already in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
