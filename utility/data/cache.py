"""A cache of preprocessed images in shared memory, filled by DataLoader workers.

One float tensor [N, C, H, W] plus a 'filled' flag per item, both in shared memory created before
the workers fork, so every worker reads and writes the same pages (no pickling through a server
process, unlike the predecessor's Manager dict). Each index is written by exactly one worker per
epoch, and the flag is set after the data, so a reader never sees a half-written item.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import torch

from utility.errors import UserError


class SharedStore:
    def __init__(self, n: int, channels: int, shape: tuple[int, int], what: str = "dataset") -> None:
        need = n * channels * shape[0] * shape[1] * 4
        shm = Path("/dev/shm")
        if shm.is_dir():
            free = shutil.disk_usage(shm).free
            if need > free * 0.9:
                raise UserError(
                    f"the cache of {what} needs {need / 2**30:.1f} GiB but /dev/shm has "
                    f"{free / 2**30:.1f} GiB free; use opmode: disk or a smaller shape_desired")
        self.data = torch.zeros((n, channels, *shape), dtype=torch.float32).share_memory_()
        self.filled = torch.zeros(n, dtype=torch.uint8).share_memory_()

    def __len__(self) -> int:
        return int(self.filled.sum())

    def get(self, i: int) -> torch.Tensor | None:
        return self.data[i] if self.filled[i] else None

    def put(self, i: int, x: torch.Tensor) -> None:
        self.data[i].copy_(x)
        self.filled[i] = 1

    @property
    def complete(self) -> bool:
        return bool(self.filled.all())
