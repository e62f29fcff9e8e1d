"""Weighted k-nearest-neighbour classification on frozen embeddings (the InstDisc / DINO protocol).

Features are L2-normalised; a query's k most cosine-similar training samples vote with weight
exp(similarity / temperature). Multi-class: a class's score is the summed weight of its neighbours,
normalised to probabilities. Multi-label: a label's score is the weighted mean of the neighbours'
0/1 labels. Ties in similarity are broken by the lower training index.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from utility.metrics.knn import knn_scores


def weighted_knn(train_x: np.ndarray, train_y: np.ndarray, query_x: np.ndarray, k: int, temperature: float,
                 num_classes: int, multilabel: bool = False, chunk: int = 1024) -> np.ndarray:
    """Class probabilities [Q, C] (multi-label: per-label scores in [0, 1]) for every query
    (:func:`utility.metrics.knn.knn_scores`, the pretraining monitor's kNN)."""
    return knn_scores(train_x, train_y, query_x, k, temperature, num_classes, multilabel, chunk).cpu().numpy()


def knn_rows(train: dict, queries: dict[str, dict], ks: Sequence[int], temperature: float, classes: list[str],
             multilabel: bool) -> list[dict]:
    """One row per (split, k): the task's metrics of the kNN probabilities."""
    from utility.analysis.metrics import task_metrics

    rows = []
    for split, q in queries.items():
        for k in ks:
            probs = weighted_knn(train["features"], train["targets"], q["features"], k, temperature,
                                 len(classes), multilabel)
            rows.append({"split": split, "k": int(k), "k_used": min(int(k), len(train["features"])),
                         "temperature": temperature,
                         **task_metrics(probs, q["targets"], classes, multilabel)})
    return rows
