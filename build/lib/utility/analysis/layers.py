"""Layer-wise analyses: L2 distance between two weight files per block, metric drop when one block
is re-initialised (to initial weights or at random), and kNN accuracy of every block's features.

A block is the first two parts of a parameter name (``encoder.layer3``, ``head``), the encoder's
top-level children; files are compared in the finetuned-model key layout (an encoder file's keys get
``encoder.``)."""
from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch
from torch import nn

from utility.errors import UserError


def block_of(key: str) -> str:
    parts = key.split(".")
    return ".".join(parts[:2]) if parts[0] in ("encoder", "decoder") else parts[0]


def as_model_keys(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Encoder-only files (no ``encoder.``/``head.`` keys) -> ``encoder.<key>``; torchvision's fc -> head."""
    if any(k.startswith(("encoder.", "head.", "decoder.", "segmentation_head.")) for k in sd):
        return dict(sd)
    return {(f"head.{k[3:]}" if k.startswith("fc.") else f"encoder.{k}"): v for k, v in sd.items()}


def l2_rows(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> tuple[list[dict], list[str]]:
    """Per block: L2 distance ||b - a||, ||a||, relative change ||b - a|| / ||a||, parameter count;
    and the floating-point keys found in only one file (reported, never silently dropped)."""
    a, b = as_model_keys(a), as_model_keys(b)
    floats = lambda sd: {k for k, v in sd.items() if v.is_floating_point()}  # noqa: E731
    fa, fb = floats(a), floats(b)
    common = [k for k in a if k in fa and k in fb]  # the network's order: blocks input to output
    only = sorted(fa ^ fb)
    shape_bad = [k for k in common if a[k].shape != b[k].shape]
    if shape_bad:
        k = shape_bad[0]
        raise UserError(f"the two files do not hold the same network: {k} is {tuple(a[k].shape)} vs "
                        f"{tuple(b[k].shape)} ({len(shape_bad)} such keys)")
    if not common:
        raise UserError("the two files share no weights (different architectures or layouts?)")
    sums: dict[str, list[float]] = {}
    for k in common:
        if k.endswith(("running_mean", "running_var")):
            continue  # BatchNorm statistics are not weights
        x, y = a[k].double(), b[k].double()
        s = sums.setdefault(block_of(k), [0.0, 0.0, 0])
        s[0] += float(((y - x) ** 2).sum())
        s[1] += float((x ** 2).sum())
        s[2] += x.numel()
    rows = []
    tot = [0.0, 0.0, 0]
    for blk, (d2, n2, cnt) in sums.items():
        rows.append({"block": blk, "l2": math.sqrt(d2), "norm_a": math.sqrt(n2),
                     "relative": math.sqrt(d2) / math.sqrt(n2) if n2 > 0 else float("nan"), "parameters": cnt})
        tot = [tot[0] + d2, tot[1] + n2, tot[2] + cnt]
    rows.append({"block": "all", "l2": math.sqrt(tot[0]), "norm_a": math.sqrt(tot[1]),
                 "relative": math.sqrt(tot[0]) / math.sqrt(tot[1]) if tot[1] > 0 else float("nan"),
                 "parameters": tot[2]})
    return rows, only


def reinit_block(model: nn.Module, block: str, init: Optional[dict[str, torch.Tensor]], seed: int) -> nn.Module:
    """A copy of ``model`` whose ``block`` (a module name) holds ``init``'s tensors for that block
    (parameters and BatchNorm statistics), or fresh random ones (``reset_parameters``, seeded)."""
    new = copy.deepcopy(model)
    mod = dict(new.named_modules())[block]
    if init is None:
        torch.manual_seed(seed)
        for m in mod.modules():
            if hasattr(m, "reset_parameters"):
                m.reset_parameters()
            if hasattr(m, "reset_running_stats"):
                m.reset_running_stats()
        return new
    own = {k: v for k, v in new.state_dict().items() if k.startswith(block + ".")}
    missing = [k for k in own if k not in init and not k.endswith("num_batches_tracked")]
    if missing:
        raise UserError(f"the initial weights have no {missing[0]} ({len(missing)} keys of block {block} missing)")
    bad = [k for k in own if k in init and init[k].shape != own[k].shape]
    if bad:
        raise UserError(f"the initial weights do not fit block {block}: {bad[0]} is {tuple(init[bad[0]].shape)}, "
                        f"the model has {tuple(own[bad[0]].shape)}")
    new.load_state_dict({k: init[k] for k in own if k in init}, strict=False)
    return new


def importance_rows(model: nn.Module, blocks: list[str], init: Optional[dict[str, torch.Tensor]],
                    score: Callable[[nn.Module], dict[str, float]], metric: str, mode: str, seed: int) -> list[dict]:
    """The metric with each block re-initialised in turn, and its drop from the intact model
    (positive = worse; for a 'min' metric such as a loss the drop is the increase)."""
    base = score(model)[metric]
    sign = 1.0 if mode == "max" else -1.0
    rows = [{"block": "none", metric: base, "drop": 0.0}]
    for blk in blocks:
        value = score(reinit_block(model, blk, init, seed))[metric]
        rows.append({"block": blk, metric: value, "drop": sign * (base - value)})
    return rows


def layer_knn_rows(train: dict[str, np.ndarray], train_y: np.ndarray, query: dict[str, np.ndarray], query_y: np.ndarray,
                   ks: list[int], temperature: float, classes: list[str], multilabel: bool, metric: str) -> list[dict]:
    from utility.analysis.knn import weighted_knn
    from utility.analysis.metrics import task_metrics

    rows = []
    for blk in train:
        for k in ks:
            probs = weighted_knn(train[blk], train_y, query[blk], k, temperature, len(classes), multilabel)
            m = task_metrics(probs, query_y, classes, multilabel)
            rows.append({"block": blk, "k": k, "dim": train[blk].shape[1], metric: m.get(metric, float("nan")),
                         **({"accuracy": m["accuracy"]} if "accuracy" in m and metric != "accuracy" else {})})
    return rows


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    from utility.models.weights import read_state_dict

    return as_model_keys(read_state_dict(Path(path)))
