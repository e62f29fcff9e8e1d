"""The segmentation step plugged into the shared engine: loss (CE, soft Dice, or their weighted sum),
split-level metrics (utility/metrics/segmentation.py), confusion matrices and test overlays, plus the
builders :mod:`utility.runs.finetune` dispatches to for ``type: segmentation`` tasks.

Loss (task keys ``loss``, ``ce_weight``, ``dice_weight``, ``dice_smooth``, ``dice_include_background``;
config ``w_l`` = per-class CE weights, background included):
- ce: pixel cross-entropy with class weights w_l (mean weighted by w_l[y], as torch does);
- dice: 1 - soft Dice, softmax probabilities against one-hot truth, summed over the batch's pixels per
  class, (2 I + s) / (P + G + s) with smoothing s, averaged over the foreground classes (or over all
  classes with ``dice_include_background: true``);
- ce_dice: ce_weight * ce + dice_weight * dice.
``avg_val_loss`` is the mean of per-batch losses weighted by batch size (the soft Dice of a split is
not a sum of per-batch terms); the *metrics* are exact over the split (confusion matrix).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from utility.config.recipe import recipe_of
from utility.data.badfiles import BadFiles
from utility.data.segdata import make_seg_dataset
from utility.methods.base import SubjectsOf, SupervisedMethod, ci_settings, subjects_lookup
from utility.methods.registry import register_pipeline
from utility.metrics.bootstrap import BootstrapSettings
from utility.metrics.resampled import SegmentationSamples
from utility.metrics.segmentation import SegmentationMetrics, per_image_counts
from utility.distributed import all_gather_object, is_dist
from utility.training.rundir import write_table

PALETTE = np.array([[0, 0, 0], [230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200], [245, 130, 48],
                    [145, 30, 180], [70, 240, 240], [240, 50, 230], [210, 245, 60]], dtype=np.float32)


class SegLoss:
    def __init__(self, kind: str = "ce_dice", class_weights: Optional[list[float]] = None, ce_weight: float = 1.0,
                 dice_weight: float = 1.0, smooth: float = 1.0, include_background: bool = False) -> None:
        self.kind = kind
        self.weights = torch.tensor(class_weights, dtype=torch.float32) if class_weights else None
        self.ce_weight = ce_weight if kind in ("ce", "ce_dice") else 0.0
        self.dice_weight = dice_weight if kind in ("dice", "ce_dice") else 0.0
        if kind == "ce":
            self.ce_weight = 1.0
        if kind == "dice":
            self.dice_weight = 1.0
        self.smooth = smooth
        self.include_background = include_background

    def ce(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        w = self.weights.to(logits.device) if self.weights is not None else None
        return F.cross_entropy(logits, y, weight=w)

    def dice(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        k = logits.shape[1]
        probs = logits.softmax(dim=1)
        onehot = F.one_hot(y, k).permute(0, 3, 1, 2).to(probs.dtype)
        inter = (probs * onehot).sum(dim=(0, 2, 3))
        denom = probs.sum(dim=(0, 2, 3)) + onehot.sum(dim=(0, 2, 3))
        per_class = (2 * inter + self.smooth) / (denom + self.smooth).clamp_min(1e-12)
        per_class = per_class if self.include_background or k == 1 else per_class[1:]
        return 1 - per_class.mean()

    def __call__(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        logits = logits.float()  # loss in float32 under autocast
        total = logits.new_zeros(())
        if self.ce_weight:
            total = total + self.ce_weight * self.ce(logits, y)
        if self.dice_weight:
            total = total + self.dice_weight * self.dice(logits, y)
        return total


class SegmentationMethod(SupervisedMethod):
    """Per-pixel classes; metrics from the split's confusion matrix; overlays of a few test images."""

    target_dtype = torch.int64

    def __init__(self, num_classes: int, class_names: list[str], in_channels: int, loss: SegLoss,
                 augment: Optional[nn.Module] = None, regions: Optional[dict[str, list[int]]] = None,
                 paths: Optional[dict[str, list[Path]]] = None, overlays: int = 4,
                 bad: Optional[BadFiles] = None, avg_classes: Optional[list[list[int]]] = None,
                 save_predictions: bool = True, ci: Optional[BootstrapSettings] = None,
                 subjects_of: Optional[SubjectsOf] = None) -> None:
        super().__init__(class_names, in_channels, augment, paths, bad, ci, subjects_of)
        self.num_classes = num_classes
        self.loss = loss
        self.metrics = SegmentationMetrics(num_classes, class_names, regions, avg_classes)
        self.overlays = overlays
        self.save_predictions = save_predictions
        self._kept: list[tuple[int, np.ndarray, np.ndarray, np.ndarray]] = []
        # each image's confusion counts (not during validation): test_ci.csv and predictions_test_*.csv
        self._per_image: list[torch.Tensor] = []
        self._image_index: list[np.ndarray] = []
        self._counts, self._counts_index = np.zeros((0, num_classes ** 2)), np.zeros(0, dtype=np.int64)

    def augment_batch(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        assert self.augment is not None
        return self.augment(x, y)  # the mask moves with the image

    def batch_loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.loss(logits, y)

    def on_eval_begin(self) -> None:
        self._kept = []
        self._per_image, self._image_index = [], []

    def probe_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.zeros(1, self.num_classes, 2, 2), torch.zeros(1, 2, 2, dtype=torch.int64)

    def record(self, logits: torch.Tensor, x: torch.Tensor, y: torch.Tensor, idx: Any):
        n = int(x.shape[0])
        pred = logits.argmax(dim=1)
        self.metrics.update(pred, y)
        if self._eval_split != "val":   # stays on the device until eval_end: no sync per batch
            self._per_image.append(per_image_counts(pred, y, self.num_classes))
            self._image_index.append(np.asarray(idx.cpu() if isinstance(idx, torch.Tensor) else idx, dtype=np.int64))
        if self._eval_split == "test" and len(self._kept) < self.overlays:
            take = min(n, self.overlays - len(self._kept))
            ids = idx.tolist() if isinstance(idx, torch.Tensor) else list(idx)
            for k in range(take):
                self._kept.append((int(ids[k]), x[k].float().cpu().numpy(), y[k].cpu().numpy(),
                                   pred[k].cpu().numpy()))
        return self.loss(logits, y).detach() * n, n

    def eval_end(self, avg_loss: float) -> dict[str, float]:
        kk = self.num_classes ** 2
        counts = torch.cat(self._per_image).cpu().numpy() if self._per_image else np.zeros((0, kk), np.int64)
        index = np.concatenate(self._image_index) if self._image_index else np.zeros(0, dtype=np.int64)
        if is_dist() and self._eval_split != "val":   # every rank evaluated a disjoint shard
            shards = all_gather_object((counts, index))
            counts = np.concatenate([c for c, _ in shards]).reshape(-1, kk)
            index = np.concatenate([i for _, i in shards])
        self._counts, self._counts_index = counts, index
        return super().eval_end(avg_loss)

    def per_sample(self) -> Optional[tuple[SegmentationSamples, np.ndarray]]:
        return SegmentationSamples(self._counts, self.metrics), self._counts_index

    def test_artifacts(self, out_dir: Path, tag: str) -> None:
        if self._kept:
            self._save_overlays(out_dir / "overlays", tag)
        if self.save_predictions and len(self._counts_index):
            self._save_counts(out_dir / f"predictions_{tag}.csv")

    def _save_counts(self, path: Path) -> None:
        """One row per image: its pixel counts per (true class, predicted class) and its subject; the
        split's metrics are those of the summed counts (what a study's subject bootstrap resamples)."""
        k = self.num_classes
        cols = [f"px_true{t}_pred{p}" for t in range(k) for p in range(k)]
        files = self.paths.get(self._eval_split, [])
        subjects = self.subjects(self._counts_index)
        rows = []
        for n, i in enumerate(self._counts_index):
            row: dict[str, Any] = {"file": str(files[i]) if i < len(files) else str(i)}
            row.update(zip(cols, (int(v) for v in self._counts[n])))
            row["subject"] = subjects[n]
            rows.append(row)
        write_table(path, ["file", *cols, "subject"], rows)

    def _save_overlays(self, folder: Path, tag: str) -> None:
        """``<tag>_<k>_<image>.png``: image | truth over image | prediction over image."""
        from PIL import Image

        folder.mkdir(exist_ok=True)
        files = self.paths.get(self._eval_split, [])
        for k, (i, img, truth, pred) in enumerate(self._kept):
            rgb = img[:3] if img.shape[0] >= 3 else np.repeat(img[:1], 3, axis=0)
            lo, hi = float(rgb.min()), float(rgb.max())
            rgb = ((rgb - lo) / (hi - lo) * 255 if hi > lo else np.zeros_like(rgb)).transpose(1, 2, 0)

            def over(labels: np.ndarray) -> np.ndarray:
                color = PALETTE[labels % len(PALETTE)]
                alpha = 0.5 * (labels > 0)[..., None]
                return rgb * (1 - alpha) + color * alpha

            panel = np.concatenate([rgb, over(truth), over(pred)], axis=1).clip(0, 255).astype(np.uint8)
            stem = Path(str(files[i])).name.split(".")[0] if i < len(files) else str(i)
            Image.fromarray(panel).save(folder / f"{tag}_{k}_{stem}.png")


# ----------------------------------------------------------------------------- the pipeline

def seg_loss_for(cfg: Any, task: Any) -> SegLoss:
    """The task's loss, or under ``recipe: predecessor`` weighted cross-entropy only (its Dice term was off)."""
    kind = "ce" if recipe_of(cfg).seg_loss_ce_only else task.loss
    return SegLoss(kind, cfg.w_l, task.ce_weight, task.dice_weight, task.dice_smooth, task.dice_include_background)


@register_pipeline("segmentation")
class SegmentationPipeline:
    segmentation = True

    def dataset(self, cfg: Any, task: Any, split: Any, name: str, prep: Any, num_classes: int,
                cache_dir: Optional[Path]) -> Any:
        return make_seg_dataset(cfg, task, split, name, prep, num_classes, cache_dir)

    def method(self, cfg: Any, task: Any, indexed: Any, augment: Optional[nn.Module],
               bad: BadFiles) -> SegmentationMethod:
        loss = seg_loss_for(cfg, task)
        return SegmentationMethod(indexed.num_classes, indexed.classes, cfg.in_channels or 3, loss,
                                  augment, task.regions, {k: s.paths for k, s in indexed.splits.items()},
                                  task.overlays if cfg.save_predictions else 0, bad=bad,
                                  avg_classes=task.avg_classes, save_predictions=cfg.save_predictions,
                                  ci=ci_settings(cfg), subjects_of=subjects_lookup(indexed))
