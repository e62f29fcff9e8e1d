"""What a pretraining config means beyond its schema: the learning-rate rule in force (batch and method
checks: utility/runs/ssl_config.py).

The learning-rate rule (``lr_rule``, printed once at the start of every run):

* ``predecessor``: what the predecessor did. With LARS it ignored ``lr``: lr0 = 0.075*sqrt(batch_size)
  and a cosine to 0 over ``epochs``, stepped once per epoch (its CosineAnnealingLR, eta_min 0), times the
  ``stepwise_scheduler`` (stepped per batch) if one is set. With Adam/AdamW: ``lr`` and the
  ``stepwise_scheduler`` alone (constant for "None"). This tool's LR keys (``scheduler``, ``base_lr``,
  ``lr_scaling``, ``warmup_epochs``, ``scheduling_interval``) have no place in it and are refused.
* ``config``: ``lr`` (or ``base_lr`` x ``lr_scaling``, or 0.075*sqrt(batch) for LARS without either) and
  ``scheduler``, or ``stepwise_scheduler`` instead of it.
* ``auto`` (default): ``predecessor`` under ``recipe: predecessor`` or when the config (file and overrides) carries a key only the
  predecessor's configs have (:data:`PREDECESSOR_ONLY_KEYS`) or the predecessor's ``loss_device: gpu|cpu``,
  else ``config``. The resolved rule is what config.yaml records.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from utility.config.loader import parse_argv, read_run_config
from utility.config.recipe import epoch_steps, recipe_of
from utility.config.schemas import PRETRAIN_DEPRECATED, PretrainConfig
from utility.errors import UserError, user_errors
from utility.training.schedulers import ResumableLambdaLR, build_epoch_times_step_scheduler, build_scheduler

PROG = "pkgs/SimCLR/main.py"
# the predecessor's stepwise_scheduler names -> ours
STEPWISE = {"None": None, "CosineAnnealing": "cosine_total", "Exponential": "decay",
            "DecayingCosine": "decaying_cosine"}
# keys only the predecessor's SimCLR configs carry (this tool's own configs have no use for them);
# dataparallel and gpus are not among them: they are documented keys of this tool too
PREDECESSOR_ONLY_KEYS = ("stepwise_scheduler", "nodes", "nr", "model_save_frequency", *PRETRAIN_DEPRECATED)
PREDECESSOR_LOSS_DEVICES = ("gpu", "cpu")
# this tool's LR keys, which the predecessor's rule has no place for
OWN_LR_KEYS = ("scheduler", "base_lr", "lr_scaling", "warmup_epochs", "scheduling_interval")
def learning_rate(cfg: PretrainConfig) -> float:
    if cfg.lr is not None:
        return cfg.lr
    scale = {"linear": cfg.batch_size / 256, "sqrt": math.sqrt(cfg.batch_size), "none": 1.0}[cfg.lr_scaling]
    if cfg.base_lr is not None:
        return cfg.base_lr * scale
    return 0.075 * math.sqrt(cfg.batch_size) if cfg.optimizer == "LARS" else 1e-3


def raw_config(argv: list[str], prog: str = PROG) -> dict[str, Any]:
    """The keys as the user wrote them (file, then overrides), deprecated ones included."""
    path, overrides = parse_argv(argv, prog)
    raw = read_run_config(path) if path is not None else {}
    raw.update(overrides)
    return raw


def predecessor_markers(raw: dict[str, Any]) -> list[str]:
    marks = [k for k in PREDECESSOR_ONLY_KEYS if k in raw]
    ld = raw.get("loss_device")
    if isinstance(ld, str) and ld in PREDECESSOR_LOSS_DEVICES:
        marks.append(f"loss_device: {ld}")
    return marks


def resolve_lr_rule(cfg: PretrainConfig, raw: dict[str, Any]) -> tuple[str, str]:
    """(rule, why): ``lr_rule`` itself, or for ``auto`` what marks the config as the predecessor's."""
    if cfg.lr_rule != "auto":
        rule, why = cfg.lr_rule, f"lr_rule: {cfg.lr_rule}"
    elif cfg.recipe == "predecessor":
        rule, why = "predecessor", "recipe: predecessor"
    else:
        marks = predecessor_markers(raw)
        rule, why = ("predecessor", "predecessor config: " + ", ".join(marks)) if marks else ("config", "")
    own = [k for k in OWN_LR_KEYS if k in raw]
    if rule == "predecessor" and own:
        keys = ", ".join(own)
        if cfg.lr_rule == "auto":
            raise UserError(f"{keys}: this tool's LR key(s) in a predecessor config ({why.split(': ', 1)[1]}), "
                            f"whose LR rule ignores them; set lr_rule: config to use them, or remove them")
        raise UserError(f"lr_rule: predecessor ignores {keys}; remove them or set lr_rule: config")
    return rule, why


@dataclass(frozen=True)
class LrPlan:
    """Initial lr and schedule of a run, and the line that says so."""

    lr0: float
    per_epoch: str | None      # schedule stepped once per epoch (times per_step), predecessor LARS only
    per_step: str | None       # schedule name (stepped per `interval`)
    interval: str
    warmup_epochs: float
    line: str


def lr_plan(cfg: PretrainConfig, rule: str, why: str) -> LrPlan:
    stepwise = STEPWISE[cfg.stepwise_scheduler] if cfg.stepwise_scheduler is not None else None
    notes = [why] if why else []
    if rule == "predecessor":
        if cfg.optimizer == "LARS":
            lr0 = 0.075 * math.sqrt(cfg.batch_size)
            text = f"predecessor LARS, 0.075*sqrt({cfg.batch_size})={lr0:.4g}, cosine over {cfg.epochs} epochs"
            if stepwise is not None:
                text += f", times stepwise_scheduler {cfg.stepwise_scheduler} per step"
            if cfg.lr is not None:
                notes.insert(0, f"config lr {cfg.lr:g} ignored")
            per_epoch = "cosine_total"
        else:
            lr0 = learning_rate(cfg)
            text = f"predecessor {cfg.optimizer}, lr {lr0:g}, " + (
                f"stepwise_scheduler {cfg.stepwise_scheduler} per step" if stepwise is not None else "constant")
            per_epoch = None
        plan = (per_epoch, stepwise, "step", 0.0)
    else:
        lr0 = learning_rate(cfg)
        name = stepwise if cfg.stepwise_scheduler is not None else cfg.scheduler
        interval = "step" if cfg.stepwise_scheduler is not None else cfg.scheduling_interval
        text = f"config, {cfg.optimizer} lr {lr0:.4g}, schedule {name or 'constant'} per {interval}"
        if cfg.warmup_epochs:
            text += f" after {cfg.warmup_epochs:g} warmup epoch(s)"
        plan = (None, name, interval, cfg.warmup_epochs)
    line = f"lr rule: {text}" + (f" ({'; '.join(notes)})" if notes else "")
    return LrPlan(lr0, plan[0], plan[1], plan[2], plan[3], line)


def build_lr_schedule(optimizer: torch.optim.Optimizer, plan: LrPlan, cfg: PretrainConfig,
                      steps_per_epoch: int, n_images: int = 0) -> ResumableLambdaLR:
    """``n_images``: the training set size (the predecessor's recipe counts epochs as n_images / batch steps)."""
    r = recipe_of(cfg)
    decay = cfg.decay_per_epoch
    if cfg.stepwise_scheduler == "DecayingCosine" and not r.ssl_decaying_cosine_decay:
        decay = 1.0  # the predecessor computed the decay but never applied it
    shape = dict(steps_per_epoch=steps_per_epoch, epochs=cfg.epochs, decay_per_epoch=decay,
                 annealing_time=cfg.annealing_time, restarts=not r.continuous_decaying_cosine,
                 epoch_steps=epoch_steps(r, n_images, cfg.batch_size))
    if plan.per_epoch is not None:
        return user_errors(build_epoch_times_step_scheduler, optimizer, plan.per_epoch, plan.per_step, **shape)
    return user_errors(build_scheduler, optimizer, plan.per_step, interval=plan.interval,
                       warmup_epochs=plan.warmup_epochs, **shape)
