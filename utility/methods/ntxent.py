"""NT-Xent (normalised temperature-scaled cross entropy, Chen et al. 2020) with negatives from all
ranks. Computed in float32 from L2-normalised projections, so it is stable under fp16/bf16."""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F

from utility.distributed import is_dist, rank, world_size


class _GatherWithGrad(torch.autograd.Function):
    """all_gather whose backward sums every rank's gradient for this rank's slice (the gradient of
    the sum of all ranks' losses), so DDP's averaging yields the single-process gradient."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        out = [torch.empty_like(x) for _ in range(world_size())]
        dist.all_gather(out, x.contiguous())
        return torch.cat(out)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous()
        dist.all_reduce(grad)
        n = grad.shape[0] // world_size()
        return grad[rank() * n:(rank() + 1) * n]


def gather(x: torch.Tensor) -> torch.Tensor:
    return _GatherWithGrad.apply(x) if is_dist() else x


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float, gather_ranks: bool = True) -> torch.Tensor:
    """Mean NT-Xent over this rank's 2n anchors; negatives are all other 2N-2 views (N = global batch).

    z1[i] and z2[i] are projections of two views of image i (same batch size on every rank).
    """
    n = z1.shape[0]
    a = F.normalize(torch.cat([z1, z2]).float(), dim=1)            # this rank's anchors [2n, d]
    if gather_ranks and is_dist():
        g1, g2 = gather(F.normalize(z1.float(), dim=1)), gather(F.normalize(z2.float(), dim=1))
        r, big_n = rank(), g1.shape[0]
    else:
        g1, g2 = a[:n], a[n:]
        r, big_n = 0, n
    cands = torch.cat([g1, g2])                                      # [2N, d]
    logits = a @ cands.t() / temperature
    own = torch.arange(n, device=a.device) + r * n                   # global index of local sample i
    self_idx = torch.cat([own, own + big_n])
    pos_idx = torch.cat([own + big_n, own])
    logits[torch.arange(2 * n, device=a.device), self_idx] = float("-inf")
    return F.cross_entropy(logits, pos_idx)
