"""The trainer callbacks of pretraining and finetuning runs (what the engine calls: training/callbacks.py)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from torch import nn

from utility.config.recipe import Recipe, recipe_of, snapshot_epoch
from utility.data.badfiles import BadFiles
from utility.distributed import is_main
from utility.methods.ssl_base import SSLMethod, save_encoder
from utility.runs.evaluation import report_bad_files
from utility.training.callbacks import Callback


class BadFileReports(Callback):
    """After each epoch, the files skipped so far (bad_files report; rank 0)."""

    def __init__(self, bad: Optional[BadFiles]) -> None:
        self.bad = bad

    def on_epoch_end(self, trainer: Any) -> None:
        if is_main():
            report_bad_files(self.bad, trainer.epoch)


class EncoderSnapshots(Callback):
    """encoder_<N>.tar every ``every`` epochs (0: never; rank 0); N as the recipe numbers them
    (utility/config/recipe.py snapshot_epoch: after N epochs, or the predecessor's 0-based epoch)."""

    def __init__(self, model: nn.Module, run_dir: Path, every: int, recipe: Optional[Recipe] = None) -> None:
        self.model, self.run_dir, self.every = model, run_dir, every
        self.recipe = recipe or recipe_of("modern")

    def on_epoch_end(self, trainer: Any) -> None:
        n = snapshot_epoch(self.recipe, trainer.epoch, self.every)
        if is_main() and n is not None:
            save_encoder(self.model, self.run_dir / f"encoder_{n}.tar")


class MethodSteps(Callback):
    """The SSL method's ``after_step`` after every optimizer step (EMA/momentum targets; every rank)."""

    def __init__(self, method: SSLMethod) -> None:
        self.method = method

    def on_step_end(self, trainer: Any) -> None:
        self.method.after_step(trainer.model, trainer.global_step, trainer.total_steps)
