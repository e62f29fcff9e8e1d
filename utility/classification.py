"""The classification step (multi-class and multi-label) plugged into the shared engine."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from utility.data.badfiles import BadFiles, drop_invalid
from utility.data.preprocess import conform_channels
from utility.distributed import all_gather_object, all_reduce_sum, is_dist, world_size
from utility.engine import StepContext
from utility.metrics import ClassificationMetrics
from utility.rundir import write_table


class ClassificationMethod:
    def __init__(self, num_classes: int, multilabel: bool, class_names: list[str], in_channels: int,
                 augment: Optional[nn.Module] = None, class_weights: Optional[list[float]] = None,
                 paths: Optional[dict[str, list[Path]]] = None, per_class_columns: bool = True,
                 save_predictions: bool = True) -> None:
        self.multilabel = multilabel
        self.in_channels = in_channels
        self.augment = augment
        self.weights = torch.tensor(class_weights, dtype=torch.float32) if class_weights else None
        self.metrics = ClassificationMetrics(num_classes, multilabel, class_names)
        self.class_names = class_names
        self.paths = paths or {}
        self.per_class_columns = per_class_columns  # off for 1000-class tasks: logs stay readable
        self.save_predictions = save_predictions
        self._eval_index: list[np.ndarray] = []
        self._eval_split = "val"
        self.bad: Optional[BadFiles] = None  # set by the caller to count and report broken files

    def _inputs(self, batch: dict[str, Any], ctx: StepContext, train: bool):
        batch = drop_invalid(batch, "train" if train else self._eval_split, self.bad)
        if batch is None:
            return None
        x = batch["image"].to(ctx.device, non_blocking=True)
        y = batch["target"].to(ctx.device, non_blocking=True)
        x = conform_channels(x, self.in_channels)
        if train and self.augment is not None:
            x = self.augment(x)
        return x, y, batch["index"]

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

    def train_loss(self, model: nn.Module, batch: dict[str, Any], ctx: StepContext):
        got = self._inputs(batch, ctx, train=True)
        if got is None:
            return None, 0
        x, y, _ = got
        logits = model(x)
        if self.weights is not None and not self.multilabel and is_dist():
            # weighted CE is normalised by the weight sum: take the global batch's sum, so that DDP's
            # gradient average equals one process's gradient on the whole batch (a per-rank sum differs)
            denom = all_reduce_sum(self.weights.to(logits.device)[y].sum().detach())
            return self.loss(logits, y, reduction="sum") * world_size() / denom, int(x.shape[0])
        return self.loss(logits, y), int(x.shape[0])

    def eval_begin(self, split: str = "val") -> None:
        self.metrics.reset()
        self._eval_index = []
        self._eval_split = split

    def eval_batch(self, model: nn.Module, batch: dict[str, Any], ctx: StepContext):
        got = self._inputs(batch, ctx, train=False)
        if got is None:
            return torch.zeros((), device=ctx.device), 0
        x, y, idx = got
        logits = model(x)
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
        row = self.metrics.compute(avg_loss)
        if not self.per_class_columns:
            row = {k: v for k, v in row.items() if not k.startswith("auc_class_")}
        return row

    def eval_artifacts(self, out_dir: Path, tag: str) -> None:
        cm_dir = out_dir / "confusion_matrices"
        cm_dir.mkdir(exist_ok=True)
        self.metrics.save_confusion_matrix(cm_dir / f"{tag}.csv")
        if tag.startswith("test") and self.save_predictions:
            self._save_predictions(out_dir / f"predictions_{tag}.csv")

    def _save_predictions(self, path: Path) -> None:
        cols, probs = self.metrics.predictions_table()
        targets = self.metrics.state()["targets"]
        index = np.concatenate(self._eval_index) if self._eval_index else np.zeros(0, dtype=int)
        files = self.paths.get(self._eval_split, [])
        rows = []
        for k in range(probs.shape[0]):
            i = int(index[k])
            row: dict[str, Any] = {"file": str(files[i]) if i < len(files) else str(i)}
            if self.multilabel:
                row["target"] = "|".join(n for n, t in zip(self.class_names, targets[k]) if t)
                row["predicted"] = "|".join(n for n, p in zip(self.class_names, probs[k]) if p >= 0.5)
            else:
                row["target"] = self.class_names[int(targets[k])]
                row["predicted"] = self.class_names[int(probs[k].argmax())]
            row.update({c: float(v) for c, v in zip(cols, probs[k])})
            rows.append(row)
        write_table(path, ["file", "target", "predicted", *cols], rows)
