"""The acceptance run itself (benchmarks/gpu_acceptance.py is its command): the machine's description,
one check run in isolation under the time budget, the JSON and Markdown reports."""
from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import torch

from . import common
from .common import CHECKS, Check, CheckFailed, Ctx, Result, Skip
from . import amp_checks, augment_checks, entry_checks, parallel_checks, throughput_checks  # noqa: F401 (registration)


def machine(device: torch.device) -> dict[str, Any]:
    info: dict[str, Any] = {"torch": torch.__version__, "cuda": torch.version.cuda or "none",
                            "cudnn": str(torch.backends.cudnn.version()) if torch.cuda.is_available() else "none",
                            "python": platform.python_version(), "host": platform.node(), "device": str(device)}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["gpus"] = torch.cuda.device_count()
        try:
            out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=30).stdout.split()
            info["driver"] = out[0] if out else "unknown"
        except (OSError, subprocess.SubprocessError):
            info["driver"] = "unknown"
    else:
        info.update(gpu="none", gpus=0, driver="none", cpu=platform.processor() or platform.machine(),
                    cores=os.cpu_count())
    return info


class CheckTimeout(Exception):
    pass


def _alarm(signum: int, frame: Any) -> None:
    raise CheckTimeout()


def run_check(check: Check, ctx: Ctx) -> Result:
    """One check, isolated: any exception is its FAIL, not the end of the run."""
    if check.cuda_only and not ctx.cuda and not check.exercise:
        return Result(check.name, "SKIPPED", reason="needs CUDA")
    need = check.est_s * (0.3 if ctx.tiny else 1.0)
    if ctx.left() < need:
        return Result(check.name, "SKIPPED", reason=f"time budget ({ctx.left():.0f}s left, needs ~{need:.0f}s)")
    limit = int(3 * check.est_s + 60)  # a started check may finish past the budget; a hung one may not
    t0 = time.monotonic()
    old = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(limit)
    try:
        if ctx.cuda:
            torch.cuda.reset_peak_memory_stats(ctx.device)
        figures = check.fn(ctx)
        status, reason = "PASS", ""
    except Skip as exc:
        figures, status, reason = {}, "SKIPPED", str(exc)
    except CheckFailed as exc:
        figures, status, reason = exc.figures, "FAIL", str(exc)
    except CheckTimeout:
        figures, status, reason = {}, "FAIL", f"did not finish in {limit}s"
    except Exception as exc:  # noqa: BLE001 -- a broken check is a FAIL line, the others still run
        tb = traceback.extract_tb(exc.__traceback__)[-1]
        figures, status = {}, "FAIL"
        reason = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''} " \
                 f"({Path(tb.filename).name}:{tb.lineno})"
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
        if ctx.cuda:
            torch.cuda.empty_cache()
    if check.cuda_only and not ctx.cuda and status == "PASS":
        status, reason = "SKIPPED", f"needs CUDA; its code ran on {ctx.device.type} (no CUDA figure)"
    return Result(check.name, status, figures, reason, time.monotonic() - t0)


def markdown(info: dict[str, Any], results: list[Result]) -> str:
    head = (f"GPU acceptance run: {info.get('gpus', 0)} x {info['gpu']}, driver {info['driver']}, "
            f"CUDA {info['cuda']}, cuDNN {info['cudnn']}, torch {info['torch']}, host {info['host']}")
    lines = [head, "", "| check | status | figures |", "|---|---|---|"]
    for r in results:
        figs = ", ".join(f"{k} {common.fmt(v)}" for k, v in r.figures.items())
        lines.append(f"| {r.name} | {r.status} | {'; '.join(s for s in (figs, r.reason) if s)} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="auto", help="auto (cuda when available), cuda or cpu")
    ap.add_argument("--tiny", action="store_true", help="smallest sizes: the CI smoke mode")
    ap.add_argument("--budget", type=float, default=None,
                    help="seconds within which checks may start (default 420: ~8 min in all; tiny 45)")
    ap.add_argument("--out", default=".", help="folder for gpu_acceptance.json and gpu_acceptance.md")
    ap.add_argument("--only", default="", help="comma-separated name prefixes")
    args = ap.parse_args(argv)
    name = "cuda" if args.device == "auto" and torch.cuda.is_available() else \
        ("cpu" if args.device == "auto" else args.device)
    if name.startswith("cuda") and not torch.cuda.is_available():
        print("error: --device cuda but CUDA is not available here (use --device cpu --tiny)", file=sys.stderr)
        return 2
    device = torch.device(name)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", 0)
    if args.tiny and device.type == "cpu":
        torch.set_num_threads(1)  # the smoke mode judges no CPU speed; one thread is fastest on a shared CI box
    budget = args.budget if args.budget is not None else (45.0 if args.tiny else 420.0)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    info = machine(device)
    print("# " + ", ".join(f"{k} {v}" for k, v in info.items()), flush=True)
    prefixes = [p for p in args.only.split(",") if p]
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="gpu_acceptance_") as tmp:
        ctx = Ctx(device, args.tiny, info["gpus"], Path(tmp), time.monotonic() + budget)
        for check in CHECKS:
            if prefixes and not any(check.name.startswith(p) for p in prefixes):
                continue
            res = run_check(check, ctx)
            results.append(res)
            print(res.line(), flush=True)
    (out / "gpu_acceptance.json").write_text(json.dumps(
        {"machine": info, "tiny": args.tiny, "budget_s": budget,
         "checks": [r.__dict__ for r in results]}, indent=1, default=str))
    (out / "gpu_acceptance.md").write_text(markdown(info, results))
    counts = {s: sum(r.status == s for r in results) for s in ("PASS", "FAIL", "SKIPPED")}
    print(f"# {counts['PASS']} PASS, {counts['FAIL']} FAIL, {counts['SKIPPED']} SKIPPED; "
          f"{out / 'gpu_acceptance.json'}, {out / 'gpu_acceptance.md'}")
    for row in throughput_checks.table_rows(info, results):
        print(row)
    return 1 if counts["FAIL"] else 0
