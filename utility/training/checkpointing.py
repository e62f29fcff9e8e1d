"""Checkpoints as a trainer callback: checkpoint_best.pt when the validation metric improves,
checkpoint_last.pt after every epoch and every ``checkpoint_every_steps`` optimizer steps.

The trainer appends it to its callbacks itself, last, so the other callbacks of an event run before
the checkpoint is written (a collapse guard stops a run before that epoch's checkpoint). What a
checkpoint holds and how a mid-epoch one keeps the step losses: ``Trainer.save_checkpoint``.
"""
from __future__ import annotations

import math
from typing import Any, Optional

from utility.distributed import is_main
from utility.training.callbacks import Callback
from utility.training.checkpoint import atomic_save

Trainer = Any  # utility.training.engine.Trainer (which imports this module)


class Checkpointing(Callback):
    """``metric``/``mode``: the validation column that picks the best model, 'max' or 'min' (None: no
    best checkpoint); ``every_steps``: a checkpoint_last.pt every that many steps too (None/0: only
    per epoch). The best value and epoch live on the trainer (checkpoint keys best_value, best_epoch)."""

    def __init__(self, every_steps: Optional[int], metric: Optional[str], mode: str = "max") -> None:
        self.every_steps, self.metric, self.mode = every_steps, metric, mode

    def on_step_end(self, trainer: Trainer) -> None:
        if self.every_steps and trainer.global_step % self.every_steps == 0:
            trainer.save_checkpoint()

    def on_validation_end(self, trainer: Trainer, metrics: dict[str, float]) -> None:
        key = self.metric
        if key is None:
            return
        if key not in metrics:
            raise KeyError(f"best_metric '{key}' is not a validation metric ({', '.join(metrics)})")
        if self.is_better(metrics[key], trainer.best_value):
            trainer.best_value, trainer.best_epoch = metrics[key], trainer.epoch + 1
            if is_main():
                atomic_save({"model": trainer.model.state_dict(), "epoch": trainer.epoch + 1,
                             "metric": key, "value": metrics[key]}, trainer.best_path)

    def on_epoch_end(self, trainer: Trainer) -> None:
        trainer.save_checkpoint()

    def is_better(self, value: Optional[float], best: Optional[float]) -> bool:
        """A NaN never becomes the best; anything finite beats no best (or a NaN one)."""
        if value is None or math.isnan(value):
            return False
        if best is None or math.isnan(best):
            return True
        return value > best if self.mode == "max" else value < best
