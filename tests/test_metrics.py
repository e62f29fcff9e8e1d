"""Tests of utility.metrics.classification against scikit-learn computed independently."""

from __future__ import annotations

import csv
import math
import warnings

import numpy as np
import pytest
import torch
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    confusion_matrix,
    f1_score,
    jaccard_score,
    multilabel_confusion_matrix,
    precision_score,
    recall_score,
    roc_auc_score,
)

from utility.metrics.classification import ClassificationMetrics, sanitize_name

MC_NAMES = ["normal", "Pleural Effusion", "mass/nodule", "x"]


def _feed(metrics: ClassificationMetrics, logits: torch.Tensor, targets: torch.Tensor, sizes: list[int]) -> None:
    assert sum(sizes) == logits.shape[0]
    start = 0
    for s in sizes:
        metrics.update(logits[start : start + s], targets[start : start + s])
        start += s


def _multiclass_data(n: int = 200, c: int = 4, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    targets = torch.randint(0, c, (n,), generator=g)
    logits = torch.randn(n, c, generator=g)
    logits[torch.arange(n), targets] += 1.0  # informative but imperfect
    return logits, targets


def _multilabel_data(n: int = 300, c: int = 5, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    targets = (torch.rand(n, c, generator=g) < 0.35).float()
    logits = torch.randn(n, c, generator=g) + 1.5 * (targets - 0.5)
    return logits, targets


def _nanmean(x) -> float:
    x = np.asarray(x, dtype=float)
    return float(np.mean(x[~np.isnan(x)])) if (~np.isnan(x)).any() else float("nan")


def _same(a: float, b: float) -> bool:
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)


# ---------------------------------------------------------------- multiclass
def test_multiclass_row_order_and_types():
    logits, targets = _multiclass_data()
    m = ClassificationMetrics(4, multilabel=False, class_names=MC_NAMES)
    m.update(logits, targets)
    row = m.compute(0.25)
    assert list(row) == [
        "accuracy",
        "avg_val_loss",
        "balanced_accuracy",
        "f1_macro",
        "auc_macro",
        "auc_class_normal",
        "auc_class_Pleural_Effusion",
        "auc_class_mass_nodule",
        "auc_class_x",
    ]
    assert all(type(v) is float for v in row.values())
    assert row["avg_val_loss"] == 0.25


def test_multiclass_default_names():
    logits, targets = _multiclass_data(c=3)
    m = ClassificationMetrics(3, multilabel=False)
    m.update(logits, targets)
    assert list(m.compute(1.0))[5:] == ["auc_class_0", "auc_class_1", "auc_class_2"]


@pytest.mark.parametrize("sizes", [[200], [1] * 200, [7, 64, 64, 65], [100, 3, 97]])
def test_multiclass_matches_sklearn_any_batch_split(sizes):
    logits, targets = _multiclass_data()
    m = ClassificationMetrics(4, multilabel=False, class_names=MC_NAMES)
    _feed(m, logits, targets, sizes)
    row = m.compute(0.5)

    probs = torch.softmax(logits.float(), dim=1).numpy()
    y = targets.numpy()
    pred = probs.argmax(1)
    assert _same(row["accuracy"], accuracy_score(y, pred))
    assert _same(row["balanced_accuracy"], balanced_accuracy_score(y, pred))
    assert _same(row["f1_macro"], f1_score(y, pred, average="macro", labels=range(4), zero_division=np.nan))
    aucs = [roc_auc_score((y == c).astype(int), probs[:, c]) for c in range(4)]
    for c, name in enumerate(["normal", "Pleural_Effusion", "mass_nodule", "x"]):
        assert row[f"auc_class_{name}"] == pytest.approx(aucs[c], abs=1e-7)
    assert row["auc_macro"] == pytest.approx(np.mean(aucs), abs=1e-7)
    np.testing.assert_array_equal(m.confusion_matrix(), confusion_matrix(y, pred, labels=range(4)))
    assert m.confusion_matrix().dtype == np.int64


def test_multiclass_batch_split_independence_exact():
    logits, targets = _multiclass_data(seed=5)
    rows = []
    for sizes in ([200], [13] * 15 + [5], [199, 1]):
        m = ClassificationMetrics(4, multilabel=False)
        _feed(m, logits, targets, sizes)
        rows.append(m.compute(0.1))
    for r in rows[1:]:
        assert r.keys() == rows[0].keys()
        assert all(_same(r[k], rows[0][k]) for k in r)


@pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true")  # reference call only
def test_multiclass_absent_class_gives_nan_auc_no_warning():
    logits, targets = _multiclass_data(n=120)
    targets = torch.where(targets == 2, torch.zeros_like(targets), targets)  # class 2 never true
    m = ClassificationMetrics(4, multilabel=False)
    _feed(m, logits, targets, [50, 70])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        row = m.compute(0.0)
    assert math.isnan(row["auc_class_2"])
    probs = torch.softmax(logits, dim=1).numpy()
    y = targets.numpy()
    others = [roc_auc_score((y == c).astype(int), probs[:, c]) for c in (0, 1, 3)]
    assert row["auc_macro"] == pytest.approx(np.mean(others), abs=1e-7)
    pred = probs.argmax(1)
    assert _same(row["balanced_accuracy"], balanced_accuracy_score(y, pred))
    assert _same(row["f1_macro"], f1_score(y, pred, average="macro", labels=range(4), zero_division=np.nan))


def test_multiclass_class_never_present_nor_predicted_excluded_from_f1_macro():
    # class 2 neither present nor predicted: its F1 is NaN and it is left out of the macro
    y = torch.tensor([0, 1, 0, 1, 3, 3])
    logits = torch.full((6, 4), -5.0)
    logits[torch.arange(6), torch.tensor([0, 1, 1, 1, 3, 0])] = 5.0
    m = ClassificationMetrics(4, multilabel=False)
    m.update(logits, y)
    row = m.compute(0.0)
    pred = np.array([0, 1, 1, 1, 3, 0])
    per_class = f1_score(y.numpy(), pred, labels=range(4), average=None, zero_division=np.nan)
    assert math.isnan(per_class[2])
    assert _same(row["f1_macro"], _nanmean(per_class))
    assert _same(row["f1_macro"], f1_score(y.numpy(), pred, labels=range(4), average="macro", zero_division=np.nan))


def test_multiclass_all_auc_nan():
    # a single class present -> every one-vs-rest AUC undefined
    logits, _ = _multiclass_data(n=20, c=3)
    targets = torch.ones(20, dtype=torch.int64)
    m = ClassificationMetrics(3, multilabel=False)
    m.update(logits, targets)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        row = m.compute(1.0)
    assert math.isnan(row["auc_macro"])
    assert all(math.isnan(row[f"auc_class_{c}"]) for c in range(3))
    assert not math.isnan(row["accuracy"])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_multiclass_low_precision_logits(dtype):
    logits, targets = _multiclass_data()
    low = (logits * 4).to(dtype)
    m = ClassificationMetrics(4, multilabel=False)
    _feed(m, low, targets, [64, 64, 72])
    probs_ref = torch.softmax(low.float(), dim=1).numpy()
    st = m.state()
    assert st["probs"].dtype == np.float32
    np.testing.assert_allclose(st["probs"], probs_ref, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(st["probs"].sum(1), 1.0, atol=1e-5)
    row = m.compute(0.0)
    y = targets.numpy()
    aucs = [roc_auc_score((y == c).astype(int), probs_ref[:, c]) for c in range(4)]
    assert row["auc_macro"] == pytest.approx(np.mean(aucs), abs=1e-7)
    assert _same(row["accuracy"], accuracy_score(y, probs_ref.argmax(1)))


def test_multiclass_load_states_equals_single_accumulation():
    logits, targets = _multiclass_data(n=210)
    single = ClassificationMetrics(4, multilabel=False)
    # the same batches as the shards below: float32 softmax/sigmoid results may depend on the batch
    # shape (vector width, threads), and this test is about bit-exact concatenation of states, so
    # every probability is computed from an identical batch on both sides
    _feed(single, logits, targets, [30, 40, 30, 40, 30, 40])
    shards = []
    for lo, hi in ((0, 70), (70, 140), (140, 210)):
        part = ClassificationMetrics(4, multilabel=False)
        _feed(part, logits[lo:hi], targets[lo:hi], [30, hi - lo - 30])
        shards.append(part.state())
    gathered = ClassificationMetrics(4, multilabel=False)
    gathered.update(logits[:5], targets[:5])  # replaced, not appended to
    gathered.load_states(shards)
    np.testing.assert_array_equal(gathered.state()["probs"], single.state()["probs"])
    np.testing.assert_array_equal(gathered.state()["targets"], single.state()["targets"])
    a, b = gathered.compute(0.3), single.compute(0.3)
    assert list(a) == list(b) and all(_same(a[k], b[k]) for k in a)
    np.testing.assert_array_equal(gathered.confusion_matrix(), single.confusion_matrix())


def test_multiclass_save_confusion_matrix_csv(tmp_path):
    logits, targets = _multiclass_data()
    names = ["normal", "Pleural Effusion", "a,b", "x"]
    m = ClassificationMetrics(4, multilabel=False, class_names=names)
    m.update(logits, targets)
    path = tmp_path / "sub" / "cm.csv"
    m.save_confusion_matrix(path)
    with path.open(newline="") as fh:
        rows = list(csv.reader(fh))
    assert rows[0][1:] == names
    assert [r[0] for r in rows[1:]] == names
    read = np.array([[int(v) for v in r[1:]] for r in rows[1:]], dtype=np.int64)
    np.testing.assert_array_equal(read, m.confusion_matrix())


# ---------------------------------------------------------------- multilabel
ML_NAMES = ["Atelectasis", "Cardiomegaly", "Pleural Effusion", "No Finding", "e"]
ML_SAFE = ["Atelectasis", "Cardiomegaly", "Pleural_Effusion", "No_Finding", "e"]


def _expected_multilabel_order(safe):
    head = [
        "auc_avg_overall",
        "dice_avg_overall",
        "iou_avg_overall",
        "precision_avg_overall",
        "recall_avg_overall",
        "avg_val_loss",
    ]
    tail = []
    for n in safe:
        tail += [f"auc_{n}", f"f1_{n}", f"precision_{n}", f"recall_{n}", f"iou_{n}"]
    return head + tail


def _sk_multilabel(probs, y, thr=0.5):
    pred = (probs >= thr).astype(int)
    out = {}
    out["auc"] = [
        roc_auc_score(y[:, j], probs[:, j]) if 0 < y[:, j].sum() < len(y) else float("nan")
        for j in range(y.shape[1])
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out["f1"] = [f1_score(y[:, j], pred[:, j], zero_division=np.nan) for j in range(y.shape[1])]
        out["precision"] = [precision_score(y[:, j], pred[:, j], zero_division=np.nan) for j in range(y.shape[1])]
        out["recall"] = [recall_score(y[:, j], pred[:, j], zero_division=np.nan) for j in range(y.shape[1])]
        iou = []
        for j in range(y.shape[1]):
            if y[:, j].sum() == 0 and pred[:, j].sum() == 0:
                iou.append(float("nan"))
            else:
                iou.append(jaccard_score(y[:, j], pred[:, j]))
        out["iou"] = iou
    return out, pred


@pytest.mark.parametrize("sizes", [[300], [1] * 300, [32] * 9 + [12], [150, 149, 1]])
@pytest.mark.parametrize("thr", [0.5, 0.3])
def test_multilabel_matches_sklearn_any_batch_split(sizes, thr):
    logits, targets = _multilabel_data()
    m = ClassificationMetrics(5, multilabel=True, class_names=ML_NAMES, threshold=thr)
    _feed(m, logits, targets, sizes)
    row = m.compute(0.7)
    assert list(row) == _expected_multilabel_order(ML_SAFE)
    assert all(type(v) is float for v in row.values())
    assert row["avg_val_loss"] == 0.7

    probs = torch.sigmoid(logits.float()).numpy()
    y = targets.numpy().astype(int)
    ref, pred = _sk_multilabel(probs, y, thr)
    for j, n in enumerate(ML_SAFE):
        assert row[f"auc_{n}"] == pytest.approx(ref["auc"][j], abs=1e-7)
        assert _same(row[f"f1_{n}"], ref["f1"][j])
        assert _same(row[f"precision_{n}"], ref["precision"][j])
        assert _same(row[f"recall_{n}"], ref["recall"][j])
        assert _same(row[f"iou_{n}"], ref["iou"][j])
    assert row["auc_avg_overall"] == pytest.approx(np.mean(ref["auc"]), abs=1e-7)
    assert _same(row["dice_avg_overall"], float(np.mean(ref["f1"])))
    assert _same(row["iou_avg_overall"], float(np.mean(ref["iou"])))
    assert _same(row["precision_avg_overall"], float(np.mean(ref["precision"])))
    assert _same(row["recall_avg_overall"], float(np.mean(ref["recall"])))
    # macro means also equal sklearn's own macro averages here (all labels defined)
    assert _same(row["dice_avg_overall"], f1_score(y, pred, average="macro", zero_division=np.nan))
    assert _same(row["iou_avg_overall"], jaccard_score(y, pred, average="macro"))
    assert row["auc_avg_overall"] == pytest.approx(roc_auc_score(y, probs, average="macro"), abs=1e-7)

    cm = m.confusion_matrix()
    assert cm.shape == (5, 2, 2) and cm.dtype == np.int64
    np.testing.assert_array_equal(cm, multilabel_confusion_matrix(y, pred))


def test_multilabel_label_without_positives_nan_and_nanmean():
    logits, targets = _multilabel_data(n=100, c=4, seed=3)
    targets[:, 1] = 0.0  # label 1 never positive
    logits[:, 1] = -10.0  # ... and never predicted
    targets[:, 3] = 0.0  # label 3 never positive but sometimes predicted
    targets = targets.to(torch.int64)  # integer targets are accepted too
    m = ClassificationMetrics(4, multilabel=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _feed(m, logits, targets, [40, 60])
        row = m.compute(0.0)
    probs = torch.sigmoid(logits).numpy()
    y = targets.numpy()
    ref, _ = _sk_multilabel(probs, y)
    assert math.isnan(row["auc_1"]) and math.isnan(row["auc_3"])
    assert math.isnan(row["recall_1"]) and math.isnan(row["precision_1"])
    assert math.isnan(row["f1_1"]) and math.isnan(row["iou_1"])
    assert math.isnan(row["recall_3"])
    assert row["f1_3"] == 0.0 and row["precision_3"] == 0.0 and row["iou_3"] == 0.0
    for metric in ("auc", "f1", "precision", "recall", "iou"):
        for j in range(4):
            assert _same(row[f"{metric}_{j}"], float(ref[metric][j])), (metric, j)
    assert row["auc_avg_overall"] == pytest.approx(np.mean([ref["auc"][0], ref["auc"][2]]), abs=1e-7)
    assert _same(row["dice_avg_overall"], _nanmean(ref["f1"]))
    assert _same(row["iou_avg_overall"], _nanmean(ref["iou"]))
    assert _same(row["precision_avg_overall"], _nanmean(ref["precision"]))
    assert _same(row["recall_avg_overall"], _nanmean(ref["recall"]))


def test_multilabel_all_nan():
    # no positives anywhere and nothing predicted: every per-label value and every mean is NaN
    logits = torch.full((10, 3), -8.0)
    targets = torch.zeros(10, 3)
    m = ClassificationMetrics(3, multilabel=True, class_names=["a", "b", "c"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m.update(logits, targets)
        row = m.compute(2.0)
    assert row["avg_val_loss"] == 2.0
    for k, v in row.items():
        if k != "avg_val_loss":
            assert math.isnan(v), k
    np.testing.assert_array_equal(m.confusion_matrix()[:, 0, 0], [10, 10, 10])


def test_multilabel_only_positives_auc_nan():
    logits, _ = _multilabel_data(n=50, c=2)
    targets = torch.ones(50, 2)
    m = ClassificationMetrics(2, multilabel=True)
    m.update(logits, targets)
    row = m.compute(0.0)
    assert math.isnan(row["auc_0"]) and math.isnan(row["auc_avg_overall"])
    assert row["recall_0"] == pytest.approx(recall_score(np.ones(50), (torch.sigmoid(logits[:, 0]) >= 0.5).numpy()))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_multilabel_low_precision_logits(dtype):
    logits, targets = _multilabel_data()
    low = logits.to(dtype)
    m = ClassificationMetrics(5, multilabel=True)
    _feed(m, low, targets.to(dtype), [100, 200])
    probs_ref = torch.sigmoid(low.float()).numpy()
    st = m.state()
    assert st["probs"].dtype == np.float32
    np.testing.assert_allclose(st["probs"], probs_ref, rtol=1e-6, atol=1e-7)
    row = m.compute(0.0)
    y = targets.numpy().astype(int)
    ref, _ = _sk_multilabel(probs_ref, y)
    for j in range(5):
        assert row[f"auc_{j}"] == pytest.approx(ref["auc"][j], abs=1e-7)
        assert _same(row[f"f1_{j}"], ref["f1"][j])


def test_multilabel_load_states_equals_single_accumulation():
    logits, targets = _multilabel_data(n=90)
    single = ClassificationMetrics(5, multilabel=True)
    # the same batches as the shards (see the multiclass test): with [45, 45] one sigmoid of 450
    # differed by 1.5e-8 on some CPUs / thread counts
    _feed(single, logits, targets, [30, 60])
    states = []
    for lo, hi in ((0, 30), (30, 30), (30, 90)):  # includes an empty shard
        part = ClassificationMetrics(5, multilabel=True)
        if hi > lo:
            part.update(logits[lo:hi], targets[lo:hi])
        states.append(part.state())
    gathered = ClassificationMetrics(5, multilabel=True)
    gathered.load_states(states)
    np.testing.assert_array_equal(gathered.state()["probs"], single.state()["probs"])
    np.testing.assert_array_equal(gathered.state()["targets"], single.state()["targets"])
    a, b = gathered.compute(0.3), single.compute(0.3)
    assert list(a) == list(b) and all(_same(a[k], b[k]) for k in a)
    np.testing.assert_array_equal(gathered.confusion_matrix(), single.confusion_matrix())


def test_multilabel_save_confusion_matrix_csv(tmp_path):
    logits, targets = _multilabel_data()
    m = ClassificationMetrics(5, multilabel=True, class_names=ML_NAMES)
    m.update(logits, targets)
    path = tmp_path / "cm.csv"
    m.save_confusion_matrix(path)
    with path.open(newline="") as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == ["label", "tn", "fp", "fn", "tp"]
    assert [r[0] for r in rows[1:]] == ML_NAMES
    cm = m.confusion_matrix()
    for r, mat in zip(rows[1:], cm):
        tn, fp, fn, tp = (int(v) for v in r[1:])
        np.testing.assert_array_equal(np.array([[tn, fp], [fn, tp]]), mat)


# ------------------------------------------------------------------- misc
def test_empty_accumulator_raises():
    for ml in (False, True):
        m = ClassificationMetrics(3, multilabel=ml)
        with pytest.raises(ValueError, match="no predictions accumulated"):
            m.compute(0.0)
        with pytest.raises(ValueError, match="no predictions accumulated"):
            m.confusion_matrix()
        assert m.state()["probs"].shape == (0, 3)


def test_reset_clears():
    logits, targets = _multiclass_data(n=10)
    m = ClassificationMetrics(4, multilabel=False)
    m.update(logits, targets)
    m.compute(0.0)
    m.reset()
    with pytest.raises(ValueError, match="no predictions accumulated"):
        m.compute(0.0)
    m.update(logits[:4], targets[:4])
    assert m.state()["probs"].shape == (4, 4)


def test_update_detaches_grad_tensors():
    logits, targets = _multiclass_data(n=8)
    logits.requires_grad_(True)
    m = ClassificationMetrics(4, multilabel=False)
    m.update(logits * 2, targets)
    assert isinstance(m.state()["probs"], np.ndarray)


def test_input_validation():
    m = ClassificationMetrics(3, multilabel=False)
    with pytest.raises(ValueError):
        m.update(torch.zeros(4, 2), torch.zeros(4, dtype=torch.int64))
    with pytest.raises(ValueError):
        m.update(torch.zeros(4, 3), torch.tensor([0, 1, 2, 3]))
    ml = ClassificationMetrics(3, multilabel=True)
    with pytest.raises(ValueError):
        ml.update(torch.zeros(4, 3), torch.zeros(4, dtype=torch.int64))
    with pytest.raises(ValueError):
        ml.update(torch.zeros(2, 3), torch.full((2, 3), 0.5))
    with pytest.raises(ValueError):
        ClassificationMetrics(3, multilabel=False, class_names=["a", "b"])
    with pytest.raises(ValueError):
        ClassificationMetrics(2, multilabel=False, class_names=["a b", "a_b"])  # collide after sanitising


def test_sanitize_name():
    assert sanitize_name("Pleural Effusion") == "Pleural_Effusion"
    assert sanitize_name("Lung-Lesion_2") == "Lung-Lesion_2"
    assert sanitize_name("a/b.c") == "a_b_c"


def test_predictions_table():
    logits, targets = _multiclass_data(n=12)
    m = ClassificationMetrics(4, multilabel=False, class_names=MC_NAMES)
    _feed(m, logits, targets, [5, 7])
    cols, arr = m.predictions_table()
    assert cols == ["prob_normal", "prob_Pleural_Effusion", "prob_mass_nodule", "prob_x"]
    np.testing.assert_allclose(arr, torch.softmax(logits, 1).numpy(), rtol=1e-6)
    assert arr.shape == (12, 4) and arr.dtype == np.float32
