"""What watches or finishes a run plugs into the one engine as a callback: checkpoints
(training/checkpointing.py), the kNN monitor, encoder snapshots, bad-file reports, experiment trackers,
a method's per-step update (EMA targets), the product's weights and the final test (utility/runs/).

The trainer holds one :class:`CallbackList` and calls it at fixed points; a callback overrides the
events it needs (the base class does nothing). Events run on every rank: a callback that writes files
checks ``utility.distributed.is_main()`` itself, so one that needs a collective can still take part.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterable

Trainer = Any  # utility.training.engine.Trainer (which imports this module)


class Callback:
    """Override what you need; the order of one run's events:
    run_start, then per step step_end, per epoch validation_end (with validation) and epoch_end,
    train_end once training is complete, row after every CSV row the run writes, run_end (also when
    the run failed or stopped)."""

    def on_run_start(self, trainer: Trainer, resumed: bool) -> None:
        """Before the first step (``resumed``: the trainer continues from checkpoint_last.pt)."""

    def on_step_end(self, trainer: Trainer) -> None:
        """After every optimizer step (``trainer.global_step`` counts it)."""

    def on_validation_end(self, trainer: Trainer, metrics: dict[str, float]) -> None:
        """After each epoch's validation pass, with its metric row."""

    def on_epoch_end(self, trainer: Trainer) -> None:
        """After an epoch (``trainer.epoch`` is the number of epochs done); its checkpoint is
        written after every other callback's epoch_end (the trainer's Checkpointing comes last)."""

    def on_train_end(self, trainer: Trainer) -> None:
        """After the last epoch's checkpoint, before the run is marked finished (the product's weights,
        the final test). Not called when a stop was asked for before it (the resumption calls it)."""

    def on_row(self, path: Path, row: dict[str, Any]) -> None:
        """After each row a CSV log of the run gets (rank 0; the row as the file holds it)."""

    def on_run_end(self, trainer: Trainer, finished: bool) -> None:
        """Once at the end; ``finished``: the run completed (not failed or stopped)."""


class CallbackList(Callback):
    """The trainer's callbacks, called in order."""

    def __init__(self, callbacks: Iterable[Callback] = ()) -> None:
        self.items: list[Callback] = list(callbacks)

    def on_run_start(self, trainer: Trainer, resumed: bool) -> None:
        self._each(lambda cb: cb.on_run_start(trainer, resumed))

    def on_step_end(self, trainer: Trainer) -> None:
        for cb in self.items:  # the hot path: once per optimizer step
            cb.on_step_end(trainer)

    def on_validation_end(self, trainer: Trainer, metrics: dict[str, float]) -> None:
        self._each(lambda cb: cb.on_validation_end(trainer, metrics))

    def on_epoch_end(self, trainer: Trainer) -> None:
        self._each(lambda cb: cb.on_epoch_end(trainer))

    def on_train_end(self, trainer: Trainer) -> None:
        self._each(lambda cb: cb.on_train_end(trainer))

    def on_row(self, path: Path, row: dict[str, Any]) -> None:
        self._each(lambda cb: cb.on_row(path, row))

    def on_run_end(self, trainer: Trainer, finished: bool) -> None:
        self._each(lambda cb: cb.on_run_end(trainer, finished))

    def _each(self, event: Callable[[Callback], None]) -> None:
        for cb in self.items:
            event(cb)
