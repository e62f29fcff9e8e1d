"""``pkgs/Analysis/analyze.py <command> [options]``: the analysis commands and their options."""
from __future__ import annotations

import argparse
from typing import Any, Callable

from utility.registry import Registry


COMMANDS: Registry[Callable[[Any], int]] = Registry("analysis command")  # imported when run
for _name, (_target, _help) in {  # name -> (module:function, one-line help)
    "embed": ("cmd_embed:embed", "pooled encoder embeddings of splits as .npz (cached by weights/task/split/preprocessing)"),
    "knn": ("cmd_embed:knn", "weighted kNN (cosine, temperature) train -> val/test on frozen embeddings"),
    "probe": ("cmd_embed:probe", "logistic regression and linear SVM probes on standardised embeddings (C chosen on val)"),
    "curves": ("cmd_predict:curves", "ROC/PR per class, precision at fixed recalls, confusion matrix, calibration"),
    "predict": ("cmd_predict:predict", "predictions and metrics of any weights on any split"),
    "gradcam": ("cmd_model:gradcam", "Grad-CAM / Grad-CAM++ / EigenCAM heatmaps on N images per class"),
    "cka": ("cmd_model:cka", "linear CKA (minibatch, unbiased HSIC) between every block of two encoders"),
    "layer-knn": ("cmd_model:layer_knn", "kNN accuracy of the pooled features after every encoder block"),
    "l2": ("cmd_model:l2", "per-block L2 distance and relative change between two weight files"),
    "importance": ("cmd_model:importance", "metric drop when one block at a time is re-initialised"),
    "lr-find": ("cmd_model:lr_find", "LR range test for a finetuning config (config and run dir untouched)"),
}.items():
    COMMANDS.lazy(_name, f"utility.analysis.{_target}", _help)


def _source(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("what to analyse")
    g.add_argument("--run", help="a finetuning run directory (its config.yaml, task, weights, predictions)")
    g.add_argument("--weights", help="a weights file (encoder or finetuned model), or 'random'")
    g.add_argument("--task", help="task name or YAML (with --weights)")
    g.add_argument("--model_name", help="encoder name, e.g. resnet50 (with --weights)")
    g.add_argument("--which", choices=("last", "best"), default="last", help="a run's last or best model")
    g.add_argument("--in_channels", type=int, choices=(1, 3), help="encoder input channels (with --weights)")
    g.add_argument("--trust-run-code", dest="trust_run_code", action="store_true",
                   help="allow a run's task to import its own Python reader (a .py file); off by default")
    o = p.add_argument_group("data and device")
    o.add_argument("--data_root", help="default: the config's, else datasets/")
    o.add_argument("--device", help="auto (default), cpu, cuda, cuda:<i>")
    o.add_argument("--batch_size", type=int)
    o.add_argument("--num_workers", type=int)
    o.add_argument("--seed", type=int)
    o.add_argument("--out", help="output folder (default <run dir>/analysis/<command>/)")


def _knn_opts(p: argparse.ArgumentParser, ks: list[int]) -> None:
    p.add_argument("--k", type=int, nargs="+", default=ks, help=f"neighbours (default {' '.join(map(str, ks))})")
    p.add_argument("--temperature", type=float, default=0.07, help="vote weight exp(cosine / T) (default 0.07)")


def _cache(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cache_dir", help="where embeddings are cached (default <run dir>/analysis/embed/)")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="analyze.py", description="Evaluation protocols and explanations of trained "
                                 "models. Run '<command> --help' for a command's options.")
    sub = ap.add_subparsers(dest="command", required=True, metavar="command")
    ps = {name: sub.add_parser(name, help=h, description=h) for name, h in COMMANDS.help.items()}
    for name, p in ps.items():
        _source(p)
    ps["embed"].add_argument("--splits", nargs="+", default=["train", "val", "test"])
    _cache(ps["embed"])
    ps["knn"].add_argument("--splits", nargs="+", default=["val", "test"], help="query splits (default val test)")
    _knn_opts(ps["knn"], [20, 200])
    _cache(ps["knn"])
    ps["probe"].add_argument("--probes", nargs="+", choices=("logreg", "svm"), default=["logreg", "svm"])
    ps["probe"].add_argument("--C", type=float, nargs="+", default=[1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0],
                             help="grid of C values (default 0.001 ... 100)")
    _cache(ps["probe"])
    for name in ("curves", "predict", "gradcam", "cka", "layer-knn", "importance"):
        ps[name].add_argument("--split", default="test", help="train, val or test (default test)")
    ps["curves"].add_argument("--predictions", help="a predictions CSV (default: the run's, else predict --split)")
    ps["curves"].add_argument("--recall", type=float, nargs="+", default=[0.999, 0.99, 0.95])
    ps["curves"].add_argument("--bins", type=int, default=15, help="calibration bins (default 15)")
    ps["gradcam"].add_argument("--images", type=int, default=4, help="images per class (default 4)")
    ps["gradcam"].add_argument("--method", choices=("gradcam", "gradcam++", "eigencam"), default="gradcam")
    ps["gradcam"].add_argument("--layer", help="target module name (default: the encoder's last block)")
    ps["cka"].add_argument("--other", help="second model: run dir, weights file or 'random'")
    ps["cka"].add_argument("--estimator", choices=("debiased", "biased"), default="debiased",
                           help="debiased (unbiased HSIC, default) or biased (Kornblith et al. 2019, most papers)")
    _knn_opts(ps["layer-knn"], [20])
    ps["l2"].add_argument("files", nargs="*", help="two weight files A B (B - A), or use --run [--other]")
    ps["l2"].add_argument("--other", help="with --run: the initial weights (default: the run's model_path)")
    ps["importance"].add_argument("--init", help="re-initialise to this file's weights, or 'random' "
                                  "(default: the run's model_path, else random)")
    ps["lr-find"].add_argument("--config", help="a finetuning config YAML (instead of --run)")
    ps["lr-find"].add_argument("--steps", type=int, default=100)
    ps["lr-find"].add_argument("--start_lr", type=float, default=1e-7)
    ps["lr-find"].add_argument("--end_lr", type=float, default=10.0)
    return ap


def command(name: str) -> Callable[[Any], int]:
    return COMMANDS.find(name)


def main(argv: list[str]) -> int:
    from utility.entry import CrashLog

    CrashLog.path = None  # analysis never writes crash.log into the run it reads
    from utility.analysis.argcheck import check_ranges

    args = build_parser().parse_args(argv)
    check_ranges(args)
    return command(args.command)(args)
