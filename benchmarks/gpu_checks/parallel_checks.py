"""Several GPUs: DataParallel over every visible GPU in this process, and DDP over NCCL with one
process per GPU (torchrun; one GPU is a valid world size) including SyncBN and SimCLR's gathered
negatives. Gradients must equal a single-process run's (TF32 off, so float32 differences only)."""
from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from .common import Ctx, expect, register, rel_diff
from utility.models import build_network
from utility.training import parallel

GRAD_RTOL = 1e-3  # largest gradient difference relative to the largest gradient (float32 reductions)
WORKER = Path(__file__).resolve().parent / "ddp_worker.py"


def _grads(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])


def dataparallel_check(ctx: Ctx) -> dict[str, Any]:
    tf32 = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        torch.manual_seed(0)
        model, _ = build_network("resnet18", 3, 3)
        model.eval()  # BatchNorm from running statistics: DP's per-replica batch statistics differ by design
        ref = copy.deepcopy(model).to(ctx.device)
        g = torch.Generator().manual_seed(0)
        x = torch.rand(8 * max(ctx.gpus, 1), 3, 32, 32, generator=g).to(ctx.device)
        y = torch.randint(0, 3, (len(x),), generator=g).to(ctx.device)
        model.to(ctx.device)
        dp = parallel.wrap(model, "dp", ctx.device)
        F.cross_entropy(dp(x), y).backward()
        F.cross_entropy(ref(x), y).backward()
        diff = rel_diff(_grads(model), _grads(ref))
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = tf32
    figs = {"gpus": len(dp.device_ids), "grad_rel_diff": diff}
    expect(diff <= GRAD_RTOL, f"DataParallel gradients differ by more than {GRAD_RTOL}", figs)
    return figs


def ddp_check(ctx: Ctx) -> dict[str, Any]:
    """On CUDA: NCCL, one process per GPU. Off CUDA (the smoke mode) a dry run of the same worker over gloo
    with 2 processes and no SyncBN, so the worker cannot rot; it is reported SKIPPED there."""
    out = ctx.work / "ddp.json"
    procs = max(ctx.gpus, 1) if ctx.cuda else 2
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={procs}",
           str(WORKER), str(out), "cuda" if ctx.cuda else "cpu"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(WORKER.parents[2]), os.environ.get("PYTHONPATH")) if p)}
    if not ctx.cuda:
        env["OMP_NUM_THREADS"] = "1"
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env)
    if proc.returncode != 0 or not out.exists():
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        raise RuntimeError(f"torchrun exited {proc.returncode}: {tail[0][:200]}")
    figs = json.loads(out.read_text())
    expect(figs["world"] == procs, "not one process per GPU", figs)
    expect(not ctx.cuda or figs["backend"] == "nccl", "not NCCL", figs)
    expect(not ctx.cuda or figs["syncbn_layers"] > 0, "SyncBN conversion left no SyncBatchNorm layer", figs)
    expect(figs["clf_grad_rel_diff"] <= GRAD_RTOL, "DDP + SyncBN gradients differ from one process", figs)
    expect(figs["simclr_grad_rel_diff"] <= GRAD_RTOL, "gathered-negative SimCLR gradients differ", figs)
    return figs


register("parallel_dataparallel", dataparallel_check, cuda_only=True, est_s=10)
register("parallel_ddp_nccl_syncbn_gather", ddp_check, cuda_only=True, exercise=True, est_s=60)
