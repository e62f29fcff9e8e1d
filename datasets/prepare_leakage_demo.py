"""Write the leakage demonstration data (config/studies/leakage_demo.yaml, docs/subjects.md): patients
that each contribute several near-identical slices.

    datasets/leakage/all/<class>/p<patient>_s<slice>.png      labelled patients (the tasks' images)
    datasets/leakage/unlabeled/u<patient>_s<slice>.png         other patients (pretraining only)

Each patient has a strong individual appearance (smooth blobs and a fixed texture); its slices differ
by a one-pixel shift and a little noise. The class is a patient property shown by a faint spot, and
for a share of the patients (``flip``) the recorded label disagrees with the spot, as labels in a
clinic sometimes do. A model that recognises patients can score on a validation image whose
neighbouring slices it trained on; on new patients only the spot helps. Nothing is downloaded; the
same seed writes the same files. Safe to run again: existing files are left as they are.
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


def slices(base: np.ndarray, spot: bool, n: int, rng: np.random.Generator) -> list[np.ndarray]:
    size = base.shape[0]
    img = base.copy()
    if spot:  # the class cue: a faint spot at a fixed place
        c = size // 2
        img[c - 2:c + 2, c - 2:c + 2] += 0.25
    out = []
    for _ in range(n):
        s = np.roll(img, tuple(rng.integers(-1, 2, 2)), axis=(0, 1)) + rng.normal(0, 0.02, img.shape)
        out.append((np.clip(s / 1.3, 0, 1) * 255).astype(np.uint8))
    return out


def write(out: Path, patients: int = 40, unlabeled: int = 40, per_patient: int = 6, size: int = 16,
          flip: float = 0.3, seed: int = 0) -> int:
    rng = np.random.default_rng(seed)
    written = 0
    for p in range(patients + unlabeled):
        base = patient(rng, size)
        spot = bool(rng.random() < 0.5)
        label = int(spot) ^ int(rng.random() < flip)
        imgs = slices(base, spot, per_patient, rng)
        for k, img in enumerate(imgs):
            if p < patients:
                path = out / "all" / ("pos" if label else "neg") / f"p{p:03d}_s{k}.png"
            else:
                path = out / "unlabeled" / f"u{p:03d}_s{k}.png"
            if path.exists():
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img, mode="L").save(path)
            written += 1
    return written


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "leakage")
    args = ap.parse_args()
    n = write(args.out)
    print(f"leakage demo data: {n} new images written to {args.out}" if n else f"leakage demo data already in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
