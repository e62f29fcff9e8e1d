"""Broken-file policy: broken files are skipped and reported (never silently replaced by other samples),
left out of metrics, raised in debug mode, and too many of them stop the run. CPU only."""
from __future__ import annotations

import csv
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import class_pattern, make_folder_dataset, run_inproc, small_run_config, task_dict, write_png, write_yaml
from utility.data.badfiles import BadFiles, drop_invalid
from utility.data.dataset import ImageDataset, Preprocess
from utility.data.index import Split
from utility.errors import UserError


# ----------------------------------------------------------------------------- unit: drop_invalid / BadFiles

def _batch(valid, bad, start=0):
    n = len(valid)
    return {"image": torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1).expand(n, 1, 2, 2).clone(),
            "target": torch.arange(n), "index": torch.arange(start, start + n),
            "valid": torch.tensor(valid), "bad": list(bad)}


def test_drop_invalid_keeps_only_valid_samples(tmp_path):
    paths = {"train": [Path(f"/d/t{i}.png") for i in range(100)], "val": [Path(f"/d/v{i}.png") for i in range(4)]}
    bad = BadFiles(paths, max_fraction=0.5, run_dir=tmp_path)
    b = _batch([True, False, True, False], ["", "unreadable: x", "", "nan_inf: y"], start=10)
    out = drop_invalid(b, "train", bad)
    assert out["index"].tolist() == [10, 12]
    assert out["target"].tolist() == [0, 2]
    assert out["image"][:, 0, 0, 0].tolist() == [0.0, 2.0]
    assert out["valid"].tolist() == [True, True]
    assert out["bad"] == ["", ""]
    assert bad.seen["train"] == {11: "unreadable: x", 13: "nan_inf: y"}
    assert bad.count == 2
    # all valid: the batch itself, nothing recorded
    ok = _batch([True, True], ["", ""])
    assert drop_invalid(ok, "train", bad) is ok
    assert bad.count == 2
    # nothing valid: None, all recorded
    assert drop_invalid(_batch([False], ["unreadable: z"], start=50), "train", bad) is None
    assert bad.count == 3
    # the same file seen again (next epoch) is counted once
    drop_invalid(_batch([True, False], ["", "unreadable: x"], start=10), "train", bad)
    assert bad.count == 3
    line = bad.write_report()
    assert line is not None and "train 3" in line and "\n" not in line
    rows = list(csv.DictReader((tmp_path / "bad_files.csv").open()))
    assert [(r["split"], r["file"]) for r in rows] == [("train", "/d/t11.png"), ("train", "/d/t13.png"),
                                                       ("train", "/d/t50.png")]
    assert rows[0]["reason"] == "unreadable: x" and rows[1]["reason"].startswith("nan_inf")
    # over the limit: a clear error naming the split
    drop_invalid(_batch([False, False, True], ["unreadable: a", "unreadable: b", ""]), "val", bad)  # 2/4: at the limit
    with pytest.raises(UserError, match=r"3 of 4 files of split 'val'.*max_bad_fraction.*/d/v0.png"):
        drop_invalid(_batch([True, True, False], ["", "", "unreadable: c"]), "val", bad)


def test_no_report_when_all_files_fine(tmp_path):
    bad = BadFiles({"train": [Path("a.png")]}, 0.05, tmp_path)
    drop_invalid(_batch([True], [""]), "train", bad)
    assert bad.write_report() is None
    assert not (tmp_path / "bad_files.csv").exists()


def test_dataset_marks_bad_samples_instead_of_replacing_them(tmp_path):
    good = write_png(tmp_path / "good.png", class_pattern(0))
    garbage = tmp_path / "garbage.png"
    garbage.write_bytes(b"\x89PNG not really" * 20)
    missing = tmp_path / "missing.png"
    nan = tmp_path / "nan.npy"
    arr = class_pattern(1).astype(np.float32)
    arr[3, 3] = np.nan
    np.save(nan, arr)
    inf = tmp_path / "inf.npy"
    arr[3, 3] = np.inf
    np.save(inf, arr)
    split = Split("train", [good, garbage, missing, nan, inf], [0, 1, 0, 1, 0])
    prep = Preprocess(3, (8, 8), "naive")
    ds = ImageDataset(split, prep, False, 2)
    s = [ds[i] for i in range(5)]
    assert s[0]["valid"] and s[0]["bad"] == ""
    for i in (1, 2, 3, 4):
        assert not s[i]["valid"]
        assert s[i]["index"] == i  # the sample itself, not a random other one
        assert s[i]["image"].shape == (3, 8, 8) and (s[i]["image"] == 0).all()
    assert s[1]["bad"].startswith("unreadable") and s[2]["bad"].startswith("unreadable")
    assert s[3]["bad"].startswith("nan_inf") and s[4]["bad"].startswith("nan_inf")
    # test_nan_inf off: the NaN image is not dropped
    loose = ImageDataset(split, prep, False, 2, test_nan_inf=False)
    assert loose[3]["valid"] and loose[3]["bad"] == ""
    # debug: raised with the path
    strict = ImageDataset(split, prep, False, 2, debug=True)
    with pytest.raises(UserError, match=re.escape(str(garbage))):
        strict[1]


# ----------------------------------------------------------------------------- end-to-end

@pytest.fixture
def broken(tmp_path):
    """train/val/test folders of 2 classes x 4 PNGs, plus: a truncated PNG in train, a garbage PNG
    and a NaN .npy in test, and one good .npy in test."""
    data_root = tmp_path / "data"
    make_folder_dataset(data_root / "bad", ["bar_h", "bar_v"], 4, splits=("train", "val", "test"))
    root = data_root / "bad"
    full = write_png(tmp_path / "scratch" / "full.png", np.random.default_rng(0).integers(0, 256, (64, 64),
                                                                                          dtype=np.uint8))
    data = full.read_bytes()
    trunc = root / "train" / "bar_v" / "truncated.png"
    trunc.write_bytes(data[: len(data) // 2])
    garbage = root / "test" / "bar_h" / "garbage.png"
    garbage.write_bytes(b"definitely not a PNG file" * 40)
    nan_arr = class_pattern(1).astype(np.float32)
    nan_arr[2:5, 2:5] = np.nan
    nan = root / "test" / "bar_v" / "has_nan.npy"
    np.save(nan, nan_arr)
    np.save(root / "test" / "bar_h" / "good.npy", class_pattern(0).astype(np.float32))
    task = write_yaml(tmp_path / "tasks" / "bad.yaml", task_dict(
        name="bad", root="bad", data_format=[".png", ".npy"],
        splits={"train": {"dir": "train"}, "val": {"dir": "val"}, "test": {"dir": "test"}}))
    config = write_yaml(tmp_path / "cfg" / "run.yaml", small_run_config(
        task=task, model_name="timm:test_resnet", epochs=2, batch_size=4, max_bad_fraction=0.3))
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    return {"data_root": data_root, "out": tmp_path / "out", "task": task, "config": config, "cwd": cwd,
            "trunc": trunc, "garbage": garbage, "nan": nan, "readable_test": 9,
            "args": ["-c", config, "--data_root", data_root, "--output_root", tmp_path / "out",
                     "--cache_dir", tmp_path / "cache"]}


def finetune(args: list, cwd: Path):
    """The finetuning entry point in-process through ``run_entry`` (``conftest.run_inproc``)."""
    from utility.runs.finetune import main

    return run_inproc(main, args, cwd)


@pytest.mark.e2e  # trains in-process
def test_broken_files_skipped_and_reported(broken):
    proc = finetune([*broken["args"], "--name", "b/normal"], cwd=broken["cwd"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    run_dir = broken["out"] / "finetuning" / "b" / "normal"
    rows = list(csv.DictReader((run_dir / "bad_files.csv").open()))
    got = {(r["split"], Path(r["file"]).name): r["reason"] for r in rows}
    assert set(got) == {("train", "truncated.png"), ("test", "garbage.png"), ("test", "has_nan.npy")}
    assert got[("train", "truncated.png")].startswith("unreadable")
    assert got[("test", "garbage.png")].startswith("unreadable")
    assert got[("test", "has_nan.npy")].startswith("nan_inf")
    assert {Path(r["file"]) for r in rows} == {broken["trunc"], broken["garbage"], broken["nan"]}
    # one summary line per epoch (train has the truncated file), and a final one after the test
    summaries = [ln for ln in proc.stderr.splitlines() if "skipped unreadable" in ln]
    per_epoch = [ln for ln in summaries if re.match(r"epoch \d+: ", ln)]
    assert [ln.split(":")[0] for ln in per_epoch] == ["epoch 1", "epoch 2"], proc.stderr[-2000:]
    assert all("train 1" in ln for ln in per_epoch)
    assert "train 1" in summaries[-1] and "test 2" in summaries[-1]
    # bad samples are out of the metrics
    cm = list(csv.reader((run_dir / "confusion_matrices" / "test_last.csv").open()))
    assert sum(int(v) for r in cm[1:] for v in r[1:]) == broken["readable_test"]
    preds = {Path(r["file"]).name for r in csv.DictReader((run_dir / "predictions_test_last.csv").open())}
    assert len(preds) == broken["readable_test"] and "good.npy" in preds
    assert not preds & {"garbage.png", "has_nan.npy"}
    for e in (1, 2):
        cm = list(csv.reader((run_dir / "confusion_matrices" / f"val_epoch_{e}.csv").open()))
        assert sum(int(v) for r in cm[1:] for v in r[1:]) == 8


def test_debug_raises_on_broken_file(broken):
    proc = finetune([*broken["args"], "--name", "b/debug", "--debug", "true"], cwd=broken["cwd"])
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert str(broken["trunc"]) in proc.stderr  # the only broken training file
    assert "unreadable" in proc.stderr


def test_too_many_broken_files_stop_the_run(broken):
    proc = finetune([*broken["args"], "--name", "b/strict", "--max_bad_fraction", "0.05"], cwd=broken["cwd"])
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert "split 'train'" in proc.stderr and "max_bad_fraction" in proc.stderr
    assert str(broken["trunc"]) in proc.stderr
    assert not (broken["out"] / "finetuning" / "b" / "strict" / "test.log").exists()
