"""Online monitor of a pretraining run, and the same measurement offline (``pkgs/SSL/knn_eval.py``).

Every ``monitor.every`` epochs (and after the last one) the current encoder embeds a labelled task's
train and val images (no augmentation, eval mode, float32, rank 0 only) and the weighted kNN accuracy
(utility/metrics/knn.py) of val against train goes to ``monitor.log`` (``epoch,knn_accuracy,
linear_accuracy,knn_k,knn_t,n_train,n_val,seconds,rankme``) and TensorBoard (``monitor/...``). With
``linear: true`` also a logistic-regression probe (scikit-learn, deterministic) on the same detached
features. RankMe (utility/metrics/rankme.py) is the effective rank of the train features. The collapse
guard: ``monitor.milestones`` (e.g. ``{epoch: 4, knn_accuracy: 0.3, rankme: 5}``) are measured at their
epoch; a missed one stops the run (CollapseDetected, exit 3) before that epoch's checkpoint, so starting
it again repeats the epoch and stops again rather than handing on a collapsed encoder. The global random state is saved before and restored after, so training draws exactly the
numbers it would have drawn without the monitor.
"""
from __future__ import annotations

import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from utility.config.schemas import MonitorConfig
from utility.config.tasks import load_task
from utility.data.compact import PathArray
from utility.data.dataset import ImageDataset, Preprocess
from utility.data.index import index_task
from utility.data.preprocess import conform_channels
from utility.errors import UserError
from utility.metrics.knn import knn_accuracy
from utility.metrics.rankme import rankme
from utility.methods.ssl_base import plain
from utility.paths import DEFAULT_DATA_ROOT, resolve_user_path
from utility.training.callbacks import Callback
from utility.training.checkpoint import rng_state, set_rng_state
from utility.training.rundir import CsvLog

MONITOR_COLUMNS = ["epoch", "knn_accuracy", "linear_accuracy", "knn_k", "knn_t", "n_train", "n_val", "seconds",
                   "rankme"]
GUARDED = ("knn_accuracy", "linear_accuracy", "rankme")


class CollapseDetected(UserError):
    """A milestone of the collapse guard was missed: the run stops (exit 3, one line, crash.log holds it)."""

    exit_code = 3


@dataclass
class LabelledFeatures:
    """What the monitor measures on: the task's train and query splits as loaders."""

    train: DataLoader
    query: DataLoader
    num_classes: int


def labelled_loaders(task_name: str, prep: Preprocess, data_root: Optional[str], seed: int, batch_size: int,
                     workers: int, query_split: str = "val") -> LabelledFeatures:
    """Unshuffled loaders of the task's train and ``query_split`` with their own generator (they never
    draw from the global random state); the task must be multi-class."""
    task = load_task(task_name)
    if task.type != "multiclass":
        raise UserError(f"monitor task '{task_name}' is {task.type}; kNN accuracy needs a multiclass task")
    root = resolve_user_path(data_root) if data_root else DEFAULT_DATA_ROOT
    indexed = index_task(task, root, seed)
    extra = {"num_workers": workers} if workers > 0 else {}

    def loader(split: str) -> DataLoader:
        ds = ImageDataset(indexed.splits[split], prep, False, indexed.num_classes)
        return DataLoader(ds, batch_size=batch_size, shuffle=False, generator=torch.Generator(), **extra)

    if query_split not in indexed.splits or not len(indexed.splits[query_split]):
        raise UserError(f"task '{task_name}' has no {query_split} images for the kNN evaluation")
    return LabelledFeatures(loader("train"), loader(query_split), indexed.num_classes)


@torch.no_grad()
def extract_features(encoder: nn.Module, loader: DataLoader, device: torch.device,
                     in_channels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(features [N, width], labels [N]) of every readable image, the encoder in eval mode (restored after)."""
    was_training = encoder.training
    encoder.eval()
    feats, labels = [], []
    try:
        for batch in loader:
            ok = batch["valid"].bool()
            if not ok.any():
                continue
            x = conform_channels(batch["image"][ok].to(device), in_channels).float()
            with torch.autocast(device.type, enabled=False):
                feats.append(encoder(x).float())
            labels.append(batch["target"][ok].to(device))
    finally:
        encoder.train(was_training)
    if not feats:
        raise UserError("no readable image in the monitor task's split")
    return torch.cat(feats), torch.cat(labels)


def linear_probe_accuracy(train_f: torch.Tensor, train_y: torch.Tensor, query_f: torch.Tensor,
                          query_y: torch.Tensor) -> float:
    """Logistic regression (lbfgs converged: tol 1e-8, deterministic) on standardised frozen features."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(train_f.cpu().double().numpy())
    clf = LogisticRegression(max_iter=10000, tol=1e-8).fit(scaler.transform(train_f.cpu().double().numpy()),
                                                           train_y.cpu().numpy())
    pred = clf.predict(scaler.transform(query_f.cpu().double().numpy()))
    return float((pred == query_y.cpu().numpy()).mean())


def measure(encoder: nn.Module, data: LabelledFeatures, device: torch.device, in_channels: int, k: int, t: float,
            linear: bool) -> dict[str, float]:
    t0 = time.time()
    train_f, train_y = extract_features(encoder, data.train, device, in_channels)
    query_f, query_y = extract_features(encoder, data.query, device, in_channels)
    row = {"knn_accuracy": knn_accuracy(train_f, train_y, query_f, query_y, data.num_classes, k, t),
           "linear_accuracy": linear_probe_accuracy(train_f, train_y, query_f, query_y) if linear else math.nan,
           "knn_k": k, "knn_t": t, "n_train": len(train_y), "n_val": len(query_y), "rankme": rankme(train_f)}
    row["seconds"] = round(time.time() - t0, 3)
    return row


def seen_in_pretraining(query: PathArray, pretraining: PathArray, what: str, run_dir: Path) -> int:
    """How many monitor query images the encoder pretrains on (same file); a warning, also written to
    ``monitor_overlap.txt``, when any: their kNN accuracy is not measured on held-out images."""
    real = [os.path.realpath(p) for p in (query.root, pretraining.root)]
    q = np.asarray([os.path.join(real[0], r) for r in query.rel_strings()], dtype=str)
    p = np.asarray([os.path.join(real[1], r) for r in pretraining.rel_strings()], dtype=str)
    n = int(np.isin(q, p).sum()) if len(q) and len(p) else 0
    if n:
        msg = (f"warning: the kNN monitor's query split ({what}) holds {n} of {len(q)} images that are also "
               "pretraining images; set monitor.query to a split outside dataset_base_dir")
        print(msg, file=sys.stderr)
        (run_dir / "monitor_overlap.txt").write_text(msg + "\n")
    return n


class Monitor(Callback):
    """A trainer callback that measures the encoder after due epochs (built on rank 0 only)."""

    def __init__(self, mcfg: MonitorConfig, prep: Preprocess, data_root: Optional[str], seed: int, batch_size: int,
                 workers: int, in_channels: int, device: torch.device, run_dir: Path, epochs: int,
                 seen: Optional[PathArray] = None, part: str = "encoder") -> None:
        self.cfg, self.in_channels, self.device, self.epochs = mcfg, in_channels, device, epochs
        self.part = part  # the submodule pretraining hands on (SSLMethod.exported)
        self.data = labelled_loaders(mcfg.task, prep, data_root, seed, mcfg.batch_size or batch_size, workers,
                                     mcfg.query)
        self.log = CsvLog(run_dir / "monitor.log", MONITOR_COLUMNS)
        if seen is not None:
            seen_in_pretraining(self.data.query.dataset.split.paths, seen, f"{mcfg.task} {mcfg.query}", run_dir)
        self.trimmed = False

    def due(self, epoch: int) -> bool:
        return epoch % self.cfg.every == 0 or epoch == self.epochs or any(m.epoch == epoch for m in self.cfg.milestones)

    def guard(self, epoch: int, row: dict[str, float]) -> None:
        """Raise CollapseDetected when this epoch's measurement misses a milestone of this epoch (NaN misses)."""
        for m in self.cfg.milestones:
            if m.epoch != epoch:
                continue
            for key in GUARDED:
                need = getattr(m, key)
                if need is not None and not float(row[key]) >= need:
                    raise CollapseDetected(
                        f"collapse guard: {key} {float(row[key]):.4f} at epoch {epoch} is below the milestone "
                        f"{need:g} (monitor.milestones); pretraining stopped, no encoder_pretrained.tar")

    def __call__(self, encoder: nn.Module, epoch: int, tb) -> Optional[dict[str, float]]:
        if not self.trimmed:  # rows of an attempt killed after its monitor but before its checkpoint
            self.log.keep_rows(lambda r: int(r["epoch"]) < epoch)
            self.trimmed = True
        if not self.due(epoch):
            return None
        saved = rng_state()
        try:
            row = measure(encoder, self.data, self.device, self.in_channels, self.cfg.knn_k, self.cfg.knn_t,
                          self.cfg.linear)
        finally:
            set_rng_state(saved)
        self.log.write({"epoch": epoch, **row})
        tb.scalars({k: row[k] for k in GUARDED}, epoch, "monitor")
        print(f"monitor epoch {epoch}: knn_accuracy {row['knn_accuracy']:.4f}"
              + (f"  linear_accuracy {row['linear_accuracy']:.4f}" if self.cfg.linear else "")
              + f"  rankme {row['rankme']:.2f}", flush=True)
        self.guard(epoch, row)
        return row

    def on_epoch_end(self, trainer: Any) -> None:
        self(getattr(plain(trainer.model), self.part), trainer.epoch, trainer.tb)

    def on_run_end(self, trainer: Any, finished: bool) -> None:
        self.close()

    def close(self) -> None:
        self.log.close()
