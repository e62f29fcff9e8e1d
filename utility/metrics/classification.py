"""Classification metrics accumulated over a whole evaluation split.

Every metric is computed once, with scikit-learn, on the predictions of the
whole split (optionally gathered from all processes); no metric is ever a mean
of per-batch values, so the result does not depend on the batch size.

Undefined values are ``NaN`` rather than errors or warnings:

* AUC of a class/label whose targets are all negative or all positive (or
  whose probabilities are not finite) is ``NaN``.
* Precision, recall, F1 and IoU follow scikit-learn's ``zero_division=np.nan``
  semantics: precision with no predicted positives, recall with no true
  positives, F1/IoU with neither true nor predicted positives are ``NaN``.
* Every macro / ``*_avg_overall`` value is the mean over classes/labels
  ignoring ``NaN`` (``NaN`` if all are ``NaN``).  For ``f1_macro`` this is the
  same number scikit-learn's ``f1_score(average='macro', zero_division=np.nan)``
  returns: in scikit-learn 1.9.1 a class that is never present and never
  predicted gets ``NaN`` and is left out of the macro mean (it is not counted
  as 0).  A class that is present but never predicted, or predicted but never
  present, has F1 = 0 and does count.

Metric row order (exact; downstream notebooks read the leading columns):

* multiclass: ``accuracy, avg_val_loss, balanced_accuracy, f1_macro,
  auc_macro, auc_class_<name>...``
* multilabel: ``auc_avg_overall, dice_avg_overall, iou_avg_overall,
  precision_avg_overall, recall_avg_overall, avg_val_loss``, then per label
  ``auc_<name>, f1_<name>, precision_<name>, recall_<name>, iou_<name>``
  (dice = F1 at the threshold).
"""

from __future__ import annotations

import csv
import pathlib
import re
import warnings
from typing import Iterator

import numpy as np
import torch
from sklearn.exceptions import UndefinedMetricWarning
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    confusion_matrix as sk_confusion_matrix,
    f1_score,
    jaccard_score,
    multilabel_confusion_matrix,
    precision_score,
    recall_score,
    roc_auc_score,
)

__all__ = ["ClassificationMetrics", "sanitize_name", "nanmean"]

_INVALID_NAME_CHARS = re.compile(r"[^A-Za-z0-9_-]")


def sanitize_name(name: str) -> str:
    """Restrict a class name to ``[A-Za-z0-9_-]``: whitespace and any other
    character become ``_`` (e.g. ``"Pleural Effusion"`` -> ``"Pleural_Effusion"``)."""
    return _INVALID_NAME_CHARS.sub("_", str(name).strip())


def nanmean(values: np.ndarray) -> float:
    """Mean ignoring NaN; NaN (without a RuntimeWarning) if nothing is finite."""
    arr = np.asarray(values, dtype=np.float64)
    keep = ~np.isnan(arr)
    if not keep.any():
        return float("nan")
    return float(arr[keep].mean())


class _quiet:
    """Context manager silencing scikit-learn's warnings about undefined metrics."""

    def __enter__(self) -> None:
        self._ctx = warnings.catch_warnings()
        self._ctx.__enter__()
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        warnings.filterwarnings("ignore", message="y_pred contains classes not in y_true")

    def __exit__(self, *exc: object) -> None:
        self._ctx.__exit__(*exc)


def _binary_auc(truth: np.ndarray, score: np.ndarray) -> float:
    """ROC AUC of one binary problem; NaN when undefined (one target value only,
    or non-finite scores)."""
    truth = np.asarray(truth).astype(bool)
    if truth.size == 0 or truth.all() or not truth.any():
        return float("nan")
    if not np.all(np.isfinite(score)):
        return float("nan")
    with _quiet():
        return float(roc_auc_score(truth, score))


# A multi-label prediction is positive when its sigmoid probability reaches this: the one setting used by
# the metrics, the predictions_*.csv files and the analysis curves (utility/analysis/curves.py).
DECISION_THRESHOLD = 0.5


class ClassificationMetrics:
    """Accumulates predictions of one evaluation pass and computes the metric row.

    ``multilabel=False``: ``update(logits [B,C], targets int [B])``; probabilities
    are the softmax, the prediction is the argmax.
    ``multilabel=True``: ``update(logits [B,C], targets 0/1 [B,C])``; probabilities
    are the sigmoid, a label is predicted positive when ``prob >= threshold``.
    """

    def __init__(
        self,
        num_classes: int,
        multilabel: bool,
        class_names: list[str] | None = None,
        threshold: float = DECISION_THRESHOLD,
    ) -> None:
        num_classes = int(num_classes)
        if multilabel and num_classes < 1:
            raise ValueError(f"num_classes must be >= 1 for multilabel, got {num_classes}")
        if not multilabel and num_classes < 2:
            raise ValueError(f"num_classes must be >= 2 for multiclass, got {num_classes}")
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(
                f"class_names has {len(class_names)} entries but num_classes is {num_classes}"
            )
        if not 0.0 <= float(threshold) <= 1.0:
            raise ValueError(f"threshold must be in [0, 1], got {threshold}")
        self.num_classes = num_classes
        self.multilabel = bool(multilabel)
        self.threshold = float(threshold)
        raw = [str(i) for i in range(num_classes)] if class_names is None else [str(n) for n in class_names]
        self.class_names: list[str] = raw
        safe = []
        for i, name in enumerate(raw):
            s = sanitize_name(name)
            safe.append(s if s else str(i))
        if len(set(safe)) != len(safe):
            raise ValueError(f"class names are not unique after sanitising: {safe}")
        self.safe_names: list[str] = safe
        self.reset()

    # ------------------------------------------------------------------ state
    def reset(self) -> None:
        self._probs: list[np.ndarray] = []
        self._targets: list[np.ndarray] = []

    def __len__(self) -> int:
        return int(sum(p.shape[0] for p in self._probs))

    def _empty_targets(self) -> np.ndarray:
        shape = (0, self.num_classes) if self.multilabel else (0,)
        return np.zeros(shape, dtype=np.int64)

    def _check_targets(self, targets: np.ndarray, n: int) -> np.ndarray:
        if self.multilabel:
            if targets.shape != (n, self.num_classes):
                raise ValueError(
                    f"multilabel targets must have shape [{n}, {self.num_classes}], got {list(targets.shape)}"
                )
            if not np.all((targets == 0) | (targets == 1)):
                raise ValueError("multilabel targets must contain only 0 and 1")
            return targets.astype(np.int64)
        if targets.shape != (n,):
            raise ValueError(f"multiclass targets must have shape [{n}], got {list(targets.shape)}")
        if targets.size and (np.issubdtype(targets.dtype, np.floating) and not np.all(targets == np.round(targets))):
            raise ValueError("multiclass targets must be integer class indices")
        out = targets.astype(np.int64)
        if out.size and (out.min() < 0 or out.max() >= self.num_classes):
            raise ValueError(
                f"multiclass targets must be in [0, {self.num_classes - 1}], "
                f"got range [{out.min()}, {out.max()}]"
            )
        return out

    def update(self, logits: torch.Tensor, targets: torch.Tensor) -> None:
        """Add one batch. Probabilities are computed in float32 (also for
        fp16/bf16 logits) and stored as CPU numpy arrays."""
        if logits.ndim != 2 or logits.shape[1] != self.num_classes:
            raise ValueError(f"logits must have shape [B, {self.num_classes}], got {list(logits.shape)}")
        with torch.no_grad():
            x = logits.detach().float()
            probs = torch.sigmoid(x) if self.multilabel else torch.softmax(x, dim=1)
            probs_np = probs.cpu().numpy().astype(np.float32, copy=False)
            t = targets.detach()
            if t.dtype == torch.bfloat16:  # numpy has no bfloat16
                t = t.float()
            targets_np = t.cpu().numpy()
        targets_np = self._check_targets(targets_np, probs_np.shape[0])
        self._probs.append(probs_np)
        self._targets.append(targets_np)

    def _arrays(self) -> tuple[np.ndarray, np.ndarray]:
        if len(self._probs) > 1:  # consolidate, so repeated calls are cheap
            self._probs = [np.concatenate(self._probs, axis=0)]
            self._targets = [np.concatenate(self._targets, axis=0)]
        if not self._probs:
            return np.zeros((0, self.num_classes), dtype=np.float32), self._empty_targets()
        return self._probs[0], self._targets[0]

    def state(self) -> dict[str, np.ndarray]:
        """``{"probs": float32 [N,C], "targets": int64 [N] or [N,C]}`` (copies),
        e.g. for ``torch.distributed.all_gather_object``."""
        probs, targets = self._arrays()
        return {"probs": probs.copy(), "targets": targets.copy()}

    def load_states(self, states: list[dict[str, np.ndarray]]) -> None:
        """Replace the contents by the concatenation of ``states`` (in order)."""
        self.reset()
        for st in states:
            probs = np.asarray(st["probs"], dtype=np.float32)
            if probs.ndim != 2 or probs.shape[1] != self.num_classes:
                raise ValueError(f"state probs must have shape [N, {self.num_classes}], got {list(probs.shape)}")
            targets = self._check_targets(np.asarray(st["targets"]), probs.shape[0])
            if probs.shape[0] == 0:
                continue
            self._probs.append(probs.copy())
            self._targets.append(targets.copy())

    # --------------------------------------------------------------- metrics
    def _require(self) -> tuple[np.ndarray, np.ndarray]:
        probs, targets = self._arrays()
        if probs.shape[0] == 0:
            raise ValueError("no predictions accumulated")
        return probs, targets

    def _predictions(self, probs: np.ndarray) -> np.ndarray:
        if self.multilabel:
            return (probs >= self.threshold).astype(np.int64)
        return probs.argmax(axis=1).astype(np.int64)

    def compute(self, avg_loss: float) -> dict[str, float]:
        """The ordered metric row (plain Python floats, NaN where undefined)."""
        probs, targets = self._require()
        preds = self._predictions(probs)
        if self.multilabel:
            return self._compute_multilabel(probs, targets, preds, float(avg_loss))
        return self._compute_multiclass(probs, targets, preds, float(avg_loss))

    def _compute_multiclass(
        self, probs: np.ndarray, targets: np.ndarray, preds: np.ndarray, avg_loss: float
    ) -> dict[str, float]:
        labels = list(range(self.num_classes))
        with _quiet():
            accuracy = float(accuracy_score(targets, preds))
            balanced = float(balanced_accuracy_score(targets, preds))
            f1_per_class = f1_score(targets, preds, labels=labels, average=None, zero_division=np.nan)
        aucs = [_binary_auc(targets == c, probs[:, c]) for c in labels]
        row: dict[str, float] = {
            "accuracy": accuracy,
            "avg_val_loss": avg_loss,
            "balanced_accuracy": balanced,
            "f1_macro": nanmean(f1_per_class),
            "auc_macro": nanmean(np.asarray(aucs)),
        }
        for name, auc in zip(self.safe_names, aucs):
            row[f"auc_class_{name}"] = float(auc)
        return row

    def _compute_multilabel(
        self, probs: np.ndarray, targets: np.ndarray, preds: np.ndarray, avg_loss: float
    ) -> dict[str, float]:
        aucs = np.array([_binary_auc(targets[:, j], probs[:, j]) for j in range(self.num_classes)])
        with _quiet():
            f1 = f1_score(targets, preds, average=None, zero_division=np.nan).astype(np.float64)
            precision = precision_score(targets, preds, average=None, zero_division=np.nan).astype(np.float64)
            recall = recall_score(targets, preds, average=None, zero_division=np.nan).astype(np.float64)
            # jaccard_score does not accept zero_division=np.nan: IoU is undefined
            # exactly when a label has neither true nor predicted positives.
            iou = jaccard_score(targets, preds, average=None, zero_division=0).astype(np.float64)
        mcm = multilabel_confusion_matrix(targets, preds)
        tp, fp, fn = mcm[:, 1, 1], mcm[:, 0, 1], mcm[:, 1, 0]
        iou[(tp + fp + fn) == 0] = np.nan
        row: dict[str, float] = {
            "auc_avg_overall": nanmean(aucs),
            "dice_avg_overall": nanmean(f1),
            "iou_avg_overall": nanmean(iou),
            "precision_avg_overall": nanmean(precision),
            "recall_avg_overall": nanmean(recall),
            "avg_val_loss": avg_loss,
        }
        for j, name in enumerate(self.safe_names):
            row[f"auc_{name}"] = float(aucs[j])
            row[f"f1_{name}"] = float(f1[j])
            row[f"precision_{name}"] = float(precision[j])
            row[f"recall_{name}"] = float(recall[j])
            row[f"iou_{name}"] = float(iou[j])
        return row

    # ------------------------------------------------------- confusion matrix
    def confusion_matrix(self) -> np.ndarray:
        """Multiclass: ``[C, C]`` int64, rows = truth, columns = prediction.
        Multilabel: ``[C, 2, 2]`` int64, ``[[tn, fp], [fn, tp]]`` per label at the threshold."""
        probs, targets = self._require()
        preds = self._predictions(probs)
        if self.multilabel:
            return multilabel_confusion_matrix(targets, preds).astype(np.int64)
        return sk_confusion_matrix(targets, preds, labels=list(range(self.num_classes))).astype(np.int64)

    def _csv_rows(self) -> Iterator[list[str]]:
        cm = self.confusion_matrix()
        if self.multilabel:
            yield ["label", "tn", "fp", "fn", "tp"]
            for name, m in zip(self.class_names, cm):
                yield [name, str(m[0, 0]), str(m[0, 1]), str(m[1, 0]), str(m[1, 1])]
        else:
            yield ["true\\pred", *self.class_names]
            for name, r in zip(self.class_names, cm):
                yield [name, *(str(v) for v in r)]

    def save_confusion_matrix(self, path: pathlib.Path) -> None:
        """Write the confusion matrix as CSV.

        Multiclass: header ``true\\pred,<class names...>``, then one row per true
        class starting with its name.  Multilabel: header ``label,tn,fp,fn,tp``
        and one row per label.  Names are the original class names (CSV-quoted
        where needed)."""
        path = pathlib.Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        rows = list(self._csv_rows())
        with path.open("w", newline="", encoding="utf-8") as fh:
            csv.writer(fh).writerows(rows)

    # ------------------------------------------------------ per-sample export
    def predictions_table(self) -> tuple[list[str], np.ndarray]:
        """Column names ``prob_<name>`` and the accumulated probabilities
        ``[N, C]`` float32 (a copy), in accumulation order.  Targets are in
        ``state()["targets"]`` in the same order."""
        probs, _ = self._arrays()
        return [f"prob_{n}" for n in self.safe_names], probs.copy()
