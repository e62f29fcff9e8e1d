"""Commands that look inside the network: gradcam, cka, layer-knn, l2, importance, lr-find."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from utility.analysis import gradcam as gc
from utility.analysis import plots
from utility.analysis.cka import ESTIMATOR_NAMES, cka_matrix
from utility.analysis.evaluate import evaluate, make_method
from utility.analysis.features import block_features, block_names
from utility.analysis.layers import importance_rows, l2_rows, layer_knn_rows, read_weights
from utility.analysis.outputs import announce, write_csv
from utility.data.preprocess import conform_channels
from utility.analysis.source import check_split, open_subject, other_subject, resolve_weights
from utility.errors import UserError
from utility.paths import output_root, resolve_user_path


def gradcam(args: Any) -> int:
    subject = open_subject(args)
    check_split(args.split)
    if args.images < 1:
        raise UserError("--images must be at least 1")
    model = subject.network(need_head=True)
    shown = gc.pick_images(subject, args.images, args.split)
    first = next(i for v in shown.values() for i in v)
    sample = subject.data.datasets[args.split][first]["image"]
    layer_name, layer = gc.target_layer(model, args.layer, conform_channels(sample[None], subject.cfg.in_channels or 3)[0])
    records = gc.run_gradcam(subject, model, layer, shown, args.method, args.split)
    out = subject.out_dir("gradcam", args.out)
    rows = gc.save_records(records, out, args.method, layer_name)
    announce("gradcam", [write_csv(out / "gradcam.csv", rows), out / "grid.png", out / "cams.npz"])
    print(f"gradcam: {len(rows)} maps ({args.method}, layer {layer_name}) in {out / 'images'}")
    return 0


def cka(args: Any) -> int:
    subject = open_subject(args)
    check_split(args.split)
    if not args.other:
        raise UserError("cka compares two models: pass --other <run dir | weights file | random>")
    other = other_subject(subject, args.other)
    a, b = subject.network(), other.network()
    na, nb = block_names(a), block_names(b)
    estimator = getattr(args, "estimator", "debiased")
    acc = cka_matrix(a, b, na, nb, subject.loader(args.split), subject.device,
                     (subject.cfg.in_channels or 3, other.cfg.in_channels or 3), estimator)
    if acc.batches == 0:
        raise UserError(f"no minibatch of at least 4 images in split {args.split}; raise --batch_size")
    m = acc.result()
    out = subject.out_dir("cka", args.out)
    rows = [{"block": n, "estimator": estimator, **{c: float(v) for c, v in zip(nb, m[i])}} for i, n in enumerate(na)]
    written = [write_csv(out / "cka.csv", rows)]
    short = lambda names: [n.split(".", 1)[-1] for n in names]  # noqa: E731
    written.append(plots.heatmap(out / "cka.png", m, short(na), short(nb), f"{ESTIMATOR_NAMES[estimator]} on {args.split}",
                                 f"other: {Path(args.other).name}", "this model", vmin=0, vmax=1))
    announce("cka", written)
    if acc.skipped:
        print(f"note: {acc.skipped} images in minibatches under 4 were left out")
    print(f"cka ({ESTIMATOR_NAMES[estimator]}) diagonal: " + ", ".join(f"{n.split('.')[-1]} {m[i, i]:.3f}" for i, n in enumerate(na) if i < len(nb)))
    return 0


def layer_knn(args: Any) -> int:
    subject = open_subject(args)
    subject.require_labels("layer-knn")
    check_split(args.split)
    model = subject.network()
    names = block_names(model)
    ch = subject.cfg.in_channels or 3
    tr, ty = block_features(model, subject.loader("train"), subject.device, ch, names)
    q, qy = block_features(model, subject.loader(args.split), subject.device, ch, names)
    metric = subject.task.primary_metric
    rows = layer_knn_rows(tr, ty, q, qy, args.k, args.temperature, subject.classes, subject.multilabel, metric)
    out = subject.out_dir("layer-knn", args.out)
    written = [write_csv(out / "layer_knn.csv", rows)]
    series = [(np.arange(len(names)), np.array([r[metric] for r in rows if r["k"] == k]), f"k={k}") for k in args.k]
    written.append(plots.lines(out / "layer_knn.png", series, "block", f"kNN {metric} on {args.split}",
                               "kNN on each block's pooled output", xticks=[n.split(".", 1)[-1] for n in names]))
    announce("layer-knn", written)
    return 0


def l2(args: Any) -> int:
    files = list(args.files)
    if not files:
        subject = open_subject(args)
        init = args.other or subject.cfg.model_path
        if init is None:
            raise UserError("the run started from random weights, which are not stored; pass the initial file "
                            "with --other, or two files: l2 A.tar B.tar")
        files = [str(resolve_user_path(init)), str(subject.weights)]
        out = subject.out_dir("l2", args.out)
    else:
        if len(files) != 2:
            raise UserError(f"l2 takes two weight files, got {len(files)}")
        out = Path(args.out).resolve() if args.out else Path(files[1]).resolve().parent / "analysis" / "l2"
    a, b = (read_weights(resolve_weights(f)) for f in files)
    rows, only = l2_rows(a, b)
    written = [write_csv(out / "l2.csv", rows)]
    blocks = [r for r in rows if r["block"] != "all"]
    written.append(plots.bars(out / "l2.png", [r["block"] for r in blocks], [r["relative"] for r in blocks],
                              "||B - A|| / ||A||", "relative change per block"))
    announce("l2", written)
    if only:
        print(f"note: {len(only)} weights are in only one file and were not compared (e.g. {only[0]})")
    print(f"l2 all: {rows[-1]['l2']:.6g} (relative {rows[-1]['relative']:.4g})")
    return 0


def importance(args: Any) -> int:
    subject = open_subject(args)
    check_split(args.split)
    model = subject.network(need_head=True)
    init_src = args.init or subject.cfg.model_path or "random"
    init = None if init_src == "random" else read_weights(resolve_weights(init_src))
    blocks = block_names(model) + [n for n, _ in model.named_children() if n != "encoder" and n != "dropout"]
    if init is not None:
        skipped = [b for b in blocks if not any(k.startswith(b + ".") for k in init)]
        blocks = [b for b in blocks if b not in skipped]
        if skipped:
            print(f"note: {init_src} has no weights for {', '.join(skipped)}; those blocks are not re-initialised")
    metric = subject.task.primary_metric
    method = make_method(subject)
    rows = importance_rows(model, blocks, init, lambda m: evaluate(m, subject, args.split, method)[0], metric,
                           subject.task.primary_mode, subject.cfg.seed)
    for r in rows:
        r["init"] = init_src
    out = subject.out_dir("importance", args.out)
    written = [write_csv(out / "importance.csv", rows)]
    written.append(plots.bars(out / "importance.png", [r["block"] for r in rows[1:]], [r["drop"] for r in rows[1:]],
                              f"drop in {metric}", f"re-initialised to {Path(init_src).name}"))
    announce("importance", written)
    return 0


def lr_find(args: Any) -> int:
    from utility.analysis.lrfind import suggest, sweep
    from utility.config.recipe import excludes_bn_bias, recipe_of
    from utility.data.augment import build_augment
    from utility.methods.registry import pipeline_for
    from utility.models import build_network
    from utility.training.checkpoint import seed_everything
    from utility.training.engine import Amp, StepContext
    from utility.training.optim import build_optimizer

    subject = open_subject(args)
    cfg, task = subject.cfg, subject.task
    pipe = pipeline_for(task.type)
    seed_everything(cfg.seed)
    init = resolve_user_path(cfg.model_path) if cfg.model_path else None
    model, _ = build_network(cfg.model_name, len(subject.classes), cfg.in_channels or 3, init, cfg.allow_partial_load,
                             cfg.frozen_encoder, cfg.unfreeze_last_n, pipe.segmentation, cfg.head_dropout,
                             head_norm=cfg.head_norm)
    model.to(subject.device)
    recipe = recipe_of(cfg)  # the run's recipe: its augmentation, loss and weight decay
    augment, cpu_augment = build_augment(task.augmentation, tuple(cfg.shape_desired or task.shape_desired),
                                         cfg.no_augs, cfg.noise_injection, cfg.tf_device, recipe, task.name)
    if augment is not None:
        augment.to(subject.device)
    subject.data.datasets["train"].transform = cpu_augment
    method = pipe.method(cfg, task, subject.data.indexed, augment, None)
    opt = build_optimizer(model, cfg.optimizer, args.start_lr, cfg.weight_decay, cfg.momentum,
                          exclude_bn_bias=excludes_bn_bias(recipe, cfg.optimizer))
    ctx = StepContext(subject.device, Amp(subject.device, "off").autocast, training=True)
    rows = sweep(model, method, opt, subject.loader("train"), ctx, args.steps, args.start_lr, args.end_lr)
    if len(rows) < 2:
        raise UserError("the sweep stopped before two steps; lower --start_lr")
    lrs, sm, raw = (np.array([r[k] for r in rows]) for k in ("lr", "smoothed", "loss"))
    best = suggest(lrs, sm)
    # never inside a run directory, also with --run: <output root>/analysis/<name>/lr-find/
    out = Path(args.out).resolve() if args.out else output_root(cfg.output_root) / "analysis" / cfg.name / "lr-find"
    written = [write_csv(out / "lr_find.csv", rows), write_csv(out / "suggestion.csv", [{"suggested_lr": best,
                                                                                         "config_lr": cfg.lr}])]
    written.append(plots.lines(out / "lr_find.png", [(lrs, raw, "loss"), (lrs, sm, "smoothed")],
                               "learning rate", "training loss", "LR range test", logx=True,
                               marker=(best, float(np.interp(best, lrs, sm)) if np.isfinite(best) else float("nan"),
                                       f"suggested {best:.2g}"),
                               ylim=(0.9 * float(min(np.nanmin(raw), np.nanmin(sm))), 1.5 * float(sm[0]))))  # divergence off the top
    announce("lr-find", written)
    print(f"lr-find: suggested lr {best:.3g} (steepest descent of the smoothed loss); config lr {cfg.lr:g}")
    return 0
