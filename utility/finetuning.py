"""Finetuning: config -> task -> data -> model -> engine -> test with the last and best model.

``pkgs/FTE/finetune.py`` is a thin wrapper around :func:`main`.
"""
from __future__ import annotations

import math
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import torch
import yaml
from torch.utils.data import DataLoader

from utility.augment import build_augment
from utility.checkpoint import load_checkpoint, seed_everything
from utility.classification import ClassificationMethod
from utility.config import dump_config, load_config
from utility.data.badfiles import BadFiles
from utility.data.cache import SharedStore
from utility.data.loader import CacheAwareLoader
from utility.data.dataset import ImageDataset, Preprocess
from utility.data.index import IndexedTask, Split, index_task
from utility import parallel
from utility.distributed import is_main, main_decides, shutdown, world_size
from utility.engine import Amp, EpochSampler, Trainer, TrainerOptions
from utility.entry import CrashLog
from utility.errors import UserError, user_errors
from utility.models import Classifier, build_encoder, count_parameters, load_into_classifier
from utility.optim import build_optimizer
from utility.paths import DEFAULT_DATA_ROOT, DEFAULT_OUTPUT_ROOT, REPO_ROOT
from utility.rundir import write_table
from utility.schedulers import build_scheduler
from utility.schemas import FTE_DEPRECATED, FTEConfig
from utility.tasks import TaskSpec, load_task

# Keys that may change between a run and its resumption without making it a different run.
RESUME_FREE_KEYS = {"epochs", "num_workers", "prefetch_factor", "verbose", "device", "debug", "log_losses",
                    "checkpoint_every_steps", "output_root", "data_root", "save_predictions", "opmode"}


def resolve_user_path(p: str) -> Path:
    """Relative paths: the cwd first, then the repository root (where predecessor configs ran)."""
    path = Path(p).expanduser()
    if path.is_absolute() or path.exists():
        return path.resolve()
    return (REPO_ROOT / path).resolve()




def check_existing_run(run_dir: Path, cfg: FTEConfig) -> Optional[str]:
    """None for a fresh run; 'resume' to continue; 'done' if the run already finished.
    A different run under the same name is refused rather than overwritten."""
    ck_path = run_dir / "checkpoint_last.pt"
    cfg_path = run_dir / "config.yaml"
    if cfg_path.exists():
        try:
            old = yaml.safe_load(cfg_path.read_text())
        except yaml.YAMLError:
            old = None
        if not isinstance(old, dict) or "name" not in old or "task" not in old:
            raise UserError(f"run directory {run_dir} holds a config.yaml that is not a run config of ours; "
                            "choose another name or move it away (nothing was overwritten)")
        new = cfg.model_dump(mode="json")
        diffs = [k for k in new if k not in RESUME_FREE_KEYS and k in old and old.get(k) != new[k]]
        if diffs:
            shown = "; ".join(f"{k}: {old.get(k)!r} -> {new[k]!r}" for k in diffs[:4])
            raise UserError(f"run directory {run_dir} holds a run with a different config ({shown}); "
                            "choose another name to start a new run (nothing was overwritten)")
    elif run_dir.is_dir() and any(p.name != "crash.log" for p in run_dir.iterdir()):  # ours: an earlier error
        raise UserError(f"run directory {run_dir} is not empty and holds no run config of ours; "
                        "choose another name or move it away (nothing was overwritten)")
    if not ck_path.exists():
        for stale in ("train.log", "val.log", "crash.log"):  # ours, from an attempt that ended before epoch 1
            (run_dir / stale).unlink(missing_ok=True)
        return None
    ck = load_checkpoint(ck_path)
    if ck.get("finished") and ck.get("epoch", 0) >= cfg.epochs:
        return "done"
    return "resume"


@dataclass
class Data:
    indexed: IndexedTask
    loaders: dict[str, CacheAwareLoader]
    datasets: dict[str, ImageDataset]


def image_dataset(cfg: FTEConfig, task: TaskSpec, split: Split, name: str, prep: Preprocess, num_classes: int,
                  cache_dir: Optional[Path]) -> ImageDataset:
    """The classification dataset of one split (segmentation: utility.data.segdata.make_seg_dataset)."""
    cache = None
    if cfg.opmode != "disk":
        cache = SharedStore(split.paths, prep.channels, prep.shape, repr(prep), cache_dir,
                            f"{task.name} split '{name}'")
    return ImageDataset(split, prep, task.type == "multilabel", num_classes, cache,
                        debug=cfg.debug, test_nan_inf=cfg.test_nan_inf)


def build_data(cfg: FTEConfig, task: TaskSpec, device: torch.device,
               make_dataset: Callable[..., ImageDataset] = image_dataset) -> Data:
    data_root = resolve_user_path(cfg.data_root) if cfg.data_root else DEFAULT_DATA_ROOT
    indexed = index_task(task, data_root, cfg.seed, cfg.data_format, cfg.folds, cfg.fold, cfg.train_fraction,
                         slice_axis=cfg.slice_axis)
    shape = tuple(cfg.shape_desired or task.shape_desired)
    prep = Preprocess(channels=3 if (cfg.in_channels or 3) == 3 else 1, shape=shape,  # type: ignore[arg-type]
                      normalizer=cfg.normalizer or task.normalizer,
                      window=tuple(cfg.window) if cfg.window else (tuple(task.window) if task.window else None))
    if prep.normalizer == "windowed" and prep.window is None:
        raise UserError("normalizer 'windowed' needs window: [low, high] in the config or the task")
    workers = 0 if cfg.debug else cfg.num_workers
    datasets, loaders = {}, {}
    cache_dir = resolve_user_path(cfg.cache_dir) if cfg.cache_dir else None
    for name in ("train", "val", "test"):
        ds = make_dataset(cfg, task, indexed.splits[name], name, prep, indexed.num_classes, cache_dir)
        if cfg.opmode == "pre_cache":
            fill_cache(ds, workers, cfg.batch_size)
        train = name == "train"
        sampler = EpochSampler(len(ds), cfg.seed, shuffle=train)
        extra: dict[str, Any] = {}
        if workers > 0:
            extra = {"num_workers": workers, "prefetch_factor": cfg.prefetch_factor or 2}
        # a last training batch of one sample would break BatchNorm: drop only that case
        batch = parallel.per_rank_batch(cfg.batch_size)
        drop_last = train and len(sampler) % batch == 1 and len(sampler) > 1
        loaders[name] = CacheAwareLoader(DataLoader(ds, batch_size=batch, sampler=sampler, drop_last=drop_last,
                                                    pin_memory=device.type == "cuda", **extra))
        datasets[name] = ds
    return Data(indexed, loaders, datasets)


def fill_cache(ds: ImageDataset, workers: int, batch_size: int) -> None:
    """pre_cache: fill the store with parallel workers before training starts."""
    loader = DataLoader(ds, batch_size=batch_size, num_workers=workers, shuffle=False)
    for _ in loader:
        pass


def build_model(cfg: FTEConfig, num_classes: int) -> tuple[Classifier, list[str]]:
    encoder, width = build_encoder(cfg.model_name, cfg.in_channels or 3)
    model = Classifier(encoder, width, num_classes, cfg.head_dropout)
    notes: list[str] = []
    if cfg.model_path is not None:
        notes = load_into_classifier(model, resolve_user_path(cfg.model_path), cfg.allow_partial_load)
    if cfg.frozen_encoder:
        model.freeze_encoder(cfg.unfreeze_last_n)
    model = parallel.sync_batchnorm(model, cfg.syncbn, cfg.device)  # type: ignore[assignment]
    return model, notes


def classification_method(cfg: FTEConfig, task: TaskSpec, data: Data, augment) -> ClassificationMethod:
    return ClassificationMethod(data.indexed.num_classes, task.type == "multilabel", data.indexed.classes,
                                cfg.in_channels or 3, augment, cfg.w_l,
                                {k: s.paths for k, s in data.indexed.splits.items()},
                                per_class_columns=task.per_class_metrics, save_predictions=cfg.save_predictions)


@dataclass(frozen=True)
class Pipeline:
    """What differs between task types: the dataset of a split, the network, the training step."""

    dataset: Callable[..., Any]
    model: Callable[[FTEConfig, int], tuple[torch.nn.Module, list[str]]]
    method: Callable[..., Any]


def pipeline_for(task: TaskSpec) -> Pipeline:
    if task.type == "segmentation":  # imported on demand: classification runs never load smp
        from utility.data.segdata import make_seg_dataset
        from utility.segmentation import build_seg_method, build_seg_model

        return Pipeline(make_seg_dataset, build_seg_model, build_seg_method)
    return Pipeline(image_dataset, build_model, classification_method)


def best_settings(cfg: FTEConfig, task: TaskSpec) -> tuple[str, str]:
    metric = cfg.best_metric or task.primary_metric
    mode = cfg.best_mode or ("min" if "loss" in metric else task.primary_mode)
    return metric, mode


def run_one(cfg: FTEConfig, task: TaskSpec, run_dir: Path) -> dict[str, float]:
    """Train, validate, test one run (one fold); returns the test metrics of the last model."""
    par_mode, device = parallel.setup(cfg.parallel, cfg.device)
    state = main_decides(check_existing_run, run_dir, cfg)
    if state == "done":
        print(f"run {run_dir} is already complete; results in {run_dir / 'test.log'}. "
              "Use another name to run it again.")
        return read_test_row(run_dir / "test.log")
    run_dir.mkdir(parents=True, exist_ok=True)
    CrashLog.path = run_dir / "crash.log"
    seed_everything(cfg.seed)
    if cfg.debug:
        torch.autograd.set_detect_anomaly(True)
    pipe = pipeline_for(task)
    data = build_data(cfg, task, device, pipe.dataset)
    n_cls = data.indexed.num_classes
    if cfg.w_l is not None and len(cfg.w_l) != n_cls:
        raise UserError(f"config key 'w_l' has {len(cfg.w_l)} weights but task {task.name} has {n_cls} classes")
    model, notes = pipe.model(cfg, n_cls)
    for note in notes:
        print(f"warning: loading {cfg.model_path}: {note}", file=sys.stderr)
    model.to(device)
    train_module = parallel.wrap(model, par_mode, device)
    if is_main():
        dump_config(cfg, run_dir / "config.yaml")
        (run_dir / "classes.txt").write_text("\n".join(data.indexed.classes) + "\n")
    augment, cpu_augment = build_augment(task.augmentation, tuple(cfg.shape_desired or task.shape_desired),
                                         cfg.no_augs, cfg.noise_injection, cfg.tf_device)
    if augment is not None:
        augment.to(device)
    data.datasets["train"].transform = cpu_augment  # per-sample, in the loader workers
    method = pipe.method(cfg, task, data, augment)
    method.bad = BadFiles({k: s.paths for k, s in data.indexed.splits.items()}, cfg.max_bad_fraction, run_dir)
    optimizer = user_errors(build_optimizer, model, cfg.optimizer, cfg.lr, cfg.weight_decay, cfg.momentum)
    steps = 1 if cfg.short_training else len(data.loaders["train"])
    scheduler = user_errors(build_scheduler, optimizer, cfg.scheduler, interval=cfg.scheduling_interval, steps_per_epoch=steps,
                                epochs=cfg.epochs, decay_per_epoch=cfg.decay_per_epoch,
                                annealing_time=cfg.annealing_time, warmup_epochs=cfg.warmup_epochs)
    metric, mode = best_settings(cfg, task)
    opts = TrainerOptions(epochs=cfg.epochs, seed=cfg.seed, scheduler_interval=cfg.scheduling_interval,
                          short_training=cfg.short_training, verbose=cfg.verbose, debug=cfg.debug,
                          log_losses=cfg.log_losses, checkpoint_every_steps=cfg.checkpoint_every_steps,
                          best_metric=metric, best_mode=mode, config=cfg.model_dump(mode="json"),
                          epoch_end=lambda tr: report_bad_files(method, tr.epoch))
    trainer = Trainer(model, method, optimizer, scheduler, Amp(device, cfg.amp), run_dir, opts, train_module)
    if state == "resume" and trainer.resume():
        print(f"resuming {run_dir} at epoch {trainer.epoch + 1} step {trainer.batch_in_epoch}")
    if cfg.verbose and is_main():
        sizes = ", ".join(f"{k} {len(s)}" for k, s in data.indexed.splits.items())
        p = count_parameters(model)
        print(f"task {task.name} ({task.type}, {n_cls} classes): {sizes}; model {cfg.model_name} "
              f"({p['trainable']:,}/{p['total']:,} trainable); device {device}, parallel {par_mode} "
              f"x{world_size()}; run dir {run_dir}")
    try:
        trainer.fit(data.loaders["train"], data.loaders["val"])
        if is_main():
            torch.save(model.state_dict(), run_dir / "finetuned_model.tar")
        results = test(trainer, data, run_dir, metric)
        trainer.finished = True
        trainer.save()
    finally:
        trainer.close()
    report_bad_files(method)
    return results


def test(trainer: Trainer, data: Data, run_dir: Path, metric: str) -> dict[str, float]:
    """Evaluate the test split with the last model (test.log) and the best one (test_best.log)."""
    last_epoch = trainer.epoch
    last_state = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}
    out: dict[str, float] = {}
    for which, log_name in (("last", "test.log"), ("best", "test_best.log")):
        epoch = trainer.load_weights(which)
        if epoch is None:
            print(f"note: no best checkpoint ({metric} was never finite); test_best.log not written")
            continue
        m = trainer.evaluate(data.loaders["test"], f"test_{which}", "test")
        row = {**m, "epoch": epoch, "model": which}
        write_table(run_dir / log_name, list(row), [row])
        trainer.tb.scalars(m, epoch, f"test_{which}")
        if which == "last":
            out = m
        if trainer.opts.verbose and is_main():
            head = "  ".join(f"{k} {v:.4f}" for k, v in list(m.items())[:5])
            print(f"test ({which} model, epoch {epoch}): {head}")
    trainer.model.load_state_dict(last_state)
    trainer.epoch = last_epoch
    return out


def report_bad_files(method: ClassificationMethod, epoch: Optional[int] = None) -> None:
    line = method.bad.write_report() if method.bad is not None else None
    if line:
        print(f"epoch {epoch}: {line}" if epoch is not None else line, file=sys.stderr)


def read_test_row(path: Path) -> dict[str, float]:
    import csv

    if not path.exists():
        return {}
    with path.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    out = {}
    for k, v in (rows[0] if rows else {}).items():
        try:
            out[k] = float(v)
        except (TypeError, ValueError):
            pass
    return out


def run_folds(cfg: FTEConfig, task: TaskSpec, run_dir: Path) -> None:
    """k-fold cross-validation: each fold in run_dir/fold_<i>/, then folds_summary.csv (mean, std)."""
    folds = cfg.folds or 0
    which = [cfg.fold] if cfg.fold is not None else list(range(folds))
    results = []
    for i in which:
        print(f"=== fold {i + 1}/{folds} ===")
        results.append(run_one(cfg.model_copy(update={"fold": i}), task, run_dir / f"fold_{i}"))
    if cfg.fold is None and results and is_main():
        keys = [k for k in results[0] if k not in ("epoch",)]
        rows = [{"fold": str(i), **r} for i, r in zip(which, results)]
        for stat, fn in (("mean", statistics.fmean), ("std", statistics.pstdev)):
            row: dict[str, Any] = {"fold": stat}
            for k in keys:
                vals = [r[k] for r in results if k in r and not math.isnan(r[k])]
                row[k] = fn(vals) if vals else float("nan")
            rows.append(row)
        write_table(run_dir / "folds_summary.csv", ["fold", *keys], rows)
        print(f"k-fold summary: {run_dir / 'folds_summary.csv'}")


def main(argv: list[str]) -> int:
    cfg, _ = load_config(FTEConfig, argv, "pkgs/FTE/finetune.py", FTE_DEPRECATED)
    task = load_task(cfg.task)
    # outputs are new folders: a relative output_root is under the cwd, never the repository by surprise
    out_root = Path(cfg.output_root).expanduser().resolve() if cfg.output_root else DEFAULT_OUTPUT_ROOT
    run_dir = out_root / "finetuning" / cfg.name
    if cfg.folds:
        if (run_dir / "config.yaml").exists():
            raise UserError(f"run directory {run_dir} holds a run without folds; choose another name "
                            "for the k-fold run (nothing was overwritten)")
        run_dir.mkdir(parents=True, exist_ok=True)
        CrashLog.path = run_dir / "crash.log"
        run_folds(cfg, task, run_dir)
    else:
        CrashLog.path = None  # run_one sets it once run_dir is known to be ours (never a refused dir)
        run_one(cfg, task, run_dir)
    shutdown()
    return 0
