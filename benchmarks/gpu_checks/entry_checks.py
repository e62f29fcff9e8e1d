"""Checks through the real entry point (pkgs/FTE/finetune.py as a user runs it) on generated images:
the loader wait of a ResNet-50 run with the live cache, and kill (SIGTERM mid-epoch) and resume of a
CUDA run against an uninterrupted one."""
from __future__ import annotations

import csv
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from PIL import Image

from .common import Ctx, expect, register

REPO = Path(__file__).resolve().parents[2]
FINETUNE = REPO / "pkgs" / "FTE" / "finetune.py"
WAIT_TARGET = 0.05
LOG_EVERY = 20  # the engine's flush interval: a train.log window


def write_images(root: Path, n_per_class: int, size: int, classes: int = 4) -> Path:
    """root/{train,test}/<class>/*.png: a class is the orientation of a bright bar, plus noise."""
    if root.exists():
        return root
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:size, 0:size]
    bars = [np.abs(yy - size // 2) < size // 8, np.abs(xx - size // 2) < size // 8,
            np.abs(yy - xx) < size // 8, np.abs(yy + xx - size) < size // 8]
    for split, n in (("train", n_per_class), ("test", max(2, n_per_class // 8))):
        for c in range(classes):
            (root / split / f"c{c}").mkdir(parents=True, exist_ok=True)
            for i in range(n):
                img = rng.integers(0, 60, (size, size, 3)).astype(np.uint8)
                img[bars[c % 4]] = 220
                Image.fromarray(img).save(root / split / f"c{c}" / f"{i:05d}.png")
    return root


def write_config(ctx: Ctx, data: Path, name: str, shape: int, **keys: Any) -> Path:
    task = {"name": f"gen_{name}", "type": "multiclass", "root": data.name, "data_format": [".png"],
            "layout": {"reader": "folders"},
            "splits": {"train": {"dir": "train"}, "val": {"from": "train", "fraction": 0.1}, "test": {"dir": "test"}},
            "loss": "ce", "normalizer": "naive", "shape_desired": [shape, shape], "augmentation": "default",
            "primary_metric": "accuracy"}
    task_path = ctx.work / f"task_{name}.yaml"
    task_path.write_text(yaml.safe_dump(task, sort_keys=False))
    cfg = {"name": name, "task": str(task_path), "data_root": str(data.parent), "output_root": str(ctx.work / "out"),
           "device": str(ctx.device), "seed": 0, "scheduler": None, "optimizer": "AdamW", "lr": 1e-3,
           "index_cache_dir": "off", "verbose": False, "save_predictions": False, **keys}
    path = ctx.work / f"{name.replace('/', '_')}.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def finetune_cmd(cfg: Path) -> list[str]:
    return [sys.executable, str(FINETUNE), "-c", str(cfg)]


def child_env() -> dict[str, str]:
    """The checkout importable in the child whether or not it is installed."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)}


def rows(run_dir: Path) -> list[dict[str, str]]:
    with (run_dir / "train.log").open(newline="") as fh:
        return list(csv.DictReader(fh))


def ok(proc: subprocess.CompletedProcess) -> None:
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        raise RuntimeError(f"finetune.py exited {proc.returncode}: {tail[0][:200]}")


def loader_wait_check(ctx: Ctx) -> dict[str, Any]:
    data = write_images(ctx.work / "data" / "wait", 1024, 64)
    cfg = write_config(ctx, data, "wait", 224, model_name="resnet50", batch_size=64, epochs=2, num_workers=6,
                       opmode="live_cache", cache_dir=str(ctx.work / "cache"), amp="auto")
    t0 = time.monotonic()
    ok(subprocess.run(finetune_cmd(cfg), capture_output=True, text=True, timeout=300,
                   env=child_env()))
    r = rows(ctx.work / "out" / "finetuning" / "wait")
    second = [row for row in r if int(row["epoch"]) == 2]
    steady = [float(row["data_wait"]) for row in second if int(row["step"]) > LOG_EVERY]
    figs = {"run_s": time.monotonic() - t0, "epoch2_data_wait": statistics.mean(float(x["data_wait"]) for x in second),
            "epoch2_steady_data_wait": statistics.mean(steady) if steady else float("nan"),
            "epoch2_images_per_s": statistics.mean(float(x["images_per_s"]) for x in second)}
    expect(bool(steady), "too few steps for a steady-state window", figs)
    # the first window of an epoch includes starting the loader workers; the target is for steady state
    expect(figs["epoch2_steady_data_wait"] < WAIT_TARGET, f"waiting for data above {WAIT_TARGET:.0%}", figs)
    return figs


def kill_resume_check(ctx: Ctx) -> dict[str, Any]:
    # ~57 steps per epoch: train.log's first rows appear at step 20 (a flush), the SIGTERM lands mid-epoch
    data = write_images(ctx.work / "data" / "resume", 256, 32)
    common = {"model_name": "resnet18", "batch_size": 16, "epochs": 2, "num_workers": 2}
    ref_cfg = write_config(ctx, data, "kr/reference", 32, **common)
    ok(subprocess.run(finetune_cmd(ref_cfg), capture_output=True, text=True, timeout=240, env=child_env()))
    cfg = write_config(ctx, data, "kr/killed", 32, **common)
    run_dir = ctx.work / "out" / "finetuning" / "kr" / "killed"
    proc = subprocess.Popen(finetune_cmd(cfg), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env=child_env())
    try:
        deadline = time.monotonic() + 180
        while proc.poll() is None and time.monotonic() < deadline:
            if (run_dir / "train.log").exists() and len(rows(run_dir)) >= 1:
                os.kill(proc.pid, signal.SIGTERM)
                break
            time.sleep(0.05)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:  # the check timed out: leave no run behind
            proc.kill()
            proc.wait()
    expect(proc.returncode == 128 + signal.SIGTERM, f"SIGTERM did not stop the run (exit {proc.returncode})",
           {"stderr": err.strip().splitlines()[-1:] or ""})
    stopped_at = len(rows(run_dir))
    stop = [ln for ln in err.splitlines() if ln.startswith("stopped by SIGTERM")]
    expect(bool(stop) and "checkpoint saved at epoch 1 step" in stop[0], "not stopped mid-epoch",
           {"message": stop[0] if stop else err.strip()[-200:]})
    again = subprocess.run(finetune_cmd(cfg), capture_output=True, text=True, timeout=240, env=child_env())
    ok(again)
    got, ref = rows(run_dir), rows(ctx.work / "out" / "finetuning" / "kr" / "reference")
    keys = [(r["epoch"], r["step"]) for r in got]
    diffs = [abs(float(a["loss"]) - float(b["loss"])) / max(abs(float(b["loss"])), 1e-6) for a, b in zip(got, ref)]
    figs = {"stopped_after_rows": stopped_at, "rows": len(got), "max_loss_rel_diff": max(diffs) if diffs else 0.0}
    expect("resuming" in again.stdout, "the second start did not resume", figs)
    expect(keys == [(r["epoch"], r["step"]) for r in ref] and len(set(keys)) == len(keys),
           "resumed train.log rows differ from the uninterrupted run's", figs)
    # cuDNN's backward kernels are not bit-deterministic: equal up to float noise, not bit for bit
    expect(figs["max_loss_rel_diff"] <= 1e-2, "resumed losses differ from the uninterrupted run", figs)
    return figs


register("loader_wait_live_cache_resnet50", loader_wait_check, cuda_only=True, est_s=120)
register("kill_resume_cuda", kill_resume_check, cuda_only=True, est_s=90)
