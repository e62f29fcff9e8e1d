"""parallel: none | dp | ddp | auto — how a run uses several GPUs (or CPU processes under torchrun).

auto: ddp when launched by torchrun with more than one process, dp when several GPUs are visible,
else none. DDP: one process per GPU (``torchrun --nproc_per_node N``, also ``--nnodes M`` with
``--rdzv_backend c10d``), batch_size stays the global batch (each rank takes batch_size / world).
DataParallel: one process, the global batch split over the visible GPUs.
"""
from __future__ import annotations

import sys

import torch
from torch import nn

from utility.distributed import init_from_env, is_dist, launched_by_torchrun, local_rank
from utility.errors import UserError


def resolve_mode(requested: str, device_name: str) -> str:
    cuda_ok = torch.cuda.is_available() and device_name != "cpu"
    torchrun_multi = launched_by_torchrun() and int(__import__("os").environ["WORLD_SIZE"]) > 1
    if requested == "auto":
        if torchrun_multi:
            return "ddp"
        return "dp" if cuda_ok and torch.cuda.device_count() > 1 else "none"
    if requested == "ddp" and not torchrun_multi:
        raise UserError("parallel: ddp needs several processes: launch with "
                        "torchrun --nproc_per_node N pkgs/.../script.py -c cfg.yaml")
    if requested in ("none", "dp") and torchrun_multi:
        raise UserError(f"parallel: {requested} but launched by torchrun with several processes; "
                        "use parallel: ddp or auto")
    if requested == "dp" and not (cuda_ok and torch.cuda.device_count() > 1):
        print("warning: parallel: dp needs several visible GPUs; running on one device", file=sys.stderr)
        return "none"
    return requested


def setup(requested: str, device_name: str) -> tuple[str, torch.device]:
    """Join the process group if needed and pick this process's device."""
    mode = resolve_mode(requested, device_name)
    if device_name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device '{device_name}' was asked for but CUDA is not available here; "
                        "use device: cpu or auto")
    use_cuda = torch.cuda.is_available() and device_name != "cpu"
    if mode == "ddp":
        init_from_env("cuda" if use_cuda else "cpu")
        return mode, torch.device(f"cuda:{local_rank()}" if use_cuda else "cpu")
    if device_name == "auto":
        return mode, torch.device("cuda" if use_cuda else "cpu")
    return mode, torch.device(device_name)


def sync_batchnorm(model: nn.Module, enabled: bool, device_name: str) -> nn.Module:
    """syncbn: BatchNorm statistics over all DDP processes (torch's SyncBatchNorm, CUDA only).
    A no-op in a single process; on CPU processes a warning, not a crash."""
    if not (enabled and is_dist()):
        return model
    if not torch.cuda.is_available() or device_name == "cpu":
        print("warning: syncbn needs CUDA; on CPU each process keeps its own BatchNorm statistics",
              file=sys.stderr)
        return model
    return nn.SyncBatchNorm.convert_sync_batchnorm(model)


def wrap(model: nn.Module, mode: str, device: torch.device, gpus: int | None = None) -> nn.Module:
    """The module the engine runs forward through (the plain ``model`` is what gets saved).
    ``gpus``: DataParallel over the first N visible GPUs only (the predecessor's SimCLR key)."""
    if mode == "ddp" and is_dist():
        ids = [device.index] if device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=ids)
    if mode == "dp":
        return nn.DataParallel(model, device_ids=list(range(gpus)) if gpus else None)
    return model
