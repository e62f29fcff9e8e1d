"""Weighted k-nearest-neighbour classification of frozen features (the InstDisc protocol that SSL
papers report as "kNN accuracy"): cosine similarity to every training feature, the k most similar
vote for their class with weight exp(similarity / t), the class with the largest summed weight wins.

One implementation for the online monitor during pretraining, ``pkgs/SSL/knn_eval.py`` and the
analysis commands (``analyze.py knn`` / ``layer-knn``), so the same features give the same numbers.
Computed in float64 on the features' device; ties in similarity go to the lower training index,
ties in the summed weights to the lower class.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch


def _as_tensor(x: Any, dtype: torch.dtype, device: torch.device | None = None) -> torch.Tensor:
    t = x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))
    return t.to(device=device if device is not None else t.device, dtype=dtype)


def normalise(x: Any) -> torch.Tensor:
    """Rows L2-normalised, float64 (numpy arrays or tensors)."""
    t = _as_tensor(x, torch.float64)
    return t / t.norm(dim=1, keepdim=True).clamp_min(1e-12)


def knn_scores(train_x: Any, train_y: Any, query_x: Any, k: int, t: float, num_classes: int,
               multilabel: bool = False, chunk: int = 1024) -> torch.Tensor:
    """[Q, C] scores: multi-class, each class's share of the neighbours' summed weight (probabilities);
    multi-label, each label's weighted mean of the neighbours' 0/1 labels. ``k`` is capped at the
    number of training samples."""
    tx = normalise(train_x)
    if tx.shape[0] == 0:
        raise ValueError("kNN needs at least one training feature")
    qx = normalise(query_x).to(tx.device)
    k = min(int(k), tx.shape[0])
    if multilabel:
        labels = _as_tensor(train_y, torch.float64, tx.device)
    else:
        labels = torch.nn.functional.one_hot(_as_tensor(train_y, torch.int64, tx.device), num_classes).double()
    out = []
    for start in range(0, qx.shape[0], chunk):
        sim = qx[start:start + chunk] @ tx.T
        order = torch.sort(sim, dim=1, descending=True, stable=True).indices[:, :k]  # ties: lower index
        w = torch.exp(torch.gather(sim, 1, order) / t)
        votes = (w.unsqueeze(-1) * labels[order]).sum(dim=1)
        out.append(votes / w.sum(dim=1, keepdim=True))
    return torch.cat(out) if out else torch.zeros(0, num_classes, dtype=torch.float64, device=tx.device)


def knn_predict(train_features: torch.Tensor, train_labels: torch.Tensor, query_features: torch.Tensor,
                num_classes: int, k: int = 20, t: float = 0.07, chunk: int = 1024) -> torch.Tensor:
    """Predicted class of every query ([Q] int64)."""
    return knn_scores(train_features, train_labels, query_features, k, t, num_classes, chunk=chunk).argmax(1)


def knn_accuracy(train_features: torch.Tensor, train_labels: torch.Tensor, query_features: torch.Tensor,
                 query_labels: torch.Tensor, num_classes: int, k: int = 20, t: float = 0.07) -> float:
    """Fraction of queries whose weighted-kNN prediction is their label."""
    pred = knn_predict(train_features, train_labels, query_features, num_classes, k, t)
    return float((pred.cpu() == query_labels.cpu().long()).double().mean()) if len(pred) else float("nan")
