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
from typing import Any, Callable, Optional

import numpy as np
import torch
from torch import nn

from utility.data.badfiles import BadFiles, drop_invalid
from utility.data.preprocess import conform_channels
from utility.metrics.bootstrap import BootstrapSettings
from utility.metrics.subjects_of import sample_subjects
from utility.metrics.test_ci import COLUMNS as CI_COLUMNS, ci_rows
from utility.training.engine import StepContext
from utility.training.rundir import write_table

SubjectsOf = Callable[[str], np.ndarray]   # split name -> one subject id per sample


def ci_settings(cfg: Any) -> Optional[BootstrapSettings]:
    """test_ci.csv's bootstrap from the run config (seeded by the run's seed); None when switched off."""
    n = int(getattr(cfg, "ci_resamples", 1000))
    return BootstrapSettings(n, float(getattr(cfg, "ci_level", 0.95)), int(cfg.seed)) if n > 0 else None


def subjects_lookup(indexed: Any) -> SubjectsOf:
    """Subjects of a split of ``indexed``, computed when first asked (only the test split, usually)."""
    done: dict[str, np.ndarray] = {}

    def of(split: str) -> np.ndarray:
        if split not in done:
            done[split] = sample_subjects(indexed.splits[split])
        return done[split]

    return of


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
                 paths: Optional[dict[str, list[Path]]] = None, bad: Optional[BadFiles] = None,
                 ci: Optional[BootstrapSettings] = None, subjects_of: Optional[SubjectsOf] = None) -> None:
        self.class_names = class_names
        self.ci = ci                    # test_ci.csv's bootstrap (None: not written)
        self.subjects_of = subjects_of  # split -> subject per sample (None: each sample its own subject)
        self._row: Optional[dict[str, float]] = None
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

    def per_sample(self) -> Optional[tuple[Any, np.ndarray]]:
        """(per-sample statistics of the last evaluation (utility/metrics/resampled.py), each one's index
        in the split), for the bootstrap over subjects; None when the method keeps none."""
        return None

    def subjects(self, index: np.ndarray) -> np.ndarray:
        """Subject ids of these samples of the split being evaluated."""
        if self.subjects_of is not None:
            return self.subjects_of(self._eval_split)[index]
        files = self.paths.get(self._eval_split, [])
        return np.asarray([str(files[i]) if i < len(files) else str(i) for i in index], dtype=str)

    def write_test_ci(self, out_dir: Path, tag: str) -> None:
        """test_ci.csv (the last model, beside test.log) or <tag>_ci.csv: intervals over subjects."""
        got = self.per_sample() if self.ci is not None and self._row is not None else None
        if got is None or len(got[1]) == 0:
            return
        samples, index = got
        rows = ci_rows(self._row, samples, self.subjects(index), self.ci)
        write_table(out_dir / ("test_ci.csv" if tag == "test_last" else f"{tag}_ci.csv"), CI_COLUMNS, rows)

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
        self._row = self.metrics.compute(avg_loss)
        return self._row

    def eval_artifacts(self, out_dir: Path, tag: str) -> None:
        cm_dir = out_dir / "confusion_matrices"
        cm_dir.mkdir(exist_ok=True)
        self.metrics.save_confusion_matrix(cm_dir / f"{tag}.csv")
        if tag.startswith("test"):
            self.test_artifacts(out_dir, tag)
            self.write_test_ci(out_dir, tag)
