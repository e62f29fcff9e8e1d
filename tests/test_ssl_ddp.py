"""Every SSL method under DDP: 2 processes x N images == 1 process x 2N images, in one spawn.

Two CPU processes (gloo, file:// rendezvous) each take half of the same global batch of fixed views
(no augmentation) through the method's network (a tiny conv encoder and heads without BatchNorm, so
per-rank batch statistics play no part; MAE: a tiny ViT on 8-px crops, its masks drawn per global batch) wrapped in DistributedDataParallel, and take two SGD steps
with the method's objective and after-step hook (EMA targets). On every rank the loss of both steps
(averaged over the ranks, as train.log writes it), the first step's gradients after DDP's averaging,
the final online and target (EMA) weights, MoCo's queue and DINO's centre must equal one process on the whole batch;
so the queue and the targets are identical on all ranks.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from torch import nn

from conftest import spawn_workers

from utility.methods.byol import BYOLNet
from utility.methods.dino import DINOHead, DINONet
from utility.methods.heads import mlp
from utility.methods.mocov2 import MoCoNet
from utility.methods.ssl_base import JointEmbedding
from utility.methods.ssl_registry import METHODS, resolve_settings
from utility.models import build_encoder

WORLD, N_PER_RANK, STEPS = 2, 4, 2
SETTINGS = {"simclr": {"temperature": 0.3}, "barlow_twins": {"lambd": 0.05}, "vicreg": {},
            "byol": {"tau_base": 0.8, "proj_dim": 6}, "mocov2": {"queue_size": 12, "proj_dim": 6, "momentum": 0.7},
            "dino": {"out_dim": 6, "hidden": 8, "bottleneck": 5, "tau_base": 0.8, "center_momentum": 0.5,
                     "teacher_temp": 0.1, "local_crops": 0},
            "mae": {"mask_ratio": 0.5, "decoder_dim": 8, "decoder_depth": 1, "decoder_heads": 2}}


def make(name: str):
    torch.manual_seed(7)
    enc = nn.Sequential(nn.Conv2d(3, 4, 3, stride=2), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    head = mlp([4, 8, 6], bn=False)
    settings = resolve_settings(name, SETTINGS[name], set())
    if name == "byol":
        net: nn.Module = BYOLNet(enc, head, mlp([6, 8, 6], bn=False))
    elif name == "dino":
        net = DINONet(enc, DINOHead(4, settings))
    elif name == "mae":  # masks the patches of a ViT (8 px crops of the views: 4 patches)
        enc, width = build_encoder("vit:img=8,patch=4,dim=8,depth=1,heads=2", 3)
        net = METHODS[name].build_model(enc, width, settings)
    elif name == "mocov2":
        net = MoCoNet(enc, head)
    else:
        net = JointEmbedding(enc, head)
    cls = METHODS[name]
    if name == "simclr":
        method = cls.create(None, resolve_settings(name, SETTINGS[name], set()), 3, None)
    else:
        method = cls(None, settings)
    if name == "mocov2":
        method.queue = method.queue.double()
    return net.double(), method  # float64: the comparison tests the maths, not float32 summation order


def views(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(100 + step)
    x = torch.rand(WORLD * N_PER_RANK, 3, 9, 9, generator=g, dtype=torch.float64)
    return x, (x.flip(-1) + 0.1 * torch.randn(x.shape, generator=g)).clamp(0, 1)


def train(name: str, rank: int | None) -> dict:
    """Two steps; rank None = one process on the whole batch."""
    net, method = make(name)
    module = nn.parallel.DistributedDataParallel(net) if rank is not None else net
    opt = torch.optim.SGD([p for p in net.parameters() if p.requires_grad], lr=0.5)
    out: dict = {"loss": []}
    for step in range(1, STEPS + 1):
        v1, v2 = views(step)
        if rank is not None:
            mine = slice(rank * N_PER_RANK, (rank + 1) * N_PER_RANK)
            v1, v2 = v1[mine], v2[mine]
        if name == "mae":  # one view; noise for the global batch, this rank's rows
            x = v1[..., :8, :8]
            loss = method.objective(module(x, method.noise(x.shape[0], 4, x.device)))
        else:
            loss = method.objective(module(v1, v2))
        opt.zero_grad()
        loss.backward()
        mean = loss.detach().clone()
        if rank is not None:
            dist.all_reduce(mean)
            mean /= WORLD
        out["loss"].append(float(mean))
        if step == 1:
            out["grads"] = {k: p.grad.clone() for k, p in net.named_parameters() if p.requires_grad}
        opt.step()
        if hasattr(method, "after_step"):
            method.after_step(net, step, STEPS)
    out["weights"] = {k: v.detach().clone() for k, v in net.state_dict().items()}
    if name == "mocov2":
        out["queue"] = method.queue.clone()
    if name == "dino":  # the centre from the teacher outputs of every rank
        out["queue"] = method.center.clone()
    return out


def _worker(rank: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        torch.save({name: train(name, rank) for name in METHODS}, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def ddp_results(tmp_path_factory) -> list[dict]:
    tmp = tmp_path_factory.mktemp("ssl_ddp")
    spawn_workers(_worker, tmp / "init", str(tmp), nprocs=WORLD)
    return [torch.load(tmp / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]


def close(a: dict, b: dict, what: str, tol: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], **tol, msg=lambda m, k=k: f"{what} {k}: {m}")


@pytest.mark.parametrize("name", list(METHODS))
def test_ddp_equals_one_process_on_the_whole_batch(ddp_results, name):
    ref = train(name, None)
    # NT-Xent computes in float32 whatever its input (ntxent.py); the others stay in float64
    tol = {"rtol": 1e-4, "atol": 1e-6} if name == "simclr" else {"rtol": 1e-9, "atol": 1e-12}
    assert any(g.abs().sum() > 0 for k, g in ref["grads"].items() if k.startswith("encoder."))
    for r, res in enumerate(ddp_results):
        got = res[name]
        assert got["loss"] == pytest.approx(ref["loss"], rel=tol["rtol"] / 10), f"rank {r}"
        close(got["grads"], ref["grads"], f"rank {r} gradient", tol)
        close(got["weights"], ref["weights"], f"rank {r} weights", tol)  # online and EMA target
        if name in ("mocov2", "dino"):
            torch.testing.assert_close(got["queue"], ref["queue"], **tol)
    if name == "dino":
        assert ref["queue"].abs().sum() > 0
    if name in ("byol", "mocov2", "dino"):  # the target moved (the EMA ran) and differs from the online net
        net0, _ = make(name)
        k = next(k for k in ref["weights"] if k.startswith("target_projector.") and k.endswith("0.weight"))
        assert not torch.allclose(ref["weights"][k], net0.state_dict()[k])
        assert not torch.allclose(ref["weights"][k], ref["weights"][k.replace("target_", "")])
