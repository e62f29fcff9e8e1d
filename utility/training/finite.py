"""Non-finite policy: a loss that turns NaN/inf stops the run at that step with the likely cause,
instead of training to the end with NaN metrics (and a NaN "best" checkpoint). The check reads the
step losses the engine already synchronises for train.log, so it costs no extra device sync; the
run stops at the first flush after the bad step, before any checkpoint of the damaged weights."""
from __future__ import annotations

import math
from typing import Sequence

from utility.errors import UserError

LIKELY_CAUSES = ("lr too high, class weights w_l that give a batch's classes weight 0, a normalizer window "
                 "that maps the images to one value, non-finite values in model_path, or an SSL temperature "
                 "that is too small")


class NonFiniteLoss(UserError):
    """The loss of a training step is NaN or inf (exit 2: a setting or the data, not a bug)."""


def check_losses(values: Sequence[float], steps: Sequence[int], epoch: int) -> None:
    """Raise NonFiniteLoss naming the first step whose loss is not finite."""
    for value, step in zip(values, steps):
        if not math.isfinite(value):
            raise NonFiniteLoss(
                f"training loss became {value} at global step {step} (epoch {epoch}); stopped there, no "
                f"checkpoint of these weights was saved. Likely causes: {LIKELY_CAUSES}")
