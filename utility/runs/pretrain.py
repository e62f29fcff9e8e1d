"""SimCLR pretraining: config -> unlabeled images -> encoder + projector -> the shared engine.

``pkgs/SimCLR/main.py`` is a thin wrapper around :func:`main`. Outputs in
logs_and_checkpoints/pretraining/<name>/: config.yaml, train.log (epoch, step, loss, lr, datetime),
TensorBoard, encoder_<epoch>.tar every enc_save_frequency epochs, checkpoint_last.pt (resume),
encoder_pretrained.tar at the end.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from utility.config.loader import load_config
from utility.config.schemas import SIMCLR_DEPRECATED, SimCLRConfig
from utility.data.badfiles import BadFiles
from utility.data.cache import SharedStore
from utility.data.dataset import ImageDataset, Preprocess
from utility.data.index import Split, find_images
from utility.data.loader import build_loader, fill_cache
from utility.errors import UserError, user_errors
from utility.methods.simclr import SimCLRMethod, SimCLRModel, SimCLRViews, projection_head, save_encoder
from utility.models import build_encoder, count_parameters
from utility.paths import output_root, resolve_user_path
from utility.runs.evaluation import report_bad_files
from utility.training.distributed import is_main, shutdown, world_size
from utility.training.engine import Trainer, TrainerOptions
from utility.training.optim import build_optimizer
from utility.training.schedulers import build_scheduler
from utility.training.session import RESUME_FREE_KEYS, RunSession

FREE_KEYS = RESUME_FREE_KEYS | {"low_verbosity", "enc_save_frequency"}
PRETRAIN_COLUMNS = ["epoch", "step", "loss", "datetime", "lr", "global_step"]
# the predecessor's stepwise_scheduler names -> ours
STEPWISE = {"None": None, "CosineAnnealing": "cosine_total", "Exponential": "decay",
            "DecayingCosine": "decaying_cosine"}


def unlabeled_split(cfg: SimCLRConfig) -> Split:
    formats = cfg.data_format or [".png", ".jpg", ".jpeg", ".npy"]
    paths: list[Path] = []
    for d in cfg.dataset_base_dir:
        folder = resolve_user_path(d)
        if not folder.is_dir():
            raise UserError(f"dataset_base_dir not found: {folder}")
        found = find_images(folder, formats, cfg.slice_axis)
        if not found:
            raise UserError(f"no {', '.join(formats)} images under {folder} (data_format)")
        paths += found
    if cfg.random_subset < 1:
        rng = np.random.default_rng(cfg.seed)
        k = max(1, int(round(cfg.random_subset * len(paths))))
        paths = [paths[i] for i in sorted(rng.choice(len(paths), size=k, replace=False))]
    return Split("train", paths, [0] * len(paths))


MIN_BATCH = 2  # NT-Xent contrasts every image with the others of its batch: one image has nothing


def check_batch_size(cfg: SimCLRConfig) -> None:
    """Refuse, before any work, a batch size with which no SimCLR step can ever be taken."""
    if cfg.batch_size < MIN_BATCH:
        raise UserError(f"batch_size {cfg.batch_size}: a SimCLR batch needs at least {MIN_BATCH} images "
                        f"(NT-Xent contrasts each image with the others in its batch); no step could be taken")
    w = world_size()
    if w > 1 and cfg.batch_size // w < MIN_BATCH:
        raise UserError(f"batch_size {cfg.batch_size} over {w} processes is {cfg.batch_size // w} image(s) per "
                        f"process; SimCLR needs at least {MIN_BATCH} per process (batch_size >= {MIN_BATCH * w})")


def check_image_count(cfg: SimCLRConfig, split: Split) -> None:
    """Refuse data that can never fill one batch (a one-image folder, batch_size above the image count)."""
    where = ", ".join(str(resolve_user_path(d)) for d in cfg.dataset_base_dir)
    subset = f" after random_subset {cfg.random_subset}" if cfg.random_subset < 1 else ""
    n = len(split)
    if n < MIN_BATCH:
        raise UserError(f"dataset_base_dir {where}: {n} image{'s' if n != 1 else ''}{subset}; SimCLR needs at "
                        f"least {MIN_BATCH} images to form a batch")
    if cfg.batch_size > n:
        raise UserError(f"batch_size {cfg.batch_size} is larger than the {n} images found{subset} in "
                        f"dataset_base_dir {where}")


def learning_rate(cfg: SimCLRConfig) -> float:
    if cfg.lr is not None:
        return cfg.lr
    scale = {"linear": cfg.batch_size / 256, "sqrt": math.sqrt(cfg.batch_size), "none": 1.0}[cfg.lr_scaling]
    if cfg.base_lr is not None:
        return cfg.base_lr * scale
    return 0.075 * math.sqrt(cfg.batch_size) if cfg.optimizer == "LARS" else 1e-3


def main(argv: list[str]) -> int:
    cfg, _ = load_config(SimCLRConfig, argv, "pkgs/SimCLR/main.py", SIMCLR_DEPRECATED)
    run_dir = output_root(cfg.output_root) / "pretraining" / cfg.name
    requested = "dp" if (cfg.dataparallel and cfg.parallel == "auto") else cfg.parallel
    check_batch_size(cfg)
    session = RunSession.open(cfg, run_dir, requested, FREE_KEYS)
    if session.done:
        print(f"run {run_dir} is already complete: {run_dir / 'encoder_pretrained.tar'}")
        return 0
    check_batch_size(cfg)  # again now that the process group (and its size) is known
    split = unlabeled_split(cfg)
    check_image_count(cfg, split)
    shape = tuple(cfg.shape_desired or (cfg.image_size, cfg.image_size))
    prep = Preprocess(channels=1 if cfg.grayscale else 3, shape=shape,  # type: ignore[arg-type]
                      normalizer=cfg.normalizer or "naive", window=tuple(cfg.window) if cfg.window else None)
    if prep.normalizer == "imagenet":
        raise UserError("normalizer 'imagenet' standardises intensities, but SimCLR's colour jitter needs "
                        "[0, 1] images; use naive, 01_clipped_CT or windowed")
    cache = None
    if cfg.opmode != "disk":
        cache = SharedStore(split.paths, prep.channels, shape, repr(prep),  # type: ignore[arg-type]
                            resolve_user_path(cfg.cache_dir) if cfg.cache_dir else None, "pretraining images")
    ds = ImageDataset(split, prep, False, 1, cache, debug=cfg.debug, test_nan_inf=cfg.test_nan_inf)
    workers = 0 if cfg.debug else cfg.num_workers
    if cfg.opmode == "pre_cache":
        fill_cache(ds, workers, cfg.batch_size)
    loader = build_loader(ds, cfg.batch_size, cfg.seed, True, workers, cfg.prefetch_factor,
                          pin_memory=session.device.type == "cuda")

    encoder, width = build_encoder(cfg.resnet, cfg.in_channels)
    head = projection_head(width, cfg.projection_hidden or width, cfg.projection_dim, cfg.projection_head)
    model = SimCLRModel(encoder, head)
    train_module = session.place(model, cfg.syncbn, cfg.gpus)
    views = SimCLRViews(cfg.image_size, cfg.jitter_strength, cfg.jitter_p, cfg.grayscale, cfg.blur_p,
                        cfg.crop_scale, cfg.hflip_p).to(session.device)
    bad = BadFiles({"train": split.paths}, cfg.max_bad_fraction, run_dir)
    method = SimCLRMethod(views, cfg.temperature, cfg.in_channels, gather=cfg.loss_device != "per_replica", bad=bad)
    optimizer = user_errors(build_optimizer, model, cfg.optimizer, learning_rate(cfg), cfg.weight_decay, cfg.momentum)
    sched_name = STEPWISE[cfg.stepwise_scheduler] if cfg.stepwise_scheduler is not None else cfg.scheduler
    interval = "step" if cfg.stepwise_scheduler is not None else cfg.scheduling_interval
    scheduler = user_errors(build_scheduler, optimizer, sched_name, interval=interval, steps_per_epoch=len(loader),
                            epochs=cfg.epochs, decay_per_epoch=cfg.decay_per_epoch,
                            annealing_time=cfg.annealing_time, warmup_epochs=cfg.warmup_epochs)

    def snapshot(tr: Trainer) -> None:
        report_bad_files(bad, tr.epoch)
        if cfg.enc_save_frequency and tr.epoch % cfg.enc_save_frequency == 0:
            save_encoder(model, run_dir / f"encoder_{tr.epoch}.tar")

    opts = TrainerOptions(epochs=cfg.epochs, seed=cfg.seed, scheduler_interval=interval,
                          verbose=cfg.verbose and not cfg.low_verbosity, debug=cfg.debug,
                          log_losses=cfg.log_losses, checkpoint_every_steps=cfg.checkpoint_every_steps,
                          config=cfg.model_dump(mode="json"), train_columns=PRETRAIN_COLUMNS,
                          epoch_end=snapshot)
    trainer = session.trainer(model, method, optimizer, scheduler, opts, train_module)
    if cfg.verbose and is_main():
        p = count_parameters(model)
        print(f"SimCLR: {len(ds)} images, encoder {cfg.resnet} ({p['total']:,} parameters with the projector), "
              f"lr {learning_rate(cfg):.4g}, device {session.device}; run dir {run_dir}")

    def finish(tr: Trainer) -> None:
        if tr.global_step == 0:  # never an untrained encoder under the name of a pretrained one
            raise UserError(f"no SimCLR step was taken in {cfg.epochs} epoch(s) (every batch had fewer than "
                            f"{MIN_BATCH} valid images); encoder_pretrained.tar not written")
        if is_main():
            save_encoder(model, run_dir / "encoder_pretrained.tar")

    session.run(trainer, loader, None, finish)
    if is_main():
        print(f"encoder written to {run_dir / 'encoder_pretrained.tar'}")
    shutdown()
    return 0
