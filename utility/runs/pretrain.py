"""Self-supervised pretraining: config -> unlabeled images -> the method's network (encoder + heads)
-> the shared engine. The method (``method``: simclr, barlow_twins, byol, vicreg, mocov2) comes from
utility/methods/ssl_registry.py.

``pkgs/SSL/pretrain.py`` and ``pkgs/SimCLR/main.py`` are thin wrappers around :func:`main`. Outputs in
logs_and_checkpoints/pretraining/<name>/: config.yaml, train.log (epoch, step, loss, lr, datetime),
TensorBoard, encoder_<epoch>.tar every enc_save_frequency epochs, checkpoint_last.pt (resume; with EMA
targets and MoCo's queue), monitor.log (with ``monitor``), encoder_pretrained.tar at the end. The LR rule:
utility/runs/pretrain_config.py; the method and the batch checks: utility/runs/ssl_config.py.
"""
from __future__ import annotations

from utility.config.loader import load_config
from utility.config.recipe import excludes_bn_bias, recipe_of
from utility.config.schemas import PRETRAIN_DEPRECATED, PretrainConfig
from utility.config.tasks import load_task
from utility.data.badfiles import BadFiles
from utility.data.dataset import Preprocess
from utility.errors import user_errors
from utility.methods.views import TwoViews
from utility.models import build_encoder, count_parameters
from utility.paths import output_root
from utility.runs.callbacks import BadFileReports, EncoderSnapshots, MethodSteps, PretrainedEncoder
from utility.methods.momentum import MomentumNet
from utility.runs.monitor import Monitor
from utility.runs.pretrain_config import PROG, build_lr_schedule, lr_plan, raw_config, resolve_lr_rule
from utility.runs.pretrain_data import build_pretrain_data
from utility.runs.pretrain_start import predecessor_parallel, start_from_encoder
from utility.runs.ssl_config import check_batch_size, resolve_method
from utility.runs.startup import Startup
from utility.tracking import require_trackers, tracking_for
from utility.distributed import is_main, shutdown
from utility.training.engine import TrainerOptions
from utility.training.optim import build_optimizer
from utility.training.session import RESUME_FREE_KEYS, RunSession

# tf_device has no effect here (SimCLR's views always run batched on the device)
FREE_KEYS = RESUME_FREE_KEYS | {"low_verbosity", "enc_save_frequency", "index_cache_dir", "reindex", "tf_device"}
PRETRAIN_COLUMNS = ["epoch", "step", "loss", "datetime", "lr", "global_step"]


def main(argv: list[str], prog: str = PROG) -> int:
    cfg, _ = load_config(PretrainConfig, argv, prog, PRETRAIN_DEPRECATED)
    method_cls, settings, cfg = resolve_method(cfg)
    if cfg.monitor is not None:
        load_task(cfg.monitor.task)  # an unknown task is refused before any work
    rule, why = resolve_lr_rule(cfg, raw_config(argv, prog))
    cfg = cfg.model_copy(update={"lr_rule": rule})  # config.yaml records the rule in force
    lr = lr_plan(cfg, rule, why)
    run_dir = output_root(cfg.output_root) / "pretraining" / cfg.name
    requested = predecessor_parallel(cfg)
    check_batch_size(cfg, method_cls)
    require_trackers(cfg.trackers)  # before any work: exit 2 if one is not installed
    session = RunSession.open(cfg, run_dir, requested, FREE_KEYS)
    if session.done:
        print(f"run {run_dir} is already complete: {run_dir / 'encoder_pretrained.tar'}")
        return 0
    if is_main():
        print(lr.line, flush=True)
    check_batch_size(cfg, method_cls)  # again now that the process group (and its size) is known
    startup = Startup(cfg.verbose)
    startup.attach(run_dir)
    split, prep, ds, loader, workers = build_pretrain_data(cfg, session.device, startup, method_cls, settings)
    shape = prep.shape

    encoder, width = build_encoder(cfg.resnet, cfg.in_channels)
    model = method_cls.build_model(encoder, width, settings)
    if cfg.init_encoder is not None:
        start_from_encoder(model.encoder, cfg.init_encoder, run_dir)
        if isinstance(model, MomentumNet):  # the EMA target starts from the loaded weights too
            model.sync_target()
    train_module = session.place(model, cfg.syncbn, cfg.gpus)
    views = TwoViews(cfg.image_size, cfg.jitter_strength, cfg.jitter_p, cfg.grayscale, cfg.blur_p,
                     cfg.crop_scale, cfg.hflip_p).to(session.device)
    bad = BadFiles({"train": split.paths}, cfg.max_bad_fraction, run_dir)
    method = method_cls.create(views, settings, cfg.in_channels, bad)
    monitor = None
    if cfg.monitor is not None and is_main():
        mprep = Preprocess(channels=cfg.in_channels, shape=shape, normalizer=prep.normalizer, window=prep.window)
        monitor = Monitor(cfg.monitor, mprep, cfg.data_root, cfg.seed, cfg.batch_size, workers, cfg.in_channels,
                          session.device, run_dir, cfg.epochs, seen=split.paths, part=method.exported())
    optimizer = user_errors(build_optimizer, model, cfg.optimizer, lr.lr0, cfg.weight_decay, cfg.momentum,
                            exclude_bn_bias=excludes_bn_bias(recipe_of(cfg), cfg.optimizer),
                            fused=session.speed.fused_optimizer)
    interval = lr.interval
    scheduler = build_lr_schedule(optimizer, lr, cfg, len(loader), len(ds))

    opts = TrainerOptions(epochs=cfg.epochs, seed=cfg.seed, scheduler_interval=interval,
                          verbose=cfg.verbose and not cfg.low_verbosity, debug=cfg.debug,
                          log_losses=cfg.log_losses, checkpoint_every_steps=cfg.checkpoint_every_steps,
                          config=cfg.model_dump(mode="json"), train_columns=PRETRAIN_COLUMNS)
    callbacks = [MethodSteps(method), BadFileReports(bad), *([monitor] if monitor else []),
                 EncoderSnapshots(model, run_dir, cfg.enc_save_frequency, recipe_of(cfg), method.exported()), tracking_for(cfg, run_dir),
                 PretrainedEncoder(model, run_dir / "encoder_pretrained.tar", method_cls.label, method_cls.min_batch,
                                   cfg.epochs, method.exported())]
    trainer = session.trainer(model, method, optimizer, scheduler, opts, train_module, callbacks)
    if cfg.verbose and is_main():
        p = count_parameters(model)
        print(f"{method_cls.label}: {len(ds)} images, encoder {cfg.resnet} ({p['total']:,} parameters with the heads), "
              f"lr {lr.lr0:.4g}, device {session.device}; run dir {run_dir}")
    startup.add("augmentation", None, f"{method_cls.label} views batched on the training device ({session.device}, kornia)")
    session.run(trainer, startup.time_first_batch(loader), None)
    if is_main():
        print(f"encoder written to {run_dir / 'encoder_pretrained.tar'}")
    shutdown()
    return 0
