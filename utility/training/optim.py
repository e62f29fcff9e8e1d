"""Optimizers: parameter grouping (no weight decay for norm layers and biases), LARS, and a factory.

``param_groups`` splits a model's trainable parameters into a weight-decayed group and an excluded group
(biases, every normalisation-layer parameter and any other 1-D parameter).  The excluded group carries
``weight_decay=0`` and ``lars_exclude=True``; ``LARS`` honours that flag and applies neither weight decay
nor the trust ratio to such groups (the predecessor's LARS ignored its own exclusion list).

``build_optimizer`` maps the config key ``optimizer`` (Adam, AdamW, SGD, LARS; case-insensitive) to an
optimizer built on these groups.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch

from utility.errors import SettingError
from torch import nn

__all__ = ["NORM_LAYER_TYPES", "param_groups", "LARS", "build_optimizer", "OPTIMIZER_NAMES"]

# _NormBase covers BatchNorm1d/2d/3d, SyncBatchNorm, the lazy variants and InstanceNorm1d/2d/3d.
_norm_types: list[type] = [nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm, nn.LocalResponseNorm]
if hasattr(nn, "RMSNorm"):
    _norm_types.append(nn.RMSNorm)
NORM_LAYER_TYPES: tuple[type, ...] = tuple(_norm_types)


def _is_excluded(module: nn.Module, param_name: str, param: torch.Tensor) -> bool:
    """True for biases, parameters of normalisation layers and any parameter with at most one dimension."""
    return isinstance(module, NORM_LAYER_TYPES) or param.ndim <= 1 or param_name == "bias"


def param_groups(model: nn.Module, weight_decay: float, exclude_bn_bias: bool = True,
                 lr_scales: dict[str, float] | None = None) -> list[dict]:
    """Split ``model``'s trainable parameters into optimizer parameter groups.

    Only parameters with ``requires_grad`` are returned; shared parameters appear once.  With
    ``exclude_bn_bias`` the result is (at most) two groups, in this order::

        {"params": [...], "weight_decay": weight_decay, "lars_exclude": False}   # conv / linear weights ...
        {"params": [...], "weight_decay": 0.0,          "lars_exclude": True}    # biases, norm layers, 1-D

    Without it, a single group with ``weight_decay`` and ``lars_exclude=False`` holds every parameter.
    Empty groups are omitted (so a fully frozen model gives ``[]``). ``lr_scales`` (parameter name ->
    lr multiplier: layer-wise lr decay) splits each of these by multiplier, largest first, each group
    with ``lr_scale``; :func:`build_optimizer` sets its ``lr`` to lr x lr_scale.
    """
    buckets: dict[tuple[float, bool], list[nn.Parameter]] = {}
    seen: set[int] = set()
    for mname, module in model.named_modules():
        for name, param in module.named_parameters(recurse=False):
            if id(param) in seen:
                continue
            seen.add(id(param))
            if not param.requires_grad:
                continue
            full = f"{mname}.{name}" if mname else name
            scale = 1.0 if lr_scales is None else float(lr_scales.get(full, 1.0))
            excluded = bool(exclude_bn_bias and _is_excluded(module, name, param))
            buckets.setdefault((scale, excluded), []).append(param)
    groups = []
    for (scale, excluded), params in sorted(buckets.items(), key=lambda kv: (-kv[0][0], kv[0][1])):
        group = {"params": params, "weight_decay": 0.0 if excluded else float(weight_decay), "lars_exclude": excluded}
        if lr_scales is not None:
            group["lr_scale"] = scale
        groups.append(group)
    return groups


class LARS(torch.optim.Optimizer):
    """Layer-wise Adaptive Rate Scaling (You, Gitman & Ginsburg, 2017) on top of momentum SGD.

    For each parameter tensor ``w`` with gradient ``g`` in a group with ``lars_exclude=False``::

        trust = eta * ||w|| / (||g|| + wd * ||w||)      (1 if ||w|| == 0 or ||g|| == 0)
        d     = trust * (g + wd * w)                    # weight decay enters before momentum
        buf   = momentum * buf + d                      # buf = d on the first step
        w     = w - lr * buf

    Groups with ``lars_exclude=True`` get neither weight decay (even if their ``weight_decay`` is set) nor the
    trust ratio: ``d = g``, i.e. exactly ``torch.optim.SGD(momentum=momentum)``.  The learning rate multiplies
    the momentum buffer at update time (as ``torch.optim.SGD`` does), so an LR schedule acts immediately.
    Parameters whose ``grad`` is ``None`` are skipped.  The momentum buffers live in ``self.state`` and are
    saved / restored by ``state_dict`` / ``load_state_dict``.
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        lr: float,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        eta: float = 0.001,
        eps: float = 0.0,
    ) -> None:
        if lr < 0.0:
            raise SettingError(f"Invalid learning rate: {lr}")
        if momentum < 0.0:
            raise SettingError(f"Invalid momentum: {momentum}")
        if weight_decay < 0.0:
            raise SettingError(f"Invalid weight_decay: {weight_decay}")
        if eta <= 0.0:
            raise SettingError(f"Invalid eta (trust coefficient): {eta}")
        defaults = dict(lr=lr, momentum=momentum, weight_decay=weight_decay, eta=eta, eps=eps,
                        lars_exclude=False)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()

        for group in self.param_groups:
            lr = group["lr"]
            momentum = group["momentum"]
            wd = group["weight_decay"]
            eta = group["eta"]
            eps = group["eps"]
            exclude = bool(group.get("lars_exclude", False))
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad
                if grad.is_sparse:
                    raise RuntimeError("LARS does not support sparse gradients")
                if exclude:
                    d = grad.clone()
                else:
                    w_norm = torch.linalg.vector_norm(p)
                    g_norm = torch.linalg.vector_norm(grad)
                    trust = torch.where(
                        (w_norm > 0) & (g_norm > 0),
                        eta * w_norm / (g_norm + wd * w_norm + eps),
                        torch.ones_like(w_norm),
                    )
                    d = grad.add(p, alpha=wd) if wd != 0 else grad.clone()
                    d.mul_(trust)
                if momentum != 0:
                    state = self.state[p]
                    buf = state.get("momentum_buffer")
                    if buf is None:
                        buf = d
                        state["momentum_buffer"] = buf
                    else:
                        buf.mul_(momentum).add_(d)
                    d = buf
                p.add_(d, alpha=-lr)
        return loss


OPTIMIZER_NAMES = ("Adam", "AdamW", "SGD", "LARS")


def build_optimizer(
    model: nn.Module,
    name: str,
    lr: float,
    weight_decay: float,
    momentum: float = 0.9,
    lars_eta: float = 0.001,
    exclude_bn_bias: bool = True,
    lr_scales: dict[str, float] | None = None,
    fused: bool = False,
) -> torch.optim.Optimizer:
    """Build the optimizer named by the config key ``optimizer`` (case-insensitive).

    All optimizers use :func:`param_groups`, so with ``exclude_bn_bias`` norm-layer parameters and biases
    get no weight decay (for Adam that means no L2 term, for AdamW no decoupled decay, for LARS neither decay
    nor trust ratio).  ``momentum`` is used by SGD (non-Nesterov) and LARS; ``lars_eta`` by LARS only.
    ``fused``: PyTorch's fused kernels for Adam/AdamW/SGD when every parameter is on CUDA (the config
    key ``fused_optimizer``, utility/training/speed.py); ignored for LARS and off CUDA. ``lr_scales``:
    per-parameter lr multipliers (layer-wise decay), each group's lr = lr x its ``lr_scale``.
    """
    key = str(name).strip().lower() if name is not None else ""
    valid = {n.lower(): n for n in OPTIMIZER_NAMES}
    if key not in valid:
        raise SettingError(f"Unknown optimizer {name!r}; valid choices: {', '.join(OPTIMIZER_NAMES)}")
    groups = param_groups(model, weight_decay, exclude_bn_bias=exclude_bn_bias, lr_scales=lr_scales)
    if not groups:
        raise SettingError("The model has no trainable parameters (all have requires_grad=False)")
    for value, what in ((lr, "learning rate"), (weight_decay, "weight_decay"), (momentum, "momentum")):
        if not value >= 0.0:  # torch's optimizers would say so too, as a ValueError of any kind
            raise SettingError(f"Invalid {what}: {value}")
    for g in groups:
        if "lr_scale" in g:
            g["lr"] = lr * g["lr_scale"]
    on_cuda = all(p.is_cuda for g in groups for p in g["params"])
    extra: dict[str, Any] = {"fused": True} if fused and on_cuda else {}
    if key == "adam":
        return torch.optim.Adam(groups, lr=lr, weight_decay=weight_decay, **extra)
    if key == "adamw":
        return torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay, **extra)
    if key == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=False, **extra)
    return LARS(groups, lr=lr, momentum=momentum, weight_decay=weight_decay, eta=lars_eta)
