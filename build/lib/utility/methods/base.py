"""What training methods share. The engine's contract is :class:`utility.training.engine.Method`.

:class:`SupervisedMethod` is the shape of classification and segmentation: a batch becomes
inputs (broken files dropped, moved to the device, channels conformed, train-time augmentation),
the network gives logits, evaluation accumulates split-level metrics and writes a confusion matrix
per evaluation. A subclass says only what differs: the loss, what an evaluation batch records, and
its test-time files. :class:`NoEvaluation` is for methods without a labelled split (SSL).
"""
from __future__ import annotations

import copy
import warnings
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

from utility.data.badfiles import BadFiles, drop_invalid
from utility.data.preprocess import conform_channels
from utility.training.engine import StepContext


class NoEvaluation:
    """Pretraining methods have no labelled evaluation split; the engine is given no val loader."""

    def eval_begin(self, split: str) -> None: ...

    def eval_batch(self, model: nn.Module, batch: Any, ctx: StepContext):
        return torch.zeros((), device=ctx.device), 0

    def eval_end(self, avg_loss: float) -> dict[str, float]:
        return {}

    def eval_artifacts(self, out_dir: Path, tag: str) -> None: ...


class SupervisedMethod:
    """Subclasses set ``self.metrics`` (reset/update/compute/save_confusion_matrix) and implement
    :meth:`batch_loss` and :meth:`record`."""

    target_dtype: Optional[torch.dtype] = None  # e.g. int64 masks for segmentation

    def __init__(self, class_names: list[str], in_channels: int, augment: Optional[nn.Module] = None,
                 paths: Optional[dict[str, list[Path]]] = None, bad: Optional[BadFiles] = None) -> None:
        self.class_names = class_names
        self.in_channels = in_channels
        self.augment = augment
        self.paths = paths or {}
        self.bad = bad  # counts and reports broken files per split
        self.metrics: Any = None
        self._eval_split = "val"

    def metric_names(self) -> list[str]:
        """The metric columns an evaluation reports (val.log), known before training: the row of a
        one-sample probe. Lets a best_metric be checked before the first epoch, not after it."""
        probe = copy.deepcopy(self.metrics)
        probe.reset()
        probe.update(*self.probe_batch())
        with warnings.catch_warnings():  # one made-up sample: scikit-learn's degenerate-input notes
            warnings.simplefilter("ignore")
            return list(self.select_columns(probe.compute(float("nan"))))

    def select_columns(self, row: dict[str, float]) -> dict[str, float]:
        """The part of a metric row that is reported (all of it unless a subclass drops some)."""
        return row

    # ------------------------------------------------------------------ what subclasses provide
    def probe_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits, targets) of one made-up sample, shaped as this method's metrics take them."""
        raise NotImplementedError

    def batch_loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Training loss of one batch (mean over its samples)."""
        raise NotImplementedError

    def record(self, logits: torch.Tensor, x: torch.Tensor, y: torch.Tensor, idx: Any) -> tuple[torch.Tensor, Any]:
        """Accumulate one evaluation batch; return (summed loss, denominator) as the engine expects."""
        raise NotImplementedError

    def augment_batch(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        assert self.augment is not None
        return self.augment(x), y

    def on_eval_begin(self) -> None: ...

    def test_artifacts(self, out_dir: Path, tag: str) -> None: ...

    # ------------------------------------------------------------------ the shared shape
    def _inputs(self, batch: dict[str, Any], ctx: StepContext, train: bool):
        batch = drop_invalid(batch, "train" if train else self._eval_split, self.bad)
        if batch is None:
            return None
        x = batch["image"].to(ctx.device, non_blocking=True)
        y = batch["target"].to(ctx.device, non_blocking=True)
        if self.target_dtype is not None:
            y = y.to(self.target_dtype)
        x = conform_channels(x, self.in_channels)
        if train and self.augment is not None:
            x, y = self.augment_batch(x, y)
        return x, y, batch["index"]

    def train_loss(self, model: nn.Module, batch: dict[str, Any], ctx: StepContext):
        got = self._inputs(batch, ctx, train=True)
        if got is None:
            return None, 0
        x, y, _ = got
        return self.batch_loss(model(x), y), int(x.shape[0])

    def eval_begin(self, split: str = "val") -> None:
        self.metrics.reset()
        self._eval_split = split
        self.on_eval_begin()

    def eval_batch(self, model: nn.Module, batch: dict[str, Any], ctx: StepContext):
        got = self._inputs(batch, ctx, train=False)
        if got is None:
            return torch.zeros((), device=ctx.device), 0
        x, y, idx = got
        return self.record(model(x), x, y, idx)

    def eval_end(self, avg_loss: float) -> dict[str, float]:
        return self.metrics.compute(avg_loss)

    def eval_artifacts(self, out_dir: Path, tag: str) -> None:
        cm_dir = out_dir / "confusion_matrices"
        cm_dir.mkdir(exist_ok=True)
        self.metrics.save_confusion_matrix(cm_dir / f"{tag}.csv")
        if tag.startswith("test"):
            self.test_artifacts(out_dir, tag)
