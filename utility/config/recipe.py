"""``recipe: modern | predecessor``: every way this tool trains differently from the predecessor, in one
table, and the one switch that selects the predecessor's way.

Each rule is a field of :class:`Recipe`; the code that applies a rule (loss, augmentation, noise,
optimizer, scheduler, defaults, snapshots, DICOM labels) asks :func:`recipe_of` for it and never
compares recipe names itself. :data:`DIFFERENCES` lists every rule for the docs (docs/recipes.md has one
row per entry; a test checks that the table and the docs agree).
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import Any, Optional

RECIPES = ("modern", "predecessor")  # values of the config key `recipe` (schemas.RunBase)


@dataclass(frozen=True)
class Recipe:
    """One training recipe: what each rule does under it."""

    name: str
    seg_loss_ce_only: bool            # LiTS/BraTS: weighted CE (w_l) only, no Dice term
    predecessor_augmentation: bool    # finetuning: the predecessor's per-task pipelines (p = 0.2 each)
    clip_noise: bool                  # noise_injection: clip to [0, 1] after adding the noise
    decay_all_params: bool            # Adam/AdamW: weight decay on every parameter (incl. BN, bias)
    fte_decay_default: float          # FTE decay_per_epoch when the key is missing
    ssl_decay_default: float          # SimCLR decay_per_epoch when the key is missing (Exponential)
    continuous_decaying_cosine: bool  # decaying_cosine: one continuous cosine (no restarts)
    ssl_decaying_cosine_decay: bool   # SimCLR stepwise DecayingCosine: decay applied
    fractional_epoch_steps: bool      # per-step schedules: epoch = train size / batch steps, T0 truncated
    snapshot_zero_based: bool         # encoder_<e>.tar: e = 0-based epoch (encoder_0, encoder_k, ...)
    body_part_lowest: bool            # CTBR DICOM: several regions -> lowest class; FOOT/Ankle not extremity


RECIPE_TABLE: dict[str, Recipe] = {
    "modern": Recipe("modern", seg_loss_ce_only=False, predecessor_augmentation=False, clip_noise=False,
                     decay_all_params=False, fte_decay_default=0.95, ssl_decay_default=0.95,
                     continuous_decaying_cosine=False, ssl_decaying_cosine_decay=True,
                     fractional_epoch_steps=False, snapshot_zero_based=False, body_part_lowest=False),
    "predecessor": Recipe("predecessor", seg_loss_ce_only=True, predecessor_augmentation=True, clip_noise=True,
                          decay_all_params=True, fte_decay_default=0.99, ssl_decay_default=0.5,
                          continuous_decaying_cosine=True, ssl_decaying_cosine_decay=False,
                          fractional_epoch_steps=True, snapshot_zero_based=True, body_part_lowest=True),
}

# (rule, modern, predecessor, where it applies) -- the rows of docs/recipes.md
DIFFERENCES: list[tuple[str, str, str, str]] = [
    ("seg_loss_ce_only", "task's loss (LiTS, BraTS: CE + soft Dice)", "weighted cross-entropy only (w_l)",
     "finetuning, segmentation"),
    ("predecessor_augmentation", "the task's augmentation preset (config/augmentations/)",
     "the predecessor's per-task pipeline, every op with p = 0.2", "finetuning"),
    ("clip_noise", "noise added, not clipped", "noise added, then clipped to [0, 1]", "noise_injection"),
    ("decay_all_params", "no weight decay on BatchNorm, biases, 1-D parameters",
     "Adam/AdamW decay every parameter (LARS still excludes BN and bias)", "finetuning and pretraining"),
    ("fte_decay_default", "decay_per_epoch 0.95 when missing", "0.99 when missing", "finetuning"),
    ("ssl_decay_default", "decay_per_epoch 0.95 when missing", "0.5 when missing (Exponential, DecayingCosine)",
     "pretraining"),
    ("continuous_decaying_cosine", "decaying_cosine restarts every annealing_time",
     "one continuous cosine (falls over T0, rises over the next T0)", "scheduler / stepwise_scheduler"),
    ("ssl_decaying_cosine_decay", "stepwise DecayingCosine decays by decay_per_epoch",
     "cosine only, no decay", "pretraining stepwise_scheduler"),
    ("fractional_epoch_steps", "per-step schedules count an epoch as its batches; periods in (fractional) steps",
     "an epoch counts train size / batch size steps (decay g per that many steps); T0 = int(annealing_time x that)",
     "scheduling_interval: step, stepwise_scheduler"),
    ("snapshot_zero_based", "encoder_<N>.tar after N epochs (encoder_k, encoder_2k, ...)",
     "encoder_<e>.tar with e the 0-based epoch (encoder_0, encoder_k, ...)", "pretraining enc_save_frequency"),
    ("body_part_lowest", "a BodyPartExamined naming several regions is refused",
     "several regions -> the lowest class index; FOOT/Ankle are not extremity", "CTBR DICOM labels"),
]

# keys only the predecessor's configs carry: a config holding one gets the notice below
PREDECESSOR_KEYS = ("w_m", "stepwise_scheduler", "enc_save_frequency", "nodes", "nr", "model_save_frequency",
                    "encoder_network", "reload", "epoch_num", "start_epoch", "pretrain", "dataset_dir",
                    "checkpoint_epoch", "logistic_batch_size", "logistic_epochs")


def recipe_of(cfg: Any) -> Recipe:
    """The rules in force for a config object (or a recipe name)."""
    name = cfg if isinstance(cfg, str) else getattr(cfg, "recipe", "modern")
    return RECIPE_TABLE[name or "modern"]


def fill_defaults(data: Any, kind: str) -> Any:
    """Before validation: the recipe's default for keys the config leaves out (config.yaml then records
    the value used). ``kind``: ``fte`` or ``ssl``."""
    if isinstance(data, dict) and data.get("decay_per_epoch") is None and "decay_per_epoch" not in data:
        name = data.get("recipe") or "modern"
        if name in RECIPE_TABLE:
            r = RECIPE_TABLE[name]
            data = {**data, "decay_per_epoch": r.fte_decay_default if kind == "fte" else r.ssl_decay_default}
    return data


def recipe_notice(raw: dict[str, Any], recipe: str) -> Optional[str]:
    """One line when the config carries predecessor-only keys: which recipe is in force and the key that
    switches it (on stderr, rank 0 only; load_config calls it once per run)."""
    keys = [k for k in PREDECESSOR_KEYS if k in raw]
    if not keys:
        return None
    if recipe == "predecessor":
        line = f"recipe: predecessor in force (config has the predecessor's {', '.join(keys)})"
    else:
        line = (f"recipe: modern in force (config has keys the predecessor used: {', '.join(keys)}); "
                "set recipe: predecessor to train as the predecessor did (docs/recipes.md)")
    if os.environ.get("RANK", "0") == "0":
        print(line, file=sys.stderr)
    return line


def task_for(task: Any, recipe: Recipe) -> Any:
    """The task as the recipe reads it: under the predecessor's, CTBR DICOM labels by its rule
    (part of the task, so the index cache keeps the two labellings apart)."""
    if recipe.body_part_lowest and task.layout.reader == "body_part":
        return task.model_copy(update={"layout": task.layout.model_copy(update={"body_part_rule": "lowest"})})
    return task


def excludes_bn_bias(recipe: Recipe, optimizer: str) -> bool:
    """Whether norm layers, biases and 1-D parameters go without weight decay (LARS: always)."""
    return not (recipe.decay_all_params and optimizer in ("Adam", "AdamW"))


def epoch_steps(recipe: Recipe, n_train: int, batch_size: int) -> Optional[float]:
    """Steps one epoch counts for per-step schedules: the predecessor's len(train set) / batch size, or
    None (the loader's batches per epoch)."""
    return n_train / batch_size if recipe.fractional_epoch_steps and n_train > 0 else None


def snapshot_epoch(recipe: Recipe, epochs_done: int, every: Optional[int]) -> Optional[int]:
    """The N of ``encoder_<N>.tar`` to write after ``epochs_done`` epochs, or None (no snapshot)."""
    if not every:
        return None
    n = epochs_done - 1 if recipe.snapshot_zero_based else epochs_done
    return n if n % every == 0 else None
