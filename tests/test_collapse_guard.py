"""The collapse guard (utility/runs/monitor.py, utility/metrics/rankme.py): RankMe against its formula,
milestone validation and checks, and end to end through the queue: a pretraining that cannot learn
(lr 1e-9: the schema refuses 0) misses its milestone, stops with exit 3 and the reason (terminal and
crash.log), writes no encoder, and the queue does not start the finetuning that depends on it."""
from __future__ import annotations

import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from conftest import REPO, make_folder_dataset, write_yaml
from utility.config.schemas import MonitorConfig, PretrainConfig
from utility.metrics.rankme import rankme
from utility.runs.monitor import CollapseDetected, Monitor


def test_rankme_matches_its_formula():
    x = np.random.default_rng(0).normal(size=(40, 12)) @ np.diag(np.linspace(0.1, 3, 12))
    s = np.linalg.svd(x, compute_uv=False)
    p = s / s.sum() + 1e-7
    assert rankme(torch.tensor(x)) == pytest.approx(math.exp(-(p * np.log(p)).sum()), rel=1e-9)
    assert rankme(torch.eye(6)) == pytest.approx(6, rel=1e-5)              # 6 equal singular values
    collapsed = torch.ones(50, 8) + 1e-9 * torch.randn(50, 8, dtype=torch.float64)
    assert rankme(collapsed) == pytest.approx(1, abs=1e-3)                 # every image on one point


def test_milestone_validation():
    with pytest.raises(ValidationError, match="sets no value"):
        MonitorConfig(task="digits", milestones=[{"epoch": 2}])
    with pytest.raises(ValidationError, match="set linear: true"):
        MonitorConfig(task="digits", milestones=[{"epoch": 2, "linear_accuracy": 0.5}])
    with pytest.raises(ValidationError, match="milestone epoch 5 is after the last epoch"):
        PretrainConfig(name="x", dataset_base_dir=".", epochs=3,
                     monitor={"task": "digits", "milestones": [{"epoch": 5, "rankme": 3}]})


def test_guard_checks_each_milestone_at_its_epoch():
    mon = Monitor.__new__(Monitor)
    mon.cfg = MonitorConfig(task="t", every=5, milestones=[{"epoch": 2, "knn_accuracy": 0.3, "rankme": 4}])
    mon.epochs = 10
    assert mon.due(2) and mon.due(5) and mon.due(10) and not mon.due(3)
    mon.guard(2, {"knn_accuracy": 0.31, "linear_accuracy": math.nan, "rankme": 4.0})   # reached
    mon.guard(3, {"knn_accuracy": 0.0, "linear_accuracy": math.nan, "rankme": 1.0})    # no milestone at 3
    with pytest.raises(CollapseDetected, match="rankme 1.2000 at epoch 2 is below the milestone 4"):
        mon.guard(2, {"knn_accuracy": 0.9, "linear_accuracy": math.nan, "rankme": 1.2})
    with pytest.raises(CollapseDetected, match="knn_accuracy nan"):
        mon.guard(2, {"knn_accuracy": math.nan, "linear_accuracy": math.nan, "rankme": 9})


def test_collapsed_pretraining_stops_and_its_dependant_is_not_started(tmp_path):
    make_folder_dataset(tmp_path / "data" / "tiny", ["a", "b"], 6)
    from conftest import task_dict

    task = write_yaml(tmp_path / "tasks" / "tiny.yaml", task_dict())
    cfg = write_yaml(tmp_path / "pre.yaml", {
        "name": "t/collapsed", "method": "simclr", "dataset_base_dir": str(tmp_path / "data" / "tiny" / "train"),
        "data_format": ".png", "resnet": "resnet18", "shape_desired": [16, 16], "image_size": 12, "batch_size": 4,
        "epochs": 2, "num_workers": 0, "optimizer": "SGD", "lr": 1e-9, "device": "cpu", "verbose": False,
        "data_root": str(tmp_path / "data"), "output_root": str(tmp_path / "out"), "enc_save_frequency": None,
        # RankMe <= the number of images (9 train images): this milestone is missed unless the guard is broken
        "monitor": {"task": str(task), "every": 1, "knn_k": 3, "milestones": [{"epoch": 1, "rankme": 50}]}})
    py = sys.executable
    jobs = tmp_path / "Jobs.csv"
    jobs.write_text(f"{py} {REPO / 'pkgs' / 'SSL' / 'pretrain.py'} -c {cfg},open,gpus=0;id=pre\n"
                    "touch finetune_ran,open,gpus=0;after=pre\n")
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    r = subprocess.run([py, str(REPO / "QueueManager.py"), "--jobs", str(jobs), "--log-dir", str(tmp_path / "logs"),
                        "--gpus", "none"], cwd=str(tmp_path), capture_output=True, text=True, timeout=400, env=env)
    assert r.returncode == 1, r.stdout + r.stderr
    assert [ln.split(",")[-2] for ln in jobs.read_text().splitlines()] == ["failed", "failed"]
    assert "L2 failed: dependency L1 (id=pre) failed; not started" in r.stdout
    assert not (tmp_path / "finetune_ran").exists()
    run_dir = tmp_path / "out" / "pretraining" / "t" / "collapsed"
    assert not (run_dir / "encoder_pretrained.tar").exists()
    crash = (run_dir / "crash.log").read_text()
    assert "error: collapse guard: rankme" in crash and "at epoch 1 is below the milestone 50" in crash
    from utility.study.results import crash_message  # what the study report prints beside the crash log

    assert crash_message(run_dir / "crash.log").startswith("collapse guard: rankme ")
    with (run_dir / "monitor.log").open() as fh:
        rows = fh.read().splitlines()
    assert rows[0].endswith(",rankme") and len(rows) == 2  # measured at epoch 1, then stopped
