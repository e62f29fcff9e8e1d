"""Throughput and the GPU speed features: ResNet-50 AMP training through the engine vs a bare PyTorch loop
on the same GPU and data (channels_last on and off, target ratio >= 0.95), peak memory, the loader wait;
torch.compile, fused optimizers, cudnn.benchmark and JPEG decoding on the GPU, each timed against the
plain path and checked for the same numbers."""
from __future__ import annotations

import io
import statistics
import time
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .common import Batches, Ctx, Result, expect, loader_of, peak_mem_mb, register, \
    rel_diff, run_engine
from utility.methods.classification import ClassificationMethod
from utility.models import build_network
from utility.training.speed import SpeedPlan, apply_to_model

RATIO_TARGET = 0.95
CLASSES = 10


def setup(ctx: Ctx) -> dict[str, Any]:
    if ctx.tiny:
        return {"model": "resnet18", "size": 32, "batch": 8, "steps": 3, "repeats": 1, "workers": 0}
    return {"model": "resnet50", "size": 224, "batch": 64, "steps": 25, "repeats": 3, "workers": 6}


def make_model(name: str, channels_last: bool, device: torch.device) -> torch.nn.Module:
    torch.manual_seed(0)
    model, _ = build_network(name, CLASSES, 3)
    model.to(device)
    return apply_to_model(model, SpeedPlan(channels_last=channels_last))


def bare(model: torch.nn.Module, loader: Any, ctx: Ctx, amp: bool) -> float:
    """Seconds per step of the plain loop everyone writes (autocast fp16 + GradScaler on CUDA)."""
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    scaler = torch.amp.GradScaler(ctx.device.type, enabled=amp)
    model.train()
    ctx.sync()
    t0 = time.perf_counter()
    for batch in loader:
        x = batch["image"].to(ctx.device, non_blocking=True)
        y = batch["target"].to(ctx.device, non_blocking=True)
        with torch.autocast(ctx.device.type, dtype=torch.float16, enabled=amp):
            loss = F.cross_entropy(model(x).float(), y)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
    float(loss.detach())
    return (time.perf_counter() - t0) / len(loader)


def engine(model: torch.nn.Module, loader: Any, ctx: Ctx, tag: str) -> tuple[float, float]:
    """(seconds per step, share of step time waiting for data) through the Trainer."""
    method = ClassificationMethod(CLASSES, False, [str(i) for i in range(CLASSES)], 3)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    ctx.sync()
    t0 = time.perf_counter()
    tr = run_engine(model, method, loader, ctx.device, "fp16" if ctx.cuda else "off", ctx.work / tag, opt)
    return (time.perf_counter() - t0) / len(loader), tr.data_wait.share


def throughput_check(ctx: Ctx) -> dict[str, Any]:
    s = setup(ctx)
    g = torch.Generator().manual_seed(0)
    n = s["batch"] * s["steps"]
    ds = Batches(torch.randn(n, 3, s["size"], s["size"], generator=g), torch.randint(0, CLASSES, (n,), generator=g))
    loader = loader_of(ds, s["batch"], pin=ctx.cuda, workers=s["workers"])
    figs: dict[str, Any] = {"model": s["model"], "size": s["size"], "batch": s["batch"]}
    for cl in (False, True):
        few = loader_of(Batches(ds.x[:2 * s["batch"]], ds.y[:2 * s["batch"]]), s["batch"], pin=ctx.cuda)
        bare(make_model(s["model"], cl, ctx.device), few, ctx, ctx.cuda)  # warm-up: cuDNN, allocator,
        engine(make_model(s["model"], cl, ctx.device), few, ctx, f"tp_warm_{cl}")  # TensorBoard import
        b_t, e_t, waits = [], [], []
        for r in range(s["repeats"]):  # alternate, so drift in clocks hits both equally
            b_t.append(bare(make_model(s["model"], cl, ctx.device), loader, ctx, ctx.cuda))
            dt, wait = engine(make_model(s["model"], cl, ctx.device), loader, ctx, f"tp_{cl}_{r}")
            e_t.append(dt)
            waits.append(wait)
        b, e = statistics.median(b_t), statistics.median(e_t)
        key = "cl" if cl else "nchw"
        figs.update({f"{key}_engine_img_s": s["batch"] / e, f"{key}_bare_img_s": s["batch"] / b,
                     f"{key}_ratio": b / e, f"{key}_data_wait": statistics.median(waits)})
    figs["channels_last_speedup"] = figs["cl_engine_img_s"] / figs["nchw_engine_img_s"]
    figs["peak_mem_mb"] = peak_mem_mb(ctx)
    for key in ("nchw", "cl"):  # a CUDA target: CPU timings on a shared machine judge nothing
        expect(not ctx.cuda or figs[f"{key}_ratio"] >= RATIO_TARGET, f"engine/bare {key} below {RATIO_TARGET}", figs)
    return figs


def time_steps(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int) -> tuple[float, float]:
    """(first loss, seconds per later step) of fp16 training steps on one fixed batch."""
    opt = torch.optim.SGD(model.parameters(), lr=0.0)  # lr 0: every step sees the same weights
    first = None
    t0 = 0.0
    for i in range(steps + 1):
        with torch.autocast("cuda", dtype=torch.float16):
            loss = F.cross_entropy(model(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if i == 0:
            first = float(loss)
            torch.cuda.synchronize()
            t0 = time.perf_counter()
    torch.cuda.synchronize()
    return float(first), (time.perf_counter() - t0) / steps


def fixed_batch(ctx: Ctx, size: int = 224, batch: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return (torch.randn(batch, 3, size, size, generator=g).to(ctx.device),
            torch.randint(0, CLASSES, (batch,), generator=g).to(ctx.device))


def compile_check(ctx: Ctx) -> dict[str, Any]:
    x, y = fixed_batch(ctx, 128, 64)
    eager_loss, eager_s = time_steps(make_model("resnet18", True, ctx.device), x, y, 20)
    t0 = time.perf_counter()
    compiled = torch.compile(make_model("resnet18", True, ctx.device))
    comp_loss, comp_s = time_steps(compiled, x, y, 20)
    figs = {"eager_step_ms": 1e3 * eager_s, "compiled_step_ms": 1e3 * comp_s, "speedup": eager_s / comp_s,
            "compile_and_run_s": time.perf_counter() - t0, "loss_diff": abs(comp_loss - eager_loss)}
    expect(abs(comp_loss - eager_loss) <= 0.02 * abs(eager_loss) + 0.02, "compiled loss differs", figs)
    return figs


def fused_check(ctx: Ctx) -> dict[str, Any]:
    from utility.training.optim import build_optimizer

    figs: dict[str, Any] = {}
    params = {}
    for fused in (False, True):
        model = make_model("resnet50", False, ctx.device)
        opt = build_optimizer(model, "AdamW", 1e-3, 1e-2, fused=fused)
        g = torch.Generator(device=ctx.device).manual_seed(0)
        grads = [torch.randn(p.shape, generator=g, device=ctx.device) for p in model.parameters()]
        for p, gr in zip(model.parameters(), grads):
            p.grad = gr
        opt.step()
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(20):
            opt.step()
        torch.cuda.synchronize()
        figs[f"{'fused' if fused else 'foreach'}_step_ms"] = 1e3 * (time.perf_counter() - t0) / 20
        figs[f"{'fused' if fused else 'foreach'}_is_fused"] = bool(opt.defaults.get("fused"))
        params[fused] = torch.cat([p.detach().flatten() for p in model.parameters()])
    figs["speedup"] = figs["foreach_step_ms"] / figs["fused_step_ms"]
    figs["param_rel_diff"] = rel_diff(params[True], params[False])
    expect(figs["fused_is_fused"] and not figs["foreach_is_fused"], "fused_optimizer did not select fused", figs)
    expect(figs["param_rel_diff"] <= 1e-4, "fused AdamW gives other weights", figs)
    return figs


def cudnn_benchmark_check(ctx: Ctx) -> dict[str, Any]:
    x, y = fixed_batch(ctx)
    before = torch.backends.cudnn.benchmark
    out = {}
    try:
        for flag in (False, True):
            torch.backends.cudnn.benchmark = flag
            loss, dt = time_steps(make_model("resnet50", True, ctx.device), x, y, 15)
            out[flag] = (loss, dt)
    finally:
        torch.backends.cudnn.benchmark = before
    figs = {"off_step_ms": 1e3 * out[False][1], "on_step_ms": 1e3 * out[True][1],
            "speedup": out[False][1] / out[True][1], "loss_diff": abs(out[True][0] - out[False][0])}
    expect(figs["loss_diff"] <= 0.02 * abs(out[False][0]) + 0.02, "cudnn.benchmark changed the loss", figs)
    return figs


def jpeg_check(ctx: Ctx) -> dict[str, Any]:
    from torchvision.io import decode_jpeg

    n, size = (16, 64) if ctx.tiny else (256, 512)
    rng = np.random.default_rng(0)
    blobs = []
    for _ in range(n):
        arr = (rng.random((size // 8, size // 8, 3)) * 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(arr).resize((size, size), Image.BILINEAR).save(buf, format="JPEG", quality=90)
        blobs.append(buf.getvalue())
    t0 = time.perf_counter()
    ref = [torch.from_numpy(np.array(Image.open(io.BytesIO(b)).convert("RGB"))).permute(2, 0, 1) for b in blobs]
    pil_s = time.perf_counter() - t0
    data = [torch.frombuffer(bytearray(b), dtype=torch.uint8) for b in blobs]
    decode_jpeg(data[:2], device=ctx.device)  # warm-up (nvjpeg handles)
    ctx.sync()
    t0 = time.perf_counter()
    got = decode_jpeg(data, device=ctx.device)
    ctx.sync()
    dev_s = time.perf_counter() - t0
    diff = max(float((a.cpu().int() - b.int()).abs().float().mean()) for a, b in zip(got, ref))
    figs = {"device": str(ctx.device), "pil_img_s": n / pil_s, "decode_jpeg_img_s": n / dev_s,
            "speedup": pil_s / dev_s, "mean_abs_diff_levels": diff}
    # nvJPEG and libjpeg differ in IDCT and chroma upsampling: a few levels at edges, not a different image
    expect(diff <= 3.0, "decode_jpeg pixels differ from PIL's by more than 3 levels on average", figs)
    return figs


def pinned_check(ctx: Ctx) -> dict[str, Any]:
    """Host-to-GPU copies of one ResNet-50 batch: pageable + blocking vs pinned + non_blocking (what the
    loaders and methods do with CUDA), and the same bytes arriving."""
    x = torch.randn(64, 3, 224, 224)
    pinned = x.pin_memory()
    out = {}
    for name, src, nb in (("pageable", x, False), ("pinned", pinned, True)):
        src.to(ctx.device, non_blocking=nb)
        ctx.sync()
        t0 = time.perf_counter()
        for _ in range(10):
            y = src.to(ctx.device, non_blocking=nb)
        ctx.sync()
        out[name] = (x.numel() * 4 * 10 / (time.perf_counter() - t0) / 1e9, y)
    figs = {"pageable_gb_s": out["pageable"][0], "pinned_gb_s": out["pinned"][0],
            "speedup": out["pinned"][0] / out["pageable"][0]}
    expect(torch.equal(out["pinned"][1].cpu(), x), "a pinned non-blocking copy arrived different", figs)
    return figs


def table_rows(info: dict[str, Any], results: list[Result]) -> list[str]:
    """docs/gpu.md's throughput rows for this machine, ready to paste."""
    tp = next((r for r in results if r.name == "throughput_resnet50_engine_vs_bare" and r.figures), None)
    if tp is None or info.get("gpu") in (None, "none"):
        return []
    f = tp.figures
    rows = ["# rows for docs/gpu.md (throughput table):"]
    for key, label in (("nchw", "off"), ("cl", "on")):
        rows.append(f"| {info['gpu']} (driver {info['driver']}, CUDA {info['cuda']}, torch {info['torch']}) | "
                    f"{f['model']} {f['size']}px AMP fp16, batch {f['batch']} | channels_last {label} | "
                    f"{f[key + '_engine_img_s']:.0f} | {f[key + '_bare_img_s']:.0f} | {f[key + '_ratio']:.3f} | "
                    f"{100 * f[key + '_data_wait']:.1f} % | {f['peak_mem_mb']:.0f} MB |")
    return rows


register("throughput_resnet50_engine_vs_bare", throughput_check, cuda_only=True, exercise=True, est_s=90)
register("speed_pinned_memory", pinned_check, cuda_only=True, est_s=5)
register("speed_fused_optimizer", fused_check, cuda_only=True, est_s=10)
register("speed_cudnn_benchmark", cudnn_benchmark_check, cuda_only=True, est_s=20)
register("speed_jpeg_decode", jpeg_check, cuda_only=True, exercise=True, est_s=10)
register("speed_compile", compile_check, cuda_only=True, est_s=90)  # last: the slowest to start
