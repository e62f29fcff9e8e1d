"""The data of a supervised run: index the task, preprocess, one dataset and loader per split."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from utility.config.schemas import FTEConfig
from utility.config.tasks import TaskSpec
from utility.data.dataset import Preprocess
from utility.data.index import IndexedTask, index_task
from utility.data.loader import CacheAwareLoader, build_loader, fill_cache
from utility.errors import UserError
from utility.methods.registry import Pipeline
from utility.paths import DEFAULT_DATA_ROOT, resolve_user_path


@dataclass
class Data:
    indexed: IndexedTask
    loaders: dict[str, CacheAwareLoader]
    datasets: dict[str, Any]


def index_for(cfg: FTEConfig, task: TaskSpec) -> IndexedTask:
    data_root = resolve_user_path(cfg.data_root) if cfg.data_root else DEFAULT_DATA_ROOT
    return index_task(task, data_root, cfg.seed, cfg.data_format, cfg.folds, cfg.fold, cfg.train_fraction,
                      slice_axis=cfg.slice_axis)


def check_folds(cfg: FTEConfig, task: TaskSpec) -> None:
    """k folds need at least k samples in train + val (each fold validates on a share of them);
    checked once before the first fold, not after hundreds of folds."""
    if not cfg.folds:
        return
    splits = index_for(cfg.model_copy(update={"folds": None, "fold": None, "train_fraction": None}), task).splits
    n = len(splits["train"]) + len(splits["val"])
    if cfg.folds > n:
        raise UserError(f"config key 'folds': {cfg.folds} folds but task {task.name} has only {n} "
                        f"train + val samples; use at most {n} folds")


def build_data(cfg: FTEConfig, task: TaskSpec, device: torch.device, pipe: Pipeline) -> Data:
    indexed = index_for(cfg, task)
    shape = tuple(cfg.shape_desired or task.shape_desired)
    prep = Preprocess(channels=3 if (cfg.in_channels or 3) == 3 else 1, shape=shape,  # type: ignore[arg-type]
                      normalizer=cfg.normalizer or task.normalizer,
                      window=tuple(cfg.window) if cfg.window else (tuple(task.window) if task.window else None))
    if prep.normalizer == "windowed" and prep.window is None:
        raise UserError("normalizer 'windowed' needs window: [low, high] in the config or the task")
    workers = 0 if cfg.debug else cfg.num_workers
    cache_dir = resolve_user_path(cfg.cache_dir) if cfg.cache_dir else None
    datasets, loaders = {}, {}
    for name in ("train", "val", "test"):
        ds = pipe.dataset(cfg, task, indexed.splits[name], name, prep, indexed.num_classes, cache_dir)
        if cfg.opmode == "pre_cache":
            fill_cache(ds, workers, cfg.batch_size)
        loaders[name] = build_loader(ds, cfg.batch_size, cfg.seed, name == "train", workers, cfg.prefetch_factor,
                                     pin_memory=device.type == "cuda")
        datasets[name] = ds
    return Data(indexed, loaders, datasets)
