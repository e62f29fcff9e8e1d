"""SimCLR pretraining end to end: ``python pkgs/SimCLR/main.py -c cfg.yaml`` run as a subprocess
from a folder that is not the repository, on tiny generated images, CPU only.

Covers the run directory's files (config.yaml, train.log rows, encoder snapshots, the encoder
file's keys), hand-over to ``get_model`` and to finetuning, random_subset, resume after SIGKILL
(log rows, LR schedule, optimizer state), and user errors (in-process through ``run_entry``, but
for the missing-dataset case, which runs the script itself). The linear-evaluation proof
(pretrained encoder beats a random one on digits) is marked slow: RUN_SLOW=1 to run it.
"""
from __future__ import annotations

import csv
import math
import re
import os
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import pytest
import torch
import torchvision
import yaml

from conftest import (HANG_GUARD_S, REPO, kill_when, run_inproc, small_run_config, write_class_image, write_png,
                      write_yaml)

SIMCLR = REPO / "pkgs" / "SimCLR" / "main.py"
BATCH = 8
N_IMAGES = 22          # 22 % 8 = 6: the last batch is partial (not 1 image, which would be dropped)
ROWS = math.ceil(N_IMAGES / BATCH)  # 3 steps per epoch, every image used


def env() -> dict[str, str]:
    e = dict(os.environ)
    e["CUDA_VISIBLE_DEVICES"] = ""
    e.setdefault("OMP_NUM_THREADS", "2")
    return e


def simclr_cmd(*args) -> list[str]:
    return [sys.executable, str(SIMCLR), *map(str, args)]


def run_simclr(args, cwd: Path, timeout: float = HANG_GUARD_S) -> subprocess.CompletedProcess:
    return subprocess.run(simclr_cmd(*args), cwd=str(cwd), capture_output=True, text=True,
                          timeout=timeout, env=env())


def simclr_inproc(args, cwd: Path) -> subprocess.CompletedProcess:
    """The same entry point in-process (``conftest.run_inproc``): no interpreter start, no torch import."""
    from utility.runs.pretrain import main

    return run_inproc(main, args, cwd)


def make_unlabeled_tree(root: Path) -> list[Path]:
    """22 images in nested subfolders as .png and .jpg (grayscale and RGB), plus decoys of other
    types that data_format [.png, .jpg] must ignore (if they were used: ceil(28/8) = 4 rows)."""
    paths = []
    subs = ["a", "a/deep/er", "b/c", "b/c/d/e"]
    for i in range(N_IMAGES):
        ext = ".png" if i % 2 else ".jpg"
        p = root / subs[i % len(subs)] / f"img_{i:03d}{ext}"
        paths.append(write_class_image(p, i % 3, size=24, seed=i, rgb=i % 3 == 0))
    for i in range(3):
        write_png(root / "a" / f"decoy_{i}.bmp", torch.randint(0, 255, (24, 24)).numpy())
        (root / "b" / f"notes_{i}.txt").write_text("not an image")
    return paths


def base_config(data_dir: Path, name: str, **over) -> dict:
    cfg = {
        "name": name, "dataset": "Custom_2D", "dataset_base_dir": str(data_dir),
        "data_format": [".png", ".jpg"], "resnet": "resnet18", "image_size": 16,
        "shape_desired": [24, 24], "batch_size": BATCH, "epochs": 3, "num_workers": 0, "seed": 3,
        "optimizer": "LARS", "lr": 0.3, "temperature": 0.5, "projection_dim": 32,
        "enc_save_frequency": 2, "device": "cpu", "verbose": False,
    }
    cfg.update(over)
    return cfg


def read_log(path: Path) -> tuple[list[str], list[dict]]:
    with path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        return list(reader.fieldnames or []), list(reader)


def rows_per_epoch(rows: list[dict]) -> dict[int, int]:
    out: dict[int, int] = {}
    for r in rows:
        out[int(r["epoch"])] = out.get(int(r["epoch"]), 0) + 1
    return out


def resnet18_encoder_keys() -> set[str]:
    return {k for k in torchvision.models.resnet18().state_dict() if not k.startswith("fc.")}


# ----------------------------------------------------------------------------- shared runs

@pytest.fixture(scope="module")
def work(tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("simclr")
    data = tmp / "unlabeled"
    make_unlabeled_tree(data)
    cwd = tmp / "elsewhere"
    cwd.mkdir()
    return {"tmp": tmp, "data": data, "cwd": cwd, "out": tmp / "out"}


@pytest.fixture(scope="module")
def full_run(work) -> dict:
    """An uninterrupted 3-epoch LARS run (also the reference for the resume test) and, at the same
    time, the same run under another name that is SIGKILLed as soon as its first checkpoint
    (end of epoch 1) exists; the resume test starts it again."""
    full_cfg = write_yaml(work["tmp"] / "full.yaml", base_config(work["data"], "t/full"))
    killed_cfg = write_yaml(work["tmp"] / "killed.yaml", base_config(work["data"], "t/killed"))
    killed_dir = work["out"] / "pretraining" / "t" / "killed"
    ck = killed_dir / "checkpoint_last.pt"
    full = subprocess.Popen(simclr_cmd("-c", full_cfg, "--output_root", work["out"]), cwd=str(work["cwd"]),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env())
    try:
        killed_rc = kill_when(simclr_cmd("-c", killed_cfg, "--output_root", work["out"]), work["cwd"], ck.exists, env())
        out, err = full.communicate(timeout=HANG_GUARD_S)
    finally:
        if full.poll() is None:
            full.kill()
            full.wait()
    assert full.returncode == 0, out + err
    return {"dir": work["out"] / "pretraining" / "t" / "full", "killed_cfg": killed_cfg,
            "killed_dir": killed_dir, "killed_rc": killed_rc}


# ----------------------------------------------------------------------------- outputs

def test_run_directory_outputs(full_run):
    run_dir = full_run["dir"]
    assert (run_dir / "config.yaml").is_file()
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert saved["name"] == "t/full" and saved["batch_size"] == BATCH and saved["data_format"] == [".png", ".jpg"]

    header, rows = read_log(run_dir / "train.log")
    assert header[:4] == ["epoch", "step", "loss", "datetime"]
    # every batch of every epoch logged once: ceil(22/8) = 3 rows per epoch (decoys ignored,
    # the partial last batch not skipped)
    assert rows_per_epoch(rows) == {1: ROWS, 2: ROWS, 3: ROWS}
    assert [int(r["step"]) for r in rows if r["epoch"] == "1"] == list(range(1, ROWS + 1))
    assert all(math.isfinite(float(r["loss"])) for r in rows)
    # the predecessor's datetime format (its notebooks parse it): 2023-04-24 10:41:16.863240
    for r in rows:
        assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{6}", r["datetime"]), r["datetime"]
        datetime.strptime(r["datetime"], "%Y-%m-%d %H:%M:%S.%f")

    # snapshots every enc_save_frequency = 2 epochs (only epoch 2 of 3), and the final encoder
    assert sorted(p.name for p in run_dir.glob("encoder_*.tar")) == ["encoder_2.tar", "encoder_pretrained.tar"]
    final = torch.load(run_dir / "encoder_pretrained.tar", map_location="cpu", weights_only=True)
    snap = torch.load(run_dir / "encoder_2.tar", map_location="cpu", weights_only=True)
    assert set(final) == resnet18_encoder_keys()
    assert set(snap) == resnet18_encoder_keys()
    assert not any(k.startswith("module.") or k.startswith("fc.") for k in final)
    # training changed the encoder between epoch 2 and the end
    assert any(not torch.equal(final[k], snap[k]) for k in final if final[k].is_floating_point())


def test_encoder_file_loads_with_get_model(full_run):
    from utility.models import get_model

    path = full_run["dir"] / "encoder_pretrained.tar"
    saved = torch.load(path, map_location="cpu", weights_only=True)
    model = get_model("resnet18", path, classes=3)
    own = model.encoder.state_dict()
    for k, v in saved.items():
        assert torch.equal(own[k], v), k
    assert model(torch.rand(2, 3, 24, 24)).shape == (2, 3)
    # a random model differs, so equality above is not trivial
    rand = get_model("resnet18", None, classes=3).encoder.state_dict()
    assert not torch.equal(rand["conv1.weight"], saved["conv1.weight"])


def test_encoder_file_accepted_by_finetuning(full_run, work, make_folder_dataset, write_task_yaml):
    tmp = work["tmp"]
    make_folder_dataset(tmp / "data" / "tiny", ["h", "v", "d"], 4, size=16)
    task = write_task_yaml(tmp / "tasks" / "tiny.yaml", root="tiny")
    cfg = write_yaml(tmp / "ft.yaml", small_run_config(
        name="t/ft", task=task, model_path=str(full_run["dir"] / "encoder_pretrained.tar"),
        frozen_encoder=True, epochs=1, batch_size=8))
    from utility.runs.finetune import main as finetune

    proc = run_inproc(finetune, ["-c", cfg, "--data_root", tmp / "data", "--output_root", work["out"]], work["cwd"])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (work["out"] / "finetuning" / "t" / "ft").is_dir()


# ----------------------------------------------------------------------------- resume

def test_resume_after_sigkill_continues_schedule_and_optimizer(full_run, work):
    cfg, run_dir = full_run["killed_cfg"], full_run["killed_dir"]
    ck = run_dir / "checkpoint_last.pt"
    assert full_run["killed_rc"] == -signal.SIGKILL, "the run ended before it could be killed"
    state = torch.load(ck, map_location="cpu", weights_only=False)
    assert 1 <= state["epoch"] < 3 and not state.get("finished"), "the kill came too late to test resume"
    # the optimizer state (LARS momentum buffers) is in the checkpoint
    bufs = [s["momentum_buffer"] for s in state["optimizer"]["state"].values() if "momentum_buffer" in s]
    assert len(bufs) == len(list(state["model"])) - sum(k.endswith(("running_mean", "running_var",
                                                                     "num_batches_tracked")) for k in state["model"])
    assert any(b.abs().sum() > 0 for b in bufs)

    again = run_simclr(["-c", cfg, "--output_root", work["out"]], work["cwd"])
    assert again.returncode == 0, again.stdout + again.stderr
    assert "resuming" in again.stdout

    _, rows = read_log(run_dir / "train.log")
    keys = [(int(r["epoch"]), int(r["step"])) for r in rows]
    assert len(keys) == len(set(keys)), "duplicate (epoch, step) rows"
    assert rows_per_epoch(rows) == {1: ROWS, 2: ROWS, 3: ROWS}

    _, ref_rows = read_log(full_run["dir"] / "train.log")
    ref = {(int(r["epoch"]), int(r["step"])): r for r in ref_rows}
    # the LR schedule continues: the first step after the resume point (and every other step)
    # logs the LR the uninterrupted run logged there (a restarted schedule would log lr 0.3 again)
    first_after = (state["epoch"] + 1, 1)
    got = {(int(r["epoch"]), int(r["step"])): r for r in rows}
    assert float(got[first_after]["lr"]) == pytest.approx(float(ref[first_after]["lr"]), rel=1e-9)
    assert float(got[first_after]["lr"]) < 0.3 * 0.99
    for k in ref:
        assert float(got[k]["lr"]) == pytest.approx(float(ref[k]["lr"]), rel=1e-9), k
        assert int(got[k]["global_step"]) == int(ref[k]["global_step"])

    # optimizer state, RNG and data order were restored: the final encoder equals the
    # uninterrupted run's (CPU, num_workers 0 and the same seed make the runs deterministic)
    resumed = torch.load(run_dir / "encoder_pretrained.tar", map_location="cpu", weights_only=True)
    full = torch.load(full_run["dir"] / "encoder_pretrained.tar", map_location="cpu", weights_only=True)
    snap = torch.load(full_run["dir"] / "encoder_2.tar", map_location="cpu", weights_only=True)
    moved = max(float((full[k] - snap[k]).abs().max()) for k in full if full[k].is_floating_point())
    assert moved > 1e-2, "training after epoch 2 too small for the comparison to mean anything"
    for k in full:
        assert torch.allclose(resumed[k].float(), full[k].float(), atol=1e-4), k
    for r in rows:
        assert float(r["loss"]) == pytest.approx(float(ref[(int(r["epoch"]), int(r["step"]))]["loss"]), abs=1e-4)


# ----------------------------------------------------------------------------- predecessor configs

@pytest.mark.e2e  # trains in-process
@pytest.mark.parametrize("stepwise, epochs", [("None", 3), ("CosineAnnealing", 2)])
def test_predecessor_config_trains_with_the_predecessor_lr_rule(work, stepwise, epochs):
    """A predecessor-style config (loss_device gpu, LARS with lr 3e-4, its full key set) trains as the
    predecessor trained it: lr 0.075*sqrt(batch) (lr ignored), cosine over the epochs stepped per epoch,
    the stepwise scheduler (per step) on top; the rule is printed once."""
    from test_simclr_predecessor import predecessor_config

    name = f"pred/{stepwise}"
    data = predecessor_config(str(work["data"]), name=name, stepwise_scheduler=stepwise, epochs=epochs,
                              batch_size=BATCH, device="cpu", verbose=False)
    cfg = write_yaml(work["tmp"] / f"pred_{stepwise}.yaml", data)
    proc = simclr_inproc(["-c", cfg, "--output_root", work["out"]], work["cwd"])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rule_lines = [ln for ln in (proc.stdout + proc.stderr).splitlines() if ln.startswith("lr rule:")]
    assert len(rule_lines) == 1, proc.stdout + proc.stderr
    lr0 = 0.075 * math.sqrt(BATCH)
    assert rule_lines[0].startswith(f"lr rule: predecessor LARS, 0.075*sqrt({BATCH})={lr0:.4g}, "
                                    f"cosine over {epochs} epochs"), rule_lines[0]
    assert "config lr 0.0003 ignored" in rule_lines[0]

    run_dir = work["out"] / "pretraining" / "pred" / stepwise
    _, rows = read_log(run_dir / "train.log")
    assert rows_per_epoch(rows) == {e: ROWS for e in range(1, epochs + 1)}
    total = ROWS * epochs
    for r in rows:
        e, k = int(r["epoch"]), int(r["global_step"]) - 1       # 1-based epoch, 0-based step count
        factor = (1 + math.cos(math.pi * (e - 1) / epochs)) / 2  # CosineAnnealingLR(T_max=epochs), per epoch
        if stepwise == "CosineAnnealing":
            factor *= (1 + math.cos(math.pi * k / total)) / 2    # the stepwise scheduler, per step
        assert float(r["lr"]) == pytest.approx(lr0 * factor, rel=1e-9), r
    assert float(rows[0]["lr"]) == pytest.approx(lr0, rel=1e-12)  # not 3e-4
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert saved["lr_rule"] == "predecessor" and saved["loss_device"] == "gpu"
    assert (run_dir / "encoder_pretrained.tar").is_file()


# ----------------------------------------------------------------------------- user errors

def test_missing_dataset_dir_then_fixed_run_with_random_subset_and_reload(work):
    """A missing dataset_base_dir is a user error (exit 2, the folder named, no traceback); the
    same run name then works once the folder is fixed (the error leaves nothing in the way). The error
    runs the real script (a child process); the fixed run goes in-process through ``run_entry``.
    That run uses random_subset 0.5 -> 11 of 22 images -> ceil(11/8) = 2 rows per epoch (3 with
    all images), and the predecessor's ``reload: true``, accepted with a warning. Both runs give
    a relative output_root, which is under the cwd (not the repository)."""
    missing = work["tmp"] / "no_such_folder"
    cfg = write_yaml(work["tmp"] / "subset.yaml",
                     base_config(missing, "t/subset", epochs=1, random_subset=0.5, reload=True,
                                 enc_save_frequency=None))
    rel = f"rel_out_{os.getpid()}"
    proc = run_simclr(["-c", cfg, "--output_root", rel], work["cwd"])
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "no_such_folder" in proc.stderr and "dataset_base_dir" in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout

    fixed = simclr_inproc(["-c", cfg, "--output_root", rel, "--dataset_base_dir", work["data"]], work["cwd"])
    assert fixed.returncode == 0, fixed.stdout + fixed.stderr
    out = fixed.stdout + fixed.stderr
    assert "reload" in out and "resume" in out.lower(), out
    assert not (REPO / rel).exists()
    run_dir = work["cwd"] / rel / "pretraining" / "t" / "subset"
    assert (run_dir / "encoder_pretrained.tar").is_file()
    _, rows = read_log(run_dir / "train.log")
    assert rows_per_epoch(rows) == {1: math.ceil(round(0.5 * N_IMAGES) / BATCH)} == {1: 2}


def test_unknown_key_gets_a_suggestion(work):
    data = base_config(work["data"], "t/typo", epochs=1)
    data["temprature"] = 0.3
    cfg = write_yaml(work["tmp"] / "typo.yaml", data)
    proc = simclr_inproc(["-c", cfg, "--output_root", work["out"]], work["cwd"])
    assert proc.returncode == 2
    assert "temprature" in proc.stderr and "temperature" in proc.stderr.replace("temprature", "")
    assert "Traceback" not in proc.stderr
    assert not (work["out"] / "pretraining" / "t" / "typo").exists()


def assert_refused_before_any_work(proc: subprocess.CompletedProcess, run_dir: Path, *needles: str) -> None:
    """exit 2, one line naming the culprit, no traceback, and nothing trained or saved."""
    assert proc.returncode == 2, proc.stdout + proc.stderr
    err = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(err) == 1, proc.stderr
    for needle in needles:
        assert needle in err[0], err[0]
    assert "Traceback" not in proc.stdout + proc.stderr
    assert not (run_dir / "encoder_pretrained.tar").exists()
    assert not (run_dir / "train.log").exists() and not (run_dir / "checkpoint_last.pt").exists()


def test_batch_size_one_refused_before_any_work(work):
    """batch_size 1 can never form an NT-Xent batch: it used to exit 0 after zero steps with loss
    0.0000 and save the untrained encoder as encoder_pretrained.tar."""
    cfg = write_yaml(work["tmp"] / "b1.yaml", base_config(work["data"], "t/b1", batch_size=1, epochs=1))
    proc = simclr_inproc(["-c", cfg, "--output_root", work["out"]], work["cwd"])
    assert_refused_before_any_work(proc, work["out"] / "pretraining" / "t" / "b1", "batch_size 1")


@pytest.mark.parametrize("batch_size", [2, 8])
def test_one_image_folder_refused_naming_folder_and_count(work, batch_size):
    one = work["tmp"] / f"one_image_{batch_size}"
    write_class_image(one / "only.png", 0, size=24)
    name = f"t/one_{batch_size}"
    cfg = write_yaml(work["tmp"] / f"one_{batch_size}.yaml",
                     base_config(one, name, batch_size=batch_size, epochs=1))
    proc = simclr_inproc(["-c", cfg, "--output_root", work["out"]], work["cwd"])
    assert_refused_before_any_work(proc, work["out"] / "pretraining" / name, str(one), "1 image")


def test_zero_steps_never_saves_an_untrained_encoder(work):
    """Two images, one unreadable (tolerated by max_bad_fraction 1): every batch holds one valid image,
    so no step is taken; the run must say so instead of saving the initial weights as pretrained."""
    folder = work["tmp"] / "half_broken"
    write_class_image(folder / "good.png", 0, size=24)
    (folder / "broken.png").write_bytes(b"not a png" * 20)
    cfg = write_yaml(work["tmp"] / "zero.yaml", base_config(folder, "t/zero", batch_size=2, epochs=1,
                                                             max_bad_fraction=1.0, enc_save_frequency=None))
    proc = simclr_inproc(["-c", cfg, "--output_root", work["out"]], work["cwd"])
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "no SimCLR step" in proc.stderr and "Traceback" not in proc.stdout + proc.stderr
    assert not (work["out"] / "pretraining" / "t" / "zero" / "encoder_pretrained.tar").exists()


# ----------------------------------------------------------------------------- linear evaluation

@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("RUN_SLOW") != "1", reason="slow (minutes): set RUN_SLOW=1")
def test_linear_eval_pretrained_beats_random(tmp_path):
    """Pretrain the digits demo, then linear evaluation (frozen encoder) on 10% of the labels:
    the pretrained encoder must clearly beat a random one (benchmarks/bench_simclr_linear_eval.py)."""
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_simclr_linear_eval.py"),
                           "--work", str(tmp_path)], capture_output=True, text=True, env=env(), timeout=HANG_GUARD_S)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("linear_eval_accuracy:")][-1]
    parts = dict(p.strip().split(" ") for p in line.split(":", 1)[1].split(","))
    pretrained, rand = float(parts["pretrained"]), float(parts["random"])
    assert pretrained > rand + 0.1, line
