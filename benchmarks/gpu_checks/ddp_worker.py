"""One process of the DDP acceptance check (``torchrun --standalone --nproc_per_node N ddp_worker.py out.json``;
a third argument ``cpu`` runs it over gloo on the CPU, without SyncBN: a dry run of this file's logic).

Every rank first computes the single-process references on the whole global batch (before the process
group exists, so nothing in them is distributed), then joins NCCL and trains one step on its shard:
a SyncBN classifier (cross-entropy) and SimCLR with negatives gathered from all ranks. DDP's averaged
gradients must equal the single-process ones. Rank 0 writes the figures as JSON.
"""
from __future__ import annotations

import copy
import json
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F

from utility.methods.ssl_registry import METHODS, resolve_settings
from utility.models import build_encoder, build_network
from utility.training import parallel

PER_RANK = 4


def grads(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-12))


def main(out: str, kind: str = "cuda") -> int:
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    world, rank = int(os.environ["WORLD_SIZE"]), int(os.environ["RANK"])
    device = torch.device("cuda", int(os.environ["LOCAL_RANK"])) if kind == "cuda" else torch.device("cpu")
    if kind == "cuda":
        torch.cuda.set_device(device)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(PER_RANK * world, 3, 32, 32, generator=g)
    y = torch.randint(0, 3, (len(x),), generator=g)
    v1, v2 = torch.rand(2, len(x), 3, 32, 32, generator=g)
    torch.manual_seed(0)
    clf, _ = build_network("resnet18", 3, 3)
    simclr_cls = METHODS["simclr"]
    settings = resolve_settings("simclr", {}, set())
    enc, width = build_encoder("resnet18")
    ssl = simclr_cls.build_model(enc, width, settings)
    method = simclr_cls.create(None, settings, 3, None)  # objective only: no views needed
    if kind != "cuda":  # no SyncBN off CUDA: BatchNorm from running statistics, so ranks match one process
        clf.eval()
        ssl.eval()
    # single-process references on the whole batch
    ref_clf = copy.deepcopy(clf).to(device)
    F.cross_entropy(ref_clf(x.to(device)), y.to(device)).backward()
    ref_ssl = copy.deepcopy(ssl).to(device)
    method.objective(ref_ssl(v1.to(device), v2.to(device))).backward()

    if kind == "cuda":
        dist.init_process_group("nccl", device_id=device)
    else:
        dist.init_process_group("gloo")
    mine = slice(rank * PER_RANK, (rank + 1) * PER_RANK)
    clf_s = parallel.sync_batchnorm(clf, kind == "cuda", kind).to(device)
    n_sync = sum(isinstance(m, torch.nn.SyncBatchNorm) for m in clf_s.modules())
    ddp = parallel.wrap(clf_s, "ddp", device)
    F.cross_entropy(ddp(x[mine].to(device)), y[mine].to(device)).backward()
    ssl_s = parallel.sync_batchnorm(ssl, kind == "cuda", kind).to(device)
    ddp_ssl = parallel.wrap(ssl_s, "ddp", device)
    method.objective(ddp_ssl(v1[mine].to(device), v2[mine].to(device))).backward()
    figs = {"world": world, "backend": dist.get_backend(), "syncbn_layers": n_sync,
            "clf_grad_rel_diff": rel(grads(clf_s), grads(ref_clf)),
            "simclr_grad_rel_diff": rel(grads(ssl_s), grads(ref_ssl))}
    if rank == 0:
        Path(out).write_text(json.dumps(figs))
    dist.barrier()
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:3]))
