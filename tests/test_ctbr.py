"""The predecessor's radiology task CTBR (issue 11 item 6): its layout medical_2D/{train,val,test}_wo6 and
<S|XS|XXS>/train_wo6, labels from the slices' DICOM BodyPartExamined (keywords, case-insensitive,
umlauts) or a labels CSV, and an end-to-end finetune of CTBR-S from a predecessor-style config that
starts from a predecessor finetuned classifier file (head without bias) through model_path."""
from __future__ import annotations

import csv
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import run_inproc, write_yaml
from test_predecessor_weights import PredecessorClassifier, randomize_
from utility.config.tasks import load_task
from utility.data.body_part import classes_of
from utility.data.index import index_task
from utility.errors import UserError

# slice name -> BodyPartExamined in its DICOM, and the class the keyword table gives (0 head .. 5 spine)
TRAIN = {"a1": ("SCHÄDEL", 0), "a2": ("thorax", 1), "a3": ("Oberbauch", 2), "a4": ("Knie li", 3),
         "a5": ("hüfte", 4), "a6": ("LWS", 5), "a7": ("Head", 0), "a8": ("CHEST", 1)}
SMALL = ["a1", "a3", "a5", "a6", "a8"]                 # the S/train_wo6 subset
VAL = {"v1": ("Kopf", 0), "v2": ("Abdomen", 2), "v3": ("WIRBELSÄULE", 5)}
TEST = {"t1": ("Becken", 4), "t2": ("Thx", 1), "t3": ("Fuß", 3)}
SIZE = 16


def _dicom(path, body_part: str) -> None:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"  # CT image storage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"  # latin-1: umlauts as the sites wrote them
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # 'SCHÄDEL' is not a valid CS value, as in the field
        ds.BodyPartExamined = body_part
        ds.save_as(path, enforce_file_format=True)


def _slice(path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    np.save(path, (rng.normal(0, 300, (SIZE, SIZE)) - 500).astype(np.float32))  # HU-like 2-D slice


@pytest.fixture(scope="module")
def ctbr_root(tmp_path_factory):
    """datasets/medical_2D in the predecessor's layout with its DICOMs under medical_2D/dicom/."""
    root = tmp_path_factory.mktemp("ctbr") / "data"
    base = root / "medical_2D"
    seed = 0
    for split, items in (("train_wo6", TRAIN), ("val_wo6", VAL), ("test_wo6", TEST)):
        for name, (body, _) in items.items():
            sub = f"patient_{name}/{name}.npy"
            _slice(base / split / sub, seed)
            if split == "train_wo6" and name in SMALL:
                _slice(base / "S" / split / sub, seed)
            _dicom(base / "dicom" / f"patient_{name}/{name}.dcm", body)
            seed += 1
    return root


def _labels(indexed, split):
    s = indexed.splits[split]
    return {p.stem: int(t) for p, t in zip(s.paths, s.targets)}


def test_keyword_table_case_insensitive_with_umlauts():
    assert classes_of("SCHÄDEL") == [0] and classes_of("schaedel") == [0] and classes_of("Schädel") == [0]
    assert classes_of("HÜFTE") == [4] and classes_of("Huefte") == [4]
    assert classes_of("HWS") == [5] and classes_of("Wirbelsäule") == [5]
    assert classes_of("FUSS") == [3] and classes_of("Fuß") == [3]
    assert classes_of("Thorax") == [1] and classes_of("tho") == [1]
    assert classes_of("THORAX ABDOMEN") == [1, 2] and classes_of("PHANTOM") == []


def test_ctbr_s_layout_and_dicom_labels(ctbr_root):
    task = load_task("CTBR-S")
    assert task.train_fraction is None and task.classes[5] == "spine"
    idx = index_task(task, ctbr_root, seed=0)
    assert _labels(idx, "train") == {n: TRAIN[n][1] for n in SMALL}      # the S folder, not a fraction
    assert _labels(idx, "val") == {n: c for n, (_, c) in VAL.items()}     # the full val/test
    assert _labels(idx, "test") == {n: c for n, (_, c) in TEST.items()}
    assert all("/S/train_wo6/" in p.as_posix() for p in idx.splits["train"].paths)
    full = index_task(load_task("CTBR"), ctbr_root, seed=0)
    assert _labels(full, "train") == {n: c for n, (_, c) in TRAIN.items()}


def test_ctbr_labels_csv_route_and_errors(ctbr_root, tmp_path):
    import shutil

    root = tmp_path / "data"
    shutil.copytree(ctbr_root / "medical_2D", root / "medical_2D", ignore=shutil.ignore_patterns("dicom"))
    with pytest.raises(UserError, match="body_part_labels.csv"):  # neither CSV nor DICOMs
        index_task(load_task("CTBR-S"), root, seed=0)
    rows = [[f"{n}.npy", c] for n, (_, c) in {**TRAIN, **VAL, **TEST}.items()]
    rows[0][1] = "head"            # a class name
    rows[1][1] = "Thorax/Chest"    # BodyPartExamined text, matched by keyword
    rows[2][1] = "5"               # an index (a2 becomes spine: the CSV wins over the DICOMs)
    with (root / "medical_2D" / "body_part_labels.csv").open("w", newline="") as fh:
        csv.writer(fh).writerows([["file", "label"], *rows])
    idx = index_task(load_task("CTBR"), root, seed=0)
    got = _labels(idx, "train")
    assert got["a1"] == 0 and got["a2"] == 1 and got["a3"] == 5 and got["a8"] == 1
    # an ambiguous DICOM value is refused naming the file and the value
    amb = tmp_path / "amb"
    shutil.copytree(ctbr_root / "medical_2D", amb / "medical_2D")
    _dicom(amb / "medical_2D" / "dicom" / "patient_v1" / "v1.dcm", "THORAX_ABDOMEN")
    with pytest.raises(UserError, match=r"v1\.dcm.*THORAX_ABDOMEN.*several"):
        index_task(load_task("CTBR-S"), amb, seed=0)


PREDECESSOR_CTBR = {
    "seed": 42, "num_workers": 0, "prefetch_factor": 2, "batch_size": 16, "epochs": 1, "device": "cpu",
    "verbose": False, "folds": None, "debug": False, "short_training": False, "test_nan_inf": True,
    "opmode": "disk", "data_format": ".npy", "normalizer": "naive", "shape_desired": [SIZE, SIZE],
    "tf_device": "gpu", "no_augs": True, "noise_injection": None, "frozen_encoder": True,
    "model_name": "resnet18", "syncbn": False, "task": "CTBR-S", "optimizer": "AdamW", "lr": 1e-3,
    "weight_decay": 1e-5, "scheduler": "decay", "decay_per_epoch": 0.95, "scheduling_interval": "epoch",
    "annealing_time": 10, "w_l": [1, 2, 1, 1, 0.5, 1], "w_m": [1, 1, 1, 1, 1, 1],
    "name": "E2/PT_SimCLR_I1k_FT_CTBR-S", "log_losses": True,
}


@pytest.mark.e2e  # trains in-process
def test_ctbr_s_end_to_end_from_predecessor_config_and_weights(ctbr_root, tmp_path):
    """A predecessor CTBR-S config runs (in-process through run_entry); its model_path is a predecessor finetuned classifier (bias-free
    head, loss_criterion buffers): the first logged loss equals that model's weighted CE on the training
    slices (frozen encoder = eval-mode BN, one batch of all five slices), so the file loaded exactly."""
    from utility.data.dataset import ImageDataset, Preprocess
    from utility.runs.finetune import main as finetune_main

    pred = randomize_(PredecessorClassifier(6, PREDECESSOR_CTBR["w_l"]), 7).eval()
    weights = tmp_path / "finetuned_model.tar"
    torch.save(pred.state_dict(), weights)
    cfg = write_yaml(tmp_path / "ctbr_s.yaml", {**PREDECESSOR_CTBR, "model_path": str(weights)})
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    proc = run_inproc(finetune_main, ["-c", cfg, "--data_root", ctbr_root, "--output_root", tmp_path / "out"], cwd)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len([ln for ln in proc.stderr.splitlines() if "w_m" in ln and not ln.startswith("recipe:")]) == 1
    assert "warning: loading" not in proc.stderr
    run = tmp_path / "out" / "finetuning" / "E2" / "PT_SimCLR_I1k_FT_CTBR-S"
    with (run / "train.log").open() as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 1  # 5 training slices (CTBR-S), one batch
    split = index_task(load_task("CTBR-S"), ctbr_root, seed=0).splits["train"]
    ds = ImageDataset(split, Preprocess(3, (SIZE, SIZE), "naive"), False, 6)
    x = torch.stack([ds[i]["image"] for i in range(len(ds))])
    y = torch.tensor([int(t) for t in split.targets])
    with torch.no_grad():
        ref = F.cross_entropy(pred(x), y, weight=torch.tensor(PREDECESSOR_CTBR["w_l"])).item()
    assert float(rows[0]["loss"]) == pytest.approx(ref, rel=1e-4, abs=1e-5)
    with (run / "test.log").open() as fh:
        test = next(csv.DictReader(fh))
    assert 0.0 <= float(test["accuracy"]) <= 1.0
