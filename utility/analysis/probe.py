"""Linear probes on frozen embeddings: scikit-learn logistic regression and linear SVM.

Features are standardised with the training split's mean and standard deviation; the inverse
regularisation strength C is chosen from a grid by the task's primary metric on the validation split,
then the probe fitted on train with that C is reported on val and test. Multi-label tasks fit one
binary probe per label (one-vs-rest). The SVM's decision values become scores by softmax
(multi-class) or sigmoid (multi-label: a positive decision is a score above 0.5), so its argmax and
its 0.5 threshold are the SVM's own decisions.

The logistic regression is converged, not stopped early: lbfgs at a tolerance of 1e-8 (sklearn's
default 1e-4 stopped it after 13-40 iterations, up to 0.009 accuracy from its optimum at weak
regularisation), along the C grid in increasing order with warm starts (each C starts from the
previous optimum, so the tight tolerance costs few iterations).
"""
from __future__ import annotations

import warnings
from typing import Any, Sequence

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.multiclass import OneVsRestClassifier
from sklearn.preprocessing import StandardScaler
from sklearn.svm import LinearSVC

from utility.analysis.metrics import task_metrics

C_GRID = (1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0)
LOGREG_TOL = 1e-8
PROBES = ("logreg", "svm")


def make_probe(kind: str, c: float, multilabel: bool, seed: int, max_iter: int = 10000) -> Any:
    if kind == "logreg":
        est: Any = LogisticRegression(C=c, max_iter=max_iter, tol=LOGREG_TOL, warm_start=not multilabel)
    else:
        est = LinearSVC(C=c, max_iter=max_iter, random_state=seed)
    return OneVsRestClassifier(est) if multilabel else est


def scores(est: Any, x: np.ndarray, kind: str, multilabel: bool) -> np.ndarray:
    if kind == "logreg":
        return est.predict_proba(x)
    d = est.decision_function(x)
    if multilabel:
        return 1.0 / (1.0 + np.exp(-d))
    if d.ndim == 1:  # binary LinearSVC: one decision value for class 1
        d = np.stack([-d, d], axis=1) / 2
    e = np.exp(d - d.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def fit_grid(kind: str, x: np.ndarray, y: np.ndarray, grid: Sequence[float], multilabel: bool,
             seed: int) -> dict[float, Any]:
    """{C: fitted probe}; logistic regression along the grid in increasing C, each warm-started from the last."""
    fitted: dict[float, Any] = {}
    warm = None
    for c in sorted(grid):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            est = make_probe(kind, c, multilabel, seed)
            if warm is not None and kind == "logreg" and not multilabel:
                est.coef_, est.intercept_ = warm.coef_.copy(), warm.intercept_.copy()
            fitted[c] = warm = est.fit(x, y)
    return fitted


def probe_rows(emb: dict[str, dict], classes: list[str], multilabel: bool, primary: str, mode: str,
               kinds: Sequence[str] = PROBES, grid: Sequence[float] = C_GRID, seed: int = 0) -> list[dict]:
    """Rows (probe, C, split, chosen, metrics...) for every C on val, and the chosen C on val and test."""
    scaler = StandardScaler().fit(emb["train"]["features"])
    x = {s: scaler.transform(e["features"]) for s, e in emb.items()}
    y = {s: (e["targets"].astype(np.int64) if multilabel else e["targets"]) for s, e in emb.items()}
    rows: list[dict] = []
    for kind in kinds:
        fitted = fit_grid(kind, x["train"], y["train"], grid, multilabel, seed)
        for c in grid:
            est = fitted[c]
            rows.append({"probe": kind, "C": c, "split": "val", "chosen": 0,
                         **task_metrics(scores(est, x["val"], kind, multilabel), y["val"], classes, multilabel)})
        mine = [r for r in rows if r["probe"] == kind]
        vals = np.array([r.get(primary, np.nan) for r in mine], dtype=float)
        if np.isnan(vals).all():
            best = 0
        else:
            best = int(np.nanargmax(vals) if mode == "max" else np.nanargmin(vals))
        c = grid[best]
        mine[best]["chosen"] = 1
        rows.append({"probe": kind, "C": c, "split": "test", "chosen": 1,
                     **task_metrics(scores(fitted[c], x["test"], kind, multilabel), y["test"], classes, multilabel)})
    return rows
