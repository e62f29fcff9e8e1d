"""Finetuning: config -> task -> data -> network -> the run session -> test with the last and best model.

``pkgs/FTE/finetune.py`` is a thin wrapper around :func:`main`. What differs between task types
(dataset, method) comes from the pipeline registry (utility/methods/registry.py); the network from
:func:`utility.models.build_network`; everything around training from :class:`RunSession`.
"""
from __future__ import annotations

import sys
from pathlib import Path

from utility.config.loader import load_config
from utility.config.recipe import recipe_of, task_for
from utility.config.schemas import FTE_DEPRECATED, FTEConfig
from utility.config.tasks import TaskSpec, load_task
from utility.data.augment import build_augment
from utility.data.badfiles import BadFiles
from utility.entry import CrashLog
from utility.errors import UserError
from utility.methods.registry import pipeline_for
from utility.models import build_network, count_parameters
from utility.paths import output_root, resolve_user_path
from utility.runs.callbacks import BadFileReports, FinetunedWeights, TestEvaluation
from utility.runs.startup import Startup, augmentation_path, index_cache_for, resolve_tf_device
from utility.runs.finetune_optim import optimizer_and_schedule
from utility.runs.split_audit import AUDIT_KEYS, audit_splits
from utility.runs.supervised_data import build_data, check_folds
from utility.runs.evaluation import read_test_row, report_bad_files, write_folds_summary
from utility.distributed import is_main, shutdown, world_size
from utility.training.engine import TrainerOptions
from utility.training.session import RESUME_FREE_KEYS, RunSession, make_run_dir
from utility.tracking import require_trackers, tracking_for

FREE_KEYS = RESUME_FREE_KEYS | {"save_predictions", "index_cache_dir", "reindex", "ci_resamples", "ci_level"} | AUDIT_KEYS


def best_settings(cfg: FTEConfig, task: TaskSpec) -> tuple[str, str]:
    metric = cfg.best_metric or task.primary_metric
    mode = cfg.best_mode or ("min" if "loss" in metric else task.primary_mode)
    return metric, mode


def check_best_metric(method, metric: str, configured: bool, task_name: str) -> None:
    """best_metric must be a column of val.log; checked before training, not after an epoch."""
    names = method.metric_names()
    if metric not in names:
        where = "config key 'best_metric'" if configured else f"task {task_name}'s primary_metric"
        raise UserError(f"{where}: '{metric}' is not a validation metric of task {task_name}; "
                        f"choose one of {', '.join(names)}")


def run_one(cfg: FTEConfig, task: TaskSpec, run_dir: Path) -> dict[str, float]:
    """Train, validate, test one run (one fold); returns the test metrics of the last model."""
    requested_tf = cfg.tf_device
    cfg = cfg.model_copy(update={"tf_device": resolve_tf_device(cfg.tf_device, cfg.device, run_dir)})  # as it runs
    require_trackers(cfg.trackers)  # before any work: exit 2 if one is not installed
    session = RunSession.open(cfg, run_dir, free_keys=FREE_KEYS)
    if session.done:
        print(f"run {run_dir} is already complete; results in {run_dir / 'test.log'}. "
              "Use another name to run it again.")
        return read_test_row(run_dir / "test.log")
    startup = Startup(cfg.verbose)
    startup.attach(run_dir)
    pipe = pipeline_for(task.type)
    data = build_data(cfg, task, session.device, pipe, startup, index_cache_for(cfg))
    audit_splits(cfg, data.indexed, run_dir, startup)
    startup.add("augmentation", None, augmentation_path(cfg.tf_device, requested_tf))
    n_cls = data.indexed.num_classes
    if cfg.w_l is not None and len(cfg.w_l) != n_cls:
        raise UserError(f"config key 'w_l' has {len(cfg.w_l)} weights but task {task.name} has {n_cls} classes")
    model, notes = build_network(cfg.model_name, n_cls, cfg.in_channels or 3,
                                 resolve_user_path(cfg.model_path) if cfg.model_path is not None else None,
                                 cfg.allow_partial_load, cfg.frozen_encoder, cfg.unfreeze_last_n,
                                 segmentation=pipe.segmentation, head_dropout=cfg.head_dropout,
                                 unet_decoder=cfg.unet_decoder, weights_format=cfg.model_path_format)
    for note in notes:
        print(f"warning: loading {cfg.model_path}: {note}", file=sys.stderr)
    train_module = session.place(model, cfg.syncbn)
    if is_main():
        (run_dir / "classes.txt").write_text("\n".join(data.indexed.classes) + "\n")
    augment, cpu_augment = build_augment(task.augmentation, tuple(cfg.shape_desired or task.shape_desired),
                                         cfg.no_augs, cfg.noise_injection, cfg.tf_device,
                                         recipe_of(cfg), task.name)
    if augment is not None:
        augment.to(session.device)
    data.datasets["train"].transform = cpu_augment  # per-sample, in the loader workers
    bad = BadFiles({k: s.paths for k, s in data.indexed.splits.items()}, cfg.max_bad_fraction, run_dir)
    method = pipe.method(cfg, task, data.indexed, augment, bad)
    steps = 1 if cfg.short_training else len(data.loaders["train"])
    optimizer, scheduler = optimizer_and_schedule(cfg, model, len(data.datasets["train"]), steps,
                                                  session.speed.fused_optimizer)
    metric, mode = best_settings(cfg, task)
    check_best_metric(method, metric, cfg.best_metric is not None, task.name)
    opts = TrainerOptions(epochs=cfg.epochs, seed=cfg.seed, scheduler_interval=cfg.scheduling_interval,
                          short_training=cfg.short_training, verbose=cfg.verbose, debug=cfg.debug,
                          log_losses=cfg.log_losses, checkpoint_every_steps=cfg.checkpoint_every_steps,
                          best_metric=metric, best_mode=mode, config=cfg.model_dump(mode="json"))
    testing = TestEvaluation(data.loaders["test"], run_dir, metric)  # after the weights are written
    callbacks = [BadFileReports(bad), tracking_for(cfg, run_dir),
                 FinetunedWeights(model, run_dir / "finetuned_model.tar"), testing]
    trainer = session.trainer(model, method, optimizer, scheduler, opts, train_module, callbacks)
    if cfg.verbose and is_main():
        sizes = ", ".join(f"{k} {len(s)}" for k, s in data.indexed.splits.items())
        p = count_parameters(model)
        print(f"task {task.name} ({task.type}, {n_cls} classes): {sizes}; model {cfg.model_name} "
              f"({p['trainable']:,}/{p['total']:,} trainable); device {session.device}, parallel {session.mode} "
              f"x{world_size()}; run dir {run_dir}")
    session.run(trainer, startup.time_first_batch(data.loaders["train"]), data.loaders["val"])
    report_bad_files(bad)
    return testing.results


def run_folds(cfg: FTEConfig, task: TaskSpec, run_dir: Path) -> None:
    """k-fold cross-validation: each fold in run_dir/fold_<i>/, then folds_summary.csv (mean, std)."""
    folds = cfg.folds or 0
    check_folds(cfg, task, index_cache_for(cfg))
    which = [cfg.fold] if cfg.fold is not None else list(range(folds))
    results = []
    for i in which:
        print(f"=== fold {i + 1}/{folds} ===")
        results.append(run_one(cfg.model_copy(update={"fold": i}), task, run_dir / f"fold_{i}"))
    if cfg.fold is None and results and is_main():
        write_folds_summary(run_dir / "folds_summary.csv", which, results)
        print(f"k-fold summary: {run_dir / 'folds_summary.csv'}")


def main(argv: list[str]) -> int:
    cfg, _ = load_config(FTEConfig, argv, "pkgs/FTE/finetune.py", FTE_DEPRECATED)
    task = task_for(load_task(cfg.task), recipe_of(cfg))
    run_dir = output_root(cfg.output_root) / "finetuning" / cfg.name
    if cfg.folds:
        if (run_dir / "config.yaml").exists():
            raise UserError(f"run directory {run_dir} holds a run without folds; choose another name "
                            "for the k-fold run (nothing was overwritten)")
        make_run_dir(run_dir)
        CrashLog.path = run_dir / "crash.log"
        run_folds(cfg, task, run_dir)
    else:
        CrashLog.path = None  # the session sets it once run_dir is known to be ours (never a refused dir)
        run_one(cfg, task, run_dir)
    shutdown()
    return 0
