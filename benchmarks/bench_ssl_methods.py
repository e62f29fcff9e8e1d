"""Every self-supervised method x {ResNet-18, tiny ViT} x seeds on the embedded digits, one budget: does each
beat a random encoder, and by how much, with 95 % confidence intervals over the seeds?

    python benchmarks/bench_ssl_methods.py [--methods simclr,dino] [--backbones resnet18,vit]
                                           [--seeds 42,43,44] [--epochs 12] [--work DIR] [--device cpu]

Per (method, backbone, seed): pretrain with ``pkgs/SSL/config/demo_digits_<method>.yaml`` (16 px digits,
batch 128, the demo's views, optimizer and schedule; the encoder replaced by the backbone, ``--seed`` the
seed, ``--epochs`` overrides the budget for all alike, monitor off so the timing is the training's), then
- linear evaluation (``pkgs/FTE/config/demo_digits_linear.yaml``: frozen encoder, linear head, on
  ``digits-S`` = 10 % of the training labels, same seed): the test accuracy of the last model;
- weighted kNN accuracy (``pkgs/SSL/knn_eval.py``: k 20, t 0.07, digits train -> val);
- seconds per epoch (mean of the run's ``val.log`` ``epoch_time_s``).
The same for a random encoder of each backbone (initialised with each seed). MAE masks ViT patches: it runs
on the ViT only. Cells: mean and 95 % CI (Student t over the seeds); ``gain`` is the mean paired difference
to the random encoder of the same seed (its CI too). Prints one Markdown table. Everything runs the real
commands as subprocesses; outputs go to ``--work`` (default: a temporary folder), results.csv there too.
"""
from __future__ import annotations

import argparse
import csv
import math
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]

from utility.models import build_encoder

METHODS = ["simclr", "barlow_twins", "byol", "vicreg", "mocov2", "dino", "mae"]
# the ViT read through the mean of its patch tokens: a random (or briefly trained) ViT's class token hardly
# varies between images (the linear head of demo_digits_linear.yaml then stays at chance), and MAE's class
# token gets no loss of its own
BACKBONES = {"resnet18": ("resnet18", 14), "vit": ("vit:img=16,patch=4,dim=64,depth=4,heads=4,pool=avg", 16)}
VIT_ONLY = {"mae"}
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


def mean_ci(values: list[float]) -> tuple[float, float]:
    """(mean, half width of the 95 % CI, Student t with n-1 degrees of freedom; nan for one value)."""
    from scipy import stats

    n = len(values)
    m = sum(values) / n
    if n < 2:
        return m, math.nan
    sd = math.sqrt(sum((v - m) ** 2 for v in values) / (n - 1))
    return m, float(stats.t.ppf(0.975, n - 1)) * sd / math.sqrt(n)


def knn(py: str, encoder: Path, work: Path, env: dict[str, str], device: str, *extra: str) -> float:
    out = run([py, str(REPO / "pkgs" / "SSL" / "knn_eval.py"), "-e", str(encoder), "--task", "digits", "--k", "20",
               "--t", "0.07", "--device", device, *extra], work, env)
    return float(out.split("knn_accuracy ", 1)[1].split()[0])


def linear_eval(py: str, encoder: Path, model: str, label: str, seed: int, out: Path, work: Path,
                env: dict[str, str], device: str) -> float:
    run([py, str(REPO / "pkgs" / "FTE" / "finetune.py"), "-c", str(LINEAR_CFG), "--output_root", str(out),
         "--name", f"bench/linear_{label}", "--model_path", str(encoder), "--model_name", model, "--seed", str(seed),
         "--device", device, "--verbose", "false"], work, env)
    return last_value(out / "finetuning" / "bench" / f"linear_{label}" / "test.log", "accuracy")


def random_cell(py: str, backbone: str, seed: int, out: Path, work: Path, env: dict[str, str], device: str) -> dict:
    name = BACKBONES[backbone][0]
    torch.manual_seed(seed)
    enc = out / f"random_{backbone}_{seed}.tar"
    torch.save(build_encoder(name)[0].state_dict(), enc)
    return {"method": "random encoder", "backbone": backbone, "seed": seed,
            "linear": linear_eval(py, enc, name, f"random_{backbone}_{seed}", seed, out, work, env, device),
            "knn": knn(py, enc, work, env, device, "--model", name, "--shape", "16", "16", "--seed", str(seed),
                       "--batch_size", "128"), "s_epoch": math.nan}


def method_cell(py: str, m: str, backbone: str, seed: int, epochs, out: Path, work: Path, env: dict[str, str],
                device: str) -> dict:
    name, size = BACKBONES[backbone]
    model = name
    label = f"{m}_{backbone}_{seed}"
    over = ["--epochs", str(epochs)] if epochs else []
    run([py, str(REPO / "pkgs" / "SSL" / "pretrain.py"), "-c", str(REPO / "pkgs" / "SSL" / "config" /
         f"demo_digits_{m}.yaml"), "--output_root", str(out), "--name", f"bench/{label}", "--resnet", model,
         "--image_size", str(size), "--seed", str(seed), "--device", device, "--monitor", "null", "--verbose", "false",
         *over], work, env)
    run_dir = out / "pretraining" / "bench" / label
    enc = run_dir / "encoder_pretrained.tar"
    return {"method": m, "backbone": backbone, "seed": seed,
            "linear": linear_eval(py, enc, model, label, seed, out, work, env, device),
            "knn": knn(py, enc, work, env, device), "s_epoch": mean_epoch_seconds(run_dir)}


def table(rows: list[dict]) -> str:
    base = {(r["backbone"], r["seed"]): r for r in rows if r["method"] == "random encoder"}
    lines = ["| method | backbone | seeds | linear eval, test acc. (10 % labels) | gain over random | "
             "kNN acc. (k 20, val) | s/epoch |", "|---|---|---|---|---|---|---|"]
    cells: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        cells.setdefault((r["method"], r["backbone"]), []).append(r)
    fmt = lambda mc: f"{mc[0]:.3f} ± {mc[1]:.3f}" if not math.isnan(mc[1]) else f"{mc[0]:.3f}"  # noqa: E731
    for (m, b), rs in cells.items():
        gains = [r["linear"] - base[(b, r["seed"])]["linear"] for r in rs if (b, r["seed"]) in base]
        gain = fmt(mean_ci(gains)) if gains and m != "random encoder" else "-"
        s = [r["s_epoch"] for r in rs if not math.isnan(r["s_epoch"])]
        lines.append(f"| {m} | {b} | {len(rs)} | {fmt(mean_ci([r['linear'] for r in rs]))} | {gain} | "
                     f"{fmt(mean_ci([r['knn'] for r in rs]))} | {sum(s) / len(s) if s else math.nan:.1f} |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--backbones", default=",".join(BACKBONES))
    ap.add_argument("--seeds", default="42,43,44")
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
    seeds = [int(s) for s in args.seeds.split(",")]
    rows = []
    for b in args.backbones.split(","):
        for seed in seeds:
            rows.append(random_cell(py, b, seed, out, work, env, args.device))
            print(f"random encoder {b} seed {seed}: linear {rows[-1]['linear']:.4f}, knn {rows[-1]['knn']:.4f}",
                  flush=True)
        for m in args.methods.split(","):
            if m in VIT_ONLY and b != "vit":
                continue
            for seed in seeds:
                rows.append(method_cell(py, m, b, seed, args.epochs, out, work, env, args.device))
                r = rows[-1]
                print(f"{m} {b} seed {seed}: linear {r['linear']:.4f}, knn {r['knn']:.4f} "
                      f"({r['s_epoch']:.1f} s/epoch)", flush=True)
    with (work / "results.csv").open("w", newline="") as fh:
        w = csv.DictWriter(fh, ["method", "backbone", "seed", "linear", "knn", "s_epoch"])
        w.writeheader()
        w.writerows(rows)
    print("\n" + table(rows))
    if tmp:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
