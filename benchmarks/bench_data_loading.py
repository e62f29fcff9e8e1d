"""Epoch-2 loading throughput: shared memory-mapped cache (live_cache) vs disk vs a Manager-dict cache.

    python benchmarks/bench_data_loading.py [--n 2000] [--size 256] [--workers 2] [--batch 32]
                                            [--data DIR] [--repeats 2]

Same PNG dataset (generated once into --data, default $TMPDIR/mi-bench-png-<n>-<size>, and reused),
same ImageDataset + Preprocess (gray, shape_desired size x size, naive normalizer), same DataLoader
(workers, batch, shuffled order). Each mode runs epoch 1 (fills the cache / warms the page cache),
then epoch 2 is timed (best of --repeats epochs after the first):

* live_cache: SharedStore in a temporary cache_dir (removed afterwards).
* disk: opmode disk, every image read and preprocessed every epoch.
* manager_dict: the predecessor's cache, written here: a multiprocessing.Manager().dict() shared with
  the workers; __getitem__ looks the index up in the proxy dict and on a miss loads + preprocesses
  and stores the array into it (every hit is pickled through the manager process).

Prints ``name: ours X, baseline Y, ratio R`` (images/s; targets: live_cache >= 10x disk and >= 5x the
Manager-dict cache), plus an ``info:`` line with the filled store read without workers.
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset


from utility.data.cache import SharedStore
from utility.data.dataset import ImageDataset, Preprocess
from utility.data.loader import CacheAwareLoader
from utility.data.sampler import EpochSampler
from utility.data.index import Split
from utility.data.io import read_image


def make_dataset(folder: Path, n: int, size: int) -> list[Path]:
    """n gray PNGs (noise over a random gradient); reused when already there."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"img_{i:05d}.png" for i in range(n)]
    done = folder / ".complete"
    if done.exists() and all(p.exists() for p in paths):
        return paths
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    t0 = time.perf_counter()
    for i, p in enumerate(paths):
        a, b = rng.uniform(-1, 1, 2)
        grad = 128 + 100 * (a * xx + b * yy) / 2
        img = np.clip(grad + rng.normal(0, 25, (size, size)), 0, 255).astype(np.uint8)
        Image.fromarray(img).save(p)
    done.write_text(f"{n} {size}\n")
    print(f"generated {n} PNGs of {size}x{size} in {folder} ({time.perf_counter() - t0:.1f} s)")
    return paths


class ManagerDictDataset(Dataset):
    """The predecessor's live cache: a Manager dict proxy shared with the loader workers."""

    def __init__(self, split: Split, prep: Preprocess, shared) -> None:
        self.split = split
        self.prep = prep
        self.cache = shared

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, i: int) -> dict:
        arr = self.cache.get(i)
        if arr is None:
            arr = self.prep(read_image(self.split.paths[i])).numpy()
            self.cache[i] = arr
        x = torch.from_numpy(arr)
        return {"image": x, "target": torch.tensor(int(self.split.targets[i])), "index": i, "valid": True,
                "bad": ""}


def epoch(ds: Dataset, workers: int, batch: int, seed: int) -> tuple[float, int]:
    # the loader training builds: a filled cache is served in-process, anything else through workers
    loader = CacheAwareLoader(DataLoader(ds, batch_size=batch, sampler=EpochSampler(len(ds), seed),
                                         num_workers=workers, prefetch_factor=2 if workers else None))
    n = 0
    t0 = time.perf_counter()
    for b in loader:
        n += int(b["image"].shape[0])
    return time.perf_counter() - t0, n


def measure(name: str, ds: Dataset, args) -> float:
    t1, n1 = epoch(ds, args.workers, args.batch, 0)
    times = []
    for r in range(args.repeats):
        t, n = epoch(ds, args.workers, args.batch, 1 + r)
        assert n == n1 == len(ds)
        times.append(t)
    best = min(times)
    print(f"  {name:13s} epoch 1 {n1 / t1:9.0f} img/s   epoch 2 {n / best:9.0f} img/s "
          f"({', '.join(f'{t:.2f}' for t in times)} s)", flush=True)
    return n / best


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--data", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)
    data = args.data or Path(tempfile.gettempdir()) / f"mi-bench-png-{args.n}-{args.size}"
    paths = make_dataset(data, args.n, args.size)
    split = Split("train", paths, [i % 2 for i in range(len(paths))])
    prep = Preprocess(1, (args.size, args.size), "naive")
    print(f"{len(paths)} PNGs {args.size}x{args.size}, {args.workers} workers, batch {args.batch}, "
          f"{os.cpu_count()} CPUs; epoch-2 throughput:", flush=True)

    cache_dir = Path(tempfile.mkdtemp(prefix="mi-bench-cache-"))
    try:
        store = SharedStore(paths, prep.channels, prep.shape, repr(prep), cache_dir=cache_dir, what="bench")
        live = measure("live_cache", ImageDataset(split, prep, False, 2, cache=store), args)
        assert store.complete
    finally:
        shutil.rmtree(cache_dir, ignore_errors=True)
    disk = measure("disk", ImageDataset(split, prep, False, 2), args)
    with mp.Manager() as manager:
        shared = manager.dict()
        mgr = measure("manager_dict", ManagerDictDataset(split, prep, shared), args)
        assert len(shared) == len(paths)

    print(f"epoch2_images_per_s_vs_disk: ours {live:.0f}, baseline {disk:.0f}, ratio {live / disk:.2f} "
          f"(target >= 10)")
    print(f"epoch2_images_per_s_vs_manager_dict: ours {live:.0f}, baseline {mgr:.0f}, ratio {live / mgr:.2f} "
          f"(target >= 5)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
