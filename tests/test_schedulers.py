"""Tests for utility.training.schedulers: every schedule against its formula, warmup, restarts, resume, errors."""

import io
import math
from fractions import Fraction

import pytest
import torch
from torch import nn

from utility.training.schedulers import build_scheduler, lr_at

LR0, LR1 = 0.1, 0.004


def make_optimizer():
    a = nn.Parameter(torch.zeros(2))
    b = nn.Parameter(torch.zeros(2))
    return torch.optim.SGD([{"params": [a]}, {"params": [b], "lr": LR1}], lr=LR0, momentum=0.9)


def run(name, n, **kw):
    """lr of both groups used for optimizer steps 0..n-1 (scheduler stepped after each)."""
    opt = make_optimizer()
    sched = build_scheduler(opt, name, **kw)
    out = []
    for _ in range(n):
        out.append(tuple(g["lr"] for g in opt.param_groups))
        opt.step()
        sched.step()
    return out


def check(lrs, factors):
    assert len(lrs) == len(factors)
    for k, ((l0, l1), f) in enumerate(zip(lrs, factors)):
        assert l0 == pytest.approx(LR0 * f, rel=1e-12, abs=1e-15), k
        assert l1 == pytest.approx(LR1 * f, rel=1e-12, abs=1e-15), k


def cos_half(phase):
    return (1 + math.cos(math.pi * phase)) / 2


def restart_phase(t: Fraction, period: Fraction) -> float:
    return float((t % period) / period)


# ---------------------------------------------------------------- decay

def test_decay_epoch():
    g = 0.95
    lrs = run("decay", 6, interval="epoch", steps_per_epoch=50, epochs=6, decay_per_epoch=g)
    check(lrs, [g ** k for k in range(6)])


def test_decay_step_after_one_epoch_equals_g():
    g, spe = 0.8, 7
    lrs = run("decay", 3 * spe + 1, interval="step", steps_per_epoch=spe, epochs=3, decay_per_epoch=g)
    check(lrs, [g ** (k / spe) for k in range(3 * spe + 1)])
    assert lrs[spe][0] == pytest.approx(LR0 * g, rel=1e-12)
    assert lrs[2 * spe][0] == pytest.approx(LR0 * g * g, rel=1e-12)
    # the per-step factor is constant: g^(1/spe)
    ratios = [lrs[k + 1][0] / lrs[k][0] for k in range(3 * spe)]
    assert ratios == pytest.approx([g ** (1 / spe)] * len(ratios), rel=1e-12)


# ---------------------------------------------------------------- cosine with warm restarts

def test_cosine_epoch_restarts_at_multiples_of_T0():
    T0 = 3
    lrs = run("cosine", 10, interval="epoch", steps_per_epoch=20, epochs=10, annealing_time=T0)
    check(lrs, [cos_half((k % T0) / T0) for k in range(10)])
    for k in (0, 3, 6, 9):
        assert lrs[k][0] == pytest.approx(LR0, rel=1e-12)
    assert lrs[2][0] < lrs[1][0] < lrs[0][0]


def test_cosine_epoch_default_period_is_10():
    lrs = run("cosine", 21, interval="epoch", steps_per_epoch=5, epochs=21)
    check(lrs, [cos_half((k % 10) / 10) for k in range(21)])
    assert lrs[5][0] == pytest.approx(LR0 / 2)
    assert lrs[10][0] == pytest.approx(LR0) and lrs[20][0] == pytest.approx(LR0)


def test_cosine_step_default_period_is_fifth_of_epoch():
    spe = 10                                             # T0 = 0.2 epoch = 2 steps
    lrs = run("cosine", 3 * spe, interval="step", steps_per_epoch=spe, epochs=3)
    t = [Fraction(k, spe) for k in range(3 * spe)]
    check(lrs, [cos_half(restart_phase(tk, Fraction(1, 5))) for tk in t])
    assert [round(l / LR0, 12) for l, _ in lrs[:6]] == [1.0, 0.5, 1.0, 0.5, 1.0, 0.5]


def test_cosine_step_fractional_period():
    spe, T0 = 8, Fraction(3, 4)                         # 6 steps per cycle
    lrs = run("cosine", 3 * spe, interval="step", steps_per_epoch=spe, epochs=3, annealing_time=0.75)
    check(lrs, [cos_half(restart_phase(Fraction(k, spe), T0)) for k in range(3 * spe)])
    for k in (0, 6, 12, 18):
        assert lrs[k][0] == pytest.approx(LR0, rel=1e-12)


# ---------------------------------------------------------------- decaying cosine

def decaying_cosine(t: Fraction, T0: Fraction, g: float, eta: float = 1e-6) -> float:
    return (eta + (1 - eta) * cos_half(restart_phase(t, T0))) * g ** float(t)


def test_decaying_cosine_epoch():
    g, T0 = 0.9, 4
    lrs = run("decaying_cosine", 12, interval="epoch", steps_per_epoch=3, epochs=12,
              decay_per_epoch=g, annealing_time=T0)
    check(lrs, [decaying_cosine(Fraction(k), Fraction(T0), g) for k in range(12)])
    assert lrs[4][0] == pytest.approx(LR0 * g ** 4, rel=1e-12)        # restart, scaled by the decay
    assert lrs[2][0] == pytest.approx(LR0 * (1e-6 + (1 - 1e-6) * 0.5) * g ** 2, rel=1e-12)


def test_decaying_cosine_step():
    g, spe = 0.5, 5                                     # T0 default 0.2 epoch = 1 step -> only g^t
    lrs = run("decaying_cosine", 2 * spe, interval="step", steps_per_epoch=spe, epochs=2, decay_per_epoch=g)
    check(lrs, [decaying_cosine(Fraction(k, spe), Fraction(1, 5), g) for k in range(2 * spe)])
    spe = 6
    lrs = run("decaying_cosine", 3 * spe, interval="step", steps_per_epoch=spe, epochs=3,
              decay_per_epoch=g, annealing_time=0.5)
    check(lrs, [decaying_cosine(Fraction(k, spe), Fraction(1, 2), g) for k in range(3 * spe)])


# ---------------------------------------------------------------- cosine_total, constant

@pytest.mark.parametrize("interval,spe", [("epoch", 9), ("step", 4)])
def test_cosine_total(interval, spe):
    epochs = 5
    total = epochs * (spe if interval == "step" else 1)
    lrs = run("cosine_total", total + 1, interval=interval, steps_per_epoch=spe, epochs=epochs)
    check(lrs, [cos_half(k / total) for k in range(total + 1)])
    assert all(a[0] > b[0] for a, b in zip(lrs, lrs[1:]))        # no restarts
    assert lrs[-1][0] == pytest.approx(0.0, abs=1e-15)


@pytest.mark.parametrize("name", [None, "None", "constant"])
@pytest.mark.parametrize("interval", ["epoch", "step"])
def test_constant(name, interval):
    lrs = run(name, 12, interval=interval, steps_per_epoch=4, epochs=3, decay_per_epoch=0.5)
    check(lrs, [1.0] * 12)


# ---------------------------------------------------------------- warmup

def test_warmup_step_then_decay():
    spe, g = 4, 0.7
    lrs = run("decay", 4 * spe, interval="step", steps_per_epoch=spe, epochs=4, decay_per_epoch=g,
              warmup_epochs=1.5)                        # 6 warmup steps
    W = 6
    expected = [(k + 1) / W for k in range(W)] + [g ** ((k - W) / spe) for k in range(W, 4 * spe)]
    check(lrs, expected)
    assert lrs[0][0] == pytest.approx(LR0 / W) and lrs[W - 1][0] == pytest.approx(LR0)
    assert lrs[W + spe][0] == pytest.approx(LR0 * g)   # t counted from the end of warmup


def test_warmup_epoch_then_cosine_restarts_from_end_of_warmup():
    T0, W = 3, 2
    lrs = run("cosine", 11, interval="epoch", steps_per_epoch=10, epochs=11, annealing_time=T0,
              warmup_epochs=W)
    check(lrs, [0.5, 1.0] + [cos_half(((k - W) % T0) / T0) for k in range(W, 11)])
    for k in (2, 5, 8):
        assert lrs[k][0] == pytest.approx(LR0)


def test_warmup_cosine_total_reaches_zero_at_end_of_training():
    spe, epochs = 5, 4
    lrs = run("cosine_total", epochs * spe + 1, interval="step", steps_per_epoch=spe, epochs=epochs,
              warmup_epochs=1)
    rest = epochs * spe - spe
    check(lrs, [(k + 1) / spe for k in range(spe)] + [cos_half(j / rest) for j in range(rest + 1)])


def test_zero_warmup_is_no_warmup():
    a = run("decay", 10, interval="step", steps_per_epoch=3, epochs=4, decay_per_epoch=0.9, warmup_epochs=0)
    b = run("decay", 10, interval="step", steps_per_epoch=3, epochs=4, decay_per_epoch=0.9)
    assert a == b and a[0][0] == LR0


# ---------------------------------------------------------------- lr_at

@pytest.mark.parametrize("name", ["decay", "cosine", "decaying_cosine", "cosine_total", None])
@pytest.mark.parametrize("interval", ["epoch", "step"])
def test_lr_at_matches_scheduler(name, interval):
    kw = dict(interval=interval, steps_per_epoch=6, epochs=5, decay_per_epoch=0.8, warmup_epochs=1)
    upe = 6 if interval == "step" else 1
    n = 5 * upe
    lrs = run(name, n, **kw)
    for k in range(n):
        assert LR0 * lr_at(name, k / upe, **kw) == pytest.approx(lrs[k][0], rel=1e-12, abs=1e-15)


# ---------------------------------------------------------------- resume

CASES = [
    ("decay", dict(decay_per_epoch=0.9)),
    ("cosine", dict(annealing_time=None)),
    ("decaying_cosine", dict(decay_per_epoch=0.9, annealing_time=None)),
    ("cosine_total", dict()),
    (None, dict()),
]


def _save(obj):
    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=False)


@pytest.mark.parametrize("name,extra", CASES)
@pytest.mark.parametrize("interval", ["epoch", "step"])
@pytest.mark.parametrize("load_optimizer", ["before_scheduler", "after_scheduler", "never"])
def test_resume_continues_schedule(name, extra, interval, load_optimizer):
    kw = dict(interval=interval, steps_per_epoch=5, epochs=6, warmup_epochs=1, **extra)
    if interval == "epoch" and extra.get("annealing_time", 0) is None:
        kw["annealing_time"] = 2
    n, k = (30, 13) if interval == "step" else (6, 3)
    full = run(name, n, **kw)

    opt = make_optimizer()
    sched = build_scheduler(opt, name, **kw)
    seq = []
    for _ in range(k):
        seq.append(tuple(g["lr"] for g in opt.param_groups))
        opt.step()
        sched.step()
    ckpt = _save({"opt": opt.state_dict(), "sched": sched.state_dict()})
    del opt, sched

    opt2 = make_optimizer()
    if load_optimizer == "before_scheduler":
        opt2.load_state_dict(ckpt["opt"])
    sched2 = build_scheduler(opt2, name, **kw)
    if load_optimizer == "after_scheduler":
        opt2.load_state_dict(ckpt["opt"])
    sched2.load_state_dict(ckpt["sched"])
    assert sched2.last_epoch == k
    for _ in range(n - k):
        seq.append(tuple(g["lr"] for g in opt2.param_groups))
        opt2.step()
        sched2.step()
    assert seq == full
    assert sched2.get_last_lr() == [g["lr"] for g in opt2.param_groups]


def test_resume_does_not_restart_schedule():
    kw = dict(interval="step", steps_per_epoch=10, epochs=3)
    opt = make_optimizer()
    sched = build_scheduler(opt, "cosine_total", **kw)
    for _ in range(15):
        opt.step()
        sched.step()
    state = _save(sched.state_dict())
    opt2 = make_optimizer()
    sched2 = build_scheduler(opt2, "cosine_total", **kw)
    assert opt2.param_groups[0]["lr"] == pytest.approx(LR0)
    sched2.load_state_dict(state)
    assert opt2.param_groups[0]["lr"] == pytest.approx(LR0 * cos_half(15 / 30)) == pytest.approx(LR0 / 2)


# ---------------------------------------------------------------- errors

def test_unknown_scheduler_name():
    with pytest.raises(ValueError, match="cosinus") as exc:
        build_scheduler(make_optimizer(), "cosinus", interval="epoch", steps_per_epoch=3, epochs=2)
    assert "decaying_cosine" in str(exc.value) and "cosine_total" in str(exc.value)
    with pytest.raises(ValueError, match="exponential"):
        lr_at("exponential", 1.0, interval="epoch", steps_per_epoch=3, epochs=2)


def test_unknown_interval():
    with pytest.raises(ValueError, match="batch") as exc:
        build_scheduler(make_optimizer(), "decay", interval="batch", steps_per_epoch=3, epochs=2)
    assert "epoch" in str(exc.value) and "step" in str(exc.value)


def test_invalid_numbers():
    with pytest.raises(ValueError, match="annealing_time"):
        build_scheduler(make_optimizer(), "cosine", interval="epoch", steps_per_epoch=3, epochs=2,
                        annealing_time=0)
    with pytest.raises(ValueError, match="steps_per_epoch"):
        build_scheduler(make_optimizer(), "decay", interval="step", steps_per_epoch=0, epochs=2)
