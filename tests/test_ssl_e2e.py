"""``pkgs/SSL/pretrain.py`` and ``pkgs/SSL/knn_eval.py`` end to end, as subprocesses on tiny generated
images (resnet18 at 16 px, CPU only), with MoCo v2: the method with both an EMA target (key encoder)
and state outside the model (the queue).

One uninterrupted 3-epoch run with the kNN monitor, and at the same time the same run without the
monitor under another name, SIGKILLed as soon as its first checkpoint exists, then started again. The
resumed run must end with the same train.log losses, the same online and target weights and the same
queue as the uninterrupted one, which also shows the monitor leaves training's random numbers alone.
``knn_eval.py`` on the uninterrupted run's encoder_2.tar must print monitor.log's epoch-2 values.
The user errors (exit 2 before any work) run in-process through ``run_entry``, as the entry points call it.
"""
from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from conftest import HANG_GUARD_S, REPO, kill_when, make_folder_dataset, task_dict, write_yaml
from utility.entry import run_entry
from utility.runs.pretrain import main as pretrain_main

PRETRAIN = REPO / "pkgs" / "SSL" / "pretrain.py"
KNN_EVAL = REPO / "pkgs" / "SSL" / "knn_eval.py"
QUEUE = 8


def env() -> dict[str, str]:
    e = dict(os.environ)
    e["CUDA_VISIBLE_DEVICES"] = ""
    e.setdefault("OMP_NUM_THREADS", "1")
    return e


def cmd(script: Path, *args) -> list[str]:
    return [sys.executable, str(script), *map(str, args)]


def read_rows(path: Path) -> list[dict]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("ssl_e2e")
    make_folder_dataset(tmp / "data" / "tiny", ["a", "b", "c"], {"a": 8, "b": 8, "c": 8})
    task = write_yaml(tmp / "tasks" / "tiny.yaml", task_dict())
    cwd = tmp / "elsewhere"
    cwd.mkdir()
    return {"tmp": tmp, "data": tmp / "data", "task": task, "cwd": cwd, "out": tmp / "out"}


def config(work: dict, name: str, **over) -> dict:
    cfg = {
        "name": name, "method": "mocov2",
        "method_settings": {"queue_size": QUEUE, "proj_hidden": 16, "proj_dim": 8, "momentum": 0.9},
        "dataset_base_dir": str(work["data"] / "tiny" / "train"), "data_format": ".png", "resnet": "resnet18",
        "shape_desired": [16, 16], "image_size": 12, "batch_size": 8, "epochs": 3, "num_workers": 0, "seed": 5,
        "optimizer": "SGD", "lr": 0.05, "scheduler": "cosine_total", "enc_save_frequency": 1, "device": "cpu",
        "verbose": True, "data_root": str(work["data"]), "output_root": str(work["out"]),
    }
    cfg.update(over)
    return cfg


MONITOR = {"every": 1, "knn_k": 5, "knn_t": 0.1, "linear": True}


@pytest.fixture(scope="module")
def runs(work) -> dict:
    full_cfg = write_yaml(work["tmp"] / "full.yaml", config(work, "t/full", monitor={"task": str(work["task"]),
                                                                                     **MONITOR}))
    killed_cfg = write_yaml(work["tmp"] / "killed.yaml", config(work, "t/killed"))
    killed_dir = work["out"] / "pretraining" / "t" / "killed"
    ck = killed_dir / "checkpoint_last.pt"
    full = subprocess.Popen(cmd(PRETRAIN, "-c", full_cfg), cwd=str(work["cwd"]), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env())
    try:
        killed_rc = kill_when(cmd(PRETRAIN, "-c", killed_cfg), work["cwd"], ck.exists, env())
        out, err = full.communicate(timeout=HANG_GUARD_S)
    finally:
        if full.poll() is None:
            full.kill()
            full.wait()
    state = torch.load(ck, map_location="cpu", weights_only=True)
    resumed = subprocess.run(cmd(PRETRAIN, "-c", killed_cfg), cwd=str(work["cwd"]), capture_output=True, text=True,
                             timeout=HANG_GUARD_S, env=env())
    return {"full": (full.returncode, out, err), "full_dir": work["out"] / "pretraining" / "t" / "full",
            "killed_rc": killed_rc, "killed_epoch": state["epoch"], "killed_dir": killed_dir,
            "resumed": resumed}


def test_run_directory_and_resolved_settings(runs):
    rc, out, err = runs["full"]
    assert rc == 0, err
    d = runs["full_dir"]
    cfg = yaml.safe_load((d / "config.yaml").read_text())
    assert cfg["method"] == "mocov2"
    assert cfg["method_settings"] == {"queue_size": QUEUE, "proj_hidden": 16, "proj_dim": 8, "momentum": 0.9,
                                      "temperature": 0.2}  # the default recorded
    for f in ("encoder_1.tar", "encoder_2.tar", "encoder_3.tar", "encoder_pretrained.tar", "train.log"):
        assert (d / f).is_file(), f
    rows = read_rows(d / "monitor.log")
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    assert list(rows[0]) == ["epoch", "knn_accuracy", "linear_accuracy", "knn_k", "knn_t", "n_train", "n_val",
                             "seconds", "rankme"]
    assert all(1 <= float(r["rankme"]) <= int(r["n_train"]) for r in rows)  # the collapse guard's measure
    assert rows[0]["n_train"] == "18" and rows[0]["n_val"] == "6"
    # the task's val is carved out of the pretraining folder: the monitor says so (issue 20)
    assert "holds 6 of 6 images that are also pretraining images" in (d / "monitor_overlap.txt").read_text()
    assert all(0 <= float(r["knn_accuracy"]) <= 1 for r in rows)
    events = b"".join(p.read_bytes() for p in (d / "tensorboard").iterdir())
    assert b"monitor/knn_accuracy" in events and b"monitor/linear_accuracy" in events
    from utility.models import get_model

    sd = torch.load(d / "encoder_pretrained.tar", weights_only=True)
    net = get_model("resnet18", d / "encoder_pretrained.tar", classes=3)
    assert torch.equal(net.state_dict()["encoder.conv1.weight"] if "encoder.conv1.weight" in net.state_dict()
                       else net.state_dict()["conv1.weight"], sd["conv1.weight"])


def test_resume_restores_optimizer_schedule_ema_target_and_queue(runs):
    assert runs["killed_rc"] == -signal.SIGKILL, "the run ended before it could be killed"
    assert 1 <= runs["killed_epoch"] < 3, "the kill came too late to test resume"
    assert runs["resumed"].returncode == 0, runs["resumed"].stderr
    assert "resuming" in runs["resumed"].stdout
    full, resumed = read_rows(runs["full_dir"] / "train.log"), read_rows(runs["killed_dir"] / "train.log")
    assert [(r["epoch"], r["step"]) for r in resumed] == [(r["epoch"], r["step"]) for r in full]
    assert [float(r["loss"]) for r in resumed] == pytest.approx([float(r["loss"]) for r in full], rel=1e-6)
    assert [float(r["lr"]) for r in resumed] == pytest.approx([float(r["lr"]) for r in full], rel=1e-9)
    a = torch.load(runs["full_dir"] / "checkpoint_last.pt", weights_only=True)
    b = torch.load(runs["killed_dir"] / "checkpoint_last.pt", weights_only=True)
    assert any(k.startswith("target_encoder.") for k in a["model"])
    for k in a["model"]:
        torch.testing.assert_close(b["model"][k], a["model"][k], rtol=1e-5, atol=1e-6, msg=k)
    assert not torch.allclose(a["model"]["target_projector.0.weight"], a["model"]["projector.0.weight"])
    torch.testing.assert_close(b["method"]["queue"], a["method"]["queue"], rtol=1e-5, atol=1e-6)
    assert b["method"]["ptr"] == a["method"]["ptr"] == (3 * 24) % QUEUE


def test_knn_eval_offline_gives_the_monitors_numbers(runs, work):
    row = read_rows(runs["full_dir"] / "monitor.log")[1]
    proc = subprocess.run(cmd(KNN_EVAL, "-e", runs["full_dir"] / "encoder_2.tar", "--device", "cpu"),
                          cwd=str(work["cwd"]), capture_output=True, text=True, timeout=HANG_GUARD_S, env=env())
    assert proc.returncode == 0, proc.stderr
    assert f"knn_accuracy {float(row['knn_accuracy'])!r} " in proc.stdout
    assert f"linear_accuracy {float(row['linear_accuracy'])!r}" in proc.stdout
    assert "train 18 -> val 6, k 5, t 0.1" in proc.stdout


@pytest.mark.parametrize("over,message", [
    ({"method": "byl"}, "unknown method 'byl'; did you mean 'byol'?"),
    ({"method": "byol", "method_settings": {"queue_size": 4}}, "queue_size is a setting of mocov2, not of byol"),
    ({"method": "byol", "method_settings": {"tau_base": 1.2}}, "method_settings.tau_base of byol: value 1.2"),
    ({"method_settings": {"queue_size": 100}}, "queue_size 100 is larger than the 24 images"),
    ({"method": "barlow_twins", "method_settings": {}, "batch_size": 1},
     "a Barlow Twins batch needs at least 2 images"),
    ({"method": "vicreg", "method_settings": {}, "temperature": 0.1}, "temperature: SimCLR setting(s)"),
    ({"monitor": {"task": "digits", "evry": 2}}, "did you mean 'every'?"),
])
def test_bad_input_exits_2_before_any_work(work, capsys, over, message):
    cfg = write_yaml(work["tmp"] / "bad.yaml", config(work, "t/bad", **over))
    assert run_entry(pretrain_main, ["-c", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (work["out"] / "pretraining" / "t" / "bad" / "train.log").exists()
