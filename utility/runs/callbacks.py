"""The trainer callbacks of pretraining and finetuning runs (what the engine calls: training/callbacks.py):
bad-file reports, encoder snapshots, a method's per-step update, the product's weights, the final test."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from torch import nn

from utility.config.recipe import Recipe, recipe_of, snapshot_epoch
from utility.data.badfiles import BadFiles
from utility.distributed import is_main
from utility.errors import UserError
from utility.methods.ssl_base import SSLMethod, save_encoder
from utility.runs.evaluation import report_bad_files, test_last_and_best
from utility.training.callbacks import Callback
from utility.training.checkpoint import atomic_save


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

    def __init__(self, model: nn.Module, run_dir: Path, every: int, recipe: Optional[Recipe] = None,
                 part: str = "encoder") -> None:
        self.model, self.run_dir, self.every, self.part = model, run_dir, every, part
        self.recipe = recipe or recipe_of("modern")

    def on_epoch_end(self, trainer: Any) -> None:
        n = snapshot_epoch(self.recipe, trainer.epoch, self.every)
        if is_main() and n is not None:
            save_encoder(self.model, self.run_dir / f"encoder_{n}.tar", self.part)


class MethodSteps(Callback):
    """The SSL method's ``after_step`` after every optimizer step (EMA/momentum targets; every rank)."""

    def __init__(self, method: SSLMethod) -> None:
        self.method = method

    def on_step_end(self, trainer: Any) -> None:
        self.method.after_step(trainer.model, trainer.global_step, trainer.total_steps)


class FinetunedWeights(Callback):
    """finetuned_model.tar (the model's state_dict after the last epoch) once training is complete (rank 0)."""

    def __init__(self, model: nn.Module, path: Path) -> None:
        self.model, self.path = model, path

    def on_train_end(self, trainer: Any) -> None:
        if is_main():
            atomic_save(self.model.state_dict(), self.path)  # a full disk: one line


class PretrainedEncoder(Callback):
    """encoder_pretrained.tar once training is complete (rank 0); refused when no step was taken,
    so an untrained encoder never carries the name of a pretrained one."""

    def __init__(self, model: nn.Module, path: Path, label: str, min_batch: int, epochs: int,
                 part: str = "encoder") -> None:
        self.model, self.path, self.label, self.min_batch, self.epochs = model, path, label, min_batch, epochs
        self.part = part

    def on_train_end(self, trainer: Any) -> None:
        if trainer.global_step == 0:
            raise UserError(f"no {self.label} step was taken in {self.epochs} epoch(s) (every batch had fewer "
                            f"than {self.min_batch} valid images); {self.path.name} not written")
        if is_main():
            save_encoder(self.model, self.path, self.part)


class TestEvaluation(Callback):
    """The test split with the last and the best model once training is complete (test.log,
    test_best.log; every rank evaluates, rank 0 writes). ``results``: the last model's metrics."""

    __test__ = False  # not a pytest class

    def __init__(self, loader: Any, run_dir: Path, metric: str) -> None:
        self.loader, self.run_dir, self.metric = loader, run_dir, metric
        self.results: dict[str, float] = {}

    def on_train_end(self, trainer: Any) -> None:
        self.results = test_last_and_best(trainer, self.loader, self.run_dir, self.metric)
