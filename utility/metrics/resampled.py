"""Per-sample statistics of the test metrics, so a bootstrap recomputes each metric the way the
metric itself aggregates (utility/metrics/bootstrap.py draws the resamples).

* Classification: per sample the one-hot true class, predicted class and hit (multi-class), or per
  label tp/fp/fn at the threshold (multi-label); accuracy, balanced accuracy, F1, precision, recall
  and IoU follow from their weighted sums with the same undefined (NaN) cases as
  utility/metrics/classification.py. AUC is the Mann-Whitney statistic with ties counted half
  (what scikit-learn's ``roc_auc_score`` computes) on per-sample weights.
* Segmentation: each image's own confusion counts; their weighted sum is a split confusion matrix,
  scored by :meth:`SegmentationMetrics.rows_from`, the code that scores the split itself.

With every sample weighted once these give the reported metrics (tests/test_bootstrap.py).
"""
from __future__ import annotations

import math
from typing import Callable, Optional

import numpy as np
from scipy import sparse

from utility.metrics.classification import DECISION_THRESHOLD, sanitize_name
from utility.metrics.segmentation import SegmentationMetrics, row_nanmean

AUC_MAX_CLASSES = 50   # more classes (ImageNet-size heads): no AUC intervals (N x B x classes work)


def _ratio(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a / b, NaN where b == 0."""
    return np.divide(a, b, out=np.full(np.shape(a), math.nan), where=b > 0)


class WeightedAUC:
    """ROC AUC of one binary problem under many weightings of its samples (one column per resample):
    sum over positives i and negatives j of w_i w_j ([s_j < s_i] + [s_j = s_i] / 2), over W_pos W_neg.
    With the negatives sorted once, the weight of the negatives below each positive is a cumulative
    sum read at fixed positions (searchsorted), so a resample costs a few passes over its samples."""

    def __init__(self, truth: np.ndarray, score: np.ndarray) -> None:
        truth = np.asarray(truth).astype(bool)
        score = np.asarray(score, dtype=np.float64)
        self.defined = bool(truth.size and truth.any() and not truth.all() and np.all(np.isfinite(score)))
        neg = np.flatnonzero(~truth)
        self.neg = neg[np.argsort(score[neg], kind="stable")]
        self.pos = np.flatnonzero(truth)
        below = score[self.neg]
        self.lo = np.searchsorted(below, score[self.pos], "left")    # negatives strictly below
        self.hi = np.searchsorted(below, score[self.pos], "right")   # ... or tied

    def __call__(self, take: Callable[[np.ndarray], np.ndarray], b: int) -> np.ndarray:
        """``take(index)``: the [len(index), b] weights of those samples in the b resamples."""
        if not self.defined:
            return np.full(b, math.nan)
        cum = np.zeros((len(self.neg) + 1, b))
        np.cumsum(take(self.neg), axis=0, out=cum[1:])
        wp = take(self.pos)
        num = 0.5 * np.einsum("ij,ij->j", wp, cum[self.lo] + cum[self.hi])
        return _ratio(num, wp.sum(axis=0) * cum[-1])


class ClassificationSamples:
    """Probabilities ``[N, C]`` and targets (class indices ``[N]`` or multi-hot ``[N, C]``) of a
    classification evaluation; metric names as utility/metrics/classification.py writes them."""

    def __init__(self, probs: np.ndarray, targets: np.ndarray, multilabel: bool, names: list[str],
                 threshold: float = DECISION_THRESHOLD) -> None:
        self.probs = np.asarray(probs, dtype=np.float32)
        self.targets = np.asarray(targets).astype(np.int64)
        self.multilabel = multilabel
        self.names = [sanitize_name(n) or str(i) for i, n in enumerate(names)]
        self.k = self.probs.shape[1]
        self.preds = (self.probs >= threshold).astype(np.int64) if multilabel else self.probs.argmax(axis=1)
        self._auc: Optional[list[WeightedAUC]] = None

    def additive(self) -> sparse.csr_matrix:
        n, k = self.probs.shape[0], self.k
        if self.multilabel:
            t, p = self.targets.astype(bool), self.preds.astype(bool)
            return sparse.csr_matrix(np.hstack([t & p, ~t & p, t & ~p]).astype(np.float64))
        rows = np.arange(n)
        hit = (self.targets == self.preds).astype(np.float64)
        cols = np.concatenate([self.targets, k + self.targets, 2 * k + self.preds])
        vals = np.concatenate([hit, np.ones(n), np.ones(n)])
        return sparse.csr_matrix((vals, (np.tile(rows, 3), cols)), shape=(n, 3 * k))

    def aucs(self) -> list[WeightedAUC]:
        if self._auc is None:
            truth = self.targets.astype(bool) if self.multilabel else \
                self.targets[:, None] == np.arange(self.k)[None, :]
            self._auc = [WeightedAUC(truth[:, c], self.probs[:, c]) for c in range(self.k)]
        return self._auc

    def rows(self, sums: np.ndarray, take: Callable[[np.ndarray], np.ndarray]) -> dict[str, np.ndarray]:
        b, k = sums.shape[0], self.k
        if k <= AUC_MAX_CLASSES:
            auc = [a(take, b) for a in self.aucs()]
        else:
            auc = [np.full(b, math.nan)] * k
        a, c, d = sums[:, :k], sums[:, k:2 * k], sums[:, 2 * k:]
        if self.multilabel:
            return self._multilabel(a, c, d, auc, b)
        tp, true, pred = a, c, d
        f1 = _ratio(2 * tp, true + pred)
        row = {"accuracy": tp.sum(axis=1) / true.sum(axis=1),
               "balanced_accuracy": row_nanmean(list(_ratio(tp, true).T), b),
               "f1_macro": row_nanmean(list(f1.T), b), "auc_macro": row_nanmean(auc, b)}
        row.update({f"auc_class_{n}": v for n, v in zip(self.names, auc)})
        return row

    def _multilabel(self, tp: np.ndarray, fp: np.ndarray, fn: np.ndarray, auc: list[np.ndarray],
                    b: int) -> dict[str, np.ndarray]:
        per = {"auc": auc, "f1": list(_ratio(2 * tp, 2 * tp + fp + fn).T),
               "precision": list(_ratio(tp, tp + fp).T), "recall": list(_ratio(tp, tp + fn).T),
               "iou": list(_ratio(tp, tp + fp + fn).T)}
        row = {"auc_avg_overall": row_nanmean(per["auc"], b), "dice_avg_overall": row_nanmean(per["f1"], b),
               "iou_avg_overall": row_nanmean(per["iou"], b),
               "precision_avg_overall": row_nanmean(per["precision"], b),
               "recall_avg_overall": row_nanmean(per["recall"], b)}
        for j, name in enumerate(self.names):
            for m in ("auc", "f1", "precision", "recall", "iou"):
                row[f"{m}_{name}"] = per[m][j]
        return row


class SegmentationSamples:
    """Each image's confusion counts ``[N, K*K]`` (truth-major) with the split's metric definition."""

    def __init__(self, counts: np.ndarray, metrics: SegmentationMetrics) -> None:
        self.counts = np.asarray(counts, dtype=np.float64).reshape(len(counts), -1)
        self.metrics = metrics

    def additive(self) -> np.ndarray:
        return self.counts

    def rows(self, sums: np.ndarray, take: Callable[[np.ndarray], np.ndarray]) -> dict[str, np.ndarray]:
        k = self.metrics.num_classes
        row = self.metrics.rows_from(sums.reshape(-1, k, k))
        row.pop("avg_val_loss")
        return row
