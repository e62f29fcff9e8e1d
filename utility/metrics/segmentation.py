"""Segmentation metrics from one pixel confusion matrix accumulated over the whole evaluation split.

The predecessor averaged per-batch Dice values, so its numbers moved with batch size and shuffling.
Here every batch adds its pixel counts to a [K, K] confusion matrix (rows truth, columns prediction);
TP/FP/FN per class are read from it at the end, so results do not depend on batch size or order.

Per class c (background included): dice = 2TP/(2TP+FP+FN), iou = TP/(TP+FP+FN),
precision = TP/(TP+FP), recall = TP/(TP+FN). A class absent from both truth and prediction gets NaN
for all four (undefined, left out of the means, never an error); otherwise a 0/0 ratio is 0 (a class
present but never predicted has precision 0; predicted but absent, recall 0). ``*_mean_fg`` is the
NaN-ignoring mean over the foreground columns ``*_avg_class_1..``. Regions (BraTS ET/TC/WT) are
unions of classes scored as one binary foreground, from the same matrix.

``avg_classes`` (a task key) redefines what ``*_avg_class_<i>`` scores, for tasks whose predecessor
columns were regions: entry i is the set of classes scored as one. BraTS: ``[[0], [3], [1, 2, 3],
[1, 3]]`` = background, ET, WT, TC, as the predecessor's notebooks expect; the per-class values then
go to ``*_raw_class_<c>`` (c = our class index) so no predecessor name changes its meaning.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from utility.distributed import is_dist

METRICS = ("dice", "iou", "precision", "recall")


def confusion_counts(pred: torch.Tensor, target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """[K, K] int64 pixel counts (row = truth, column = prediction) of integer label maps."""
    idx = target.reshape(-1).long() * num_classes + pred.reshape(-1).long()
    return torch.bincount(idx, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def per_image_counts(pred: torch.Tensor, target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """[B, K*K] int64: each image's own confusion counts (row-major truth x prediction); their sum over
    images is :func:`confusion_counts`, so a bootstrap over images or subjects re-aggregates exactly."""
    b, kk = pred.shape[0], num_classes * num_classes
    idx = target.reshape(b, -1).long() * num_classes + pred.reshape(b, -1).long()
    idx = idx + torch.arange(b, device=idx.device)[:, None] * kk
    return torch.bincount(idx.reshape(-1), minlength=b * kk).reshape(b, kk)


def scores(tp: float, fp: float, fn: float) -> dict[str, float]:
    """The four scores of one class or region from its counts (see the module docstring)."""
    got = stacked_scores(np.array([tp], float), np.array([fp], float), np.array([fn], float))
    return {m: float(v[0]) for m, v in got.items()}


def stacked_scores(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> dict[str, np.ndarray]:
    """:func:`scores` of many count triples at once (one per bootstrap resample): arrays in, arrays out."""
    def ratio(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return np.divide(a, b, out=np.zeros(np.shape(a)), where=b > 0)

    out = {"dice": ratio(2 * tp, 2 * tp + fp + fn), "iou": ratio(tp, tp + fp + fn),
           "precision": ratio(tp, tp + fp), "recall": ratio(tp, tp + fn)}
    undefined = (tp + fp + fn) == 0
    for v in out.values():
        v[undefined] = math.nan
    return out


def row_nanmean(columns: list[np.ndarray], size: int) -> np.ndarray:
    """Per position the mean of the finite values among ``columns`` (NaN where none is), no warning."""
    if not columns:
        return np.full(size, math.nan)
    arr = np.stack(columns, axis=1)
    ok = ~np.isnan(arr)
    n = ok.sum(axis=1)
    total = np.where(ok, arr, 0.0).sum(axis=1)
    return np.divide(total, n, out=np.full(size, math.nan), where=n > 0)


class SegmentationMetrics:
    def __init__(self, num_classes: int, class_names: Optional[list[str]] = None,
                 regions: Optional[dict[str, list[int]]] = None,
                 avg_classes: Optional[list[list[int]]] = None) -> None:
        self.num_classes = num_classes
        self.class_names = class_names or [str(c) for c in range(num_classes)]
        self.regions = regions or {}
        self.avg_classes = [list(m) for m in avg_classes] if avg_classes else None
        self.cm = torch.zeros(num_classes, num_classes, dtype=torch.int64)
        self._total: Optional[np.ndarray] = None

    def reset(self) -> None:
        self.cm = torch.zeros(self.num_classes, self.num_classes, dtype=torch.int64)
        self._total = None

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """Add a batch: ``pred`` class indices [B,H,W] (or logits [B,K,H,W]) and ``target`` [B,H,W]."""
        if pred.dim() == target.dim() + 1:
            pred = pred.argmax(dim=1)
        counts = confusion_counts(pred, target, self.num_classes)
        self.cm = self.cm.to(counts.device) + counts
        self._total = None

    def confusion_matrix(self) -> np.ndarray:
        """The split's matrix; under torch.distributed the ranks' counts summed (a collective: the
        first call after the last update must happen on every rank - compute() does)."""
        if self._total is None:
            cm = self.cm
            if is_dist():  # every rank evaluated its shard
                import torch.distributed as dist

                cm = cm.clone()
                if dist.get_backend() == "nccl" and cm.device.type != "cuda":  # a rank with an empty shard
                    cm = cm.cuda()
                dist.all_reduce(cm)
            self._total = cm.cpu().numpy()
        return self._total

    def compute(self, avg_loss: float) -> dict[str, float]:
        """Predecessor columns first, grouped per class as there (dice, iou, precision, recall of
        ``avg_class_0``, then ``avg_class_1``, ...) and ``avg_val_loss``; then the foreground means,
        the raw classes (``*_raw_class_<c>``, only when ``avg_classes`` redefines the class columns)
        and the regions."""
        rows = self.rows_from(self.confusion_matrix()[None])
        return {k: (float(avg_loss) if k == "avg_val_loss" else float(v[0])) for k, v in rows.items()}

    def rows_from(self, cms: np.ndarray) -> dict[str, np.ndarray]:
        """The metric row of each of a stack of confusion matrices ``[B, K, K]`` (B = 1: the split; B > 1:
        bootstrap resamples), as arrays of length B in :meth:`compute`'s column order; ``avg_val_loss``
        holds NaN (the loss is not a function of the counts)."""
        cm = np.asarray(cms, dtype=np.float64)
        b = cm.shape[0]
        per = [self._union(cm, [c]) for c in range(self.num_classes)]
        shown = per if self.avg_classes is None else [self._union(cm, m) for m in self.avg_classes]
        row: dict[str, np.ndarray] = {}
        for c, sc in enumerate(shown):
            for m in METRICS:
                row[f"{m}_avg_class_{c}"] = sc[m]
        row["avg_val_loss"] = np.full(b, math.nan)
        for m in METRICS:
            row[f"{m}_mean_fg"] = row_nanmean([sc[m] for sc in shown[1:]], b)
        if self.avg_classes is not None:
            for c, sc in enumerate(per):
                for m in METRICS:
                    row[f"{m}_raw_class_{c}"] = sc[m]
        for name, members in self.regions.items():
            r = self._union(cm, members)
            row[f"dice_{name}"] = r["dice"]
            row[f"iou_{name}"] = r["iou"]
        return row

    def _union(self, cm: np.ndarray, members: list[int]) -> dict[str, np.ndarray]:
        """Scores of a set of classes taken as one binary foreground (one class: that class), per
        matrix of the stack ``cm [B, K, K]``."""
        inside = np.zeros(self.num_classes, dtype=bool)
        inside[list(members)] = True
        return stacked_scores(cm[:, inside][:, :, inside].sum(axis=(1, 2)), cm[:, ~inside][:, :, inside].sum(axis=(1, 2)),
                              cm[:, inside][:, :, ~inside].sum(axis=(1, 2)))

    def save_confusion_matrix(self, path: Path) -> None:
        """CSV: header ``true\\pred,<class names>``, one row of pixel counts per true class."""
        import csv

        cm = self.confusion_matrix()
        with path.open("w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["true\\pred", *self.class_names])
            for name, counts in zip(self.class_names, cm):
                w.writerow([name, *map(int, counts)])
