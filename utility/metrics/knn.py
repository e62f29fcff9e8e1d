"""Weighted k-nearest-neighbour classification of frozen features (the InstDisc protocol that SSL
papers report as "kNN accuracy"): cosine similarity to every training feature, the k most similar
vote for their class with weight exp(similarity / t), the class with the largest summed weight wins.

Pure tensor functions: the online monitor during pretraining, ``pkgs/SSL/knn_eval.py`` and analysis
commands use the same code, so the same features give the same numbers.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def knn_predict(train_features: torch.Tensor, train_labels: torch.Tensor, query_features: torch.Tensor,
                num_classes: int, k: int = 20, t: float = 0.07, chunk: int = 1024) -> torch.Tensor:
    """Predicted class of every query ([Q] int64). Features are L2-normalised here (float32);
    ``k`` is capped at the number of training samples; ties in the summed weights go to the lower class."""
    if train_features.shape[0] == 0:
        raise ValueError("kNN needs at least one training feature")
    bank = F.normalize(train_features.float(), dim=1)
    labels = train_labels.to(bank.device).long()
    k = min(k, bank.shape[0])
    out = []
    for start in range(0, query_features.shape[0], chunk):
        q = F.normalize(query_features[start:start + chunk].float().to(bank.device), dim=1)
        sim, idx = (q @ bank.t()).topk(k, dim=1)
        votes = torch.zeros(q.shape[0], num_classes, device=bank.device, dtype=torch.float64)
        votes.scatter_add_(1, labels[idx], (sim.double() / t).exp())
        out.append(votes.argmax(1))
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.long)


def knn_accuracy(train_features: torch.Tensor, train_labels: torch.Tensor, query_features: torch.Tensor,
                 query_labels: torch.Tensor, num_classes: int, k: int = 20, t: float = 0.07) -> float:
    """Fraction of queries whose weighted-kNN prediction is their label."""
    pred = knn_predict(train_features, train_labels, query_features, num_classes, k, t)
    return float((pred.cpu() == query_labels.cpu().long()).double().mean()) if len(pred) else float("nan")
