"""NT-Xent with cross-rank negatives: 2 processes x N images == 1 process x 2N images.

Two CPU processes (torch.multiprocessing spawn, gloo, file:// rendezvous in tmp_path) each take
half of the same 2N images, as pre-made fixed views (no random augmentation), through the same
SimCLRModel (a tiny conv encoder + the predecessor's bias-free projection head, no BatchNorm so
per-rank batch statistics play no part) wrapped in DistributedDataParallel. The loss averaged
over the ranks and the encoder/projector gradients after DDP's averaging must equal the loss and
gradients of one process on all 2N images. A plain (non-DDP) copy whose gradients are
all_reduce-averaged by hand must agree too. With ``gather_ranks=False`` (the predecessor's
per-replica loss: negatives only from the local batch) the loss and gradients must differ.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from torch import nn

from conftest import spawn_workers

from utility.methods.ntxent import nt_xent
from utility.methods.simclr import SimCLRModel, projection_head

N_PER_RANK = 4
WORLD = 2
TEMPERATURE = 0.2


def make_model() -> SimCLRModel:
    torch.manual_seed(1234)
    encoder = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, stride=2),
                            nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    return SimCLRModel(encoder, projection_head(16, 32, 8, "predecessor"))


def make_views() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(99)
    n = N_PER_RANK * WORLD
    x = torch.rand(n, 3, 12, 12, generator=g)
    # two fixed "views": the images plus different small perturbations
    return (x + 0.1 * torch.randn(x.shape, generator=g)).clamp(0, 1), \
           (x.flip(-1) + 0.1 * torch.randn(x.shape, generator=g)).clamp(0, 1)


def grads(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: p.grad.detach().clone() for k, p in model.named_parameters()}


def single_process(gather_ranks: bool = True) -> tuple[float, dict[str, torch.Tensor]]:
    model = make_model()
    v1, v2 = make_views()
    z1, z2 = model(v1, v2)
    loss = nt_xent(z1, z2, TEMPERATURE, gather_ranks)
    loss.backward()
    return float(loss.detach()), grads(model)


def _worker(rank: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        v1, v2 = make_views()
        mine = slice(rank * N_PER_RANK, (rank + 1) * N_PER_RANK)
        v1, v2 = v1[mine], v2[mine]
        results = {}
        # DDP: gradients averaged over ranks by DDP itself
        for gather_ranks in (True, False):
            model = make_model()
            ddp = nn.parallel.DistributedDataParallel(model)
            z1, z2 = ddp(v1, v2)
            loss = nt_xent(z1, z2, TEMPERATURE, gather_ranks)
            loss.backward()
            mean_loss = loss.detach().clone()
            dist.all_reduce(mean_loss)
            results[f"ddp_{gather_ranks}"] = (float(mean_loss) / WORLD, grads(model))
        # plain model, gradients all_reduce-averaged by hand
        model = make_model()
        z1, z2 = model(v1, v2)
        loss = nt_xent(z1, z2, TEMPERATURE, True)
        loss.backward()
        for p in model.parameters():
            dist.all_reduce(p.grad)
            p.grad /= WORLD
        mean_loss = loss.detach().clone()
        dist.all_reduce(mean_loss)
        results["manual"] = (float(mean_loss) / WORLD, grads(model))
        torch.save(results, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def ddp_results(tmp_path_factory) -> list[dict]:
    tmp = tmp_path_factory.mktemp("ddp")
    spawn_workers(_worker, tmp / "init", str(tmp), nprocs=WORLD)
    return [torch.load(tmp / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]


def assert_grads_close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-6, msg=lambda m, k=k: f"{k}: {m}")


def test_ddp_loss_and_grads_equal_single_process(ddp_results):
    ref_loss, ref_grads = single_process()
    assert any(g.abs().sum() > 0 for k, g in ref_grads.items() if k.startswith("encoder."))
    for r, res in enumerate(ddp_results):
        loss, g = res["ddp_True"]
        assert loss == pytest.approx(ref_loss, rel=1e-5), f"rank {r}"
        assert_grads_close(g, ref_grads)


def test_manual_allreduce_grads_equal_single_process(ddp_results):
    ref_loss, ref_grads = single_process()
    for res in ddp_results:
        loss, g = res["manual"]
        assert loss == pytest.approx(ref_loss, rel=1e-5)
        assert_grads_close(g, ref_grads)


def test_per_replica_loss_uses_only_local_negatives(ddp_results):
    """gather_ranks=False: each rank's loss has 2n-2 local negatives instead of 2N-2, so the loss
    (and the gradient) differ from the global one; its value is the mean of per-half losses."""
    ref_loss, ref_grads = single_process()
    model = make_model()
    v1, v2 = make_views()
    with torch.no_grad():
        z1, z2 = model(v1, v2)
    halves = [float(nt_xent(z1[s], z2[s], TEMPERATURE)) for s in
              (slice(0, N_PER_RANK), slice(N_PER_RANK, 2 * N_PER_RANK))]
    for res in ddp_results:
        loss, g = res["ddp_False"]
        assert loss == pytest.approx(sum(halves) / WORLD, rel=1e-5)
        # fewer negatives -> smaller loss, clearly different from the global one
        assert loss < ref_loss - 1e-3
        assert any(not torch.allclose(g[k], ref_grads[k], rtol=1e-3, atol=1e-6) for k in g)
