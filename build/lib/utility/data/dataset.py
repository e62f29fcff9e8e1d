"""Dataset: index -> load -> conform channels -> resize -> normalise -> (cache) -> sample dict.

Random augmentation is not done here: it runs batched on the training device (utility/data/augment.py),
so what this class returns is deterministic and can be cached.

A sample is ``{"image": float32 [C,H,W], "target": ..., "index": int, "valid": bool, "bad": str}``.
``valid`` is False for an unreadable file (a zero image stands in so batch shapes hold) and, with
``test_nan_inf``, for an image holding NaN/Inf; the step drops invalid samples from loss and metrics.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch
from torch.utils.data import Dataset

from utility.data.cache import SharedStore
from utility.data.index import Split
from utility.data.io import UnreadableImage, read_image
from utility.data.preprocess import conform_channels, normalize, resize, value_range_of
from utility.errors import UserError


@dataclass(frozen=True)
class Preprocess:
    """The deterministic part of the pipeline (its fields key the cache)."""

    channels: int
    shape: tuple[int, int]
    normalizer: str
    window: tuple[float, float] | None = None

    def __call__(self, arr: np.ndarray) -> torch.Tensor:
        """The preprocessed image; a file whose content cannot be preprocessed (a channel count that
        cannot be conformed, an image too small to resize) is UnreadableImage, skipped like a broken file."""
        try:
            vr = value_range_of(arr)
            x = torch.from_numpy(np.ascontiguousarray(arr))
            x = conform_channels(x, self.channels).contiguous()
            x = resize(x, self.shape)
            return normalize(x, self.normalizer, self.window, vr)
        except (ValueError, RuntimeError, TypeError) as exc:
            raise UnreadableImage(f"cannot preprocess: {exc}") from None


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A 32-bit seed that differs for every (seed, epoch, sample)."""
    return int(np.random.SeedSequence([seed % 2**32, epoch, index]).generate_state(1)[0])


class ImageDataset(Dataset):
    # whole batches may be read straight from a filled store (utility/data/loader.py); a subclass whose
    # items hold more than the cached image (e.g. a mask) turns this off
    batches_from_cache: bool = True

    def __init__(self, split: Split, prep: Preprocess, multilabel: bool, num_classes: int,
                 cache: SharedStore | None = None, debug: bool = False, test_nan_inf: bool = True) -> None:
        self.split = split
        self.prep = prep
        self.multilabel = multilabel
        self.num_classes = num_classes
        self.cache = cache
        self.debug = debug
        self.test_nan_inf = test_nan_inf
        self.transform: Optional[Callable] = None  # random per-sample augmentation (tf_device: cpu)
        self.seed, self.epoch = 0, 0  # set by the loader: each sample's augmentation seed
        self._targets: Optional[torch.Tensor] = None

    def __len__(self) -> int:
        return len(self.split)

    def _target(self, i: int) -> torch.Tensor:
        t = self.split.targets[i]
        if self.multilabel:
            return torch.from_numpy(np.asarray(t, dtype=np.float32))
        return torch.tensor(int(t), dtype=torch.int64)

    def _all_targets(self) -> torch.Tensor:
        """Every target as one tensor (a copy of the compact column, made once)."""
        t = np.asarray(self.split.targets)
        return torch.from_numpy(t.astype(np.float32 if self.multilabel else np.int64))

    def load(self, i: int) -> tuple[torch.Tensor, str]:
        """Preprocessed image i and '' or the reason it could not be read."""
        path: Path = self.split.paths[i]
        try:
            arr = read_image(path)
            if self.test_nan_inf and not np.isfinite(arr).all():
                return torch.zeros(self.prep.channels, *self.prep.shape), "nan_inf: image holds NaN or Inf"
            return self.prep(arr), ""
        except (UnreadableImage, OSError) as exc:
            if self.debug:
                raise UserError(f"unreadable image {path}: {exc}") from None
            return torch.zeros(self.prep.channels, *self.prep.shape), f"unreadable: {exc}"

    def seed_transform(self, i: int) -> None:
        """Seed the per-sample augmentation from (run seed, epoch, sample): the same draw whatever
        the worker count, the cache state, or a resume in the middle of the epoch."""
        reseed = getattr(self.transform, "reseed", None)
        if reseed is not None:
            reseed(sample_seed(self.seed, self.epoch, i))

    def cache_ready(self) -> bool:
        """True when every item is decided in the cache and no per-sample transform runs, so
        batches can be read straight from the store (see utility/data/loader.py)."""
        return self.batches_from_cache and self.cache is not None and self.transform is None \
            and self.cache.complete

    def batch_from_cache(self, indices: list[int]) -> dict[str, Any]:
        """A collated batch read from the filled store with one indexed copy."""
        assert self.cache is not None
        idx = np.asarray(indices)
        for i in self.cache.damaged(idx):  # first use in this process: read damaged items again
            x, bad = self.load(i)
            self.cache.put(i, x) if not bad else self.cache.mark_bad(i)
        ok = torch.from_numpy(self.cache.filled[idx] == 1)
        images = torch.from_numpy(self.cache.data[idx])
        if self._targets is None:
            self._targets = self._all_targets()
        return {"image": images, "target": self._targets[torch.from_numpy(idx)], "index": torch.from_numpy(idx),
                "valid": ok, "bad": ["" if v else "unreadable or NaN/Inf (found in an earlier epoch)" for v in ok.tolist()]}

    def __getitem__(self, i: int) -> dict[str, Any]:
        bad = ""
        x = self.cache.get(i) if self.cache is not None else None
        if x is None:
            x, bad = self.load(i)
            if self.cache is not None:
                self.cache.put(i, x) if not bad else self.cache.mark_bad(i)
        if self.transform is not None and not bad:
            self.seed_transform(i)
            x = self.transform(x)
        return {"image": x, "target": self._target(i), "index": i, "valid": not bad, "bad": bad}
