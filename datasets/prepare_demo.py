"""Write the embedded demo data: scikit-learn's handwritten digits (1,797 real 8x8 scans that ship
inside the scikit-learn package) as 32x32 PNGs in the folder-per-class layout.

    datasets/digits/{train,test}/<digit>/digit_<n>.png      (80 % / 20 %, stratified, seeded)

Nothing is downloaded. Safe to run again: existing files are left as they are.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image


def write_digits(out: Path, size: int = 32, test_fraction: float = 0.2, seed: int = 0) -> int:
    from sklearn.datasets import load_digits

    digits = load_digits()
    rng = np.random.default_rng(seed)
    written = 0
    for label in range(10):
        idx = np.flatnonzero(digits.target == label)
        idx = rng.permutation(idx)
        n_test = int(round(test_fraction * len(idx)))
        for k, i in enumerate(idx):
            split = "test" if k < n_test else "train"
            path = out / split / str(label) / f"digit_{i:04d}.png"
            if path.exists():
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            img = (digits.images[i] / 16.0 * 255).astype(np.uint8)
            Image.fromarray(img, mode="L").resize((size, size), Image.BICUBIC).save(path)
            written += 1
    return written


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "digits")
    ap.add_argument("--size", type=int, default=32)
    args = ap.parse_args(argv)
    n = write_digits(args.out, args.size)
    print(f"demo data: {n} new images written to {args.out}" if n else f"demo data already in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
