"""Segmentation metrics against independent computations (scikit-learn, numpy sums on the same masks),
batch-size/order independence, NaN for absent classes, BraTS regions, and the loss."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import confusion_matrix, jaccard_score, precision_recall_fscore_support

from utility.metrics.segmentation import SegmentationMetrics
from utility.methods.segmentation import SegLoss, SegmentationMethod
from utility.training.engine import StepContext
import contextlib


def _masks(n=12, k=4, size=16, seed=0):
    rng = np.random.default_rng(seed)
    target = rng.integers(0, k, size=(n, size, size))
    pred = np.where(rng.random((n, size, size)) < 0.7, target, rng.integers(0, k, size=(n, size, size)))
    return torch.from_numpy(pred), torch.from_numpy(target)


def _accumulate(pred, target, k, batch, order=None, regions=None):
    m = SegmentationMetrics(k, regions=regions)
    idx = np.arange(len(pred)) if order is None else order
    for s in range(0, len(idx), batch):
        b = idx[s:s + batch]
        m.update(pred[b], target[b])
    return m.compute(0.5)


def test_metrics_match_sklearn_and_numpy():
    k = 4
    pred, target = _masks(k=k)
    row = _accumulate(pred, target, k, batch=5)
    t, p = target.numpy().ravel(), pred.numpy().ravel()
    prec, rec, f1, _ = precision_recall_fscore_support(t, p, labels=list(range(k)), average=None, zero_division=0)
    iou = jaccard_score(t, p, labels=list(range(k)), average=None)
    for c in range(k):
        assert row[f"dice_avg_class_{c}"] == pytest.approx(f1[c], abs=1e-12)
        assert row[f"iou_avg_class_{c}"] == pytest.approx(iou[c], abs=1e-12)
        assert row[f"precision_avg_class_{c}"] == pytest.approx(prec[c], abs=1e-12)
        assert row[f"recall_avg_class_{c}"] == pytest.approx(rec[c], abs=1e-12)
        tp = np.sum((t == c) & (p == c))
        assert row[f"dice_avg_class_{c}"] == pytest.approx(2 * tp / (np.sum(t == c) + np.sum(p == c)))
    assert row["dice_mean_fg"] == pytest.approx(np.mean(f1[1:]))
    cm = SegmentationMetrics(k)
    cm.update(pred, target)
    np.testing.assert_array_equal(cm.confusion_matrix(), confusion_matrix(t, p, labels=list(range(k))))


def test_column_order_predecessor_first():
    pred, target = _masks(k=3)
    cols = list(_accumulate(pred, target, 3, batch=4, regions={"WT": [1, 2]}))
    # grouped per class as in the predecessor (readers that select by position keep working)
    expected = [f"{m}_avg_class_{c}" for c in range(3) for m in ("dice", "iou", "precision", "recall")]
    assert cols[:12] == expected
    assert cols[12] == "avg_val_loss"
    assert cols[13:17] == ["dice_mean_fg", "iou_mean_fg", "precision_mean_fg", "recall_mean_fg"]
    assert "dice_WT" in cols


def test_batch_size_and_order_independent():
    k = 4
    pred, target = _masks(n=13, k=k, seed=3)
    a = _accumulate(pred, target, k, batch=2)
    b = _accumulate(pred, target, k, batch=5, order=np.random.default_rng(1).permutation(13))
    c = _accumulate(pred, target, k, batch=13)
    for key in a:
        assert a[key] == b[key] == c[key] or (math.isnan(a[key]) and math.isnan(b[key]))


def test_absent_class_is_nan_and_excluded_from_means():
    target = torch.zeros(2, 8, 8, dtype=torch.long)
    target[:, :4] = 1
    pred = target.clone()
    pred[0, 0, 0] = 2  # class 2 predicted once, never present: recall 0, precision 0
    row = _accumulate(pred, target, 4, batch=1)  # class 3: absent from both
    for m in ("dice", "iou", "precision", "recall"):
        assert math.isnan(row[f"{m}_avg_class_3"])
    assert row["dice_avg_class_2"] == 0.0 and row["recall_avg_class_2"] == 0.0
    assert row["dice_mean_fg"] == pytest.approx(np.mean([row["dice_avg_class_1"], 0.0]))
    empty = _accumulate(torch.zeros(1, 4, 4, dtype=torch.long), torch.zeros(1, 4, 4, dtype=torch.long), 3, 1)
    assert math.isnan(empty["dice_mean_fg"]) and empty["dice_avg_class_0"] == 1.0


def test_brats_regions_against_numpy():
    rng = np.random.default_rng(5)
    raw_t = rng.choice([0, 1, 2, 4], size=(6, 16, 16))
    raw_p = np.where(rng.random((6, 16, 16)) < 0.6, raw_t, rng.choice([0, 1, 2, 4], size=(6, 16, 16)))
    remap = lambda a: np.where(a == 4, 3, a)  # noqa: E731
    regions = {"ET": [3], "TC": [1, 3], "WT": [1, 2, 3]}
    row = _accumulate(torch.from_numpy(remap(raw_p)), torch.from_numpy(remap(raw_t)), 4, 4, regions=regions)
    for name, labels in {"ET": [4], "TC": [1, 4], "WT": [1, 2, 4]}.items():
        t, p = np.isin(raw_t, labels), np.isin(raw_p, labels)
        dice = 2 * np.sum(t & p) / (t.sum() + p.sum())
        assert row[f"dice_{name}"] == pytest.approx(dice)
        assert row[f"iou_{name}"] == pytest.approx(np.sum(t & p) / np.sum(t | p))


def _binary_scores(t: np.ndarray, p: np.ndarray) -> dict[str, float]:
    tp, fp, fn = np.sum(t & p), np.sum(~t & p), np.sum(t & ~p)
    return {"dice": 2 * tp / (2 * tp + fp + fn), "iou": tp / (tp + fp + fn),
            "precision": tp / (tp + fp), "recall": tp / (tp + fn)}


def test_brats_predecessor_columns_are_background_et_wt_tc():
    """The BraTS preset's dice/iou/precision/recall_avg_class_1/2/3 are ET, WT, TC (the predecessor's
    meaning), computed here with numpy from the raw label maps {0, 1, 2, 4}; the per-class values live
    under *_raw_class_<c>; columns grouped per class, predecessor columns first."""
    from utility.config.tasks import load_task

    task = load_task("BraTS")
    raw_t = np.zeros((2, 8, 8), dtype=np.int64)
    raw_t[0, 1:5, 1:5] = 2          # edema
    raw_t[0, 2:4, 2:4] = 4          # enhancing tumour inside
    raw_t[1, 0:3, 0:6] = 1          # necrotic core
    raw_t[1, 1, 1:3] = 4
    raw_p = raw_t.copy()
    raw_p[0, 1, 1:5] = 0            # missed edema
    raw_p[0, 2, 2] = 1              # ET predicted as NCR (still TC and WT)
    raw_p[1, 5:7, 5:7] = 4          # false ET
    raw_p[1, 0, 0:2] = 2            # NCR predicted as edema (WT only)
    remap = lambda a: np.where(a == 4, 3, a)  # noqa: E731  (the preset's label_values)
    m = SegmentationMetrics(4, task.classes, task.regions, task.avg_classes)
    m.update(torch.from_numpy(remap(raw_p)), torch.from_numpy(remap(raw_t)))
    row = m.compute(0.25)
    expected = {0: [0], 1: [4], 2: [1, 2, 4], 3: [1, 4]}  # background, ET, WT, TC in raw labels
    for c, labels in expected.items():
        ref = _binary_scores(np.isin(raw_t, labels), np.isin(raw_p, labels))
        for name, v in ref.items():
            assert row[f"{name}_avg_class_{c}"] == pytest.approx(v, abs=1e-12), (name, c)
    for c, label in enumerate([0, 1, 2, 4]):  # the raw classes, under new names
        ref = _binary_scores(raw_t == label, raw_p == label)
        for name, v in ref.items():
            assert row[f"{name}_raw_class_{c}"] == pytest.approx(v, abs=1e-12), (name, c)
    assert row["dice_avg_class_1"] != pytest.approx(row["dice_raw_class_1"])  # ET is not NCR here
    assert row["dice_mean_fg"] == pytest.approx(np.mean([row[f"dice_avg_class_{c}"] for c in (1, 2, 3)]))
    metrics = ("dice", "iou", "precision", "recall")
    cols = list(row)
    assert cols[:17] == [f"{n}_avg_class_{c}" for c in range(4) for n in metrics] + ["avg_val_loss"]
    assert cols[17:21] == [f"{n}_mean_fg" for n in metrics]
    assert cols[21:37] == [f"{n}_raw_class_{c}" for c in range(4) for n in metrics]
    assert cols[37:] == ["dice_ET", "iou_ET", "dice_TC", "iou_TC", "dice_WT", "iou_WT"]


class PerSample(torch.nn.Module):
    """Runs the wrapped model one sample at a time, so a sample's logits are bit-identical whatever
    batch it arrives in (a convolution over a batch of 2 or 5 may round differently per CPU); the
    test is then about the metric's batch independence, not the convolution's."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.model(x[i:i + 1]) for i in range(x.shape[0])])


def test_method_evaluation_independent_of_batch_size():
    torch.manual_seed(0)
    model = PerSample(torch.nn.Conv2d(3, 3, 3, padding=1)).eval()
    x = torch.randn(11, 3, 16, 16)
    y = torch.randint(0, 3, (11, 16, 16))
    ctx = StepContext(torch.device("cpu"), contextlib.nullcontext, training=False)
    rows = []
    for batch in (2, 5):
        m = SegmentationMethod(3, ["bg", "a", "b"], 3, SegLoss("ce"))
        m.eval_begin("val")
        for s in range(0, 11, batch):
            sl = slice(s, s + batch)
            n = x[sl].shape[0]
            m.eval_batch(model, {"image": x[sl], "target": y[sl], "index": torch.arange(s, s + n),
                                 "valid": torch.ones(n, dtype=torch.bool), "bad": [""] * n}, ctx)
        rows.append(m.eval_end(0.0))
    assert rows[0] == rows[1]
    pred = model(x).argmax(1).numpy().ravel()
    f1 = precision_recall_fscore_support(y.numpy().ravel(), pred, labels=[0, 1, 2], average=None, zero_division=0)[2]
    assert rows[0]["dice_avg_class_1"] == pytest.approx(f1[1])


def test_losses():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 8, 8, requires_grad=True)
    y = torch.randint(0, 3, (2, 8, 8))
    w = [1.0, 3.0, 10.0]
    ce = SegLoss("ce", w)(logits, y)
    ref = torch.nn.functional.cross_entropy(logits, y, weight=torch.tensor(w))
    assert ce.item() == pytest.approx(ref.item())
    # soft Dice over foreground by hand
    p = logits.softmax(1)
    oh = torch.nn.functional.one_hot(y, 3).permute(0, 3, 1, 2).float()
    d = [(2 * (p[:, c] * oh[:, c]).sum() + 1) / (p[:, c].sum() + oh[:, c].sum() + 1) for c in (1, 2)]
    dice = SegLoss("dice", smooth=1.0)(logits, y)
    assert dice.item() == pytest.approx(1 - (d[0] + d[1]).item() / 2, rel=1e-6)
    both = SegLoss("ce_dice", w, ce_weight=0.5, dice_weight=2.0)(logits, y)
    assert both.item() == pytest.approx(0.5 * ce.item() + 2.0 * dice.item(), rel=1e-6)
    both.backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all()
    # a perfect prediction has (near) zero Dice loss
    perfect = 50 * torch.nn.functional.one_hot(y, 3).permute(0, 3, 1, 2).float()
    assert SegLoss("dice")(perfect, y).item() < 1e-3
