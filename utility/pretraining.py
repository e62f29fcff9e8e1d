"""SimCLR pretraining: config -> unlabeled images -> encoder + projector -> the shared engine.

``pkgs/SimCLR/main.py`` is a thin wrapper around :func:`main`. Outputs in
logs_and_checkpoints/pretraining/<name>/: config.yaml, train.log (epoch, step, loss, lr, datetime),
TensorBoard, encoder_<epoch>.tar every enc_save_frequency epochs, checkpoint_last.pt (resume),
encoder_pretrained.tar at the end.
"""
from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from utility.checkpoint import seed_everything
from utility.config import dump_config, load_config
from utility.data.badfiles import BadFiles
from utility.data.cache import SharedStore
from utility.data.loader import CacheAwareLoader
from utility.data.dataset import ImageDataset, Preprocess
from utility.data.index import Split, find_images
from utility.distributed import is_main, main_decides, shutdown
from utility.engine import Amp, EpochSampler, Trainer, TrainerOptions
from utility.entry import CrashLog
from utility.errors import UserError, user_errors
from utility import parallel
from utility.finetuning import fill_cache, resolve_user_path
from utility.models import build_encoder, count_parameters
from utility.optim import build_optimizer
from utility.paths import DEFAULT_OUTPUT_ROOT
from utility.schedulers import build_scheduler
from utility.schemas import SIMCLR_DEPRECATED, SimCLRConfig
from utility.simclr import SimCLRMethod, SimCLRModel, SimCLRViews, projection_head, save_encoder

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


def learning_rate(cfg: SimCLRConfig) -> float:
    if cfg.lr is not None:
        return cfg.lr
    scale = {"linear": cfg.batch_size / 256, "sqrt": math.sqrt(cfg.batch_size), "none": 1.0}[cfg.lr_scaling]
    if cfg.base_lr is not None:
        return cfg.base_lr * scale
    return 0.075 * math.sqrt(cfg.batch_size) if cfg.optimizer == "LARS" else 1e-3


def check_run_dir(run_dir: Path, cfg: SimCLRConfig) -> str:
    """'fresh', 'resume' or 'done'; a different run under the same name is refused."""
    import yaml

    from utility.checkpoint import load_checkpoint

    cfg_path = run_dir / "config.yaml"
    if cfg_path.exists():
        old = yaml.safe_load(cfg_path.read_text()) or {}
        free = {"epochs", "num_workers", "prefetch_factor", "verbose", "low_verbosity", "device", "debug",
                "log_losses", "checkpoint_every_steps", "output_root", "opmode", "enc_save_frequency"}
        new = cfg.model_dump(mode="json")
        diffs = [k for k in new if k not in free and k in old and old[k] != new[k]]
        if diffs:
            raise UserError(f"run directory {run_dir} holds a run with a different config "
                            f"({', '.join(diffs[:4])}); choose another name (nothing was overwritten)")
    elif run_dir.is_dir() and any(p.name != "crash.log" for p in run_dir.iterdir()):  # ours: an earlier error
        raise UserError(f"run directory {run_dir} is not empty and holds no run config of ours; "
                        "choose another name (nothing was overwritten)")
    ck = run_dir / "checkpoint_last.pt"
    if not ck.exists():
        (run_dir / "train.log").unlink(missing_ok=True)
        return "fresh"
    state = load_checkpoint(ck)
    if state.get("finished") and state.get("epoch", 0) >= cfg.epochs:
        return "done"
    return "resume"


def main(argv: list[str]) -> int:
    cfg, _ = load_config(SimCLRConfig, argv, "pkgs/SimCLR/main.py", SIMCLR_DEPRECATED)
    # outputs are new folders: a relative output_root is under the cwd, never the repository by surprise
    out_root = Path(cfg.output_root).expanduser().resolve() if cfg.output_root else DEFAULT_OUTPUT_ROOT
    run_dir = out_root / "pretraining" / cfg.name
    requested = "dp" if (cfg.dataparallel and cfg.parallel == "auto") else cfg.parallel
    mode, device = parallel.setup(requested, cfg.device)
    state = main_decides(check_run_dir, run_dir, cfg)
    if state == "done":
        print(f"run {run_dir} is already complete: {run_dir / 'encoder_pretrained.tar'}")
        return 0
    run_dir.mkdir(parents=True, exist_ok=True)
    CrashLog.path = run_dir / "crash.log"
    seed_everything(cfg.seed)
    split = unlabeled_split(cfg)
    shape = tuple(cfg.shape_desired or (cfg.image_size, cfg.image_size))
    prep = Preprocess(channels=1 if cfg.grayscale else 3, shape=shape,  # type: ignore[arg-type]
                      normalizer=cfg.normalizer or "naive", window=tuple(cfg.window) if cfg.window else None)
    if prep.normalizer == "imagenet":
        raise UserError("normalizer 'imagenet' standardises intensities, but SimCLR's colour jitter needs "
                        "[0, 1] images; use naive, 01_clipped_CT or windowed")
    batch = parallel.per_rank_batch(cfg.batch_size)
    if cfg.batch_size > len(split):
        raise UserError(f"batch_size {cfg.batch_size} is larger than the {len(split)} images found")
    cache = None
    if cfg.opmode != "disk":
        cache = SharedStore(split.paths, prep.channels, shape, repr(prep),  # type: ignore[arg-type]
                            resolve_user_path(cfg.cache_dir) if cfg.cache_dir else None, "pretraining images")
    ds = ImageDataset(split, prep, False, 1, cache, debug=cfg.debug, test_nan_inf=cfg.test_nan_inf)
    workers = 0 if cfg.debug else cfg.num_workers
    if cfg.opmode == "pre_cache":
        fill_cache(ds, workers, cfg.batch_size)
    extra = {"num_workers": workers, "prefetch_factor": cfg.prefetch_factor or 2} if workers else {}
    # every batch is used; only a last batch of a single image is dropped (NT-Xent needs 2 images)
    sampler = EpochSampler(len(ds), cfg.seed)
    drop_last = len(sampler) % batch == 1
    loader = CacheAwareLoader(DataLoader(ds, batch_size=batch, sampler=sampler,
                        drop_last=drop_last, pin_memory=device.type == "cuda", **extra))

    encoder, width = build_encoder(cfg.resnet, cfg.in_channels)
    head = projection_head(width, cfg.projection_hidden or width, cfg.projection_dim, cfg.projection_head)
    model = SimCLRModel(encoder, head).to(device)
    model = parallel.sync_batchnorm(model, cfg.syncbn, cfg.device)  # type: ignore[assignment]
    train_module = parallel.wrap(model, mode, device)
    if mode == "dp" and cfg.gpus:
        train_module = torch.nn.DataParallel(model, device_ids=list(range(cfg.gpus)))
    views = SimCLRViews(cfg.image_size, cfg.jitter_strength, cfg.jitter_p, cfg.grayscale, cfg.blur_p,
                        cfg.crop_scale, cfg.hflip_p).to(device)
    method = SimCLRMethod(views, cfg.temperature, cfg.in_channels, gather=cfg.loss_device != "per_replica")
    method.bad = BadFiles({"train": split.paths}, cfg.max_bad_fraction, run_dir)
    optimizer = user_errors(build_optimizer, model, cfg.optimizer, learning_rate(cfg), cfg.weight_decay, cfg.momentum)
    sched_name = STEPWISE[cfg.stepwise_scheduler] if cfg.stepwise_scheduler is not None else cfg.scheduler
    interval = "step" if cfg.stepwise_scheduler is not None else cfg.scheduling_interval
    scheduler = user_errors(build_scheduler, optimizer, sched_name, interval=interval, steps_per_epoch=len(loader),
                                epochs=cfg.epochs, decay_per_epoch=cfg.decay_per_epoch,
                                annealing_time=cfg.annealing_time, warmup_epochs=cfg.warmup_epochs)

    def snapshot(tr: Trainer) -> None:
        line = method.bad.write_report() if method.bad is not None else None
        if line:
            print(f"epoch {tr.epoch}: {line}", file=sys.stderr)
        if cfg.enc_save_frequency and tr.epoch % cfg.enc_save_frequency == 0:
            save_encoder(model, run_dir / f"encoder_{tr.epoch}.tar")

    opts = TrainerOptions(epochs=cfg.epochs, seed=cfg.seed, scheduler_interval=interval,
                          verbose=cfg.verbose and not cfg.low_verbosity, debug=cfg.debug,
                          log_losses=cfg.log_losses, checkpoint_every_steps=cfg.checkpoint_every_steps,
                          config=cfg.model_dump(mode="json"), train_columns=PRETRAIN_COLUMNS,
                          epoch_end=snapshot)
    trainer = Trainer(model, method, optimizer, scheduler, Amp(device, cfg.amp), run_dir, opts, train_module)
    if is_main():
        dump_config(cfg, run_dir / "config.yaml")
    if state == "resume" and trainer.resume():
        print(f"resuming {run_dir} at epoch {trainer.epoch + 1} step {trainer.batch_in_epoch}")
    if cfg.verbose and is_main():
        p = count_parameters(model)
        print(f"SimCLR: {len(ds)} images, encoder {cfg.resnet} ({p['total']:,} parameters with the projector), "
              f"lr {learning_rate(cfg):.4g}, device {device}; run dir {run_dir}")
    try:
        trainer.fit(loader, None)
        if is_main():
            save_encoder(model, run_dir / "encoder_pretrained.tar")
        trainer.finished = True
        trainer.save()
    finally:
        trainer.close()
    if is_main():
        print(f"encoder written to {run_dir / 'encoder_pretrained.tar'}")
    shutdown()
    return 0
