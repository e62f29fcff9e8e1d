"""A DataLoader that serves a filled cache without worker processes.

Once every item of a split is in the shared store (after epoch 1 with live_cache, or after
pre_cache), loading is a gather from memory-mapped pages. Doing that in DataLoader workers costs
more than the gather itself (each batch is copied into a new shared-memory segment and pickled
back), so whole batches are read here, in the training process, with one indexed copy each.
Until then, and whenever random per-sample CPU augmentation is on, the ordinary worker path runs.
"""
from __future__ import annotations

from typing import Any, Iterator

from torch.utils.data import DataLoader


class CacheAwareLoader:
    """Wraps a DataLoader over a dataset with ``batch_from_cache(indices)``; same len/sampler."""

    def __init__(self, loader: DataLoader) -> None:
        self.loader = loader
        self.dataset = loader.dataset
        self.sampler = loader.sampler
        self.batch_size = loader.batch_size
        self.drop_last = loader.drop_last
        self.pin = loader.pin_memory

    def __len__(self) -> int:
        return len(self.loader)

    def _fast(self) -> bool:
        fn = getattr(self.dataset, "cache_ready", None)
        return bool(fn and fn())

    def __iter__(self) -> Iterator[Any]:
        if not self._fast():
            yield from self.loader
            return
        order = list(iter(self.sampler))
        bs = self.batch_size or 1
        for k in range(0, len(order), bs):
            chunk = order[k:k + bs]
            if self.drop_last and len(chunk) < bs:
                break
            batch = self.dataset.batch_from_cache(chunk)
            if self.pin:
                batch = {key: (v.pin_memory() if hasattr(v, "pin_memory") else v) for key, v in batch.items()}
            yield batch
