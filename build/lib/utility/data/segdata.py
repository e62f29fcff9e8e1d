"""Segmentation data: how image and mask are read (where a mask is: utility/data/mask_readers.py), and
the dataset that returns ``{"image": float32 [C,H,W], "target": int64 [H,W], ...}``.

A task YAML says it all (``type: segmentation``), e.g. BraTS (2-D npy slices, 3 stacked modalities)::

    layout:
      reader: seg_masks
      image_channels: ["_t1.npy", "_t1ce.npy", "_flair.npy"]   # siblings stacked; only *_t1.npy indexed
      masks: [["_t1\\.npy$", "_seg.npy"]]                      # regex -> replacement on the image path
      mask_kind: label_map
      label_values: {4: 3}                                     # raw value -> class

LiTS (one binary PNG per class; where they overlap the higher class wins)::

    layout:
      reader: seg_masks
      mask_kind: binary
      masks:
        - ["volumes/volume-(\\d+)_(\\d+)\\.png$", "segmentations/segmentation-\\1_livermask_\\2.png"]
        - ["volumes/volume-(\\d+)_(\\d+)\\.png$", "segmentations/segmentation-\\1_lesionmask_\\2.png"]

Generic: two folders with matching names (``masks: [["/images/([^/]+)$", "/masks/\\1"]]``) or a CSV
of image,mask pairs (``reader: seg_csv``, ``labels_file``, ``path_column``, ``label_column``; several
binary masks in one cell joined by ``label_separator``). Masks are label maps (PNG/NPY/any format
:func:`read_image` reads; first channel) or binary (any value > 0 marks the class).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from utility.data.cache import SharedStore, store_key
from utility.data.compact import MaskTargets
from utility.data.dataset import ImageDataset, Preprocess
from utility.data.index import Split
from utility.data.io import UnreadableImage, read_image
from utility.data.preprocess import resize
from utility.errors import UserError
from utility.config.tasks import LayoutSpec, TaskSpec


def read_seg_image(path: Path, layout: LayoutSpec) -> np.ndarray:
    """The image [C,H,W]; with ``image_channels`` the sibling files stacked in that order."""
    suffixes = layout.image_channels
    if not suffixes:
        return read_image(path)
    base = str(path)[: -len(suffixes[0])]
    parts = [read_image(Path(base + s)) for s in suffixes]
    shapes = {p.shape[-2:] for p in parts}
    if len(shapes) != 1:
        raise UnreadableImage(f"channel files of {path.name} differ in size: {sorted(shapes)}")
    return np.concatenate(parts, axis=0)


def read_label_mask(mask_paths: tuple[str, ...], layout: LayoutSpec, num_classes: int) -> np.ndarray:
    """int64 [H,W] class map. label_map: values remapped by ``label_values``; binary: mask i is class
    i+1, later (higher) classes overwrite earlier ones where masks overlap. Out-of-range -> UnreadableImage."""
    if layout.mask_kind == "binary":
        out: Optional[np.ndarray] = None
        for c, p in enumerate(mask_paths, start=1):
            m = read_image(Path(p))[0]
            if out is None:
                out = np.zeros(m.shape, dtype=np.int64)
            elif m.shape != out.shape:
                raise UnreadableImage(f"binary masks of one image differ in size ({Path(p).name})")
            out[m > 0] = c
        assert out is not None
        labels = out
    else:
        raw = read_image(Path(mask_paths[0]))[0]
        if not np.all(np.isfinite(raw)) or np.any(raw != np.round(raw)):
            raise UnreadableImage(f"mask {Path(mask_paths[0]).name} holds non-integer values")
        labels = raw.astype(np.int64)
        if layout.label_values:
            remapped = labels.copy()
            for src, dst in layout.label_values.items():
                remapped[labels == src] = dst
            labels = remapped
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        bad = sorted(set(np.unique(labels).tolist()) - set(range(num_classes)))
        raise UnreadableImage(f"mask labels {bad[:5]} outside the task's classes 0..{num_classes - 1} "
                              "(layout.label_values remaps raw values)")
    return labels


class SegDataset(ImageDataset):
    """Image + mask per sample; both cached (two stores) when a cache is given."""

    batches_from_cache = False

    def __init__(self, split: Split, prep: Preprocess, layout: LayoutSpec, num_classes: int,
                 cache: SharedStore | None = None, mask_cache: SharedStore | None = None,
                 debug: bool = False, test_nan_inf: bool = True) -> None:
        super().__init__(split, prep, False, num_classes, cache, debug, test_nan_inf)
        self.layout = layout
        self.mask_cache = mask_cache

    def _blank(self) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.zeros(self.prep.channels, *self.prep.shape), torch.zeros(self.prep.shape, dtype=torch.int64)

    def load_pair(self, i: int) -> tuple[torch.Tensor, torch.Tensor, str]:
        path: Path = self.split.paths[i]
        masks = self.split.targets[i]
        try:
            arr = read_seg_image(path, self.layout)
        except (UnreadableImage, OSError) as exc:
            return self._fail(f"unreadable: {exc}", path)
        try:
            mask = read_label_mask(masks, self.layout, self.num_classes)
        except (UnreadableImage, OSError) as exc:
            return self._fail(f"unreadable mask: {exc}", Path(masks[0]))
        if self.test_nan_inf and not np.isfinite(arr).all():
            return self._fail("nan_inf: image holds NaN or Inf", path)
        try:
            image = self.prep(arr)
        except UnreadableImage as exc:
            return self._fail(f"unreadable: {exc}", path)
        m = resize(torch.from_numpy(mask)[None].float(), self.prep.shape, mode="nearest")[0].long()
        return image, m, ""

    def _fail(self, reason: str, path: Path) -> tuple[torch.Tensor, torch.Tensor, str]:
        if self.debug:
            raise UserError(f"{path}: {reason}")
        return (*self._blank(), reason)

    def __getitem__(self, i: int) -> dict[str, Any]:
        bad = ""
        x = self.cache.get(i) if self.cache is not None else None
        m = self.mask_cache.get(i) if (self.mask_cache is not None and x is not None) else None
        if x is None or m is None:
            x, mask, bad = self.load_pair(i)
            if self.cache is not None and self.mask_cache is not None and not bad:
                self.mask_cache.put(i, mask[None].float())
                self.cache.put(i, x)
        else:
            mask = m[0].long()
        if self.transform is not None and not bad:
            self.seed_transform(i)
            x, mask = self.transform(x, mask)
        return {"image": x, "target": mask, "index": i, "valid": not bad, "bad": bad}


def make_seg_dataset(cfg: Any, task: TaskSpec, split: Split, name: str, prep: Preprocess,
                     num_classes: int, cache_dir: Path | None) -> SegDataset:
    """The dataset of one split; with opmode *_cache an image store and a mask store (keyed by the
    mask files too, so an edited mask is never served stale)."""
    cache = mask_cache = None
    if cfg.opmode != "disk":
        layout = task.layout.model_dump_json()
        what = f"{task.name} split '{name}'"
        cache = SharedStore(split.paths, prep.channels, prep.shape, f"{prep!r}|{task.layout.image_channels}",
                            cache_dir, what)
        mask_files = split.targets.flat if isinstance(split.targets, MaskTargets) else [Path(p) for t in split.targets for p in t]
        mask_key = f"mask|{prep.shape}|{num_classes}|{layout}|{store_key(mask_files, '')}"
        mask_cache = SharedStore(split.paths, 1, prep.shape, mask_key, cache_dir, f"{what} (masks)")
    return SegDataset(split, prep, task.layout, num_classes, cache, mask_cache,
                      debug=cfg.debug, test_nan_inf=cfg.test_nan_inf)
