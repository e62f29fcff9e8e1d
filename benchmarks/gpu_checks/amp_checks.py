"""Mixed precision through the engine: finetuning (classification, multi-label, U-Net segmentation) and
every registered SSL method, a few steps with ``amp: fp16`` and ``amp: bf16``. Losses and gradients
finite, the grad scaler active for fp16, and the first step's loss (same weights, same batch) within
tolerance of a float32 run."""
from __future__ import annotations

import copy
from typing import Any, Callable

import torch

from .common import Batches, Ctx, Skip, expect, grads_finite, loader_of, register, \
    run_engine, train_log
from utility.methods.classification import ClassificationMethod
from utility.methods.segmentation import SegLoss, SegmentationMethod
from utility.methods.ssl_registry import METHODS, resolve_settings
from utility.methods.views import TwoViews
from utility.models import build_encoder, build_network

# |amp - fp32| <= RTOL * |fp32| + ATOL on the first step's loss
TOL = {"fp16": (0.02, 0.02), "bf16": (0.05, 0.05)}
CLASSES = 3


def sizes(ctx: Ctx) -> tuple[int, int, int]:
    """(image size, batch, steps)"""
    return (32, 4, 2) if ctx.tiny else (64, 16, 4)


def supervised(kind: str) -> Callable[[Ctx], tuple[torch.nn.Module, Any, Batches]]:
    def build(ctx: Ctx):
        size, batch, steps = sizes(ctx)
        g = torch.Generator().manual_seed(0)
        x = torch.rand(batch * steps, 3, size, size, generator=g)
        torch.manual_seed(0)
        names = [str(i) for i in range(CLASSES)]
        if kind == "segmentation":
            model, _ = build_network("resnet18", CLASSES, 3, segmentation=True, unet_decoder="smp")
            y = (x[:, 0] * CLASSES).long().clamp_max(CLASSES - 1)  # classes from the image: learnable
            return model, SegmentationMethod(CLASSES, names, 3, SegLoss()), Batches(x, y)
        model, _ = build_network("resnet18", CLASSES, 3)
        multilabel = kind == "multilabel"
        y = (torch.rand(len(x), CLASSES, generator=g) > 0.5).float() if multilabel else \
            torch.randint(0, CLASSES, (len(x),), generator=g)
        return model, ClassificationMethod(CLASSES, multilabel, names, 3), Batches(x, y)
    return build


def ssl(name: str) -> Callable[[Ctx], tuple[torch.nn.Module, Any, Batches]]:
    def build(ctx: Ctx):
        size, batch, steps = sizes(ctx)
        cls = METHODS[name]
        width_of_heads = 8 if ctx.tiny else 256
        given = {} if name == "simclr" else {k: width_of_heads for k in cls.Settings.model_fields
                                            if k.endswith(("hidden", "dim"))}
        if "queue_size" in cls.Settings.model_fields:
            given["queue_size"] = 4 * batch
        settings = resolve_settings(name, given, set())
        torch.manual_seed(0)
        enc, width = build_encoder("resnet18")
        model = cls.build_model(enc, width, settings)
        views = TwoViews(size // 2 + size // 4).to(ctx.device)
        g = torch.Generator().manual_seed(0)
        x = torch.rand(batch * steps, 3, size, size, generator=g)
        return model, cls.create(views, settings, 3, None), Batches(x, torch.zeros(len(x), dtype=torch.long))
    return build


def amp_check(build: Callable[[Ctx], tuple[torch.nn.Module, Any, Batches]], mode: str,
              name: str) -> Callable[[Ctx], dict]:
    def check(ctx: Ctx) -> dict[str, Any]:
        if ctx.cuda and mode == "bf16" and not torch.cuda.is_bf16_supported():
            raise Skip("this GPU has no bf16")
        _, batch, _ = sizes(ctx)
        model, method, ds = build(ctx)
        runs = {}
        for amp in ("off", mode):
            m = copy.deepcopy(model).to(ctx.device)
            torch.manual_seed(1)  # the same augmentation draws in both runs
            opt = torch.optim.SGD(m.parameters(), lr=1e-3, momentum=0.9)
            tr = run_engine(m, copy.deepcopy(method), loader_of(ds, batch, pin=ctx.cuda), ctx.device, amp,
                            ctx.work / name / amp, opt)
            losses = [float(r["loss"]) for r in train_log(tr.run_dir)]
            runs[amp] = (losses, grads_finite(m), tr.scaler)
        ref, got = runs["off"][0], runs[mode][0]
        rtol, atol = TOL[mode]
        scaler = runs[mode][2]
        figs = {"loss_fp32": ref[0], f"loss_{mode}": got[0], "abs_diff": abs(got[0] - ref[0])}
        if mode == "fp16":
            figs["grad_scale"] = scaler.get_scale() if scaler.is_enabled() else 0.0
        expect(all(map(lambda v: v == v and abs(v) != float("inf"), ref + got)), "a loss is not finite", figs)
        expect(runs["off"][1] and runs[mode][1], "a gradient is not finite", figs)
        expect(abs(got[0] - ref[0]) <= rtol * abs(ref[0]) + atol, f"first loss off by more than {rtol}", figs)
        if mode == "fp16" and ctx.cuda:
            expect(scaler.is_enabled() and scaler.get_scale() > 0, "the fp16 grad scaler is not active", figs)
        return figs
    return check


for _kind in ("classification", "multilabel", "segmentation"):
    for _mode in ("fp16", "bf16"):
        _n = f"amp_{_kind}_{_mode}"
        register(_n, amp_check(supervised(_kind), _mode, _n), cuda_only=True,
                 exercise=_mode == "fp16", est_s=6)
for _name in METHODS:
    for _mode in ("fp16", "bf16"):
        _n = f"amp_pretrain_{_name}_{_mode}"
        register(_n, amp_check(ssl(_name), _mode, _n), cuda_only=True,
                 exercise=_mode == "fp16" and _name in ("simclr", "byol"), est_s=6)
