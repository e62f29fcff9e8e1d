"""The shared memory-mapped cache (utility/data/cache.py) and the three opmodes end-to-end.

Every store lives in ``tmp_path`` (never /dev/shm). CPU only.
"""
from __future__ import annotations

import csv
import json
import multiprocessing as mp
import os
import shutil
from collections import namedtuple
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from conftest import make_folder_dataset, small_run_config, write_png, write_yaml
from utility.data.cache import SharedStore, store_key
from utility.data.dataset import ImageDataset, Preprocess
from utility.data.index import Split
from utility.errors import UserError

SHAPE = (24, 24)
PREP = Preprocess(3, SHAPE, "naive")


def _images(folder: Path, n: int, seed: int = 0, size: int = 32) -> list[Path]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        arr = rng.integers(0, 256, (size, size + i % 3), dtype=np.uint8)  # sizes differ: resize is real work
        out.append(write_png(folder / f"img_{i:03d}.png", arr))
    return out


def _dataset(paths, cache_dir=None, prep=PREP) -> ImageDataset:
    store = None
    if cache_dir is not None:
        store = SharedStore(paths, prep.channels, prep.shape, repr(prep), cache_dir=cache_dir)
    return ImageDataset(Split("s", list(paths), [i % 2 for i in range(len(paths))]), prep, False, 2, cache=store)


def _uncached(paths, prep=PREP) -> list[torch.Tensor]:
    ds = _dataset(paths, None, prep)
    return [ds[i]["image"] for i in range(len(paths))]


def _stores(cache_dir: Path) -> list[Path]:
    return sorted(p for p in cache_dir.iterdir() if p.is_dir()) if cache_dir.is_dir() else []


# ----------------------------------------------------------------------------- equality and filling

def test_cached_item_equals_uncached(tmp_path):
    paths = _images(tmp_path / "img", 6)
    ref = _uncached(paths)
    ds = _dataset(paths, tmp_path / "cache")
    assert len(ds.cache) == 0
    first = [ds[i] for i in range(len(paths))]  # fills
    assert ds.cache.complete
    for i, s in enumerate(first):
        assert s["valid"] and s["bad"] == ""
        assert torch.equal(s["image"], ref[i])
        assert torch.equal(ds.cache.get(i), ref[i])
        assert torch.equal(ds[i]["image"], ref[i])  # served from the store


def test_live_cache_second_epoch_reads_the_store(tmp_path):
    paths = _images(tmp_path / "img", 24)
    ds = _dataset(paths, tmp_path / "cache")

    def epoch() -> dict[int, torch.Tensor]:
        got = {}
        for b in DataLoader(ds, batch_size=4, num_workers=2, shuffle=False):
            assert bool(b["valid"].all()), b["bad"]
            for i, x in zip(b["index"].tolist(), b["image"]):
                got[i] = x.clone()
        return got

    e1 = epoch()
    assert len(ds.cache) == len(paths) and ds.cache.complete  # workers filled every flag
    # destroy the sources: epoch 2 can only succeed from the store
    for k, p in enumerate(paths):
        if k % 2:
            p.unlink()
        else:
            p.write_bytes(b"corrupted" * 50)
    e2 = epoch()
    assert sorted(e2) == list(range(len(paths)))
    for i in e1:
        assert torch.equal(e1[i], e2[i])
    # and without the store the same dataset now fails: the check above is not vacuous
    assert not _dataset(paths)[0]["valid"]


def _fill(paths, cache_dir, order, barrier) -> None:
    ds = _dataset(paths, cache_dir)
    barrier.wait()
    for i in order:
        ds[i]


@pytest.mark.parametrize("mode", ["both_all", "halves"])
def test_two_processes_fill_one_store(tmp_path, mode):
    paths = _images(tmp_path / "img", 40)
    cache_dir = tmp_path / "cache"
    n = len(paths)
    if mode == "both_all":
        orders = [list(range(n)), list(reversed(range(n)))]
    else:
        orders = [list(range(0, n, 2)), list(range(1, n, 2))]
    ctx = mp.get_context("fork")
    barrier = ctx.Barrier(2)
    procs = [ctx.Process(target=_fill, args=(paths, cache_dir, o, barrier)) for o in orders]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    assert len(_stores(cache_dir)) == 1
    store = SharedStore(paths, 3, SHAPE, repr(PREP), cache_dir=cache_dir)  # a later "run"
    assert len(store) == n and store.complete  # before any read
    ref = _uncached(paths)
    for i in range(n):
        assert torch.equal(store.get(i), ref[i])


def test_consecutive_run_reuses_store(tmp_path, monkeypatch):
    paths = _images(tmp_path / "img", 8)
    cache_dir = tmp_path / "cache"
    ds = _dataset(paths, cache_dir)
    for i in range(len(paths)):
        ds[i]
    ref = [ds.cache.get(i).clone() for i in range(len(paths))]
    del ds
    again = _dataset(paths, cache_dir)
    assert len(again.cache) == len(paths)  # filled before any read
    assert again.cache.key == store_key(paths, repr(PREP))
    import utility.data.dataset as dsmod

    def no_read(path):
        raise AssertionError(f"{path} read although it is cached")

    monkeypatch.setattr(dsmod, "read_image", no_read)
    for i in range(len(paths)):
        assert torch.equal(again[i]["image"], ref[i])
    assert len(_stores(cache_dir)) == 1


# ----------------------------------------------------------------------------- keys

def test_changed_file_or_preprocessing_gives_new_store(tmp_path):
    paths = _images(tmp_path / "img", 4)
    cache_dir = tmp_path / "cache"
    k0 = store_key(paths, repr(PREP))
    assert store_key(list(paths), repr(PREP)) == k0  # stable
    ds = _dataset(paths, cache_dir)
    for i in range(4):
        ds[i]
    # mtime only
    st = paths[1].stat()
    os.utime(paths[1], ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    k_mtime = store_key(paths, repr(PREP))
    assert k_mtime != k0
    # size (new content in the same file)
    rng = np.random.default_rng(99)
    write_png(paths[2], rng.integers(0, 256, (40, 40), dtype=np.uint8))
    k_size = store_key(paths, repr(PREP))
    assert k_size not in (k0, k_mtime)
    # preprocessing
    for other in (Preprocess(3, SHAPE, "imagenet"), Preprocess(1, SHAPE, "naive"), Preprocess(3, (16, 16), "naive"),
                  Preprocess(3, SHAPE, "windowed", (0.0, 100.0)), Preprocess(3, SHAPE, "windowed", (0.0, 101.0))):
        assert store_key(paths, repr(other)) != k_size
    # the new store is empty and serves the new content, never the stale one
    fresh = _dataset(paths, cache_dir)
    assert fresh.cache.key == k_size and len(fresh.cache) == 0
    ref = _uncached(paths)
    assert torch.equal(fresh[2]["image"], ref[2])
    assert not torch.equal(ref[2], ds.cache.get(2))
    assert len(_stores(cache_dir)) == 2


@pytest.mark.parametrize("damage", ["truncate_data", "truncate_flags", "corrupt_meta", "foreign_meta",
                                    "missing_meta"])
def test_damaged_store_rebuilt(tmp_path, damage):
    paths = _images(tmp_path / "img", 5)
    cache_dir = tmp_path / "cache"
    ds = _dataset(paths, cache_dir)
    for i in range(5):
        ds[i]
    d = ds.cache.dir
    nbytes = (d / "data.f32").stat().st_size
    del ds
    if damage == "truncate_data":
        with open(d / "data.f32", "r+b") as fh:
            fh.truncate(nbytes // 2)
    elif damage == "truncate_flags":
        with open(d / "filled.u8", "r+b") as fh:
            fh.truncate(2)
    elif damage == "corrupt_meta":
        (d / "meta.json").write_text('{"version": 1, "n": ')
    elif damage == "foreign_meta":
        meta = json.loads((d / "meta.json").read_text())
        meta["shape"] = [3, 99, 99]
        (d / "meta.json").write_text(json.dumps(meta))
    else:
        (d / "meta.json").unlink()
    again = _dataset(paths, cache_dir)
    assert again.cache.dir == d
    assert len(again.cache) == 0  # rebuilt: nothing of the damaged store is trusted
    assert (d / "data.f32").stat().st_size == nbytes
    assert json.loads((d / "meta.json").read_text()) == again.cache.meta
    ref = _uncached(paths)
    for i in range(5):
        assert torch.equal(again[i]["image"], ref[i])
    assert again.cache.complete


# ----------------------------------------------------------------------------- size check

def _tiny_disk(monkeypatch, free: int) -> None:
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10 * free, 9 * free, free))


def test_cache_that_cannot_fit_is_refused(tmp_path, monkeypatch):
    paths = _images(tmp_path / "img", 4)
    _tiny_disk(monkeypatch, 1000)  # 4 x 3 x 24 x 24 x 4 bytes = 27,648 needed
    with pytest.raises(UserError, match="GiB") as exc:
        SharedStore(paths, 3, SHAPE, repr(PREP), cache_dir=tmp_path / "cache", what="tiny split 'train'")
    msg = str(exc.value)
    assert "tiny split 'train'" in msg and "opmode: disk" in msg and str(tmp_path / "cache") in msg
    assert _stores(tmp_path / "cache") == []
    _tiny_disk(monkeypatch, 10**9)
    assert SharedStore(paths, 3, SHAPE, repr(PREP), cache_dir=tmp_path / "cache").n == 4


def test_cannot_fit_fails_before_any_image_is_read(tmp_path, monkeypatch):
    """build_data refuses up front (no hour of training before the error)."""
    import utility.data.dataset as dsmod
    from utility.methods.registry import pipeline_for
    from utility.runs.supervised_data import build_data
    from utility.config.schemas import FTEConfig
    from utility.config.tasks import load_task

    from conftest import task_dict

    make_folder_dataset(tmp_path / "data" / "tiny", ["a", "b"], 4)
    task_path = write_yaml(tmp_path / "tiny.yaml", task_dict())
    cfg = FTEConfig(**small_run_config(task=str(task_path), data_root=str(tmp_path / "data"),
                                       opmode="pre_cache", cache_dir=str(tmp_path / "cache")))
    monkeypatch.setattr(dsmod, "read_image", lambda p: (_ for _ in ()).throw(AssertionError("read")))
    _tiny_disk(monkeypatch, 100)
    with pytest.raises(UserError, match="cache"):
        build_data(cfg, load_task(str(task_path)), torch.device("cpu"), pipeline_for("multiclass"))
    assert _stores(tmp_path / "cache") == []


# ----------------------------------------------------------------------------- end-to-end opmodes

@pytest.fixture
def e2e(tmp_path):
    """train 2x8 (val carved: 25 %), test 2x3: with batch 8 a full run has 2 train steps per epoch,
    and val and test fit in one batch (so short_training still sees every val/test file)."""
    from conftest import task_dict

    data_root = tmp_path / "data"
    make_folder_dataset(data_root / "tiny", ["bar_h", "bar_v"], 8, splits=("train",))
    make_folder_dataset(data_root / "tiny", ["bar_h", "bar_v"], 3, splits=("test",))
    task = write_yaml(tmp_path / "tasks" / "tiny.yaml", task_dict())
    config = write_yaml(tmp_path / "cfg" / "run.yaml",
                        small_run_config(task=task, model_name="timm:test_resnet", epochs=2, batch_size=8))
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    return {"data_root": data_root, "out": tmp_path / "out", "cache": tmp_path / "cache", "task": task,
            "config": config, "cwd": cwd}


def _splits(e2e) -> dict[str, list[Path]]:
    from utility.data.index import index_task
    from utility.config.tasks import load_task

    idx = index_task(load_task(str(e2e["task"])), e2e["data_root"], seed=0)
    return {k: [Path(p) for p in s.paths] for k, s in idx.splits.items()}


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def _cm_total(path: Path) -> int:
    rows = list(csv.reader(path.open()))
    return sum(int(v) for r in rows[1:] for v in r[1:])


def _check_run(e2e, run_dir: Path, steps_per_epoch: int) -> None:
    splits = _splits(e2e)
    assert len(splits["val"]) == 4 and len(splits["test"]) == 6
    assert not set(splits["val"]) & set(splits["test"])
    assert (run_dir / "test.log").is_file()
    test_row = _rows(run_dir / "test.log")[0]
    assert 0 <= float(test_row["accuracy"]) <= 1
    train = _rows(run_dir / "train.log")
    assert [(r["epoch"], r["step"]) for r in train] == [
        (str(e), str(s)) for e in (1, 2) for s in range(1, steps_per_epoch + 1)]
    assert len(_rows(run_dir / "val.log")) == 2
    # the test phase evaluated the test split, all of it, and nothing else
    preds = [Path(r["file"]) for r in _rows(run_dir / "predictions_test_last.csv")]
    assert sorted(preds) == sorted(splits["test"])
    cms = run_dir / "confusion_matrices"
    assert _cm_total(cms / "test_last.csv") == len(splits["test"])
    for e in (1, 2):
        assert _cm_total(cms / f"val_epoch_{e}.csv") == len(splits["val"])


# live_cache end to end (3 stores of 4, 6 and 12 items, every one filled): test_live_cache_full_run_fills_every_store
@pytest.mark.parametrize("opmode", ["pre_cache", "disk"])
def test_opmode_end_to_end_short_training(e2e, run_finetune, opmode):
    run_dir = e2e["out"] / "finetuning" / "t" / opmode
    proc = run_finetune(["-c", e2e["config"], "--task", e2e["task"], "--data_root", e2e["data_root"],
                         "--output_root", e2e["out"], "--cache_dir", e2e["cache"], "--opmode", opmode,
                         "--num_workers", 2, "--short_training", "true", "--name", f"t/{opmode}"],
                        cwd=e2e["cwd"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    _check_run(e2e, run_dir, steps_per_epoch=1)
    stores = _stores(e2e["cache"])
    if opmode == "disk":
        assert stores == []
    else:
        assert len(stores) == 3  # train, val, test
        sizes = sorted(json.loads((s / "meta.json").read_text())["n"] for s in stores)
        assert sizes == [4, 6, 12]
        if opmode == "pre_cache":  # filled before training, whatever short_training reads
            for s in stores:
                assert np.fromfile(s / "filled.u8", dtype=np.uint8).all()


def test_live_cache_full_run_fills_every_store(e2e, run_finetune):
    run_dir = e2e["out"] / "finetuning" / "t" / "full"
    proc = run_finetune(["-c", e2e["config"], "--task", e2e["task"], "--data_root", e2e["data_root"],
                         "--output_root", e2e["out"], "--cache_dir", e2e["cache"], "--opmode", "live_cache",
                         "--num_workers", 2, "--name", "t/full"], cwd=e2e["cwd"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    _check_run(e2e, run_dir, steps_per_epoch=2)
    stores = _stores(e2e["cache"])
    assert len(stores) == 3  # train, val, test
    assert sorted(json.loads((s / "meta.json").read_text())["n"] for s in stores) == [4, 6, 12]
    for s in stores:
        assert np.fromfile(s / "filled.u8", dtype=np.uint8).all()
