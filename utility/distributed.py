"""Rank helpers and process-group set-up. Rank 0 alone writes logs and checkpoints; every rank can
resume. ``torchrun`` sets RANK/WORLD_SIZE/LOCAL_RANK; :func:`init_from_env` joins that group
(NCCL on CUDA, gloo on CPU)."""
from __future__ import annotations

import os
from typing import Any

import torch
import torch.distributed as dist

from utility.errors import UserError


def is_dist() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_dist() else 0


def world_size() -> int:
    return dist.get_world_size() if is_dist() else 1


def per_rank_batch(batch_size: int) -> int:
    """The images each process loads: ``batch_size`` is the global batch."""
    w = world_size()
    if batch_size % w:
        raise UserError(f"batch_size {batch_size} is the global batch and must be divisible by the "
                        f"{w} processes")
    return batch_size // w


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", 0))


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if is_dist():
        dist.barrier()


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) >= 1


def init_from_env(device_type: str) -> bool:
    """Join torchrun's process group (once). Returns True when running distributed."""
    if is_dist():
        return True
    if not launched_by_torchrun() or int(os.environ["WORLD_SIZE"]) < 2:
        return False
    backend = "nccl" if device_type == "cuda" else "gloo"
    if device_type == "cuda":
        torch.cuda.set_device(local_rank())
    dist.init_process_group(backend=backend)
    return True


def shutdown() -> None:
    if is_dist():
        dist.destroy_process_group()


def broadcast_object(obj: Any) -> Any:
    """Rank 0's value on every rank (decisions such as 'resume' must agree)."""
    if not is_dist():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_gather_object(obj: Any) -> list[Any]:
    if not is_dist():
        return [obj]
    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    if is_dist():
        dist.all_reduce(t)
    return t


def main_decides(fn, *args, **kwargs) -> Any:
    """Run ``fn`` on rank 0 only and hand its result (or its exception) to every rank, so that
    checks on shared files are made once and all ranks agree (no rank hangs on another's error)."""
    if not is_dist():
        return fn(*args, **kwargs)
    result: Any = None
    error: BaseException | None = None
    if is_main():
        try:
            result = fn(*args, **kwargs)
        except BaseException as exc:  # re-raised on every rank below
            error = exc
    result, error = broadcast_object((result, error))
    if error is not None:
        raise error
    return result
