"""The task's classification metrics for probabilities computed outside a network (kNN, probes)."""
from __future__ import annotations

import numpy as np

from utility.metrics.classification import ClassificationMetrics


def task_metrics(probs: np.ndarray, targets: np.ndarray, classes: list[str], multilabel: bool) -> dict[str, float]:
    """The same metric row a finetuning run logs (without the loss), from [N, C] probabilities."""
    m = ClassificationMetrics(len(classes), multilabel, classes)
    m.load_states([{"probs": np.asarray(probs, dtype=np.float32), "targets": np.asarray(targets)}])
    row = m.compute(float("nan"))
    row.pop("avg_val_loss", None)
    return row
