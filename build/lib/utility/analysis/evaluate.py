"""Evaluate any weights on any split with the task's own method: the same metrics, confusion matrix
and per-image predictions a finetuning run writes, without training (``predict``, ``importance``)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

from utility.training.engine import Amp, StepContext


def make_method(subject: Any) -> Any:
    from utility.methods.registry import pipeline_for

    return pipeline_for(subject.task.type).method(subject.cfg, subject.task, subject.data.indexed, None, None)


@torch.no_grad()
def evaluate(model: nn.Module, subject: Any, split: str, method: Optional[Any] = None) -> tuple[dict[str, float], Any]:
    """(metric row, the method holding the split's predictions) of ``model`` on ``split``."""
    method = method or make_method(subject)
    ctx = StepContext(subject.device, Amp(subject.device, "off").autocast, training=False)
    model.eval()
    method.eval_begin(split)
    loss_sum, denom = 0.0, 0.0
    for batch in subject.loader(split):
        s, n = method.eval_batch(model, batch, ctx)
        loss_sum += float(s)
        denom += float(n)
    return method.eval_end(loss_sum / denom if denom else float("nan")), method


def write_predictions(method: Any, out_dir: Path, split: str) -> list[Path]:
    """predictions_<split>.csv (classification) or overlays (segmentation), and the confusion matrix."""
    method.metrics.save_confusion_matrix(out_dir / f"confusion_{split}.csv")
    method.test_artifacts(out_dir, split)
    return sorted(out_dir.glob(f"*{split}*"))
