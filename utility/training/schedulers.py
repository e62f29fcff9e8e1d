"""Learning-rate schedules: config keys ``scheduler``, ``decay_per_epoch``, ``scheduling_interval``,
``annealing_time`` (and an optional linear ``warmup_epochs``).

Every schedule is a multiplicative factor of the initial learning rate ``lr0`` as a function of ``t``, the
training time in epochs since the end of warmup (fractional when stepping per batch):

* ``decay``:            g^t                                   (g = decay_per_epoch)
* ``cosine``:           (1 + cos(pi * (t mod T0) / T0)) / 2   (warm restarts every T0 = annealing_time)
* ``decaying_cosine``:  [eta + (1 - eta) (1 + cos(pi * (t mod T0) / T0)) / 2] * g^t,  eta = 1e-6
  (with ``restarts=False``, the predecessor's: t instead of t mod T0, one continuous cosine that falls
  over T0 and rises over the next; utility/config/recipe.py)

``epoch_steps`` (per-step schedules only; the predecessor's recipe): an epoch counts as this many steps
(train size / batch size, fractional) for the decay, and T0 = int(annealing_time * epoch_steps) steps.
* ``cosine_total``:     (1 + cos(pi * t / T)) / 2, T = training length after warmup (one cosine to 0)
* ``None``:             1 (constant)

``annealing_time`` is in epochs; its default is 10 for ``interval="epoch"`` and 0.2 for ``interval="step"``.
With warmup, the factor during the first W scheduler steps (W = warmup_epochs * steps_per_epoch when stepping
per batch, warmup_epochs when stepping per epoch; at least 1 if warmup_epochs > 0) is (k + 1) / W for step
k = 0..W-1, i.e. lr0/W, 2 lr0/W, ..., lr0; then the schedule above starts at its own t = 0.

Positions are counted in integer scheduler steps, and periods are converted to steps once, so restarts happen
exactly at multiples of T0 without floating-point drift.

:func:`build_epoch_times_step_scheduler` chains two of these schedules the way two torch schedulers on one
optimizer do: a schedule stepped once per epoch times a schedule stepped per batch (both driven by the batch
step count). The predecessor's SimCLR with LARS ran like that: CosineAnnealingLR over ``epochs`` (eta_min 0)
per epoch, with its ``stepwise_scheduler`` on top.
"""

from __future__ import annotations

import math
import sys
from typing import Any

import torch
from torch.optim.lr_scheduler import LambdaLR

from utility.distributed import is_main
from utility.errors import SettingError

__all__ = ["SCHEDULER_NAMES", "INTERVALS", "ScheduleFactor", "EpochTimesStepFactor", "ResumableLambdaLR",
           "build_scheduler", "build_epoch_times_step_scheduler", "lr_at"]

SCHEDULER_NAMES = ("decay", "cosine", "decaying_cosine", "cosine_total", None)
INTERVALS = ("epoch", "step")
DECAYING_COSINE_ETA = 1e-6
DEFAULT_ANNEALING_TIME = {"epoch": 10.0, "step": 0.2}
_CONSTANT_ALIASES = ("none", "null", "constant")


def _normalise_name(name: str | None) -> str | None:
    if name is None:
        return None
    if not isinstance(name, str):
        raise SettingError(f"Unknown scheduler {name!r}; valid choices: {_choices()}")
    key = name.strip().lower()
    if key in _CONSTANT_ALIASES:
        return None
    if key not in SCHEDULER_NAMES:
        raise SettingError(f"Unknown scheduler {name!r}; valid choices: {_choices()}")
    return key


def _choices() -> str:
    return ", ".join(["decay", "cosine", "decaying_cosine", "cosine_total", "None (null, constant)"])


def _as_units(x: float) -> float:
    """Snap values within 1e-9 of an integer to that integer (0.2 * 10 -> 2, not 2.0000000000000004)."""
    r = round(x)
    return float(r) if abs(x - r) < 1e-9 else float(x)


class ScheduleFactor:
    """Picklable callable: scheduler step count -> multiplicative factor of lr0."""

    def __init__(
        self,
        name: str | None,
        *,
        interval: str,
        steps_per_epoch: int,
        epochs: float,
        decay_per_epoch: float = 1.0,
        annealing_time: float | None = None,
        warmup_epochs: float = 0.0,
        restarts: bool = True,
        epoch_steps: float | None = None,
    ) -> None:
        self.name = _normalise_name(name)
        self.restarts = bool(restarts)
        # the predecessor's per-step schedules counted an epoch as train size / batch size steps
        # (fractional) and truncated periods to whole steps; None: steps_per_epoch
        self.epoch_steps = float(epoch_steps) if epoch_steps and interval == "step" else None
        if interval not in INTERVALS:
            raise SettingError(f"Unknown scheduling interval {interval!r}; valid choices: {', '.join(INTERVALS)}")
        if int(steps_per_epoch) != steps_per_epoch or steps_per_epoch < 1:
            raise SettingError(f"steps_per_epoch must be a positive integer, got {steps_per_epoch!r}")
        if decay_per_epoch <= 0:
            raise SettingError(f"decay_per_epoch must be > 0, got {decay_per_epoch!r}")
        if warmup_epochs is None:
            warmup_epochs = 0.0
        if warmup_epochs < 0:
            raise SettingError(f"warmup_epochs must be >= 0, got {warmup_epochs!r}")
        if annealing_time is None:
            annealing_time = DEFAULT_ANNEALING_TIME[interval]
        if annealing_time <= 0:
            raise SettingError(f"annealing_time must be > 0, got {annealing_time!r}")

        self.interval = interval
        self.steps_per_epoch = int(steps_per_epoch)
        self.epochs = float(epochs)
        self.decay_per_epoch = float(decay_per_epoch)
        self.annealing_time = float(annealing_time)
        self.warmup_epochs = float(warmup_epochs)

        # scheduler steps per epoch
        self.units_per_epoch = self.steps_per_epoch if interval == "step" else 1
        w = self.warmup_epochs * self.units_per_epoch
        self.warmup_units = max(1, int(round(w))) if self.warmup_epochs > 0 else 0
        self.period_units = _as_units(self.annealing_time * self.units_per_epoch)
        self.decay_units = float(self.units_per_epoch)
        if self.epoch_steps is not None:
            self.decay_units = self.epoch_steps
            self.period_units = float(max(1, int(self.annealing_time * self.epoch_steps)))
        self.total_units = _as_units(self.epochs * self.units_per_epoch) - self.warmup_units
        if self.name == "cosine_total" and self.total_units <= 0:
            raise SettingError(
                f"cosine_total needs training longer than warmup: epochs={epochs!r}, warmup_epochs={warmup_epochs!r}"
            )

    def after_warmup(self, u: float) -> float:
        """Factor at u scheduler steps after the end of warmup (u may be fractional)."""
        name = self.name
        if name is None:
            return 1.0
        t = u / self.decay_units  # epochs since end of warmup
        if name == "decay":
            return self.decay_per_epoch ** t
        if name in ("cosine", "decaying_cosine"):
            phase = (math.fmod(u, self.period_units) if self.restarts or name == "cosine" else u) / self.period_units
            cos = (1.0 + math.cos(math.pi * phase)) / 2.0
            if name == "cosine":
                return cos
            eta = DECAYING_COSINE_ETA
            return (eta + (1.0 - eta) * cos) * self.decay_per_epoch ** t
        # cosine_total
        phase = min(max(u, 0.0) / self.total_units, 1.0)
        return (1.0 + math.cos(math.pi * phase)) / 2.0

    def at_units(self, k: float) -> float:
        """Factor after k scheduler steps since the start of training."""
        if k < self.warmup_units:
            return (math.floor(k) + 1) / self.warmup_units
        return self.after_warmup(k - self.warmup_units)

    def __call__(self, step: int) -> float:
        return self.at_units(step)

    def config(self) -> dict[str, Any]:
        return dict(name=self.name, interval=self.interval, steps_per_epoch=self.steps_per_epoch,
                    epochs=self.epochs, decay_per_epoch=self.decay_per_epoch,
                    annealing_time=self.annealing_time, warmup_epochs=self.warmup_epochs, restarts=self.restarts,
                    epoch_steps=self.epoch_steps)


class EpochTimesStepFactor:
    """Picklable callable: batch step count k -> per_epoch(k // steps_per_epoch) * per_step(k)."""

    def __init__(self, per_epoch: ScheduleFactor, per_step: ScheduleFactor) -> None:
        if per_epoch.interval != "epoch" or per_step.interval != "step":
            raise ValueError("EpochTimesStepFactor needs an epoch-interval and a step-interval schedule")
        if per_epoch.steps_per_epoch != per_step.steps_per_epoch:
            raise ValueError("both schedules must use the same steps_per_epoch")
        self.per_epoch, self.per_step = per_epoch, per_step
        self.steps_per_epoch = per_step.steps_per_epoch

    def __call__(self, step: int) -> float:
        return self.per_epoch.at_units(step // self.steps_per_epoch) * self.per_step.at_units(step)

    def config(self) -> dict[str, Any]:
        return {"per_epoch": self.per_epoch.config(), "per_step": self.per_step.config()}


class ResumableLambdaLR(LambdaLR):
    """LambdaLR whose state is just its position (plus bookkeeping), and whose ``load_state_dict`` also puts
    the optimizer's learning rates at that position, so a resumed run continues the schedule exactly whether
    or not (and in whichever order) the optimizer state was loaded.

    The schedule itself comes from the configuration the scheduler was rebuilt with; the configuration it
    was saved with is stored under ``"schedule"`` for inspection only.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, factor: ScheduleFactor | EpochTimesStepFactor) -> None:
        self.factor = factor
        super().__init__(optimizer, factor)

    def state_dict(self) -> dict[str, Any]:
        state = {k: v for k, v in self.__dict__.items() if k not in ("optimizer", "lr_lambdas", "factor")}
        state["schedule"] = self.factor.config()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state = {k: v for k, v in state_dict.items() if k not in ("schedule", "lr_lambdas", "factor", "optimizer")}
        self.__dict__.update(state)
        lrs = [base_lr * self.factor(self.last_epoch) for base_lr in self.base_lrs]
        for group, lr in zip(self.optimizer.param_groups, lrs):
            if isinstance(group["lr"], torch.Tensor):
                group["lr"].fill_(lr)
            else:
                group["lr"] = lr
        self._last_lr = lrs


def fitted_warmup(name: str | None, *, interval: str, steps_per_epoch: int, epochs: float,
                  warmup_epochs: float | None = 0.0, **_: Any) -> float:
    """cosine_total anneals over the steps after warmup, so a warmup as long as the run (a one-epoch smoke
    test of a long recipe) is shortened to half the run, or dropped when the run is too short to split."""
    if not warmup_epochs or _normalise_name(name) != "cosine_total":
        return warmup_epochs or 0.0
    units = steps_per_epoch if interval == "step" else 1
    total = _as_units(epochs * units)

    def left(w: float) -> float:  # scheduler steps after a warmup of w epochs (as ScheduleFactor counts)
        return total - (max(1, int(round(w * units))) if w > 0 else 0)

    if left(warmup_epochs) > 0:
        return warmup_epochs
    return epochs / 2 if left(epochs / 2) > 0 else 0.0


def build_scheduler(optimizer: torch.optim.Optimizer, name: str | None, **schedule: Any) -> ResumableLambdaLR:
    """LR scheduler for config key ``scheduler`` (see module doc).  ``schedule``: the keyword arguments of
    :class:`ScheduleFactor` (interval, steps_per_epoch, epochs, decay_per_epoch, annealing_time,
    warmup_epochs).  Call ``.step()`` once per optimizer step when ``interval == "step"`` and once per epoch
    when ``interval == "epoch"``.  Names are case-insensitive; ``None``, ``"None"``, ``"null"`` and
    ``"constant"`` mean a constant LR.  The same factor applies to every parameter group (each relative to
    its own initial lr). A cosine_total warmup that leaves no step to anneal is shortened (:func:`fitted_warmup`)
    with one notice."""
    warmup = fitted_warmup(name, **schedule)
    if warmup != (schedule.get("warmup_epochs") or 0.0):
        if is_main():
            print(f"note: warmup_epochs {schedule['warmup_epochs']:g} leaves no step to anneal in {schedule['epochs']:g} "
                  f"epoch(s); cosine_total warms up for {warmup:g} epoch(s) instead", file=sys.stderr, flush=True)
        schedule = {**schedule, "warmup_epochs": warmup}
    return ResumableLambdaLR(optimizer, ScheduleFactor(name, **schedule))


def build_epoch_times_step_scheduler(
    optimizer: torch.optim.Optimizer,
    per_epoch: str | None,
    per_step: str | None,
    *,
    steps_per_epoch: int,
    epochs: int,
    decay_per_epoch: float = 1.0,
    annealing_time: float | None = None,
    restarts: bool = True,
    epoch_steps: float | None = None,
) -> ResumableLambdaLR:
    """Schedule ``per_epoch`` (stepped once per epoch) times schedule ``per_step`` (stepped per batch), as one
    scheduler to ``.step()`` once per optimizer step. ``decay_per_epoch`` and ``annealing_time`` parameterise
    ``per_step``; ``per_epoch`` takes the names of :func:`build_scheduler` with its defaults."""
    outer = ScheduleFactor(per_epoch, interval="epoch", steps_per_epoch=steps_per_epoch, epochs=epochs)
    inner = ScheduleFactor(per_step, interval="step", steps_per_epoch=steps_per_epoch, epochs=epochs,
                           decay_per_epoch=decay_per_epoch, annealing_time=annealing_time, restarts=restarts,
                           epoch_steps=epoch_steps)
    return ResumableLambdaLR(optimizer, EpochTimesStepFactor(outer, inner))


def lr_at(name: str | None, t_epochs: float, **schedule: Any) -> float:
    """Multiplicative factor (lr / lr0) the scheduler built with the same arguments applies after ``t_epochs``
    epochs of training (warmup included), i.e. after ``t_epochs * steps_per_epoch`` steps with
    ``interval="step"`` or ``t_epochs`` steps with ``interval="epoch"``."""
    factor = ScheduleFactor(name, **schedule)
    return factor.at_units(_as_units(t_epochs * factor.units_per_epoch))
