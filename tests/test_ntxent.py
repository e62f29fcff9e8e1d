"""NT-Xent (utility/methods/ntxent.py) against a reference written directly from the SimCLR paper.

Chen et al. 2020, eq. (1): for a positive pair (i, j) among the 2N augmented views,

    l(i, j) = -log( exp(sim(z_i, z_j) / T) / sum_{k=1..2N, k != i} exp(sim(z_i, z_k) / T) )

with sim the cosine similarity; the loss is the mean of l over all 2N anchors (both orders of
every pair). The reference below is a plain Python loop over anchors, independent of the
vectorised implementation (no masking tricks, no cross_entropy).
"""
from __future__ import annotations

import math

import pytest
import torch

from utility.methods.ntxent import nt_xent


def cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a * b).sum() / (a.norm() * b.norm())


def reference_nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """The paper's formula, anchor by anchor, in float64."""
    z = torch.cat([z1, z2]).double()
    two_n = z.shape[0]
    n = two_n // 2
    terms = []
    for i in range(two_n):
        j = i + n if i < n else i - n  # the other view of the same image
        denom = sum(torch.exp(cosine(z[i], z[k]) / temperature) for k in range(two_n) if k != i)
        terms.append(-torch.log(torch.exp(cosine(z[i], z[j]) / temperature) / denom))
    return torch.stack(terms).mean()


@pytest.mark.parametrize("temperature", [0.05, 0.1, 0.5, 1.0, 2.0])
@pytest.mark.parametrize("n,d", [(2, 3), (5, 8), (8, 16)])
def test_value_matches_paper_formula(n, d, temperature):
    g = torch.Generator().manual_seed(n * 100 + d)
    z1, z2 = torch.randn(n, d, generator=g), torch.randn(n, d, generator=g)
    ours = nt_xent(z1, z2, temperature)
    ref = reference_nt_xent(z1, z2, temperature)
    assert ours.dim() == 0
    assert ours.dtype == torch.float32
    torch.testing.assert_close(ours.double(), ref, rtol=1e-5, atol=1e-5)


def test_view_order_irrelevant_pairing_relevant():
    """Swapping which view is z1 and which is z2 must not change the loss (the mean runs over both
    orders of every pair), while pairing views with the wrong image must change it."""
    g = torch.Generator().manual_seed(1)
    z1, z2 = torch.randn(6, 8, generator=g), torch.randn(6, 8, generator=g)
    torch.testing.assert_close(nt_xent(z1, z2, 0.5), nt_xent(z2, z1, 0.5))
    shuffled = z2[torch.tensor([1, 2, 3, 4, 5, 0])]
    assert not torch.allclose(nt_xent(z1, z2, 0.5), nt_xent(z1, shuffled, 0.5))
    torch.testing.assert_close(nt_xent(z1, shuffled, 0.5).double(), reference_nt_xent(z1, shuffled, 0.5),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("temperature", [0.1, 0.5])
def test_gradient_matches_reference(temperature):
    g = torch.Generator().manual_seed(7)
    base1, base2 = torch.randn(6, 10, generator=g), torch.randn(6, 10, generator=g)

    z1 = base1.clone().requires_grad_(True)
    z2 = base2.clone().requires_grad_(True)
    nt_xent(z1, z2, temperature).backward()

    r1 = base1.double().clone().requires_grad_(True)
    r2 = base2.double().clone().requires_grad_(True)
    reference_nt_xent(r1, r2, temperature).backward()

    assert z1.grad is not None and z1.grad.abs().sum() > 0
    torch.testing.assert_close(z1.grad.double(), r1.grad, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(z2.grad.double(), r2.grad, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("temperature", [0.05, 0.5])
def test_low_precision_inputs_give_float32_value(dtype, temperature):
    g = torch.Generator().manual_seed(3)
    z1, z2 = torch.randn(16, 32, generator=g), torch.randn(16, 32, generator=g)
    # the float32 value of the same (rounded) numbers: low precision only in the inputs
    h1, h2 = z1.to(dtype), z2.to(dtype)
    ours = nt_xent(h1, h2, temperature)
    assert ours.dtype == torch.float32
    assert torch.isfinite(ours)
    torch.testing.assert_close(ours, nt_xent(h1.float(), h2.float(), temperature), rtol=1e-5, atol=1e-5)
    # and close to the full-precision loss of the unrounded inputs
    tol = 0.02 if dtype == torch.float16 else 0.1
    assert abs(float(ours) - float(nt_xent(z1, z2, temperature))) < tol * max(1.0, float(nt_xent(z1, z2, temperature)))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_large_norm_small_temperature_is_finite(dtype):
    """Large-norm projections (|z| ~ 1e4 for fp16: squared norms overflow fp16) and T=0.05
    (logits up to 20) must give a finite loss and finite gradients equal to the float32 ones."""
    g = torch.Generator().manual_seed(5)
    scale = 3e3 if dtype == torch.float16 else 1e8  # bf16: beyond the fp16 range
    z1 = (torch.randn(8, 64, generator=g) * scale).to(dtype)
    z2 = (z1.float() + torch.randn(8, 64, generator=g) * scale * 0.3).to(dtype)
    assert torch.isinf((z1.float() ** 2).sum(1).half()).any()  # a naive fp16 norm would overflow
    a = z1.clone().requires_grad_(True)
    b = z2.clone().requires_grad_(True)
    loss = nt_xent(a, b, 0.05)
    assert torch.isfinite(loss)
    loss.backward()
    assert torch.isfinite(a.grad.float()).all() and torch.isfinite(b.grad.float()).all()
    ref = reference_nt_xent(z1.double(), z2.double(), 0.05)
    torch.testing.assert_close(loss.double(), ref, rtol=1e-4, atol=1e-4)


def test_identical_views_orthogonal_others_reach_minimum():
    """Both views equal, all images mutually orthogonal: every anchor's positive has cosine 1 and
    its 2N-2 negatives cosine 0, so l = log(1 + (2N-2) exp(-1/T)) exactly, which tends to 0 as T
    shrinks and is far below the loss of random or mismatched projections."""
    n, d = 6, 16
    z = torch.eye(d)[:n] * 3.0  # orthogonal, non-unit norm (cosine ignores the norm)
    for t in (0.05, 0.1, 0.5):
        expected = math.log(1 + (2 * n - 2) * math.exp(-1 / t))
        loss = float(nt_xent(z, z.clone(), t))
        assert loss == pytest.approx(expected, rel=1e-4, abs=1e-6)
    assert float(nt_xent(z, z.clone(), 0.05)) < 1e-6
    # random projections and views matched to the wrong image are much worse
    g = torch.Generator().manual_seed(0)
    rnd = float(nt_xent(torch.randn(n, d, generator=g), torch.randn(n, d, generator=g), 0.1))
    wrong = float(nt_xent(z, z.roll(1, dims=0), 0.1))
    assert rnd > 1.0 and wrong > 5.0
    # any perturbation of the optimum raises the loss
    perturbed = z + 0.3 * torch.randn(n, d, generator=g)
    assert float(nt_xent(z, perturbed, 0.1)) > float(nt_xent(z, z.clone(), 0.1))


def test_no_self_similarity_in_denominator():
    """With N=1 the only candidate besides the anchor is its positive: l = -log(1) = 0 for any
    inputs (the anchor itself must be excluded from the denominator, else it would be log 2-ish)."""
    g = torch.Generator().manual_seed(2)
    z1, z2 = torch.randn(1, 4, generator=g), torch.randn(1, 4, generator=g)
    assert float(nt_xent(z1, z2, 0.5)) == pytest.approx(0.0, abs=1e-6)
