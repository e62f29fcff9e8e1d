"""Classification (multi-class and multi-label): the method plugged into the shared engine, and the
pipeline that builds its dataset and method for ``type: classification|multilabel`` tasks."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from utility.data.badfiles import BadFiles
from utility.data.cache import SharedStore
from utility.data.dataset import ImageDataset, Preprocess
from utility.data.index import IndexedTask, Split
from utility.distributed import all_gather_object, all_reduce_sum, is_dist, world_size
from utility.methods.base import SubjectsOf, SupervisedMethod, ci_settings, subjects_lookup
from utility.methods.registry import register_pipeline
from utility.metrics.bootstrap import BootstrapSettings
from utility.metrics.classification import ClassificationMetrics
from utility.metrics.resampled import ClassificationSamples
from utility.training.rundir import write_table


class ClassificationMethod(SupervisedMethod):
    """Multi-class (cross-entropy) or multi-label (per-label BCE) with class weights ``w_l``;
    metrics over the whole split; per-image predictions of the test split."""

    def __init__(self, num_classes: int, multilabel: bool, class_names: list[str], in_channels: int,
                 augment: Optional[nn.Module] = None, class_weights: Optional[list[float]] = None,
                 paths: Optional[dict[str, list[Path]]] = None, per_class_columns: bool = True,
                 save_predictions: bool = True, bad: Optional[BadFiles] = None,
                 ci: Optional[BootstrapSettings] = None, subjects_of: Optional[SubjectsOf] = None) -> None:
        super().__init__(class_names, in_channels, augment, paths, bad, ci, subjects_of)
        self.multilabel = multilabel
        self.weights = torch.tensor(class_weights, dtype=torch.float32) if class_weights else None
        self.metrics = ClassificationMetrics(num_classes, multilabel, class_names)
        self.per_class_columns = per_class_columns  # off for 1000-class tasks: logs stay readable
        self.save_predictions = save_predictions
        self._eval_index: list[np.ndarray] = []

    def loss(self, logits: torch.Tensor, y: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        logits = logits.float()  # loss in float32 under autocast
        w = self.weights.to(logits.device) if self.weights is not None else None
        if self.multilabel:
            per = F.binary_cross_entropy_with_logits(logits, y.float(), reduction="none")
            if w is not None:
                per = per * w
            per = per.mean(dim=1)
            return per.mean() if reduction == "mean" else per.sum()
        return F.cross_entropy(logits, y, weight=w, reduction=reduction)

    def batch_loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.weights is not None and not self.multilabel and is_dist():
            # weighted CE is normalised by the weight sum: take the global batch's sum, so that DDP's
            # gradient average equals one process's gradient on the whole batch (a per-rank sum differs)
            denom = all_reduce_sum(self.weights.to(logits.device)[y].sum().detach())
            return self.loss(logits, y, reduction="sum") * world_size() / denom
        return self.loss(logits, y)

    def on_eval_begin(self) -> None:
        self._eval_index = []

    def record(self, logits: torch.Tensor, x: torch.Tensor, y: torch.Tensor, idx: Any):
        s = self.loss(logits, y, reduction="sum")
        # weighted CE averages by the weight sum (as its 'mean' does), over the whole split
        denom = (self.weights.to(y.device)[y].sum() if (self.weights is not None and not self.multilabel)
                 else float(x.shape[0]))
        self.metrics.update(logits.detach(), y)
        self._eval_index.append(np.asarray(idx))
        return s.detach(), denom

    def eval_end(self, avg_loss: float) -> dict[str, float]:
        if is_dist():  # every rank evaluated a disjoint shard: gather so each sample counts once
            shards = all_gather_object((self.metrics.state(), self._eval_index))
            self.metrics.load_states([st for st, _ in shards])
            self._eval_index = [i for _, idx in shards for i in idx]
        self._row = self.select_columns(self.metrics.compute(avg_loss))
        return self._row

    def select_columns(self, row: dict[str, float]) -> dict[str, float]:
        if not self.per_class_columns:
            row = {k: v for k, v in row.items() if not k.startswith("auc_class_")}
        return row

    def probe_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        c = self.metrics.num_classes
        return torch.zeros(1, c), (torch.zeros(1, c) if self.multilabel else torch.zeros(1, dtype=torch.int64))

    def test_artifacts(self, out_dir: Path, tag: str) -> None:
        if self.save_predictions:
            self._save_predictions(out_dir / f"predictions_{tag}.csv")

    def _index(self) -> np.ndarray:
        return np.concatenate(self._eval_index).astype(np.int64) if self._eval_index else np.zeros(0, dtype=np.int64)

    def per_sample(self) -> Optional[tuple[ClassificationSamples, np.ndarray]]:
        st = self.metrics.state()
        return (ClassificationSamples(st["probs"], st["targets"], self.multilabel, self.metrics.class_names,
                                      self.metrics.threshold), self._index())

    def _save_predictions(self, path: Path) -> None:
        cols, probs = self.metrics.predictions_table()
        targets = self.metrics.state()["targets"]
        index = self._index()
        subjects = self.subjects(index)
        files = self.paths.get(self._eval_split, [])
        rows = []
        for k in range(probs.shape[0]):
            i = int(index[k])
            row: dict[str, Any] = {"file": str(files[i]) if i < len(files) else str(i)}
            if self.multilabel:
                row["target"] = "|".join(n for n, t in zip(self.class_names, targets[k]) if t)
                row["predicted"] = "|".join(n for n, p in zip(self.class_names, probs[k])
                                            if p >= self.metrics.threshold)
            else:
                row["target"] = self.class_names[int(targets[k])]
                row["predicted"] = self.class_names[int(probs[k].argmax())]
            row.update({c: float(v) for c, v in zip(cols, probs[k])})
            row["subject"] = subjects[k]
            rows.append(row)
        write_table(path, ["file", "target", "predicted", *cols, "subject"], rows)


@register_pipeline("multiclass", "multilabel")
class ClassificationPipeline:
    segmentation = False

    def dataset(self, cfg: Any, task: Any, split: Split, name: str, prep: Preprocess, num_classes: int,
                cache_dir: Optional[Path]) -> ImageDataset:
        cache = None
        if cfg.opmode != "disk":
            cache = SharedStore(split.paths, prep.channels, prep.shape, repr(prep), cache_dir,
                                f"{task.name} split '{name}'")
        return ImageDataset(split, prep, task.type == "multilabel", num_classes, cache,
                            debug=cfg.debug, test_nan_inf=cfg.test_nan_inf)

    def method(self, cfg: Any, task: Any, indexed: IndexedTask, augment: Optional[nn.Module],
               bad: BadFiles) -> ClassificationMethod:
        return ClassificationMethod(indexed.num_classes, task.type == "multilabel", indexed.classes,
                                    cfg.in_channels or 3, augment, cfg.w_l,
                                    {k: s.paths for k, s in indexed.splits.items()},
                                    per_class_columns=task.per_class_metrics, save_predictions=cfg.save_predictions,
                                    bad=bad, ci=ci_settings(cfg), subjects_of=subjects_lookup(indexed))
