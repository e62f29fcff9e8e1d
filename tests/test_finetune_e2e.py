"""End-to-end finetuning: the real entry point run as a subprocess, exactly as a user runs it
(from a folder that is not the repository, data and outputs in tmp_path), then its files checked
against independent computations (scikit-learn, torch.load, a forward pass of the saved model).
Runs whose checks do not depend on the process go in-process through ``run_entry`` (``run_here``).
"""
from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from sklearn.metrics import (accuracy_score, balanced_accuracy_score, confusion_matrix, f1_score,
                             precision_score, recall_score, roc_auc_score)

REPO = Path(__file__).resolve().parent.parent
FINETUNE = REPO / "pkgs" / "FTE" / "finetune.py"

from conftest import run_inproc
from utility.models import get_model

CLASSES = ["horizontal", "noise", "vertical"]  # sorted: the folders reader orders classes by name


# ----------------------------------------------------------------------------- data

def stripes(kind: str, rng: np.random.Generator, size: int = 16) -> np.ndarray:
    """Horizontal stripes, vertical stripes or plain noise (random period/phase): a local orientation
    signal that survives per-image min-max normalisation and global pooling."""
    img = rng.uniform(0, 80, (size, size))
    period = int(rng.integers(4, 7))
    phase = int(rng.integers(0, period))
    on = (np.arange(size) + phase) % period < period // 2
    if kind in ("horizontal", "both"):
        img[on, :] += 175
    if kind in ("vertical", "both"):
        img[:, on] += 100 if kind == "both" else 175
    return img.clip(0, 255).astype(np.uint8)


def save_png(path: Path, arr: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
    return path


def make_stripes_dataset(root: Path, counts: dict[str, int], seed: int = 0) -> dict[str, list[Path]]:
    """root/<split>/<class>/<class>_<i>.png for the three CLASSES."""
    rng = np.random.default_rng(seed)
    out: dict[str, list[Path]] = {}
    for split, n in counts.items():
        out[split] = [save_png(root / split / c / f"{c}_{i:03d}.png", stripes(c, rng))
                      for c in CLASSES for i in range(n)]
    return out


def write_yaml(path: Path, data: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def folder_task(path: Path, root: str = "toy") -> Path:
    return write_yaml(path, {
        "name": "toy", "type": "multiclass", "root": root, "data_format": [".png"],
        "layout": {"reader": "folders"},
        "splits": {"train": {"dir": "train"}, "val": {"dir": "val"}, "test": {"dir": "test"}},
        "normalizer": "naive", "shape_desired": [16, 16], "augmentation": "none",
        "primary_metric": "accuracy"})


def base_config(path: Path, task: Path) -> Path:
    return write_yaml(path, {
        "name": "from_yaml", "task": str(task), "model_name": "resnet18", "device": "cpu", "seed": 0,
        "epochs": 1, "batch_size": 8, "num_workers": 0, "optimizer": "AdamW", "lr": 0.001,
        "weight_decay": 0.0001, "scheduler": None, "verbose": True})


# ----------------------------------------------------------------------------- running

def child_env() -> dict[str, str]:
    env = dict(os.environ)
    # one thread: tiny batches gain nothing from two, and two threads on a busy 2-core machine
    # spin-wait (measured: 5x the wall time of one thread)
    env["OMP_NUM_THREADS"] = "1"
    env["CUDA_VISIBLE_DEVICES"] = ""
    env["PYTHONUNBUFFERED"] = "1"
    return env


def command(cfg: Path, overrides: dict[str, Any]) -> list[str]:
    cmd = [sys.executable, str(FINETUNE), "-c", str(cfg)]
    for k, v in overrides.items():
        cmd += [f"--{k}", v if isinstance(v, str) else yaml.safe_dump(v, default_flow_style=True).strip()
                .removesuffix("...").strip()]
    return cmd


def run(cfg: Path, overrides: dict[str, Any], cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(command(cfg, overrides), cwd=str(cwd), capture_output=True, text=True,
                          timeout=timeout, env=child_env())


def run_here(cfg: Path, overrides: dict[str, Any], cwd: Path) -> subprocess.CompletedProcess:
    """The same command in-process (``conftest.run_inproc``): no interpreter start or torch import."""
    from utility.runs.finetune import main

    return run_inproc(main, command(cfg, overrides)[2:], cwd)


def ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-3000:]}"
    return proc


def read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        rows = list(reader)
        return list(reader.fieldnames or []), rows


def encoder_state(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in sd.items() if k.startswith("encoder.")}


@pytest.fixture
def toy(tmp_path):
    """A small stripes dataset (8 train images per class: 3 steps of 8), its task and base config."""
    data = tmp_path / "data"
    paths = make_stripes_dataset(data / "toy", {"train": 8, "val": 2, "test": 2})
    task = folder_task(tmp_path / "tasks" / "toy.yaml")
    cfg = base_config(tmp_path / "cfg" / "run.yaml", task)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    return {"data": data, "out": tmp_path / "out", "task": task, "cfg": cfg, "cwd": cwd, "paths": paths,
            "steps": 3}


# ============================================================================ 1. multiclass

def test_multiclass_folder_run_files_and_metrics(tmp_path):
    data = tmp_path / "data"
    paths = make_stripes_dataset(data / "toy", {"train": 48, "val": 4, "test": 8})
    task = folder_task(tmp_path / "tasks" / "toy.yaml")
    cfg = base_config(tmp_path / "cfg" / "run.yaml", task)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    epochs, steps = 3, 48 * 3 // 8
    overrides = {"name": "e2e/multiclass", "epochs": epochs, "data_root": str(data),
                 "output_root": str(tmp_path / "out"), "lr": 0.001, "weight_decay": 0.0,
                 "scheduler": "null", "seed": 1}
    proc = ok(run(cfg, overrides, cwd))
    rd = tmp_path / "out" / "finetuning" / "e2e" / "multiclass"
    assert rd.is_dir(), proc.stdout
    assert not (cwd / "logs_and_checkpoints").exists() and not any(cwd.iterdir())
    (env,) = [json.loads(line) for line in (rd / "environment.jsonl").read_text().splitlines()]
    assert env["start"] == "fresh" and env["torch_threads"] == int(child_env()["OMP_NUM_THREADS"])

    # resolved config: loadable, validates, holds the CLI overrides over the YAML's values
    resolved = yaml.safe_load((rd / "config.yaml").read_text())
    from utility.config.schemas import FTEConfig
    FTEConfig.model_validate(resolved)
    for k, v in overrides.items():
        assert resolved[k] == (None if v == "null" else v), k
    assert resolved["task"] == str(task) and resolved["batch_size"] == 8

    # train.log: one row per step, 1-based epoch and step
    cols, rows = read_csv(rd / "train.log")
    assert cols[:3] == ["epoch", "step", "loss"]
    assert len(rows) == epochs * steps
    assert [(int(r["epoch"]), int(r["step"])) for r in rows] == \
        [(e, s) for e in range(1, epochs + 1) for s in range(1, steps + 1)]
    losses = [float(r["loss"]) for r in rows]
    assert all(math.isfinite(v) for v in losses)

    # val.log: one row per epoch; avg_epoch_train_loss is the mean of that epoch's step losses
    vcols, vrows = read_csv(rd / "val.log")
    assert vcols[:4] == ["epoch", "avg_epoch_train_loss", "accuracy", "avg_val_loss"]
    assert [int(r["epoch"]) for r in vrows] == list(range(1, epochs + 1))
    for e, r in enumerate(vrows):
        assert float(r["avg_epoch_train_loss"]) == pytest.approx(np.mean(losses[e * steps:(e + 1) * steps]),
                                                                 rel=1e-5)

    # test.log / test_best.log: one row each; best = the epoch with the best val accuracy
    tcols, trows = read_csv(rd / "test.log")
    assert tcols[:2] == ["accuracy", "avg_val_loss"] and len(trows) == 1
    test = {k: float(v) for k, v in trows[0].items() if k != "model"}
    assert int(test["epoch"]) == epochs
    bcols, brows = read_csv(rd / "test_best.log")
    assert bcols[:2] == ["accuracy", "avg_val_loss"] and len(brows) == 1
    val_acc = [float(r["accuracy"]) for r in vrows]
    assert int(brows[0]["epoch"]) == int(np.argmax(val_acc)) + 1

    # predictions of the whole test split, and every test metric recomputed from them
    pcols, prows = read_csv(rd / "predictions_test_last.csv")
    assert pcols == ["file", "target", "predicted"] + [f"prob_{c}" for c in CLASSES] + ["subject"]
    assert sorted(Path(r["file"]).resolve() for r in prows) == sorted(p.resolve() for p in paths["test"])
    # no subject rule: each image is its own subject, named by its relative path
    assert all(Path(r["file"]).as_posix().endswith("/" + r["subject"]) for r in prows)
    assert len({r["subject"] for r in prows}) == len(prows)
    y = np.array([CLASSES.index(r["target"]) for r in prows])
    assert all(Path(r["file"]).parent.name == r["target"] for r in prows)
    probs = np.array([[float(r[f"prob_{c}"]) for c in CLASSES] for r in prows])
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)
    pred = probs.argmax(1)
    assert [CLASSES[i] for i in pred] == [r["predicted"] for r in prows]
    assert test["accuracy"] == pytest.approx(accuracy_score(y, pred), abs=1e-12)
    assert test["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, pred), abs=1e-12)
    assert test["f1_macro"] == pytest.approx(f1_score(y, pred, average="macro", zero_division=np.nan), abs=1e-12)
    aucs = [roc_auc_score(y == c, probs[:, c]) for c in range(3)]
    for c, name in enumerate(CLASSES):
        assert test[f"auc_class_{name}"] == pytest.approx(aucs[c], abs=1e-9)
    assert test["auc_macro"] == pytest.approx(np.mean(aucs), abs=1e-9)
    ce = -np.mean(np.log(probs[np.arange(len(y)), y]))
    assert test["avg_val_loss"] == pytest.approx(ce, rel=1e-3, abs=1e-5)

    # test_ci.csv: every test metric but the loss, its value as in test.log, and the percentile
    # interval of 1000 subject resamples drawn with the run's seed, recomputed here with scikit-learn
    ccols, crows = read_csv(rd / "test_ci.csv")
    assert ccols[:4] == ["metric", "value", "ci_low", "ci_high"]
    ci = {r["metric"]: r for r in crows}
    assert list(ci) == [k for k in tcols if k not in ("avg_val_loss", "epoch", "model")]
    assert all(float(ci[k]["value"]) == test[k] for k in ci)
    n = len(prows)
    assert {r["subjects"] for r in crows} == {str(n)} and {r["resamples"] for r in crows} == {"1000"}
    subjects = np.unique([r["subject"] for r in prows], return_inverse=True)[1]
    draws = np.random.default_rng(1).integers(0, n, (1000, n))
    accs = [accuracy_score(y[m], pred[m]) for m in (np.concatenate([np.flatnonzero(subjects == s) for s in d])
                                                    for d in draws)]
    assert float(ci["accuracy"]["ci_low"]) == pytest.approx(np.percentile(accs, 2.5), abs=1e-9)
    assert float(ci["accuracy"]["ci_high"]) == pytest.approx(np.percentile(accs, 97.5), abs=1e-9)

    # confusion matrix of the test split (last model)
    with (rd / "confusion_matrices" / "test_last.csv").open(newline="") as fh:
        cm_rows = list(csv.reader(fh))
    assert cm_rows[0] == ["true\\pred", *CLASSES]
    assert [r[0] for r in cm_rows[1:]] == CLASSES
    got = np.array([[int(v) for v in r[1:]] for r in cm_rows[1:]])
    np.testing.assert_array_equal(got, confusion_matrix(y, pred, labels=[0, 1, 2]))

    # finetuned_model.tar: a plain state dict that get_model loads, and it is the 'last' model
    sd = torch.load(rd / "finetuned_model.tar", map_location="cpu", weights_only=True)
    assert any(k.startswith("encoder.") for k in sd) and any(k.startswith("head.") for k in sd)
    model = get_model("resnet18", rd / "finetuned_model.tar", len(CLASSES)).eval()
    for k, v in model.state_dict().items():
        assert torch.equal(v, sd[k]), k
    from utility.data.dataset import Preprocess
    from utility.data.io import read_image
    prep = Preprocess(3, (16, 16), "naive")
    x = torch.stack([prep(read_image(Path(r["file"]))) for r in prows])
    with torch.no_grad():
        mine = torch.softmax(model(x), 1).numpy()
    np.testing.assert_allclose(mine, probs, atol=1e-4)

    # TensorBoard events with the validation metrics
    events = list((rd / "tensorboard").glob("events.out.tfevents*"))
    assert events and all(e.stat().st_size > 0 for e in events)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(str(rd / "tensorboard"))
    acc.Reload()
    tags = acc.Tags()["scalars"]
    assert "epoch/accuracy" in tags and "train/loss" in tags
    assert [s.step for s in acc.Scalars("epoch/accuracy")] == list(range(1, epochs + 1))
    assert [s.value for s in acc.Scalars("epoch/accuracy")] == pytest.approx(val_acc)

    # it learned: three classes, chance is 1/3
    assert test["accuracy"] >= 0.75, (test, vrows)
    assert np.mean(losses[-steps:]) < np.mean(losses[:steps])


# ============================================================================ 2. multilabel

ML_CLASSES = ["HBar", "VBar", "No Finding", "Hernia"]


@pytest.mark.e2e  # trains in-process
def test_multilabel_csv_run_nan_auc_for_label_without_positives(tmp_path):
    """CX8-like: images in train_val/ and test/, labels in a CSV joined by '|'. 'Hernia' has positives
    only in the training images: its AUC is NaN and the macro values ignore it (in-process through
    run_entry: the metrics are recomputed from the run's own predictions)."""
    rng = np.random.default_rng(3)
    root = tmp_path / "data" / "cxr"
    kinds = {"horizontal": "HBar", "vertical": "VBar", "both": "HBar|VBar", "noise": "No Finding"}
    rows = [("Image Index", "Finding Labels", "Patient ID")]
    counts = {"train": 6, "val": 2, "test": 4}
    for split, n in counts.items():
        for kind, labels in kinds.items():
            for i in range(n):
                name = f"{split}_{kind}_{i:03d}.png"
                save_png(root / split / name, stripes(kind, rng))
                lab = labels + ("|Hernia" if split == "train" and i < 3 else "")
                rows.append((name, lab, str(i)))
    with (root / "Data_Entry_2017.csv").open("w", newline="") as fh:
        csv.writer(fh).writerows(rows)
    task = write_yaml(tmp_path / "tasks" / "cxr.yaml", {
        "name": "cxr", "type": "multilabel", "root": "cxr", "data_format": [".png"], "classes": ML_CLASSES,
        "layout": {"reader": "csv", "labels_file": "Data_Entry_2017.csv", "path_column": 0,
                   "label_column": 1, "label_separator": "|", "match": "basename"},
        "splits": {"train": {"dir": "train"}, "val": {"dir": "val"}, "test": {"dir": "test"}},
        "loss": "bce", "normalizer": "naive", "shape_desired": [16, 16], "augmentation": "none",
        "primary_metric": "auc_avg_overall"})
    cfg = base_config(tmp_path / "cfg" / "run.yaml", task)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    ok(run_here(cfg, {"name": "ml", "epochs": 1, "data_root": str(tmp_path / "data"),
                      "output_root": str(tmp_path / "out")}, cwd))
    rd = tmp_path / "out" / "finetuning" / "ml"

    cols, trows = read_csv(rd / "test.log")
    assert cols[:5] == ["auc_avg_overall", "dice_avg_overall", "iou_avg_overall", "precision_avg_overall",
                        "recall_avg_overall"]
    test = {k: float(v) for k, v in trows[0].items() if k != "model"}
    vcols, vrows = read_csv(rd / "val.log")
    assert vcols[:3] == ["epoch", "avg_epoch_train_loss", "auc_avg_overall"] and len(vrows) == 1
    _, train_rows = read_csv(rd / "train.log")
    assert len(train_rows) == math.ceil(24 / 8)

    pcols, prows = read_csv(rd / "predictions_test_last.csv")
    assert len(prows) == counts["test"] * len(kinds)
    safe = [n.replace(" ", "_") for n in ML_CLASSES]
    assert pcols[3:] == [f"prob_{n}" for n in safe] + ["subject"]
    probs = np.array([[float(r[f"prob_{n}"]) for n in safe] for r in prows])
    truth = np.array([[int(n in r["target"].split("|")) for n in ML_CLASSES] for r in prows])
    assert truth[:, 3].sum() == 0 and truth[:, :3].sum(0).min() > 0
    # file names carry the kind: targets in predictions agree with the CSV
    for r in prows:
        kind = Path(r["file"]).name.split("_")[1]
        assert r["target"] == kinds[kind]

    assert math.isnan(test["auc_Hernia"])
    ci = {r["metric"]: r for r in read_csv(rd / "test_ci.csv")[1]}    # no positives in any resample either
    assert ci["auc_Hernia"]["ci_low"] == "nan" and ci["auc_Hernia"]["undefined"] == ci["auc_Hernia"]["resamples"]
    assert float(ci["auc_avg_overall"]["ci_low"]) <= float(ci["auc_avg_overall"]["ci_high"])
    aucs = [roc_auc_score(truth[:, j], probs[:, j]) for j in range(3)]
    for j in range(3):
        assert test[f"auc_{safe[j]}"] == pytest.approx(aucs[j], abs=1e-9)
    assert test["auc_avg_overall"] == pytest.approx(np.mean(aucs), abs=1e-9)
    pred = (probs >= 0.5).astype(int)
    for key, fn in (("dice", f1_score), ("precision", precision_score), ("recall", recall_score)):
        per = fn(truth, pred, average=None, zero_division=np.nan)
        expect = np.nanmean(per) if not np.all(np.isnan(per)) else float("nan")
        got = test[f"{key}_avg_overall"]
        assert (math.isnan(expect) and math.isnan(got)) or got == pytest.approx(expect, abs=1e-9), key
    # the per-label multilabel confusion counts
    _, cm = read_csv(rd / "confusion_matrices" / "test_last.csv")
    for j, r in enumerate(cm):
        assert r["label"] == ML_CLASSES[j]
        tp = int(((pred[:, j] == 1) & (truth[:, j] == 1)).sum())
        fp = int(((pred[:, j] == 1) & (truth[:, j] == 0)).sum())
        assert (int(r["tp"]), int(r["fp"])) == (tp, fp)


# ============================================================================ 3. resume

def train_rows_of_epoch(path: Path, epoch: int) -> int:
    if not path.exists():
        return 0
    try:
        _, rows = read_csv(path)
    except (csv.Error, OSError):
        return 0
    return sum(1 for r in rows if r.get("epoch") == str(epoch))


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k].float(), b[k].float(), atol=1e-5), k


def assert_complete_logs(rd: Path, epochs: int, steps: int) -> None:
    _, rows = read_csv(rd / "train.log")
    pairs = [(int(r["epoch"]), int(r["step"])) for r in rows]
    assert len(pairs) == epochs * steps and len(set(pairs)) == len(pairs)
    assert sorted(pairs) == [(e, s) for e in range(1, epochs + 1) for s in range(1, steps + 1)]
    _, vrows = read_csv(rd / "val.log")
    assert [int(r["epoch"]) for r in vrows] == list(range(1, epochs + 1))
    _, trows = read_csv(rd / "test.log")
    assert len(trows) == 1


# Resume after a SIGKILL mid-epoch and at an epoch boundary (the resume message, every step logged once, the
# uninterrupted run's losses, val and test rows and weights): test_reproducibility.py; SIGTERM: test_hardening.py


def file_states(folder: Path) -> dict[str, tuple[int, bytes]]:
    return {p.relative_to(folder).as_posix(): (p.stat().st_mtime_ns, p.read_bytes())
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_finished_run_is_not_run_again(finished_run):
    rd = finished_run["dir"]
    before = file_states(rd)
    proc = ok(run_here(finished_run["config"], {}, finished_run["cwd"]))
    assert "already complete" in proc.stdout
    assert "resuming" not in proc.stdout
    after = file_states(rd)
    assert after == before  # same files, same bytes, same mtimes (test.log included)


def test_same_name_different_config_is_refused(finished_run):
    rd = finished_run["dir"]
    before = file_states(rd)
    proc = run_here(finished_run["config"], {"lr": 0.005}, finished_run["cwd"])
    assert proc.returncode == 2, proc.stderr
    assert "lr" in proc.stderr and "Traceback" not in proc.stderr
    assert file_states(rd) == before  # nothing of the earlier run touched, no crash.log added


# ============================================================================ 4. frozen encoder

@pytest.mark.e2e  # trains in-process
def test_frozen_encoder_keeps_encoder_and_bn_statistics(toy):
    init = get_model("resnet18", None, len(CLASSES))
    # BN statistics that differ from their defaults, so any update is visible
    g = torch.Generator().manual_seed(0)
    for m in init.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
    init_sd = {k: v.clone() for k, v in init.state_dict().items()}
    torch.save(init_sd, toy["cwd"] / "init_model.tar")
    proc = ok(run_here(toy["cfg"], {"name": "frozen", "frozen_encoder": True, "model_path": "init_model.tar",
                                    "epochs": 1, "lr": 0.01, "data_root": str(toy["data"]),
                                    "output_root": str(toy["out"])}, toy["cwd"]))
    assert "warning" not in proc.stderr  # head loaded (same classes): no note
    sd = torch.load(toy["out"] / "finetuning" / "frozen" / "finetuned_model.tar", weights_only=True)
    enc = encoder_state(init_sd)
    assert enc and enc.keys() == encoder_state(sd).keys()
    for k, v in enc.items():
        assert torch.equal(sd[k], v), f"{k} changed in a frozen encoder"
    assert any(k.endswith("running_mean") for k in enc) and any(k.endswith("running_var") for k in enc)
    assert not torch.equal(sd["head.weight"], init_sd["head.weight"])
    assert not torch.equal(sd["head.bias"], init_sd["head.bias"])


@pytest.mark.e2e  # trains in-process
def test_unfreeze_last_block_trains_only_layer4(toy):
    import torchvision

    enc = torchvision.models.resnet18(weights=None)
    enc_sd = {k: v.clone() for k, v in enc.state_dict().items() if not k.startswith("fc.")}
    torch.save(enc_sd, toy["cwd"] / "encoder_pretrained.tar")
    ok(run_here(toy["cfg"], {"name": "unfreeze1", "frozen_encoder": True, "unfreeze_last_n": 1,
                             "model_path": "encoder_pretrained.tar", "epochs": 1, "data_root": str(toy["data"]),
                             "output_root": str(toy["out"])}, toy["cwd"]))
    sd = torch.load(toy["out"] / "finetuning" / "unfreeze1" / "finetuned_model.tar", weights_only=True)
    for k, v in enc_sd.items():
        got = sd[f"encoder.{k}"]
        if k.startswith("layer4.") and not k.endswith("num_batches_tracked"):
            if k.endswith((".weight", "running_mean", "running_var")):
                assert not torch.equal(got, v), f"{k} did not train although layer4 is unfrozen"
        elif not k.startswith("layer4."):
            assert torch.equal(got, v), f"{k} changed although only layer4 is unfrozen"
    assert sd["encoder.layer4.0.bn1.num_batches_tracked"] > 0
    assert sd["encoder.layer1.0.bn1.num_batches_tracked"] == enc_sd["layer1.0.bn1.num_batches_tracked"]
