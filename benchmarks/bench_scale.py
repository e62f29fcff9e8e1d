"""Indexing at scale: an ImageNet-sized tree and a ChestX-ray8-sized labels table (issue 16).

    python benchmarks/bench_scale.py [--classes 1000] [--per_class 1281] [--cx8 112120] [--pass 200000]

Creates, in a temporary folder removed afterwards, ``imagenet-1k/train/<wnid>/*.JPEG`` (empty files,
1000 x 1281 = 1.28 M by default; our_val/our_test one file per class) and a CX8-like tree of 112,120
empty PNGs with a Data_Entry_2017.csv of as many rows, then measures:

* cold index (ImageNet-1k task: listing, targets, cache write) vs the former ``rglob`` + ``is_file``
  listing timed on a tenth of the classes and scaled by 10 (it takes minutes on the whole tree);
* warm index (read back from the index cache, stamps checked);
* index bytes per sample beyond the path bytes vs a list of ``pathlib.Path`` + int targets
  (tracemalloc on 100 k samples);
* RSS and private memory of 4 DataLoader workers before and after a pass over 200 k samples that
  reads every sample's path and target (ours vs the same over a list of ``Path`` objects);
* the CX8 label join (112 k rows to 112 k files) vs the former per-file reader (csv module, one
  ``Path`` per row and per file).

The ImageNet task carries subjects (a regex, ~10 images each; issue 20): their bytes per sample, the
subject-overlap check and writing ``splits.csv.gz`` are printed too.

Prints ``name: ours X, baseline Y, ratio R``. Targets (2 cores): cold < 15 s, warm < 2 s, <= 100 B
per sample beyond the path bytes, worker RSS growth < 50 MB, join < 3 s. File creation is not timed.
"""
from __future__ import annotations

import argparse
import csv
import os
import shutil
import sys
import tempfile
import time
import tracemalloc
import warnings
from pathlib import Path

import numpy as np
from torch.utils.data import DataLoader, Dataset


from utility.config.tasks import load_task
from utility.data.batch_targets import csv_batch
from utility.data.index import index_task
from utility.data.index_cache import IndexCache
from utility.data.leakage import subject_overlap, write_membership
from utility.data.listing import find_images
from utility.data.targets import ReaderContext


def touch_many(folder: Path, names: list[str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for n in names:
        os.close(os.open(folder / n, os.O_CREAT | os.O_WRONLY, 0o644))


def make_imagenet(root: Path, classes: int, per_class: int) -> list[str]:
    wnids = [f"n{1440764 + 37 * c:08d}" for c in range(classes)]
    base = root / "imagenet-1k"
    for w in wnids:
        touch_many(base / "train" / w, [f"{w}_{i}.JPEG" for i in range(per_class)])
        for split in ("our_val", "our_test"):
            touch_many(base / split / w, [f"ILSVRC2012_val_{w}.JPEG"])
    (base / "LOC_synset_mapping.txt").write_text("".join(f"{w} class {w}\n" for w in wnids))
    return wnids


def make_cx8(root: Path, n: int) -> None:
    names = ["Atelectasis", "Effusion", "No Finding", "Mass", "Nodule", "Infiltration", "Hernia"]
    rng = np.random.default_rng(0)
    cx = root / "CX8"
    files = [f"{i // 4:08d}_{i % 4:03d}.png" for i in range(n)]
    test = set(files[::10])
    for k in range(12):
        part = [f for j, f in enumerate(files) if j % 12 == k]
        touch_many(cx / "train_val" / f"images_{k + 1:03d}", [f for f in part if f not in test])
        touch_many(cx / "test" / f"images_{k + 1:03d}", [f for f in part if f in test])
    with (cx / "Data_Entry_2017.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["Image Index", "Finding Labels", "Follow-up #", "Patient ID", "Patient Age"])
        for i, f in enumerate(files):
            labs = sorted(set(rng.choice(names, size=int(rng.integers(1, 4)))))
            w.writerow([f, "|".join(labs), i % 4, i // 4, 50])


def old_rglob(folder: Path, formats: list[str]) -> list[Path]:
    """The former utility/data/index.find_images."""
    fmts = {f.lower() for f in formats}
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in fmts)


def old_csv_join(files: list[Path], labels_file: Path) -> list[str]:
    """The former read_label_table + per-file csv_row (match: basename)."""
    with labels_file.open(newline="") as fh:
        rows = list(csv.reader(fh))
    table = {Path(r[0]).name: r[1].strip() for r in rows[1:] if len(r) > 1}
    return [table[Path(f).name] for f in files]


def memory(pid: int) -> tuple[float, float]:
    """(RSS, private = Private_Clean + Private_Dirty) of a process, in MB."""
    rss = priv = 0.0
    with open(f"/proc/{pid}/smaps_rollup") as fh:
        for line in fh:
            k, _, v = line.partition(":")
            if k == "Rss":
                rss = int(v.split()[0]) / 1024
            elif k in ("Private_Clean", "Private_Dirty"):
                priv += int(v.split()[0]) / 1024
    return rss, priv


class Touch(Dataset):
    """Reads sample i's path and target, as a dataset's __getitem__ does before loading."""

    def __init__(self, paths, targets) -> None:
        self.paths, self.targets = paths, targets

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        return len(str(self.paths[i])), int(self.targets[i])


def worker_growth(ds: Dataset, n_pass: int, seed: int = 0) -> tuple[float, float]:
    """Mean (RSS, private) growth in MB of 4 workers from their first batch to the end of a pass."""
    order = np.random.default_rng(seed).permutation(len(ds))[:n_pass].tolist()
    loader = DataLoader(ds, batch_size=1000, sampler=order, num_workers=4, persistent_workers=True,
                        multiprocessing_context="fork")
    it = iter(loader)
    next(it)
    pids = [w.pid for w in it._workers]  # type: ignore[attr-defined]
    time.sleep(0.5)
    before = [memory(p) for p in pids]
    for _ in it:
        pass
    after = [memory(p) for p in pids]
    del it, loader
    rss = float(np.mean([a[0] - b[0] for a, b in zip(after, before)]))
    priv = float(np.mean([a[1] - b[1] for a, b in zip(after, before)]))
    return rss, priv


def line(name: str, ours: float, base: float | None, unit: str, note: str = "") -> None:
    if base is None:
        print(f"{name}: ours {ours:.3g} {unit}{note}")
    else:
        ratio = f"{base / ours:.1f}" if ours > 0 else "n/a (ours <= 0)"
        print(f"{name}: ours {ours:.3g} {unit}, baseline {base:.3g} {unit}, ratio {ratio}{note}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--classes", type=int, default=1000)
    ap.add_argument("--per_class", type=int, default=1281)
    ap.add_argument("--cx8", type=int, default=112120)
    ap.add_argument("--pass", dest="n_pass", type=int, default=200_000)
    args = ap.parse_args()
    warnings.filterwarnings("ignore", message="This DataLoader will create")
    tmp = Path(tempfile.mkdtemp(prefix="bench-scale-"))
    try:
        t = time.perf_counter()
        make_imagenet(tmp, args.classes, args.per_class)
        make_cx8(tmp, args.cx8)
        print(f"info: created {args.classes * args.per_class:,} + {args.cx8:,} empty files in {tmp} "
              f"({time.perf_counter() - t:.0f} s, not timed below); {os.cpu_count()} CPUs, "
              f"load average {os.getloadavg()[0]:.1f}")
        cache = IndexCache(tmp / "index_cache")
        # subjects in the index (issue 20): about 10 images per subject, by a regex on the file name
        (tmp / "ImageNet-1k-subjects.yaml").write_text(
            'extends: ImageNet-1k\nname: ImageNet-1k-subjects\nsubject: {regex: "(n\\\\d{8}(?:_\\\\d*?)?)\\\\d?\\\\.JPEG$"}\n')
        task = load_task(str(tmp / "ImageNet-1k-subjects.yaml"))
        t = time.perf_counter()
        cold = index_task(task, tmp, seed=0, cache=cache)
        t_cold = time.perf_counter() - t
        train = cold.splits["train"]
        n = len(train)
        sub = max(1, args.classes // 10)
        t = time.perf_counter()
        for w in sorted((tmp / "imagenet-1k" / "train").iterdir())[:sub]:
            old_rglob(w, task.data_format)
        t_old = (time.perf_counter() - t) * args.classes / sub
        line("index_cold_s", t_cold, t_old, "s", f" ({n:,} files; baseline: rglob listing alone on "
             f"{sub} classes x {args.classes // sub}; target < 15 s)")
        t = time.perf_counter()
        warm = index_task(task, tmp, seed=0, cache=cache)
        t_warm = time.perf_counter() - t
        assert warm.how.startswith("from cache") and warm.splits["train"].paths == train.paths
        line("index_warm_s", t_warm, t_cold, "s", " (baseline: cold index; target < 2 s)")
        t = time.perf_counter()
        index_task(load_task("ImageNet-1k"), tmp, seed=0, cache=None)
        line("index_cold_without_subjects_s", time.perf_counter() - t, t_cold, "s",
             " (the same index without a subject rule and without the cache write; baseline: with subjects)")
        subj_bytes = train.subjects.nbytes / n
        line("subject_bytes_per_sample", subj_bytes, None, "B",
             f" (int32 code + share of the vocabulary; {train.subject_count():,} subjects; included below)")
        t = time.perf_counter()
        count, _ = subject_overlap(cold.splits)
        line("subject_overlap_check_s", time.perf_counter() - t, None, "s",
             f" ({count} shared: this tree has the same file names in our_val and our_test)")
        t = time.perf_counter()
        write_membership(tmp / "splits.csv.gz", cold.splits)
        line("splits_csv_gz_s", time.perf_counter() - t, None, "s",
             f" ({sum(len(s) for s in cold.splits.values()):,} rows, {(tmp / 'splits.csv.gz').stat().st_size / 1e6:.1f} MB)")
        path_bytes = len(train.paths.blob) - n  # minus the separators
        beyond = (train.nbytes - path_bytes) / n
        k = min(100_000, n)
        tracemalloc.start()
        old_paths = [Path(s) for s in train.paths.strings()[:k]]
        old_targets = [int(v) for v in train.targets[:k]]
        old_total = tracemalloc.get_traced_memory()[0] / k
        tracemalloc.stop()
        line("index_bytes_per_sample_beyond_path_bytes", beyond, old_total - path_bytes / n, "B",
             f" (path bytes {path_bytes / n:.0f} B/sample; baseline: list of Path + int, {old_total:.0f} B "
             "in total per sample; target <= 100)")
        del old_paths, old_targets
        n_pass = min(args.n_pass, n)
        ours_rss, ours_priv = worker_growth(Touch(train.paths, train.targets), n_pass)
        sub_strings = train.paths.strings()[:n_pass]
        base_ds = Touch([Path(s) for s in sub_strings], [int(v) for v in train.targets[:n_pass]])
        del sub_strings
        base_rss, base_priv = worker_growth(base_ds, n_pass)
        line("worker_rss_growth_MB", ours_rss, base_rss, "MB",
             f" (4 workers, pass over {n_pass:,} samples; baseline: the same over a list of {n_pass:,} Path "
             "objects; target < 50)")
        line("worker_private_memory_growth_MB", ours_priv, base_priv, "MB", " (copy-on-write pages copied)")
        del base_ds
        cx_task = load_task("CX8")
        files = find_images(tmp / "CX8" / "train_val", [".png"])
        ctx = ReaderContext(task=cx_task, data_dir=tmp / "CX8", split_dir=tmp / "CX8" / "train_val")
        t = time.perf_counter()
        lab = csv_batch(files, ctx)
        t_join = time.perf_counter() - t
        assert lab is not None and len(lab.codes) == len(files)
        path_list = list(files)
        t = time.perf_counter()
        old = old_csv_join(path_list, tmp / "CX8" / "Data_Entry_2017.csv")
        t_old_join = time.perf_counter() - t
        assert ["|".join(v) for v in (lab.values[c] for c in lab.codes[:50])] == old[:50]
        line("cx8_label_join_s", t_join, t_old_join, "s",
             f" ({len(files):,} files to a {args.cx8:,}-row CSV incl. reading it; target < 3 s)")
        t = time.perf_counter()
        cx = index_task(cx_task, tmp, seed=0, cache=IndexCache(tmp / "index_cache_cx8"))
        line("cx8_index_cold_s", time.perf_counter() - t, None, "s",
             f" (listing + join + encode + 90/10 carve-out; train {len(cx.splits['train']):,})")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
