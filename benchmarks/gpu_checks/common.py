"""What every acceptance check shares: the context (device, GPUs, budget, scratch folder), the check
registry, the result of one check, and small helpers (synthetic batches, timing, the engine on them).

A check is a function ``(ctx) -> figures``; it raises :class:`CheckFailed` (FAIL, with figures) or
:class:`Skip` (SKIPPED, with the reason). Checks marked ``cuda_only`` report SKIPPED off CUDA; those
marked ``exercise`` still run there (their code cannot rot between GPU runs) but never PASS.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from torch.utils.data import DataLoader, Dataset

from utility.data.sampler import EpochSampler
from utility.runs.callbacks import MethodSteps
from utility.training.engine import Amp, Trainer, TrainerOptions


class CheckFailed(Exception):
    def __init__(self, msg: str, figures: Optional[dict[str, Any]] = None) -> None:
        super().__init__(msg)
        self.figures = figures or {}


class Skip(Exception):
    pass


@dataclass
class Ctx:
    device: torch.device
    tiny: bool
    gpus: int
    work: Path
    deadline: float

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)


@dataclass
class Check:
    name: str
    fn: Callable[[Ctx], dict[str, Any]]
    cuda_only: bool = False
    exercise: bool = False  # cuda_only, but run anyway on CPU (reported SKIPPED)
    est_s: float = 10.0  # expected seconds on one GPU (the budget skips what no longer fits)


@dataclass
class Result:
    name: str
    status: str  # PASS / FAIL / SKIPPED
    figures: dict[str, Any] = field(default_factory=dict)
    reason: str = ""
    seconds: float = 0.0

    def line(self) -> str:
        figs = ", ".join(f"{k} {fmt(v)}" for k, v in self.figures.items())
        tail = "; ".join(s for s in (figs, self.reason) if s)
        return f"{self.status:7s} {self.name}" + (f"  ({tail})" if tail else "") + f"  [{self.seconds:.1f}s]"


CHECKS: list[Check] = []


def register(name: str, fn: Callable[[Ctx], dict[str, Any]], cuda_only: bool = False, exercise: bool = False,
             est_s: float = 10.0) -> None:
    CHECKS.append(Check(name, fn, cuda_only, exercise, est_s))


def fmt(v: Any) -> str:
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.4g}"
    return str(v)


def expect(cond: bool, msg: str, figures: Optional[dict[str, Any]] = None) -> None:
    if not cond:
        raise CheckFailed(msg, figures)


# ----------------------------------------------------------------------------- data and engine

class Batches(Dataset):
    """Pre-made samples in the pipeline's dict format (image, target, index, valid, bad)."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"image": self.x[i], "target": self.y[i], "index": i, "valid": True, "bad": ""}


def loader_of(ds: Dataset, batch: int, pin: bool = False, workers: int = 0) -> DataLoader:
    return DataLoader(ds, batch_size=batch, sampler=EpochSampler(len(ds), 0), pin_memory=pin,
                      num_workers=workers, persistent_workers=workers > 0)


def run_engine(model: torch.nn.Module, method: Any, loader: DataLoader, device: torch.device, amp: str,
               out: Path, optimizer: Optional[torch.optim.Optimizer] = None, epochs: int = 1,
               train_module: Optional[torch.nn.Module] = None) -> Trainer:
    """One fit through the real engine (no checkpoint files); the closed trainer."""
    out.mkdir(parents=True, exist_ok=True)
    opt = optimizer or torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    steps = [MethodSteps(method)] if hasattr(method, "after_step") else []  # EMA targets (BYOL, MoCo)
    tr = Trainer(model, method, opt, None, Amp(device, amp), out,
                 TrainerOptions(epochs=epochs, seed=0, verbose=False), train_module, steps)
    tr.save = lambda: None  # type: ignore[method-assign]
    tr.fit(loader, None)
    tr.close()
    return tr


def train_log(out: Path) -> list[dict[str, str]]:
    import csv

    with (out / "train.log").open(newline="") as fh:
        return list(csv.DictReader(fh))


def grads_finite(model: torch.nn.Module) -> bool:
    return all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    """Largest difference relative to the reference's scale (gradients of whole models)."""
    a, b = a.double().flatten(), b.double().flatten()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


def peak_mem_mb(ctx: Ctx) -> float:
    return torch.cuda.max_memory_allocated(ctx.device) / 2**20 if ctx.cuda else float("nan")
