"""Curves of a classification model's scores: ROC and PR per class, precision at fixed recalls
(with the threshold that reaches it), confusion matrix, calibration (reliability bins, ECE).

Multi-class scores are one-vs-rest per class (a class's probability against "is this class");
multi-label scores per label. Calibration: multi-class uses the top probability against "the
argmax is right"; multi-label every (image, label) probability against its 0/1 label.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from sklearn.metrics import auc, average_precision_score, precision_recall_curve, roc_curve

from utility.errors import UserError
from utility.metrics.classification import DECISION_THRESHOLD


@dataclass
class Scores:
    """Per-image probabilities [N, C] and targets (class indices [N], or multi-hot [N, C])."""

    probs: np.ndarray
    targets: np.ndarray
    classes: list[str]
    multilabel: bool

    def binary(self, c: int) -> np.ndarray:
        return (self.targets[:, c] if self.multilabel else self.targets == c).astype(int)


def read_predictions(path: Path, multilabel: bool, classes: Sequence[str] | None = None) -> Scores:
    """A predictions CSV (file, target, predicted, prob_<class>...) as written by finetuning or predict."""
    if not path.is_file():
        raise UserError(f"predictions file not found: {path} (run 'predict' first, or pass --weights)")
    with path.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    if not rows:
        raise UserError(f"{path} holds no predictions")
    cols = [c for c in rows[0] if c.startswith("prob_")]
    names = list(classes) if classes is not None else [c[len("prob_"):] for c in cols]
    if len(names) != len(cols):
        raise UserError(f"{path} has {len(cols)} probability columns but the task has {len(names)} classes")
    lookup = {n: i for i, n in enumerate(names)}
    probs = np.array([[float(r[c]) for c in cols] for r in rows], dtype=np.float64)
    if multilabel:
        targets = np.zeros_like(probs, dtype=int)
        for i, r in enumerate(rows):
            for n in filter(None, r["target"].split("|")):
                if n not in lookup:
                    raise UserError(f"{path}: target '{n}' is not a class of the task")
                targets[i, lookup[n]] = 1
    else:
        unknown = sorted({r["target"] for r in rows} - set(lookup))
        if unknown:
            raise UserError(f"{path}: target '{unknown[0]}' is not a class of the task ({', '.join(names)})")
        targets = np.array([lookup[r["target"]] for r in rows])
    return Scores(probs, targets, names, multilabel)


def roc_points(s: Scores) -> list[dict]:
    rows = []
    for c, name in enumerate(s.classes):
        y = s.binary(c)
        if y.min() == y.max():
            continue  # undefined without both positives and negatives
        fpr, tpr, thr = roc_curve(y, s.probs[:, c])
        rows += [{"class": name, "fpr": a, "tpr": b, "threshold": t} for a, b, t in zip(fpr, tpr, thr)]
    return rows


def pr_points(s: Scores) -> list[dict]:
    rows = []
    for c, name in enumerate(s.classes):
        y = s.binary(c)
        if not y.any():
            continue
        p, r, thr = precision_recall_curve(y, s.probs[:, c])
        thr = np.append(thr, np.nan)  # the last point (recall 0, precision 1) has no threshold
        rows += [{"class": name, "recall": b, "precision": a, "threshold": t} for a, b, t in zip(p, r, thr)]
    return rows


def precision_at_recall(y: np.ndarray, score: np.ndarray, recall: float) -> tuple[float, float, float]:
    """(precision, recall reached, threshold): the highest precision among the operating points
    (thresholds of precision_recall_curve) whose recall is at least ``recall``; on a tie the
    highest threshold. NaN without positives."""
    if not np.asarray(y).any():
        return float("nan"), float("nan"), float("nan")
    p, r, thr = precision_recall_curve(y, score)
    p, r = p[:-1], r[:-1]
    ok = np.flatnonzero(r >= recall)
    best = ok[p[ok] == p[ok].max()]
    i = best[np.argmax(thr[best])]
    return float(p[i]), float(r[i]), float(thr[i])


def precision_at_recall_rows(s: Scores, recalls: Sequence[float]) -> list[dict]:
    rows = []
    for c, name in enumerate(s.classes):
        for rec in recalls:
            p, r, t = precision_at_recall(s.binary(c), s.probs[:, c], rec)
            rows.append({"class": name, "target_recall": rec, "precision": p, "recall": r, "threshold": t})
    return rows


def summary_rows(s: Scores) -> list[dict]:
    rows = []
    for c, name in enumerate(s.classes):
        y = s.binary(c)
        both = y.min() != y.max()
        fpr, tpr, _ = roc_curve(y, s.probs[:, c]) if both else (None, None, None)
        rows.append({"class": name, "positives": int(y.sum()), "auc_roc": auc(fpr, tpr) if both else np.nan,
                     "average_precision": average_precision_score(y, s.probs[:, c]) if y.any() else np.nan})
    return rows


def calibration(s: Scores, bins: int = 15) -> tuple[list[dict], float]:
    """Equal-width confidence bins (count, mean confidence, accuracy) and the expected calibration
    error: sum over bins of |accuracy - confidence| weighted by the bin's share of the samples."""
    if s.multilabel:
        conf, correct = s.probs.ravel(), s.targets.ravel().astype(float)
    else:
        conf, correct = s.probs.max(axis=1), (s.probs.argmax(axis=1) == s.targets).astype(float)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(conf, edges[1:-1], right=True), 0, bins - 1)
    rows, ece = [], 0.0
    for b in range(bins):
        m = which == b
        n = int(m.sum())
        mc = float(conf[m].mean()) if n else np.nan
        acc = float(correct[m].mean()) if n else np.nan
        if n:
            ece += n / len(conf) * abs(acc - mc)
        rows.append({"bin_low": edges[b], "bin_high": edges[b + 1], "count": n, "confidence": mc, "accuracy": acc})
    return rows, float(ece)


def confusion(s: Scores) -> np.ndarray:
    """Multi-class [C, C] (rows truth, columns argmax); multi-label [C, 2, 2] at DECISION_THRESHOLD."""
    from sklearn.metrics import confusion_matrix, multilabel_confusion_matrix

    if s.multilabel:
        return multilabel_confusion_matrix(s.targets, (s.probs >= DECISION_THRESHOLD).astype(int))
    return confusion_matrix(s.targets, s.probs.argmax(axis=1), labels=list(range(len(s.classes))))
