"""Write the leakage demonstration data (config/studies/leakage_demo.yaml, docs/subjects.md): patients
that each contribute several near-identical slices, and two stand-in "pretrained" encoders, one that
recognises patients and one that sees the class signal.

    datasets/leakdemo/all/<class>/p<patient>_s<slice>.png     60 patients x 6 slices, 16 px
    datasets/leakdemo/encoder_memorizer.tar                   ResNet-18 encoders (see below)
    datasets/leakdemo/encoder_signal.tar

Each patient has a latent severity z; the label is z plus patient-level noise > 0, so the images show
the class only in part (no model can be perfect on new patients). A slice is
    z * (a centred, smoothly windowed left-right ramp)      low frequency: the class signal
  + slice-own smooth noise                                   low frequency: hides part of the signal
  + the patient's fixed fine texture                         high frequency: the patient's identity
  + a little pixel noise,
so the slices of one patient are near-identical and recognisable by their texture.

- ``encoder_memorizer.tar``: a seeded random ResNet-18 whose first-layer kernels are projected off
  the polynomials of degree <= 2, so it passes fine texture (patient identity) and almost none of
  the smooth ramp (the class); its first layer has a large gain, so its features are several times
  larger than the Signal encoder's and a short linear probe fits (memorises) them quickly.
- ``encoder_signal.tar``: a seeded random ResNet-18 whose first layer smooths (one sign and a random
  gain per channel), so it passes the ramp and little of the texture.

Split per image, a patient's sibling slices sit in train, so the Memorizer scores high on validation
and test and looks like the best source; split per patient it falls to about chance and the Signal
encoder wins. Nothing is downloaded; the same seed writes the same files. Existing files are left as
they are (the directory is new: the earlier layout under datasets/leakage is not read).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image

RAMP, SLICE_NOISE, TEXTURE, LABEL_NOISE = 6.0, 0.4, 0.6, 0.8   # amplitudes (module docstring)


def smooth_noise(rng: np.random.Generator, size: int, sigma: float) -> np.ndarray:
    """Unit-variance Gaussian noise low-passed in frequency (sigma in cycles per pixel)."""
    k = np.fft.fftfreq(size)
    gain = np.exp(-(k[:, None] ** 2 + k[None, :] ** 2) / (2 * sigma ** 2))
    out = np.real(np.fft.ifft2(np.fft.fft2(rng.normal(size=(size, size))) * gain))
    return out / out.std()


def slices(rng: np.random.Generator, z: float, n: int, size: int) -> list[np.ndarray]:
    """n slices of one patient as 8-bit images (module docstring)."""
    yy, xx = np.mgrid[0:size, 0:size] / (size - 1) - 0.5
    ramp = RAMP * xx * np.exp(-(xx ** 2 + yy ** 2) / (2 * 0.18 ** 2))   # flat at the border
    checker = (-1.0) ** np.add.outer(np.arange(size), np.arange(size))
    texture = smooth_noise(rng, size, 0.12) * checker                 # moved to high frequencies
    out = []
    for _ in range(n):
        img = z * ramp + SLICE_NOISE * smooth_noise(rng, size, 0.06) + TEXTURE * texture \
            + 0.03 * rng.normal(size=(size, size))
        img = (img - img.min()) / (img.max() - img.min())
        out.append(np.round(img * 255).astype(np.uint8))
    return out


def write(out: Path, patients: int = 60, per_patient: int = 6, size: int = 16, seed: int = 0) -> int:
    rng = np.random.default_rng(seed)
    z = rng.normal(size=patients)
    labels = (z + LABEL_NOISE * rng.normal(size=patients) > 0).astype(int)
    written = 0
    for p in range(patients):
        for k, img in enumerate(slices(rng, float(z[p]), per_patient, size)):
            path = out / "all" / ("pos" if labels[p] else "neg") / f"p{p:03d}_s{k}.png"
            if path.exists():
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img, mode="L").save(path)
            written += 1
    for kind in ("memorizer", "signal"):
        written += write_encoder(out / f"encoder_{kind}.tar", kind, seed)
    return written


def write_encoder(path: Path, kind: str, seed: int) -> int:
    """One stand-in pretrained encoder (module docstring); 0 when it exists."""
    if path.exists():
        return 0
    import torch
    import torchvision

    torch.manual_seed(seed)
    enc = torchvision.models.resnet18(weights=None)  # the project's encoder: torchvision keys, fc removed
    enc.fc = torch.nn.Identity()
    with torch.no_grad():
        w = enc.conv1.weight
        if kind == "signal":
            sign = torch.sign(w.sum(dim=(1, 2, 3), keepdim=True))
            w.copy_(w.abs().mean() * sign.expand_as(w) * torch.rand(w.shape[0], 1, 1, 1))
        else:  # remove each 7x7 kernel's part along 1, x, y, x^2, y^2, xy: smooth ramps pass ~nothing
            yy, xx = torch.meshgrid(torch.arange(7.0) - 3, torch.arange(7.0) - 3, indexing="ij")
            basis = torch.stack([torch.ones(7, 7), xx, yy, xx * xx, yy * yy, xx * yy]).reshape(6, 49)
            q, _ = torch.linalg.qr(basis.T)
            v = w.reshape(-1, 49)
            w.copy_(30 * (v - (v @ q) @ q.T).reshape(w.shape))
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(enc.state_dict(), path)
    return 1


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "leakdemo")
    args = ap.parse_args()
    n = write(args.out)
    print(f"leakage demo data: {n} new files written to {args.out}" if n else f"leakage demo data already in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
