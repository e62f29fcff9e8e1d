"""The one loader builder, and a DataLoader that serves a filled cache without worker processes.

Once every item of a split is in the shared store (after epoch 1 with live_cache, or after
pre_cache), loading is a gather from memory-mapped pages. Doing that in DataLoader workers costs
more than the gather itself (each batch is copied into a new shared-memory segment and pickled
back), so whole batches are read here, in the training process, with one indexed copy each.
Until then, and whenever random per-sample CPU augmentation is on, the ordinary worker path runs.
"""
from __future__ import annotations

import signal
from typing import Any, Iterator, Optional

import torch
from torch.utils.data import DataLoader, Dataset

from utility.data.sampler import EpochSampler
from utility.distributed import per_rank_batch
from utility.errors import STOP_SIGNALS


def worker_ignores_stop(_worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: the queue signals the whole process group; a worker killed by it
    would make the training process fail before it can save."""
    for s in STOP_SIGNALS:
        signal.signal(s, signal.SIG_IGN)


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

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Position the order (``start`` samples of this rank's share already done) and fix every
        random draw of the epoch's loading to (seed, epoch): the loader's own generator (worker
        seeds) instead of the global one, and per-sample augmentation seeds in the dataset. So the
        global RNG, which device-side augmentation draws from, is never touched by loading, and a
        run gives the same numbers with an empty or a filled cache, any opmode and num_workers."""
        if isinstance(self.sampler, EpochSampler):
            self.sampler.set_epoch(epoch, start)
            seed = self.sampler.seed
        else:
            seed = 0
        if self.loader.generator is not None:
            self.loader.generator.manual_seed(seed * 1_000_003 + epoch)
        if hasattr(self.dataset, "epoch"):
            self.dataset.epoch, self.dataset.seed = epoch, seed

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


def build_loader(ds: Dataset, batch_size: int, seed: int, train: bool, workers: int,
                 prefetch_factor: Optional[int] = None, pin_memory: bool = False) -> CacheAwareLoader:
    """Every split of every run is loaded through here.

    ``batch_size`` is the global batch (each DDP rank takes its share); the order is an
    :class:`EpochSampler` (shuffled per epoch for training). A last training batch of a single
    sample is dropped: BatchNorm and NT-Xent cannot use it; every other sample is used.
    """
    sampler = EpochSampler(len(ds), seed, shuffle=train)  # type: ignore[arg-type]
    batch = per_rank_batch(batch_size)
    extra: dict[str, Any] = {}
    if workers > 0:
        extra = {"num_workers": workers, "prefetch_factor": prefetch_factor or 2,
                 "worker_init_fn": worker_ignores_stop}
    drop_last = train and len(sampler) % batch == 1 and len(sampler) > 1
    loader = CacheAwareLoader(DataLoader(ds, batch_size=batch, sampler=sampler, drop_last=drop_last,
                                         pin_memory=pin_memory, generator=torch.Generator(), **extra))
    loader.set_epoch(0)
    return loader


def fill_cache(ds: Dataset, workers: int, batch_size: int) -> None:
    """pre_cache: fill the store with parallel workers before training starts."""
    # its own generator: filling the cache must not draw from the global RNG (augmentation does)
    for _ in DataLoader(ds, batch_size=batch_size, num_workers=workers, shuffle=False, generator=torch.Generator(),
                        worker_init_fn=worker_ignores_stop if workers else None):
        pass
