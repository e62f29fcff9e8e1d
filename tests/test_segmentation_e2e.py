"""End to end: finetuning on BraTS-like and LiTS-like data in the predecessor's layouts and on the
generic layout, from a cwd outside the repository (in-process through ``run_entry``, as the script runs)."""
from __future__ import annotations

import csv
import sys
from pathlib import Path

import numpy as np
import pytest
import torch


from conftest import run_inproc, small_run_config, write_yaml
from test_segmentation_data import write_brats, write_lits
from test_segmentation_model import simclr_encoder_file

from utility.models import get_model


pytestmark = pytest.mark.e2e  # every test trains in-process


def _header(path: Path) -> list[str]:
    with path.open(newline="") as fh:
        return next(csv.reader(fh))


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def _run(tmp_path: Path, task: str, name: str, classes: int, **overrides):
    cfg = small_run_config(name=name, task=task, **{"shape_desired": [32, 32], "batch_size": 4, **overrides})
    cfg_path = write_yaml(tmp_path / "cfg" / f"{name.replace('/', '_')}.yaml", cfg)
    cwd = tmp_path / "elsewhere"
    cwd.mkdir(exist_ok=True)
    from utility.runs.finetune import main

    proc = run_inproc(main, ["-c", cfg_path, "--data_root", tmp_path / "data", "--output_root", tmp_path / "out"],
                      cwd)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = tmp_path / "out" / "finetuning" / name
    # grouped per class as the predecessor wrote them: dice, iou, precision, recall of class 0, then 1, ...
    pred_cols = [f"{m}_avg_class_{c}" for c in range(classes) for m in ("dice", "iou", "precision", "recall")]
    val_cols, test_cols = _header(run / "val.log"), _header(run / "test.log")
    assert val_cols[:2] == ["epoch", "avg_epoch_train_loss"]
    assert val_cols[2:2 + len(pred_cols)] == pred_cols and val_cols[2 + len(pred_cols)] == "avg_val_loss"
    assert test_cols[:len(pred_cols)] == pred_cols and test_cols[len(pred_cols)] == "avg_val_loss"
    assert "dice_mean_fg" in test_cols
    model = get_model("unet_resnet18_backbone", run / "finetuned_model.tar", classes)
    assert model.eval()(torch.zeros(1, 3, 32, 32)).shape == (1, classes, 32, 32)
    cm = list(csv.reader((run / "confusion_matrices" / "test_last.csv").open()))
    assert len(cm) == classes + 1
    return run, _rows(run / "test.log")[0]


def test_brats_like_end_to_end(tmp_path):
    write_brats(tmp_path / "data", patients=2, slices=2, size=32)
    simclr_encoder_file(tmp_path / "encoder_pretrained.tar")
    run, row = _run(tmp_path, "BraTS", "E1/brats", 4, model_path=str(tmp_path / "encoder_pretrained.tar"),
                    w_l=[1, 5, 5, 5], opmode="live_cache", cache_dir=str(tmp_path / "cache"),
                    noise_injection=[0.05, 0.5])
    for region in ("ET", "TC", "WT"):
        assert f"dice_{region}" in row
    # the predecessor's meaning: class_1 = ET, class_2 = WT, class_3 = TC; raw classes under new names
    for c, region in ((1, "ET"), (2, "WT"), (3, "TC")):
        assert row[f"dice_avg_class_{c}"] == row[f"dice_{region}"]
    cols = list(row)
    assert cols.index("recall_mean_fg") < cols.index("dice_raw_class_0") < cols.index("recall_raw_class_3")
    pixels = sum(int(v) for r in list(csv.reader((run / "confusion_matrices" / "test_last.csv").open()))[1:]
                 for v in r[1:])
    assert pixels == 4 * 32 * 32  # every test pixel counted once
    overlays = sorted((run / "overlays").glob("test_last_*.png"))
    assert 1 <= len(overlays) <= 4

    # per-image pixel counts with their subject; they sum to the split's confusion matrix
    preds = _rows(run / "predictions_test_last.csv")
    assert list(preds[0])[-1] == "subject" and len(preds) == 4
    counts = np.array([[int(r[f"px_true{t}_pred{p}"]) for t in range(4) for p in range(4)] for r in preds])
    cm = np.array([[int(v) for v in r[1:]] for r in list(csv.reader((run / "confusion_matrices" / "test_last.csv").open()))[1:]])
    np.testing.assert_array_equal(counts.sum(0).reshape(4, 4), cm)
    # test_ci.csv: each test metric (regions too), value as test.log; dice_WT's interval recomputed here
    ci = {r["metric"]: r for r in _rows(run / "test_ci.csv")}
    assert list(ci) == [k for k in row if k not in ("avg_val_loss", "epoch", "model")]
    for k, r in ci.items():
        assert r["value"] == row[k] or (r["value"] == "nan" and row[k] == "nan"), k
    codes = np.unique([r["subject"] for r in preds], return_inverse=True)[1]
    s = codes.max() + 1
    wt = []
    for d in np.random.default_rng(0).integers(0, s, (1000, s)):   # the run's seed
        c = sum(counts[codes == j].sum(0) for j in d).reshape(4, 4)
        tp, fp, fn = c[1:, 1:].sum(), c[0, 1:].sum(), c[1:, 0].sum()
        wt.append(2 * tp / (2 * tp + fp + fn) if tp + fp + fn else np.nan)
    wt = np.array(wt)[~np.isnan(wt)]
    if wt.size:
        assert float(ci["dice_WT"]["ci_low"]) == pytest.approx(np.percentile(wt, 2.5), abs=1e-9)
        assert float(ci["dice_WT"]["ci_high"]) == pytest.approx(np.percentile(wt, 97.5), abs=1e-9)
    assert int(ci["dice_WT"]["undefined"]) == 1000 - wt.size


def test_lits_like_end_to_end_cpu_augmentation(tmp_path):
    write_lits(tmp_path / "data", volumes=2, slices=2, size=32)
    run, row = _run(tmp_path, "LiTS", "E1/lits", 3, tf_device="cpu", w_l=[1, 3, 10], frozen_encoder=True)
    assert 0.0 <= float(row["dice_avg_class_0"]) <= 1.0


def test_generic_layout_test_log_matches_recomputation(tmp_path):
    """The demo's generic layout; test.log's numbers equal a recomputation from finetuned_model.tar
    (numpy counts over all test pixels at once), whatever the batch size of the run."""
    from datasets.prepare_demo_seg import write_demo
    from utility.data.dataset import Preprocess
    from utility.data.index import index_task
    from utility.data.segdata import make_seg_dataset
    from utility.config.tasks import load_task

    write_demo(tmp_path / "data" / "demo_seg", {"train": 8, "val": 4, "test": 7}, size=32)
    run, row = _run(tmp_path, "demo_seg", "demo/tiny", 3, batch_size=3, num_workers=0)
    task = load_task("demo_seg")
    split = index_task(task, tmp_path / "data", seed=0).splits["test"]
    cfg = type("C", (), {"opmode": "disk", "debug": False, "test_nan_inf": True})()
    ds = make_seg_dataset(cfg, task, split, "test", Preprocess(3, (32, 32), "naive"), 3, None)
    model = get_model("unet_resnet18_backbone", run / "finetuned_model.tar", 3).eval()
    with torch.no_grad():
        x = torch.stack([ds[i]["image"] for i in range(len(ds))])
        pred = model(x).argmax(1).numpy().ravel()
    truth = torch.stack([ds[i]["target"] for i in range(len(ds))]).numpy().ravel()
    for c in range(3):
        tp, fp, fn = [int(np.sum(m)) for m in ((pred == c) & (truth == c), (pred == c) & (truth != c),
                                               (pred != c) & (truth == c))]
        if tp + fp + fn == 0:
            assert row[f"dice_avg_class_{c}"] in ("nan", "")
            continue
        assert float(row[f"dice_avg_class_{c}"]) == pytest.approx(2 * tp / (2 * tp + fp + fn), abs=1e-5)
        assert float(row[f"iou_avg_class_{c}"]) == pytest.approx(tp / (tp + fp + fn), abs=1e-5)
