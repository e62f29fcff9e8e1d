"""Every self-supervised method on the embedded digits with the same budget: does each beat a random encoder?

    python benchmarks/bench_ssl_methods.py [--methods simclr,byol] [--epochs 12] [--work DIR] [--device cpu]

Per method: pretrain with ``pkgs/SSL/config/demo_digits_<method>.yaml`` (ResNet-18, 16 px, batch 128, the
same views, optimizer and schedule for all; ``--epochs`` overrides the budget for all alike, monitor
off so the timing is the training's), then
- linear evaluation (``pkgs/FTE/config/demo_digits_linear.yaml``: frozen encoder, linear head, on
  ``digits-S`` = 10 % of the training labels): the test accuracy of the last model;
- weighted kNN accuracy (``pkgs/SSL/knn_eval.py``: k 20, t 0.07, digits train -> val);
- seconds per epoch (mean of the run's ``val.log`` ``epoch_time_s``).
The same two numbers for a random encoder (ResNet-18 initialised with seed 42, saved to a file).
Prints ``linear_eval_accuracy_<method>: ours X, baseline Y, ratio R`` (baseline: the random encoder),
``knn_accuracy_<method>: ...`` the same way, and a Markdown table. Everything runs the real commands as
subprocesses; outputs go to ``--work`` (default: a temporary folder).
"""
from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]

from utility.models import build_encoder

METHODS = ["simclr", "barlow_twins", "byol", "vicreg", "mocov2"]
LINEAR_CFG = REPO / "pkgs" / "FTE" / "config" / "demo_digits_linear.yaml"


def run(cmd: list[str], cwd: Path, env: dict[str, str]) -> str:
    proc = subprocess.run(cmd, cwd=str(cwd), env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-4000:])
        raise SystemExit(f"failed ({proc.returncode}): {' '.join(cmd)}")
    return proc.stdout


def last_value(path: Path, column: str) -> float:
    with path.open(newline="") as fh:
        return float(list(csv.DictReader(fh))[-1][column])


def mean_epoch_seconds(run_dir: Path) -> float:
    with (run_dir / "val.log").open(newline="") as fh:
        times = [float(r["epoch_time_s"]) for r in csv.DictReader(fh)]
    return sum(times) / len(times)


def knn(py: str, encoder: Path, work: Path, env: dict[str, str], device: str, *extra: str) -> float:
    out = run([py, str(REPO / "pkgs" / "SSL" / "knn_eval.py"), "-e", str(encoder), "--task", "digits", "--k", "20",
               "--t", "0.07", "--device", device, *extra], work, env)
    return float(out.split("knn_accuracy ", 1)[1].split()[0])


def linear_eval(py: str, encoder: Path, label: str, out: Path, work: Path, env: dict[str, str], device: str) -> float:
    run([py, str(REPO / "pkgs" / "FTE" / "finetune.py"), "-c", str(LINEAR_CFG), "--output_root", str(out),
         "--name", f"bench/linear_{label}", "--model_path", str(encoder), "--device", device, "--verbose", "false"],
        work, env)
    return last_value(out / "finetuning" / "bench" / f"linear_{label}" / "test.log", "accuracy")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--epochs", type=int, default=None, help="pretraining epochs for every method (default: the demo's)")
    ap.add_argument("--work", type=Path, default=None)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    py, env = sys.executable, dict(os.environ)
    if args.device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
    if not (REPO / "datasets" / "digits" / "train").is_dir():
        run([py, str(REPO / "datasets" / "prepare_demo.py")], REPO, env)
    tmp = tempfile.TemporaryDirectory() if args.work is None else None
    work = Path(tmp.name) if tmp else args.work.resolve()
    out = work / "out"
    out.mkdir(parents=True, exist_ok=True)

    torch.manual_seed(42)
    random_encoder = out / "random_encoder.tar"
    torch.save(build_encoder("resnet18")[0].state_dict(), random_encoder)
    base = {"linear": linear_eval(py, random_encoder, "random", out, work, env, args.device),
            "knn": knn(py, random_encoder, work, env, args.device, "--model", "resnet18", "--shape", "16", "16",
                       "--seed", "42", "--batch_size", "128")}
    print(f"# random encoder: linear {base['linear']:.4f}, knn {base['knn']:.4f}", flush=True)
    rows = []
    for m in args.methods.split(","):
        over = ["--epochs", str(args.epochs)] if args.epochs else []
        run([py, str(REPO / "pkgs" / "SSL" / "pretrain.py"), "-c", str(REPO / "pkgs" / "SSL" / "config" /
             f"demo_digits_{m}.yaml"), "--output_root", str(out), "--name", f"bench/{m}", "--device", args.device,
             "--monitor", "null", "--verbose", "false", *over], work, env)
        run_dir = out / "pretraining" / "bench" / m
        enc = run_dir / "encoder_pretrained.tar"
        r = {"method": m, "linear": linear_eval(py, enc, m, out, work, env, args.device),
             "knn": knn(py, enc, work, env, args.device), "s_epoch": mean_epoch_seconds(run_dir)}
        rows.append(r)
        print(f"linear_eval_accuracy_{m}: ours {r['linear']:.4f}, baseline {base['linear']:.4f}, "
              f"ratio {r['linear'] / max(base['linear'], 1e-9):.3f}", flush=True)
        print(f"knn_accuracy_{m}: ours {r['knn']:.4f}, baseline {base['knn']:.4f}, "
              f"ratio {r['knn'] / max(base['knn'], 1e-9):.3f}   ({r['s_epoch']:.1f} s/epoch)", flush=True)
    print("\n| method | linear eval, test acc. (10 % labels) | kNN acc. (k 20, val) | s/epoch |")
    print("|---|---|---|---|")
    for r in rows:
        print(f"| {r['method']} | {r['linear']:.3f} | {r['knn']:.3f} | {r['s_epoch']:.1f} |")
    print(f"| random encoder | {base['linear']:.3f} | {base['knn']:.3f} | - |")
    if tmp:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
