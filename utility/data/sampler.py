"""The order in which a split's samples are visited: seeded per epoch, resumable mid-epoch, sharded over ranks."""
from __future__ import annotations

from typing import Iterator

import torch
from torch.utils.data import Sampler

from utility.distributed import rank, world_size


class EpochSampler(Sampler[int]):
    """Shuffles with a generator seeded by (seed, epoch), so a resumed epoch sees the same order,
    and can start part-way into an epoch (resume from a mid-epoch checkpoint).

    Under torch.distributed each rank takes every world-th index. Training pads the order to a
    multiple of the world size (equal step counts on every rank); evaluation does not pad, so every
    sample is counted exactly once when predictions are gathered.
    """

    def __init__(self, n: int, seed: int, shuffle: bool = True, pad: bool | None = None) -> None:
        self.n, self.seed, self.shuffle = n, seed, shuffle
        self.pad = shuffle if pad is None else pad
        self.rank, self.world = rank(), world_size()
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """``start``: samples of this rank's share already consumed in this epoch."""
        self.epoch, self.start = epoch, start

    def order(self) -> list[int]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 100003 + self.epoch)
            idx = torch.randperm(self.n, generator=g).tolist()
        else:
            idx = list(range(self.n))
        if self.world > 1:
            if self.pad and self.n % self.world:
                idx += idx[: self.world - self.n % self.world]
            idx = idx[self.rank::self.world]
        return idx

    def __iter__(self) -> Iterator[int]:
        return iter(self.order()[self.start:])

    def __len__(self) -> int:
        per = (self.n + self.world - 1) // self.world if self.pad else len(range(self.rank, self.n, self.world))
        return per - self.start
