"""Same config and seed -> same numbers, whatever the cache state, opmode, num_workers, or a kill and
resume in the middle of an epoch. Random augmentation is on in every case (device-side Kornia
drawing from the global RNG, or per-sample albumentations in loader workers), because that is where
loading used to shift the random streams: the ordinary DataLoader path drew a seed from the global
generator, the filled-cache path did not, and worker processes drew per-worker, not per-sample.
The resume tests (SIGKILL mid-epoch and at an epoch boundary) compare with one uninterrupted run."""
from __future__ import annotations

import signal
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from conftest import HANG_GUARD_S, kill_when
from test_finetune_e2e import (assert_complete_logs, assert_same_weights, base_config, child_env, command,
                               make_stripes_dataset, ok, read_csv, run, run_here, train_rows_of_epoch,
                               write_yaml)
from test_simclr_e2e import make_unlabeled_tree, run_simclr
from test_simclr_e2e import base_config as simclr_config

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def aug_task(path: Path) -> Path:
    return write_yaml(path, {
        "name": "toy", "type": "multiclass", "root": "toy", "data_format": [".png"],
        "layout": {"reader": "folders"},
        "splits": {"train": {"dir": "train"}, "val": {"dir": "val"}, "test": {"dir": "test"}},
        "normalizer": "naive", "shape_desired": [16, 16], "augmentation": "default",
        "primary_metric": "accuracy"})


def losses(rd: Path) -> list[float]:
    _, rows = read_csv(rd / "train.log")
    return [float(r["loss"]) for r in rows]


def val_rows(rd: Path) -> list[dict[str, float]]:
    _, rows = read_csv(rd / "val.log")
    return [{k: float(v) for k, v in r.items() if k != "epoch_time_s"} for r in rows]


def assert_same_numbers(a: Path, b: Path, what: str) -> None:
    la, lb = losses(a), losses(b)
    assert len(la) == len(lb) and len(la) > 0, what
    np.testing.assert_allclose(la, lb, rtol=1e-6, atol=1e-7, err_msg=what)
    if (a / "val.log").exists():
        va, vb = val_rows(a), val_rows(b)
        assert [sorted(r) for r in va] == [sorted(r) for r in vb], what
        for ra, rb in zip(va, vb):
            for k in ra:
                assert ra[k] == pytest.approx(rb[k], rel=1e-6, abs=1e-7, nan_ok=True), f"{what}: {k}"


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("repro")
    make_stripes_dataset(tmp / "data" / "toy", {"train": 8, "val": 2, "test": 2})
    task = aug_task(tmp / "tasks" / "toy.yaml")
    cwd = tmp / "cwd"
    cwd.mkdir()
    return {"tmp": tmp, "data": tmp / "data", "out": tmp / "out", "task": task, "cwd": cwd,
            "cfg": base_config(tmp / "cfg" / "run.yaml", task)}


@pytest.mark.parametrize("tf_device", ["gpu", "cpu"])
def test_finetune_same_numbers_any_cache_state_opmode_and_workers(toy, tf_device):
    """Empty cache, filled cache (served in-process) and opmode disk with 2 workers: one result."""
    cache = toy["tmp"] / f"cache_{tf_device}"
    common = {"epochs": 2, "seed": 5, "data_root": str(toy["data"]), "output_root": str(toy["out"]),
              "tf_device": tf_device, "cache_dir": str(cache), "scheduler": "decay", "decay_per_epoch": 0.5}
    variants = {"empty": {"opmode": "live_cache", "num_workers": 0},
                "filled": {"opmode": "live_cache", "num_workers": 0},
                "disk_w2": {"opmode": "disk", "num_workers": 2}}
    dirs = {}
    for label, ov in variants.items():
        name = f"repro_{tf_device}/{label}"
        ok(run(toy["cfg"], {**common, **ov, "name": name}, toy["cwd"]))
        dirs[label] = toy["out"] / "finetuning" / name
        if label == "empty":
            assert any(cache.iterdir()), "live_cache filled no store"
    for label in ("filled", "disk_w2"):
        assert_same_numbers(dirs["empty"], dirs[label], f"{tf_device}: empty cache vs {label}")


@pytest.mark.e2e  # trains in-process
def test_val_log_lr_is_the_lr_the_epoch_trained_with(toy):
    """With an epoch schedule, val.log's lr is the LR of the epoch's steps (train.log), not the next one's
    (in-process: the LRs do not depend on the process)."""
    name = "lr_logged"
    ok(run_here(toy["cfg"], {"name": name, "epochs": 3, "seed": 1, "data_root": str(toy["data"]),
                        "output_root": str(toy["out"]), "scheduler": "decay", "decay_per_epoch": 0.5,
                        "lr": 0.01, "no_augs": True}, toy["cwd"]))
    rd = toy["out"] / "finetuning" / name
    _, trows = read_csv(rd / "train.log")
    _, vrows = read_csv(rd / "val.log")
    for e, v in enumerate(vrows, start=1):
        used = [float(r["lr"]) for r in trows if int(r["epoch"]) == e]
        assert used and used == pytest.approx([0.01 * 0.5 ** (e - 1)] * len(used))
        assert float(v["lr"]) == pytest.approx(0.01 * 0.5 ** (e - 1))


def test_simclr_same_numbers_any_cache_state_opmode_and_workers(tmp_path):
    data = tmp_path / "unlabeled"
    make_unlabeled_tree(data)
    cache = tmp_path / "cache"
    variants = {"empty": {"opmode": "live_cache", "num_workers": 0},
                "filled": {"opmode": "live_cache", "num_workers": 0},
                "disk_w2": {"opmode": "disk", "num_workers": 2}}
    dirs = {}
    for label, ov in variants.items():
        cfg = write_yaml(tmp_path / f"{label}.yaml", simclr_config(
            data, f"repro/{label}", epochs=2, cache_dir=str(cache), output_root=str(tmp_path / "out"), **ov))
        proc = run_simclr(["-c", cfg], tmp_path)
        assert proc.returncode == 0, proc.stderr[-3000:]
        dirs[label] = tmp_path / "out" / "pretraining" / "repro" / label
    for label in ("filled", "disk_w2"):
        assert_same_numbers(dirs["empty"], dirs[label], f"SimCLR: empty cache vs {label}")


RESUME = {"epochs": 3, "seed": 9, "tf_device": "cpu", "num_workers": 2, "noise_injection": [0.05, 0.5],
          "scheduler": "decay", "decay_per_epoch": 0.7, "scheduling_interval": "step"}


@pytest.fixture(scope="module")
def resume_reference(toy) -> Path:
    """The uninterrupted 3-epoch run (per-sample CPU augmentation in 2 workers + device-side noise, a
    per-step schedule) both resume tests must reproduce."""
    ok(run(toy["cfg"], {**RESUME, "data_root": str(toy["data"]), "output_root": str(toy["out"]),
                        "name": "mid/reference"}, toy["cwd"]))
    return toy["out"] / "finetuning" / "mid" / "reference"


def assert_resumed_equals_reference(toy, cmd: list[str], rd: Path, ref: Path, ck: dict) -> None:
    """Start ``cmd`` again: it says where it resumes, logs every (epoch, step) once, and gives the
    reference's train.log, val.log, test loss and final weights."""
    proc = ok(subprocess.run(cmd, cwd=str(toy["cwd"]), capture_output=True, text=True, timeout=HANG_GUARD_S,
                             env=child_env()))
    assert f"resuming {rd} at epoch {ck['epoch'] + 1} step {ck['batch_in_epoch']}" in proc.stdout
    assert_complete_logs(rd, 3, 3)  # 3 x 8 train images in batches of 8
    assert_same_numbers(ref, rd, f"resumed at epoch {ck['epoch'] + 1} step {ck['batch_in_epoch']} vs uninterrupted")
    assert_same_weights(torch.load(rd / "finetuned_model.tar", weights_only=True),
                        torch.load(ref / "finetuned_model.tar", weights_only=True))
    _, a = read_csv(ref / "test.log")
    _, b = read_csv(rd / "test.log")
    assert float(a[0]["accuracy"]) == float(b[0]["accuracy"])
    assert float(a[0]["avg_val_loss"]) == pytest.approx(float(b[0]["avg_val_loss"]), rel=1e-5)


def test_resume_mid_epoch_gives_the_uninterrupted_numbers(toy, resume_reference):
    """SIGKILLed right after a mid-epoch checkpoint and resumed: the uninterrupted run's numbers."""
    rd = toy["out"] / "finetuning" / "mid" / "killed"
    cmd = command(toy["cfg"], {**RESUME, "data_root": str(toy["data"]), "output_root": str(toy["out"]),
                               "name": "mid/killed", "checkpoint_every_steps": 1})
    # the second row of epoch 2 is written after the checkpoint of its first step was saved
    status = kill_when(cmd, toy["cwd"], lambda: train_rows_of_epoch(rd / "train.log", 2) >= 2, child_env())
    assert status == -signal.SIGKILL, "the run ended before it could be killed mid-training"
    assert not (rd / "test.log").exists()
    ck = torch.load(rd / "checkpoint_last.pt", weights_only=True)
    assert ck["epoch"] >= 1 and ck["batch_in_epoch"] >= 1, "no mid-epoch checkpoint to resume from"
    assert_resumed_equals_reference(toy, cmd, rd, resume_reference, ck)


def test_resume_from_epoch_boundary_gives_the_uninterrupted_numbers(toy, resume_reference):
    """SIGKILLed once the first end-of-epoch checkpoint exists (no per-step checkpoints) and resumed at the
    start of the next epoch: the uninterrupted run's numbers."""
    rd = toy["out"] / "finetuning" / "mid" / "killed_epoch"
    cmd = command(toy["cfg"], {**RESUME, "data_root": str(toy["data"]), "output_root": str(toy["out"]),
                               "name": "mid/killed_epoch"})
    status = kill_when(cmd, toy["cwd"], lambda: (rd / "checkpoint_last.pt").exists(), child_env())
    assert status == -signal.SIGKILL, "the run ended before it could be killed"
    ck = torch.load(rd / "checkpoint_last.pt", weights_only=True)
    assert ck["batch_in_epoch"] == 0 and 1 <= ck["epoch"] < 3
    assert_resumed_equals_reference(toy, cmd, rd, resume_reference, ck)
