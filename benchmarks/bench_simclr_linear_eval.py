"""Linear evaluation of SimCLR pretraining on the embedded digits demo: does pretraining help?

    python benchmarks/bench_simclr_linear_eval.py [--work DIR] [--task digits-S] [--device cpu]

1. pretrain with the demo config (``pkgs/SimCLR/config/demo_digits.yaml``: ResNet-18 on the digits'
   training images, labels unused);
2. linear evaluation (``pkgs/FTE/config/demo_digits_linear.yaml``: frozen encoder, only the linear
   head trains, on ``digits-S`` = 10 % of the training labels) twice with the same seed: from
   ``encoder_pretrained.tar`` and from a random encoder (``model_path: null``);
3. print both test accuracies (last model): ``linear_eval_accuracy: pretrained X, random Y, ratio R``.

Everything runs the real commands as subprocesses; outputs go to ``--work`` (default: a temporary
folder). The digits images are written first if ``datasets/digits`` is missing.
"""
from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SIMCLR_CFG = REPO / "pkgs" / "SimCLR" / "config" / "demo_digits.yaml"
LINEAR_CFG = REPO / "pkgs" / "FTE" / "config" / "demo_digits_linear.yaml"


def run(cmd: list[str], cwd: Path, env: dict[str, str]) -> float:
    t0 = time.time()
    proc = subprocess.run(cmd, cwd=str(cwd), env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-4000:])
        raise SystemExit(f"failed ({proc.returncode}): {' '.join(cmd)}")
    return time.time() - t0


def test_accuracy(run_dir: Path) -> float:
    with (run_dir / "test.log").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    return float(rows[-1]["accuracy"])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=None, help="output folder (default: temporary)")
    ap.add_argument("--task", default="digits-S")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--pretrain_args", default="", help="extra overrides for the SimCLR run, e.g. '--epochs 5'")
    args = ap.parse_args()
    py = sys.executable
    env = dict(os.environ)
    if args.device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
    if not (REPO / "datasets" / "digits" / "train").is_dir():
        run([py, str(REPO / "datasets" / "prepare_demo.py")], REPO, env)

    tmp = tempfile.TemporaryDirectory() if args.work is None else None
    work = Path(tmp.name) if tmp else args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    out = work / "out"
    t_pre = run([py, str(REPO / "pkgs" / "SimCLR" / "main.py"), "-c", str(SIMCLR_CFG), "--output_root", str(out),
                 "--name", "bench/simclr_digits", "--device", args.device, "--verbose", "false",
                 *args.pretrain_args.split()], work, env)
    encoder = out / "pretraining" / "bench" / "simclr_digits" / "encoder_pretrained.tar"
    acc, times = {}, {}
    for label, model_path in (("pretrained", str(encoder)), ("random", "null")):
        times[label] = run([py, str(REPO / "pkgs" / "FTE" / "finetune.py"), "-c", str(LINEAR_CFG),
                            "--task", args.task, "--output_root", str(out), "--name", f"bench/linear_{label}",
                            "--model_path", model_path, "--device", args.device, "--verbose", "false"], work, env)
        acc[label] = test_accuracy(out / "finetuning" / "bench" / f"linear_{label}")
    print(f"# {args.task}, frozen encoder (linear head only); pretraining {t_pre:.0f} s, "
          f"linear eval {times['pretrained']:.0f} s + {times['random']:.0f} s on {args.device}")
    print(f"linear_eval_accuracy: pretrained {acc['pretrained']:.4f}, random {acc['random']:.4f}, "
          f"ratio {acc['pretrained'] / max(acc['random'], 1e-9):.3f}")
    if tmp:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
