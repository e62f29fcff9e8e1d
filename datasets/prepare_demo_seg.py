"""Write the embedded segmentation demo: synthetic phantoms in the generic segmentation layout.

    datasets/demo_seg/{train,val,test}/images/phantom_<n>.png   grayscale 64x64
    datasets/demo_seg/{train,val,test}/masks/phantom_<n>.png    label map: 0 background, 1 organ, 2 lesion

Each image holds one or two gray ellipses ("organs", random size, position, angle and brightness) on a
darker textured background, with up to three brighter disks ("lesions") inside them, plus Gaussian
noise and a smooth intensity bias. Seeded; nothing is downloaded; existing files are left as they are.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image


def phantom(rng: np.random.Generator, size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    img = rng.uniform(0.05, 0.2) + 0.05 * rng.standard_normal((size, size))
    img += 0.1 * np.sin(xx / size * rng.uniform(1, 4) + rng.uniform(0, 6))  # smooth bias field
    mask = np.zeros((size, size), dtype=np.uint8)
    for _ in range(rng.integers(1, 3)):
        cy, cx = rng.uniform(0.3, 0.7, size=2) * size
        ay, ax = rng.uniform(0.15, 0.3, size=2) * size
        t = rng.uniform(0, np.pi)
        dy, dx = yy - cy, xx - cx
        u, v = dx * np.cos(t) + dy * np.sin(t), -dx * np.sin(t) + dy * np.cos(t)
        organ = (u / ax) ** 2 + (v / ay) ** 2 <= 1
        img[organ] = rng.uniform(0.4, 0.55) + 0.03 * rng.standard_normal(int(organ.sum()))
        mask[organ & (mask == 0)] = 1
        for _ in range(rng.integers(0, 4)):
            inside = np.argwhere(organ)
            ly, lx = inside[rng.integers(len(inside))]
            r = rng.uniform(2.5, 6)
            lesion = ((yy - ly) ** 2 + (xx - lx) ** 2 <= r * r) & organ
            img[lesion] = rng.uniform(0.75, 0.95)
            mask[lesion] = 2
    img = img + rng.uniform(0.02, 0.06) * rng.standard_normal((size, size))
    return (np.clip(img, 0, 1) * 255).astype(np.uint8), mask


def write_demo(out: Path, counts: dict[str, int], size: int = 64, seed: int = 0) -> int:
    written = 0
    for s_i, (split, n) in enumerate(counts.items()):
        rng = np.random.default_rng([seed, s_i])
        for i in range(n):
            img, mask = phantom(rng, size)
            ip, mp = out / split / "images" / f"phantom_{i:04d}.png", out / split / "masks" / f"phantom_{i:04d}.png"
            if ip.exists() and mp.exists():
                continue
            ip.parent.mkdir(parents=True, exist_ok=True)
            mp.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img, mode="L").save(ip)
            Image.fromarray(mask, mode="L").save(mp)
            written += 1
    return written


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "demo_seg")
    ap.add_argument("--train", type=int, default=320)
    ap.add_argument("--val", type=int, default=64)
    ap.add_argument("--test", type=int, default=64)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    n = write_demo(a.out, {"train": a.train, "val": a.val, "test": a.test}, a.size, a.seed)
    print(f"demo segmentation data in {a.out} ({n} new image/mask pairs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
