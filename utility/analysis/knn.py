"""Weighted k-nearest-neighbour classification on frozen embeddings (the InstDisc / DINO protocol).

Features are L2-normalised; a query's k most cosine-similar training samples vote with weight
exp(similarity / temperature). Multi-class: a class's score is the summed weight of its neighbours,
normalised to probabilities. Multi-label: a label's score is the weighted mean of the neighbours'
0/1 labels. Ties in similarity are broken by the lower training index.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch


def normalise(x: np.ndarray | torch.Tensor) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(x), dtype=torch.float64)
    return t / t.norm(dim=1, keepdim=True).clamp_min(1e-12)


def weighted_knn(train_x: np.ndarray, train_y: np.ndarray, query_x: np.ndarray, k: int, temperature: float,
                 num_classes: int, multilabel: bool = False, chunk: int = 1024) -> np.ndarray:
    """Class probabilities [Q, C] (multi-label: per-label scores in [0, 1]) for every query."""
    tx, qx = normalise(train_x), normalise(query_x)
    k = min(int(k), tx.shape[0])
    if multilabel:
        labels = torch.as_tensor(np.asarray(train_y), dtype=torch.float64)
    else:
        labels = torch.nn.functional.one_hot(torch.as_tensor(np.asarray(train_y), dtype=torch.int64),
                                             num_classes).double()
    out = []
    for start in range(0, qx.shape[0], chunk):
        sim = qx[start:start + chunk] @ tx.T
        # stable top-k: sort by similarity descending, ties by index ascending
        order = torch.sort(sim, dim=1, descending=True, stable=True).indices[:, :k]
        top = torch.gather(sim, 1, order)
        w = torch.exp(top / temperature)
        votes = (w.unsqueeze(-1) * labels[order]).sum(dim=1)
        out.append(votes / w.sum(dim=1, keepdim=True))
    return torch.cat(out).numpy() if out else np.zeros((0, num_classes))


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
