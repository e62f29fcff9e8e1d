"""The optimizer and LR schedule of a finetuning run, as its recipe builds them
(utility/config/recipe.py: weight decay on every parameter, continuous decaying cosine, epoch length)."""
from __future__ import annotations

from typing import Any

from torch import nn

from utility.config.recipe import epoch_steps, excludes_bn_bias, recipe_of
from utility.errors import user_errors
from utility.models.vit import lr_scales_of
from utility.training.optim import build_optimizer
from utility.training.schedulers import build_scheduler


def optimizer_and_schedule(cfg: Any, model: nn.Module, n_train: int, steps_per_epoch: int,
                           fused: bool = False) -> tuple[Any, Any]:
    """(optimizer, scheduler) for ``cfg``; ``n_train`` images, ``steps_per_epoch`` batches per epoch,
    ``fused``: the fused optimizer kernels (the session's speed settings)."""
    recipe = recipe_of(cfg)
    optimizer = user_errors(build_optimizer, model, cfg.optimizer, cfg.lr, cfg.weight_decay, cfg.momentum,
                            exclude_bn_bias=excludes_bn_bias(recipe, cfg.optimizer), fused=fused,
                            lr_scales=lr_scales_of(model, cfg.layer_decay, cfg.model_name))
    scheduler = user_errors(build_scheduler, optimizer, cfg.scheduler, interval=cfg.scheduling_interval,
                            steps_per_epoch=steps_per_epoch, epochs=cfg.epochs, decay_per_epoch=cfg.decay_per_epoch,
                            annealing_time=cfg.annealing_time, warmup_epochs=cfg.warmup_epochs,
                            restarts=not recipe.continuous_decaying_cosine,
                            epoch_steps=None if cfg.short_training else epoch_steps(recipe, n_train, cfg.batch_size))
    return optimizer, scheduler
