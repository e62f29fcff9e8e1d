"""LR range test (Smith 2017; the fastai / torch-lr-finder procedure): train from the config's
starting weights while the learning rate grows exponentially from ``start`` to ``end`` over
``steps`` steps, one batch per step; record the loss, smooth it with a bias-corrected exponential
moving average, stop early once the smoothed loss exceeds ``diverge`` times its minimum. The
suggested learning rate is where the smoothed loss falls fastest against log(lr). Nothing is
written to the config or to a run directory; the model is a throwaway copy.
"""
from __future__ import annotations

import math
from typing import Any, Iterator

import numpy as np
import torch

from utility.errors import UserError


def lr_at(i: int, steps: int, start: float, end: float) -> float:
    return start * (end / start) ** (i / max(1, steps - 1))


def smooth(losses: list[float], beta: float) -> np.ndarray:
    out, avg = [], 0.0
    for i, v in enumerate(losses):
        avg = beta * avg + (1 - beta) * v
        out.append(avg / (1 - beta ** (i + 1)))
    return np.asarray(out)


def suggest(lrs: np.ndarray, smoothed: np.ndarray, skip_start: int = 3, skip_end: int = 2) -> float:
    """The LR of the steepest descent of the smoothed loss against log(lr), edges skipped."""
    if len(lrs) < skip_start + skip_end + 3:
        skip_start, skip_end = 0, 0
    lo, hi = skip_start, len(lrs) - skip_end
    if hi - lo < 3:
        return float("nan")
    grad = np.gradient(smoothed[lo:hi], np.log(lrs[lo:hi]))
    return float(lrs[lo + int(np.argmin(grad))])


def cycle(loader: Any) -> Iterator[Any]:
    epoch = 0
    while True:
        if hasattr(loader, "set_epoch"):
            loader.set_epoch(epoch)
        for batch in loader:
            yield batch
        epoch += 1


def sweep(model: torch.nn.Module, method: Any, optimizer: torch.optim.Optimizer, loader: Any, ctx: Any,
          steps: int, start: float, end: float, beta: float = 0.98, diverge: float = 4.0) -> list[dict]:
    """Rows (step, lr, loss, smoothed) of the sweep."""
    if not 0 < start < end:
        raise UserError(f"--start_lr {start} and --end_lr {end}: need 0 < start < end")
    model.train()
    losses: list[float] = []
    rows = []
    best = math.inf
    batches = cycle(loader)
    for i in range(steps):
        lr = lr_at(i, steps, start, end)
        for g in optimizer.param_groups:
            g["lr"] = lr
        loss, n = method.train_loss(model, next(batches), ctx)
        if loss is None or n == 0:
            continue
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
        s = float(smooth(losses, beta)[-1])
        rows.append({"step": i, "lr": lr, "loss": losses[-1], "smoothed": s})
        if not math.isfinite(s) or s > diverge * best:
            break
        best = min(best, s)
    return rows
