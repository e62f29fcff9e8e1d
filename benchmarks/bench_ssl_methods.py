"""Every self-supervised method x {ResNet-18, tiny ViT} x seeds on the embedded digits, one budget: does each
beat a random encoder, and by how much, with 95 % confidence intervals over the seeds?

    python benchmarks/bench_ssl_methods.py [--methods simclr,dino] [--backbones resnet18,vit]
                                           [--seeds 42,43,44] [--epochs N] [--vit_epochs N] [--work DIR]
                                           [--probe batchnorm|plain]

Per (method, backbone, seed): pretrain with ``pkgs/SSL/config/demo_digits_<method>.yaml`` (16 px digits,
the demo's batch, views, optimizer, schedule and epochs; the encoder replaced by the backbone, ``--seed`` the
seed, ``--epochs`` (``--vit_epochs`` for the ViT) overrides the budget for all methods alike, monitor off so
the timing is the training's), then
- linear evaluation (``pkgs/FTE/config/demo_digits_linear.yaml``: frozen encoder, linear head, on
  ``digits-S`` = 10 % of the training labels, same seed), with the backbone's protocol (:data:`LINEAR`:
  BatchNorm-standardised features, 30 epochs): the test accuracy of the last model;
- weighted kNN accuracy (``pkgs/SSL/knn_eval.py``: k 20, t 0.07, digits train -> val);
- the pretraining's epochs and seconds per epoch (mean of the run's ``val.log`` ``epoch_time_s``).
The same for a random encoder of each backbone (initialised with each seed). MAE masks ViT patches: on a
ResNet it is reported as n/a. Cells: mean and 95 % CI (Student t over the seeds); ``gain`` is the mean
paired difference to the random encoder of the same seed (its CI too). Prints one Markdown table. The
tools' own entry functions run in this process (the same code as their commands; imports paid once);
outputs go to ``--work`` (default: a temporary folder), results.csv there too, written after every cell.
Started again with the same ``--work``, finished pretraining and linear-evaluation runs are reused.
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import io
import math
import os
import sys
import tempfile
from pathlib import Path
from typing import Callable

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from utility.models import build_encoder  # noqa: E402

METHODS = ["simclr", "barlow_twins", "byol", "vicreg", "mocov2", "dino", "mae"]
# the ViT read through the mean of its patch tokens: a random (or briefly trained) ViT's class token hardly
# varies between images, and MAE's class token gets no loss of its own
BACKBONES = {"resnet18": ("resnet18", 14), "vit": ("vit:img=16,patch=4,dim=64,depth=4,heads=4,pool=avg", 16)}
VIT_ONLY = {"mae": "masks ViT patches"}
LINEAR_CFG = REPO / "pkgs" / "FTE" / "config" / "demo_digits_linear.yaml"
# the linear-evaluation protocol of each backbone (on top of LINEAR_CFG), the same for every cell of it:
# MAE's linear probe (a BatchNorm without affine parameters before the head) standardises the features, and
# 30 epochs instead of the demo's 10 let the head converge (at 10 the random ViT's probe was still rising:
# 0.421 -> 0.515 at 30; docs/vit_dino_mae.md#benchmark)
PROBE = ["--head_norm", "batchnorm", "--epochs", "30"]
LINEAR = {"resnet18": PROBE, "vit": PROBE}
# --probe plain: the original protocol (the demo config's plain head, 10 epochs), which under-fits a
# random encoder's unstandardised features (so its gains over "random" are mostly the head's)
PLAIN = ["--head_norm", "none"]
FIELDS = ["method", "backbone", "seed", "linear", "knn", "s_epoch", "epochs"]


def run(main: Callable[[list[str]], int | None], argv: list[str]) -> str:
    """One of the tools' entry functions in this process (imports paid once, not per cell); its stdout."""
    from utility.entry import run_entry

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = run_entry(main, argv)
    if rc != 0:
        sys.stderr.write(buf.getvalue()[-4000:])
        raise SystemExit(f"failed ({rc}): {' '.join(argv)}")
    return buf.getvalue()


def last_value(path: Path, column: str) -> float:
    with path.open(newline="") as fh:
        return float(list(csv.DictReader(fh))[-1][column])


def mean_epoch_seconds(run_dir: Path) -> float:
    with (run_dir / "val.log").open(newline="") as fh:
        times = [float(r["epoch_time_s"]) for r in csv.DictReader(fh)]
    return sum(times) / len(times)


def epochs_run(run_dir: Path) -> int:
    """The pretraining's epochs (its val.log rows: the demo config's budget, or ``--epochs``)."""
    with (run_dir / "val.log").open(newline="") as fh:
        return sum(1 for _ in csv.DictReader(fh))


def mean_ci(values: list[float]) -> tuple[float, float]:
    """(mean, half width of the 95 % CI, Student t with n-1 degrees of freedom; nan for one value)."""
    from scipy import stats

    n = len(values)
    m = sum(values) / n
    if n < 2:
        return m, math.nan
    sd = math.sqrt(sum((v - m) ** 2 for v in values) / (n - 1))
    return m, float(stats.t.ppf(0.975, n - 1)) * sd / math.sqrt(n)


def knn(encoder: Path, device: str, *extra: str) -> float:
    from utility.runs.knn_eval import main

    out = run(main, ["-e", str(encoder), "--task", "digits", "--k", "20", "--t", "0.07", "--device", device, *extra])
    return float(out.split("knn_accuracy ", 1)[1].split()[0])


def linear_eval(encoder: Path, backbone: str, label: str, seed: int, out: Path, device: str,
                probe: str = "batchnorm") -> float:
    from utility.runs.finetune import main

    label = label if probe == "batchnorm" else f"{probe}_{label}"
    args = LINEAR[backbone] if probe == "batchnorm" else PLAIN
    run(main, ["-c", str(LINEAR_CFG), "--output_root", str(out), "--name", f"bench/linear_{label}",
               "--model_path", str(encoder), "--model_name", BACKBONES[backbone][0], "--seed", str(seed),
               "--device", device, "--verbose", "false", *args])
    return last_value(out / "finetuning" / "bench" / f"linear_{label}" / "test.log", "accuracy")


def random_cell(backbone: str, seed: int, out: Path, device: str, probe: str = "batchnorm") -> dict:
    name = BACKBONES[backbone][0]
    torch.manual_seed(seed)
    enc = out / f"random_{backbone}_{seed}.tar"
    torch.save(build_encoder(name)[0].state_dict(), enc)
    return {"method": "random encoder", "backbone": backbone, "seed": seed,
            "linear": linear_eval(enc, backbone, f"random_{backbone}_{seed}", seed, out, device, probe),
            "knn": knn(enc, device, "--model", name, "--shape", "16", "16", "--seed", str(seed), "--batch_size", "128"),
            "s_epoch": math.nan, "epochs": 0}


def method_cell(m: str, backbone: str, seed: int, epochs: int | None, out: Path, device: str,
                probe: str = "batchnorm") -> dict:
    from utility.runs.pretrain import main

    name, size = BACKBONES[backbone]
    label = f"{m}_{backbone}_{seed}"
    over = ["--epochs", str(epochs)] if epochs else []
    run(lambda argv: main(argv, "pkgs/SSL/pretrain.py"),
        ["-c", str(REPO / "pkgs" / "SSL" / "config" / f"demo_digits_{m}.yaml"), "--output_root", str(out),
         "--name", f"bench/{label}", "--resnet", name, "--image_size", str(size), "--seed", str(seed),
         "--device", device, "--monitor", "null", "--verbose", "false", *over])
    run_dir = out / "pretraining" / "bench" / label
    enc = run_dir / "encoder_pretrained.tar"
    return {"method": m, "backbone": backbone, "seed": seed,
            "linear": linear_eval(enc, backbone, label, seed, out, device, probe),
            "knn": knn(enc, device), "s_epoch": mean_epoch_seconds(run_dir), "epochs": epochs_run(run_dir)}


def table(rows: list[dict], methods: list[str] | None = None, backbones: list[str] | None = None) -> str:
    """The Markdown table; with ``methods``/``backbones``, an n/a row for each ViT-only method on a ResNet."""
    base = {(r["backbone"], r["seed"]): r for r in rows if r["method"] == "random encoder"}
    lines = ["| method | backbone | seeds | linear eval, test acc. (10 % labels) | gain over random | "
             "kNN acc. (k 20, val) | epochs | s/epoch |", "|---|---|---|---|---|---|---|---|"]
    cells: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        cells.setdefault((r["method"], r["backbone"]), []).append(r)
    fmt = lambda mc: f"{mc[0]:.3f} ± {mc[1]:.3f}" if not math.isnan(mc[1]) else f"{mc[0]:.3f}"  # noqa: E731
    for (m, b), rs in cells.items():
        gains = [r["linear"] - base[(b, r["seed"])]["linear"] for r in rs if (b, r["seed"]) in base]
        gain = fmt(mean_ci(gains)) if gains and m != "random encoder" else "-"
        s = [r["s_epoch"] for r in rs if not math.isnan(r["s_epoch"])]
        ep = sorted({int(r.get("epochs") or 0) for r in rs} - {0})
        lines.append(f"| {m} | {b} | {len(rs)} | {fmt(mean_ci([r['linear'] for r in rs]))} | {gain} | "
                     f"{fmt(mean_ci([r['knn'] for r in rs]))} | {'/'.join(map(str, ep)) or '-'} | "
                     f"{f'{sum(s) / len(s):.1f}' if s else '-'} |")
    for b in backbones or []:
        for m in methods or []:
            if m in VIT_ONLY and b != "vit":
                lines.append(f"| {m} | {b} | - | n/a ({VIT_ONLY[m]}; not meaningful on a ResNet) | - | - | - | - |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--backbones", default=",".join(BACKBONES))
    ap.add_argument("--seeds", default="42,43,44")
    ap.add_argument("--epochs", type=int, default=None, help="pretraining epochs for every method (default: the demo's)")
    ap.add_argument("--vit_epochs", type=int, default=None, help="the ViT's budget (default: --epochs)")
    ap.add_argument("--work", type=Path, default=None)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--probe", choices=["batchnorm", "plain"], default="batchnorm",
                    help="linear evaluation: the BatchNorm-standardised 30-epoch probe (default) or the demo "
                         "config's plain head (the issue's original protocol; results_plain.csv)")
    args = ap.parse_args()
    if args.device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    if not (REPO / "datasets" / "digits" / "train").is_dir():
        from datasets.prepare_demo import main as prepare  # type: ignore[import-not-found]

        prepare([])  # not this script's arguments
    tmp = tempfile.TemporaryDirectory() if args.work is None else None
    work = Path(tmp.name) if tmp else args.work.resolve()
    out = work / "out"
    out.mkdir(parents=True, exist_ok=True)
    seeds = [int(s) for s in args.seeds.split(",")]
    methods, backbones = args.methods.split(","), args.backbones.split(",")
    rows: list[dict] = []

    def keep(row: dict) -> None:
        rows.append(row)
        name = "results.csv" if args.probe == "batchnorm" else "results_plain.csv"
        with (work / name).open("w", newline="") as fh:
            w = csv.DictWriter(fh, FIELDS)
            w.writeheader()
            w.writerows(rows)
        print(f"{row['method']} {row['backbone']} seed {row['seed']}: linear {row['linear']:.4f}, knn {row['knn']:.4f}"
              f" ({row['s_epoch']:.1f} s/epoch)", flush=True)

    for b in backbones:
        epochs = args.vit_epochs if b == "vit" and args.vit_epochs else args.epochs
        for seed in seeds:
            keep(random_cell(b, seed, out, args.device, args.probe))
        for m in methods:
            if m in VIT_ONLY and b != "vit":
                continue
            for seed in seeds:
                keep(method_cell(m, b, seed, epochs, out, args.device, args.probe))
    print("\n" + table(rows, methods, backbones))
    if tmp:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
