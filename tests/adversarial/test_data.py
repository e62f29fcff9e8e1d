"""Adversarial data: training sets too small or of one class, pretraining folders given twice or
nested, files named with the NIfTI slice separator, files rewritten behind the live cache's back,
images the running user cannot read."""
from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np
import pytest

from adversarial.harness import Case, check
from conftest import make_folder_dataset, task_dict, write_png, write_yaml
from utility.config.loader import validate
from utility.config.schemas import PretrainConfig
from utility.data.badfiles import BadFiles
from utility.data.cache import store_key
from utility.data.dataset import ImageDataset, Preprocess
from utility.data.index import Split
from utility.data.io import read_image
from utility.runs.finetune import main as finetune_main
from utility.runs.pretrain import main as pretrain_main
from utility.runs.pretrain_data import unlabeled_split


def one_class(ws) -> list[str]:
    make_folder_dataset(ws.data / "one", ["a"], 4, splits=("train",))
    make_folder_dataset(ws.data / "one", ["a", "b"], 2, splits=("test",))
    task = write_yaml(ws.user / "tasks" / "one.yaml", task_dict(name="one", root="one", classes=["a", "b"]))
    return ["-c", str(ws.write_config("c.yaml", task=str(task)))]


FINETUNE = [
    Case("train-fraction-rounds-to-one-image", lambda ws: ["-c", str(ws.write_config("c.yaml", train_fraction=0.01))],
         2, "training split has 1 image"),
    Case("single-class-training-set", one_class, 2, "every training image is of class 'a'"),
    Case("data-folder-missing", lambda ws: ["-c", str(ws.write_config("c.yaml", data_root=str(ws.user / "none")))],
         2, "data folder not found"),
]

PRETRAIN = [
    Case("dataset_base_dir-empty-name", lambda ws: ["-c", str(ws.pretrain_config(dataset_base_dir=[""]))], 2,
         "empty folder name"),
    Case("dataset_base_dir-without-images", lambda ws: ["-c", str(ws.pretrain_config(
        dataset_base_dir=[str(ws.file("empty/readme.txt", "x").parent)]))], 2, "no .png"),
]


@pytest.mark.parametrize("case", FINETUNE, ids=repr)
def test_finetune_data(case, tmp_path):
    check(case, finetune_main, tmp_path)


@pytest.mark.parametrize("case", PRETRAIN, ids=repr)
def test_pretrain_data(case, tmp_path):
    check(case, lambda argv: pretrain_main(argv, "pretrain.py"), tmp_path)


def test_pretraining_folders_deduplicated_by_real_path(tmp_path, capsys):
    paths = make_folder_dataset(tmp_path / "d", ["a", "b"], 3, splits=("train",))["train"]
    (tmp_path / "link").symlink_to(tmp_path / "d" / "train")
    dirs = [str(tmp_path / "d" / "train" / "a"), str(tmp_path / "d"), str(tmp_path / "d"), str(tmp_path / "link")]
    cfg = validate(PretrainConfig, {"name": "p", "dataset_base_dir": dirs, "index_cache_dir": "off"}, "test")
    split = unlabeled_split(cfg)
    assert sorted(map(str, split.paths)) == sorted(str(p.resolve()) for p in paths)  # each image once
    assert "4 folders given, 1 distinct by real path; 3 dropped" in capsys.readouterr().out


def test_file_named_with_slice_separator_is_a_file(tmp_path):
    img = np.arange(64, dtype=np.uint8).reshape(8, 8)
    path = write_png(tmp_path / "scan::1.png", img)
    assert np.array_equal(read_image(path)[0], img.astype(np.float32))
    assert store_key([path], "p") != store_key([tmp_path / "scan.png"], "p")


def test_live_cache_key_sees_rewrite_with_restored_mtime(tmp_path):
    path = write_png(tmp_path / "a.png", np.zeros((8, 8), np.uint8))
    st = os.stat(path)
    key = store_key([path], "prep")
    path.read_bytes()
    assert store_key([path], "prep") == key  # read, not changed: the same store
    other = write_png(tmp_path / "b.png", np.full((8, 8), 255, np.uint8))
    path.write_bytes(other.read_bytes()[: st.st_size].ljust(st.st_size, b"\0"))  # same size
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))  # mtime restored (touch -r, rsync -t)
    assert os.stat(path).st_size == st.st_size and os.stat(path).st_mtime_ns == st.st_mtime_ns
    assert store_key([path], "prep") != key


def _reason_as_nobody(ds: ImageDataset, i: int) -> str:
    """load(i) in a child that dropped root (root reads files whatever their mode)."""
    if os.geteuid() != 0:
        return ds.load(i)[1]
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.setgid(65534)
            os.setuid(65534)
            os.write(w, json.dumps(ds.load(i)[1]).encode())
        finally:
            os._exit(0)
    os.close(w)
    data = b""
    while chunk := os.read(r, 65536):
        data += chunk
    os.waitpid(pid, 0)
    return json.loads(data)


def test_image_unreadable_for_the_user_is_listed_in_bad_files(tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    os.chmod(tmp_path, 0o755)
    good = write_png(folder / "good.png", np.zeros((8, 8), np.uint8))
    locked = write_png(folder / 'locked,"x".png', np.zeros((8, 8), np.uint8))
    os.chmod(locked, 0)
    os.chmod(folder, 0o755)
    ds = ImageDataset(Split("train", [good, locked], [0, 0]), Preprocess(1, (8, 8), "naive"), False, 1)
    reason = _reason_as_nobody(ds, 1)
    assert "Permission denied" in reason
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    bad = BadFiles({"train": [good, locked]}, 1.0, run_dir)
    bad.record("train", {"index": [0, 1], "bad": ["", reason]})
    assert bad.write_report()
    rows = list(csv.DictReader((run_dir / "bad_files.csv").open(newline="")))
    assert rows == [{"split": "train", "file": str(locked), "reason": reason}]
