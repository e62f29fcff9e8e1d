"""Offline kNN evaluation of a saved encoder: ``pkgs/SSL/knn_eval.py -e encoder.tar [--task digits]``.

The same measurement as the online monitor (utility/runs/monitor.py): with the pretraining run's
config.yaml beside the encoder (or ``--config``), model, channels, input shape, normalizer, data root,
seed (the val carve-out) and the monitor's task/k/t/batch are taken from it, so an ``encoder_<epoch>.tar``
gives the number monitor.log holds for that epoch. Anything can be overridden on the command line.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch

from utility.config.yamlsafe import load_file
from utility.data.dataset import Preprocess
from utility.errors import UserError
from utility.models import build_encoder, load_encoder_weights, read_state_dict, split_state_dict
from utility.paths import resolve_user_path
from utility.runs.monitor import labelled_loaders, measure

PROG = "pkgs/SSL/knn_eval.py"


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog=PROG, description="weighted kNN accuracy of a saved encoder on a task")
    ap.add_argument("-e", "--encoder", required=True, help="encoder file (encoder_pretrained.tar, encoder_<e>.tar)")
    ap.add_argument("--config", help="pretraining config.yaml (default: the one beside the encoder)")
    ap.add_argument("--task", help="task preset or YAML (default: the config's monitor task)")
    ap.add_argument("--split", default="val", help="query split (default val; the bank is train)")
    ap.add_argument("--model", help="encoder name (default: the config's resnet)")
    ap.add_argument("--in_channels", type=int, choices=(1, 3))
    ap.add_argument("--shape", type=int, nargs=2, metavar=("H", "W"))
    ap.add_argument("--normalizer")
    ap.add_argument("--k", type=int)
    ap.add_argument("--t", type=float)
    ap.add_argument("--linear", action="store_true", default=None, help="also the logistic-regression probe")
    ap.add_argument("--batch_size", type=int)
    ap.add_argument("--data_root")
    ap.add_argument("--seed", type=int, help="seed of the val carve-out (default: the config's)")
    ap.add_argument("--num_workers", type=int, default=0)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--trust-run-code", dest="trust_run_code", action="store_true",
                    help="allow the config's task to import its own Python reader (.py file)")
    return ap


def run_config(args: argparse.Namespace) -> dict[str, Any]:
    path = Path(args.config) if args.config else resolve_user_path(args.encoder).parent / "config.yaml"
    if args.config and not path.is_file():
        raise UserError(f"--config not found: {path}")
    if not path.is_file():
        return {}
    data = load_file(path, f"pretraining config {path}")
    return data if isinstance(data, dict) else {}


def settings(args: argparse.Namespace, cfg: dict[str, Any]) -> dict[str, Any]:
    mon = cfg.get("monitor") or {}
    size = cfg.get("image_size", 224)
    out = {
        "task": args.task or mon.get("task"), "model": args.model or cfg.get("resnet"),
        "in_channels": args.in_channels or cfg.get("in_channels", 3),
        "shape": tuple(args.shape or cfg.get("shape_desired") or (size, size)),
        "normalizer": args.normalizer or cfg.get("normalizer") or "naive", "window": cfg.get("window"),
        "k": args.k or mon.get("knn_k", 20), "t": args.t or mon.get("knn_t", 0.07),
        "linear": mon.get("linear", False) if args.linear is None else args.linear,
        "batch_size": args.batch_size or mon.get("batch_size") or cfg.get("batch_size", 256),
        "data_root": args.data_root or cfg.get("data_root"),
        "seed": args.seed if args.seed is not None else cfg.get("seed", 42),
    }
    for key, flag in (("task", "--task"), ("model", "--model")):
        if not out[key]:
            raise UserError(f"{flag} is needed: no pretraining config.yaml beside {args.encoder} says it")
    return out


def main(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    s = settings(args, run_config(args))
    if s["k"] < 1 or not s["t"] >= 0.02:
        raise UserError(f"k {s['k']} / t {s['t']}: expected k >= 1 and a temperature t >= 0.02")
    if not args.task:  # the task came from someone's pretraining config: it must not run their code
        from utility.config.tasks import load_task
        from utility.data.targets import refuse_run_code

        refuse_run_code(load_task(s["task"]), Path(args.config or resolve_user_path(args.encoder).parent / "config.yaml"),
                        args.trust_run_code)
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    path = resolve_user_path(args.encoder)
    encoder, _ = build_encoder(s["model"], s["in_channels"])
    enc_sd, _ = split_state_dict(read_state_dict(path))
    load_encoder_weights(encoder, enc_sd, path, allow_partial=False)
    encoder.to(device)
    prep = Preprocess(channels=s["in_channels"], shape=s["shape"], normalizer=s["normalizer"],
                      window=tuple(s["window"]) if s["window"] else None)
    data = labelled_loaders(s["task"], prep, s["data_root"], s["seed"], s["batch_size"], args.num_workers, args.split)
    row = measure(encoder, data, device, s["in_channels"], s["k"], s["t"], s["linear"])
    print(f"knn_accuracy {row['knn_accuracy']!r} (task {s['task']}, train {row['n_train']} -> {args.split} "
          f"{row['n_val']}, k {s['k']}, t {s['t']}, encoder {path})")
    if s["linear"]:
        print(f"linear_accuracy {row['linear_accuracy']!r}")
    return 0
