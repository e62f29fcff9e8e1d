"""GPU speed features, each selectable by a config key and each a no-op off CUDA (CPU runs give the
numbers they gave before these keys existed):

- ``channels_last`` (auto/on/off): NHWC weights for convolutional networks; with tensor cores (AMP)
  cuDNN runs convolutions faster in that layout. auto = on with CUDA, mixed precision and a Conv2d.
- ``compile`` (false/true): ``torch.compile`` of the model the engine runs forward through (inside the
  DDP wrapper; the plain model, and so every saved file, keeps its keys). Not with DataParallel.
- ``cudnn_benchmark`` (auto/on/off): let cuDNN time its algorithms for the shapes it sees; every image
  is resized to ``shape_desired``, so shapes are fixed. auto = on with CUDA.
- ``fused_optimizer`` (auto/on/off): PyTorch's fused CUDA kernels for Adam, AdamW and SGD
  (utility/training/optim.py); LARS is ours and keeps its per-tensor loop.

Pinned host memory and non-blocking copies are always on with CUDA (data/loader.py, methods/base.py).
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

SPEED_KEYS = ("channels_last", "compile", "cudnn_benchmark", "fused_optimizer")


@dataclass
class SpeedPlan:
    """What a run turns on (all False off CUDA) and the notes that say why something was not."""

    channels_last: bool = False
    compile: bool = False
    cudnn_benchmark: bool = False
    fused_optimizer: bool = False
    notes: list[str] = field(default_factory=list)

    def describe(self) -> str:
        on = [k for k in SPEED_KEYS if getattr(self, k)]
        return ", ".join(on) if on else "none"


def has_conv(model: nn.Module) -> bool:
    return any(isinstance(m, nn.Conv2d) for m in model.modules())


def _switch(value: Any, auto: bool) -> bool:
    if isinstance(value, bool):
        return value
    return auto if value in (None, "auto") else value == "on"


def plan_speed(cfg: Any, device: torch.device, model: nn.Module, parallel_mode: str = "none") -> SpeedPlan:
    """The speed features for this run: config keys (missing ones count as auto/off) on this device."""
    plan = SpeedPlan()
    asked = {k: getattr(cfg, k, False if k == "compile" else "auto") for k in SPEED_KEYS}
    if device.type != "cuda":
        named = [k for k, v in asked.items() if v is True or v == "on"]
        if named:
            plan.notes.append(f"{', '.join(named)}: CUDA only, not used on {device.type}")
        return plan
    amp = getattr(cfg, "amp", "auto") != "off"
    conv = has_conv(model)
    plan.channels_last = _switch(asked["channels_last"], conv and amp) and conv
    plan.cudnn_benchmark = _switch(asked["cudnn_benchmark"], True)
    plan.fused_optimizer = _switch(asked["fused_optimizer"], True)
    plan.compile = bool(asked["compile"])
    if plan.compile and parallel_mode == "dp":
        plan.compile = False
        plan.notes.append("compile: not with DataParallel (use DDP under torchrun); running uncompiled")
    return plan


def apply_to_model(model: nn.Module, plan: SpeedPlan) -> nn.Module:
    """Before wrapping: memory layout of the weights (in place) and the cuDNN flag."""
    if plan.channels_last:
        model.to(memory_format=torch.channels_last)
    if plan.cudnn_benchmark:
        torch.backends.cudnn.benchmark = True
    return model


def compile_module(module: nn.Module, plan: SpeedPlan) -> nn.Module:
    """The compiled forward module, before any DDP wrapper (the plain model is still what gets saved)."""
    if not plan.compile:
        return module
    return torch.compile(module)  # type: ignore[return-value]


def report(plan: SpeedPlan) -> None:
    for note in plan.notes:
        print(f"warning: {note}", file=sys.stderr)
