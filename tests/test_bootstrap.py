"""Uncertainty over subjects: the bootstrap equals scipy.stats.bootstrap (percentile, same draws) with
a statistic recomputed here by scikit-learn on the resampled samples; with every subject once the
per-sample statistics give the reported metrics; Holm, BH, Hedges' g and the paired-on-common-repeats
seed test against implementations and formulas written here."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats
from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score, roc_auc_score

from test_study import _bh_ref, _holm_ref
from utility.metrics.bootstrap import BootstrapSettings, Resampler, percentile_ci, two_sided_p
from utility.metrics.classification import ClassificationMetrics
from utility.metrics.resampled import ClassificationSamples, SegmentationSamples
from utility.metrics.segmentation import SegmentationMetrics, per_image_counts


def _subjects(rng: np.random.Generator, n_subjects: int) -> tuple[np.ndarray, list[np.ndarray]]:
    """Uneven subjects (1..5 samples), in shuffled sample order; members per subject code."""
    sizes = rng.integers(1, 6, n_subjects)
    subject = rng.permutation(np.repeat([f"s{i:03d}" for i in range(n_subjects)], sizes))
    codes = np.unique(subject, return_inverse=True)[1]
    return subject, [np.flatnonzero(codes == s) for s in range(n_subjects)]


def _scipy(members: list[np.ndarray], metric, resamples: int, seed: int, batch=None):
    """scipy.stats.bootstrap over subject indices; the statistic pools the drawn subjects' samples."""
    def statistic(drawn: np.ndarray, axis: int = -1) -> np.ndarray:
        rows = np.atleast_2d(drawn)
        return np.array([metric(np.concatenate([members[s] for s in row])) for row in rows])

    return stats.bootstrap((np.arange(len(members)),), statistic, n_resamples=resamples, batch=batch,
                           vectorized=True, method="percentile", rng=np.random.default_rng(seed))


@pytest.mark.parametrize("batch", [None, 64])
def test_multiclass_intervals_equal_scipy_bootstrap(batch):
    rng = np.random.default_rng(0)
    subject, members = _subjects(rng, 40)
    n = len(subject)
    y = rng.integers(0, 3, n)
    probs = rng.dirichlet([1, 1, 1], n).astype(np.float32)
    probs[np.arange(n), y] += 0.3 * (rng.random(n) < 0.6)
    probs /= probs.sum(1, keepdims=True)
    pred = probs.argmax(1)
    res = Resampler(ClassificationSamples(probs, y, False, ["a", "b", "c"]), subject)
    mine = res.distribution(BootstrapSettings(300, 0.95, 7), chunk=batch)
    refs = {"accuracy": lambda i: accuracy_score(y[i], pred[i]),
            "balanced_accuracy": lambda i: balanced_accuracy_score(y[i], pred[i]),
            "f1_macro": lambda i: f1_score(y[i], pred[i], average="macro", labels=[0, 1, 2], zero_division=np.nan),
            "auc_class_b": lambda i: roc_auc_score(y[i] == 1, probs[i, 1])}
    for metric, ref in refs.items():
        sp = _scipy(members, ref, 300, 7, batch)
        np.testing.assert_allclose(mine[metric], sp.bootstrap_distribution, rtol=0, atol=1e-12, err_msg=metric)
        low, high, undefined = percentile_ci(mine[metric], 0.95)
        assert undefined == 0
        assert low == pytest.approx(sp.confidence_interval.low, abs=1e-9)
        assert high == pytest.approx(sp.confidence_interval.high, abs=1e-9)


def test_multilabel_auc_with_ties_and_segmentation_dice_equal_scipy_bootstrap():
    rng = np.random.default_rng(1)
    subject, members = _subjects(rng, 30)
    n = len(subject)
    t = (rng.random((n, 2)) < 0.4).astype(int)
    t[:2] = [[1, 1], [0, 0]]
    probs = np.round(rng.random((n, 2)) * 0.5 + 0.4 * t, 1).astype(np.float32)     # many tied scores
    res = Resampler(ClassificationSamples(probs, t, True, ["x", "y"]), subject)
    mine = res.distribution(BootstrapSettings(200, 0.9, 3))
    sp = _scipy(members, lambda i: roc_auc_score(t[i, 0], probs[i, 0]) if 0 < t[i, 0].sum() < len(i) else np.nan,
                200, 3)
    ok = ~np.isnan(sp.bootstrap_distribution)
    np.testing.assert_allclose(mine["auc_x"][ok], sp.bootstrap_distribution[ok], rtol=0, atol=1e-12)
    assert np.isnan(mine["auc_x"][~ok]).all()
    # segmentation: images of 3 classes; the bootstrap of the region {1, 2}'s Dice
    pred = torch.tensor(rng.integers(0, 3, (n, 6, 6)))
    truth = torch.where(torch.rand(n, 6, 6) < 0.7, pred, torch.tensor(rng.integers(0, 3, (n, 6, 6))))
    seg = SegmentationMetrics(3, regions={"R": [1, 2]})
    counts = per_image_counts(pred, truth, 3).numpy()
    res = Resampler(SegmentationSamples(counts, seg), subject)
    mine = res.distribution(BootstrapSettings(200, 0.95, 5))
    p_in, t_in = (pred > 0).numpy().reshape(n, -1), (truth > 0).numpy().reshape(n, -1)
    sp = _scipy(members, lambda i: 2 * (p_in[i] & t_in[i]).sum() / (p_in[i].sum() + t_in[i].sum()), 200, 5)
    np.testing.assert_allclose(mine["dice_R"], sp.bootstrap_distribution, rtol=0, atol=1e-12)
    low, high, _ = percentile_ci(mine["dice_R"], 0.95)
    assert (low, high) == pytest.approx((sp.confidence_interval.low, sp.confidence_interval.high), abs=1e-9)


@pytest.mark.parametrize("multilabel", [False, True])
def test_point_estimate_is_the_reported_metric(multilabel):
    """Every subject once = the split: equal to ClassificationMetrics.compute, NaN cases included."""
    rng = np.random.default_rng(2)
    for _ in range(25):
        n, k = int(rng.integers(2, 30)), int(rng.integers(2, 5))
        logits = torch.tensor(np.round(rng.normal(size=(n, k)), 1), dtype=torch.float32)
        y = torch.tensor(rng.integers(0, 2, (n, k))) if multilabel else torch.tensor(rng.integers(0, k, n))
        m = ClassificationMetrics(k, multilabel)
        m.update(logits, y)
        row = m.compute(0.0)
        row.pop("avg_val_loss")
        st = m.state()
        point = Resampler(ClassificationSamples(st["probs"], st["targets"], multilabel, m.class_names),
                          rng.integers(0, 4, n)).point()
        assert list(point) == list(row)
        for key, v in row.items():
            assert (math.isnan(v) and math.isnan(point[key])) or point[key] == pytest.approx(v, abs=1e-12), key


def test_segmentation_point_estimate_is_the_reported_metric():
    rng = np.random.default_rng(4)
    seg = SegmentationMetrics(4, regions={"ET": [3], "WT": [1, 2, 3]}, avg_classes=[[0], [3], [1, 2, 3], [1, 3]])
    pred, truth = torch.tensor(rng.integers(0, 4, (9, 5, 5))), torch.tensor(rng.integers(0, 3, (9, 5, 5)))
    seg.update(pred, truth)
    row = seg.compute(0.0)
    point = Resampler(SegmentationSamples(per_image_counts(pred, truth, 4).numpy(), seg), np.arange(9)).point()
    assert list(point) == [k for k in row if k != "avg_val_loss"]
    for key, v in point.items():
        assert (math.isnan(v) and math.isnan(row[key])) or v == row[key], key


def test_holm_and_bh_equal_written_out_versions():
    from utility.study.multiplicity import benjamini_hochberg, holm

    rng = np.random.default_rng(5)
    for m in (1, 2, 7, 40):
        p = list(np.round(rng.random(m) ** 3, 3))        # rounding makes ties
        np.testing.assert_allclose(holm(p), _holm_ref(p), rtol=1e-12)
        np.testing.assert_allclose(benjamini_hochberg(p), _bh_ref(p), rtol=1e-12)
    with_nan = [0.01, math.nan, 0.04, 0.03]
    got = holm(with_nan)
    assert math.isnan(got[1])
    np.testing.assert_allclose(got[[0, 2, 3]], _holm_ref([0.01, 0.04, 0.03]), rtol=1e-12)


def test_hedges_g_and_paired_test_on_common_repeats():
    from utility.study.multiplicity import hedges_g
    from utility.study.stats import seed_test

    a, b = [0.81, 0.84, 0.80, 0.86], [0.75, 0.79, 0.77]
    na, nb = len(a), len(b)
    sp = math.sqrt(((na - 1) * np.var(a, ddof=1) + (nb - 1) * np.var(b, ddof=1)) / (na + nb - 2))
    assert hedges_g(a, b) == pytest.approx((1 - 3 / (4 * (na + nb) - 9)) * (np.mean(a) - np.mean(b)) / sp, rel=1e-12)
    # b lacks seed 4: paired on seeds 1-3, not Welch's over all
    ra = {"seed1": a[0], "seed2": a[1], "seed3": a[2], "seed4": a[3]}
    rb = {"seed1": b[0], "seed2": b[1], "seed3": b[2]}
    t = seed_test(ra, rb)
    assert t["kind"] == "paired t-test" and t["repeats"] == 3
    assert t["p"] == pytest.approx(stats.ttest_rel(a[:3], b).pvalue, rel=1e-12)
    assert t["g"] == pytest.approx(hedges_g(a[:3], b), rel=1e-12)
    assert t["pct"] == pytest.approx((np.mean(a) / np.mean(b) - 1) * 100, rel=1e-12)   # means of all repeats
    # fewer than two in common: Welch's
    t = seed_test({"seed1": 0.8, "seed2": 0.82, "seed3": 0.85}, {"seed3": 0.7, "seed4": 0.72, "seed5": 0.71})
    assert t["kind"] == "Welch t-test" and t["repeats"] == 0
    assert t["p"] == pytest.approx(stats.ttest_ind([0.8, 0.82, 0.85], [0.7, 0.72, 0.71], equal_var=False).pvalue)


def test_two_sided_bootstrap_p_value():
    assert two_sided_p(np.zeros(99)) == 1.0
    assert two_sided_p(np.full(999, 0.1)) == pytest.approx(2 / 1000)
    d = np.r_[np.full(30, -1.0), np.full(70, 1.0), np.nan]
    assert two_sided_p(d) == pytest.approx(2 * 31 / 101)
    assert math.isnan(two_sided_p(np.full(5, np.nan)))
