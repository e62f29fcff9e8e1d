"""The data of a supervised run: index the task, preprocess, one dataset and loader per split."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import torch

from utility.config.schemas import FTEConfig
from utility.config.tasks import TaskSpec
from utility.data.dataset import Preprocess
from utility.data.index import IndexedTask, index_task, join_splits
from utility.data.loader import CacheAwareLoader, build_loader, fill_cache
from utility.errors import UserError
from utility.methods.registry import Pipeline
from utility.paths import DEFAULT_DATA_ROOT, resolve_user_path
from utility.data.index_cache import IndexCache
from utility.runs.startup import Startup
from utility.distributed import is_dist, main_decides


@dataclass
class Data:
    indexed: IndexedTask
    loaders: dict[str, CacheAwareLoader]
    datasets: dict[str, Any]


def index_with_cache(cfg: FTEConfig, task: TaskSpec, cache: Optional[IndexCache]) -> IndexedTask:
    """Index the task (through the persistent index cache if given); under DDP rank 0 indexes (and
    writes the cache) first, then the other ranks read it, so a cold cache is listed once per node."""
    data_root = resolve_user_path(cfg.data_root) if cfg.data_root else DEFAULT_DATA_ROOT

    def run() -> IndexedTask:
        return index_task(task, data_root, cfg.seed, cfg.data_format, cfg.folds, cfg.fold, cfg.train_fraction,
                          slice_axis=cfg.slice_axis, cache=cache)

    def warm_up() -> None:
        run()

    if is_dist() and cache is not None:
        main_decides(warm_up)
    return run()


def check_folds(cfg: FTEConfig, task: TaskSpec, cache: Optional[IndexCache] = None) -> None:
    """k folds need at least k samples in train + val (each fold validates on a share of them);
    checked once before the first fold, not after hundreds of folds."""
    if not cfg.folds:
        return
    splits = index_with_cache(cfg.model_copy(update={"folds": None, "fold": None, "train_fraction": None}), task, cache).splits
    n = join_splits([splits["train"], splits["val"]], "pool").subject_count()  # folds take whole subjects
    if cfg.folds > n:
        raise UserError(f"config key 'folds': {cfg.folds} folds but task {task.name} has only {n} "
                        f"train + val subjects; use at most {n} folds")


def build_data(cfg: FTEConfig, task: TaskSpec, device: torch.device, pipe: Pipeline,
               startup: Optional[Startup] = None, index_cache: Optional[IndexCache] = None) -> Data:
    """``index_cache``: the run's (see :func:`utility.runs.startup.index_cache_for`); None indexes anew."""
    startup = startup or Startup(verbose=False)
    with startup.phase("index", lambda: f"{', '.join(f'{k} {len(s)}' for k, s in indexed.splits.items())}; "
                                        f"{indexed.how}"):
        indexed = index_with_cache(cfg, task, index_cache)
    shape = tuple(cfg.shape_desired or task.shape_desired)
    prep = Preprocess(channels=3 if (cfg.in_channels or 3) == 3 else 1, shape=shape,  # type: ignore[arg-type]
                      normalizer=cfg.normalizer or task.normalizer,
                      window=tuple(cfg.window) if cfg.window else (tuple(task.window) if task.window else None))
    if prep.normalizer == "windowed" and prep.window is None:
        raise UserError("normalizer 'windowed' needs window: [low, high] in the config or the task")
    workers = 0 if cfg.debug else cfg.num_workers
    cache_dir = resolve_user_path(cfg.cache_dir) if cfg.cache_dir else None
    datasets, loaders = {}, {}
    with startup.phase("cache planning", f"opmode {cfg.opmode}"):
        for name in ("train", "val", "test"):
            datasets[name] = pipe.dataset(cfg, task, indexed.splits[name], name, prep, indexed.num_classes, cache_dir)
    if cfg.opmode == "pre_cache":
        with startup.phase("cache fill", "pre_cache"):
            for ds in datasets.values():
                fill_cache(ds, workers, cfg.batch_size)
    for name, ds in datasets.items():
        loaders[name] = build_loader(ds, cfg.batch_size, cfg.seed, name == "train", workers, cfg.prefetch_factor,
                                     pin_memory=device.type == "cuda")
    return Data(indexed, loaders, datasets)


def check_trainable(task: TaskSpec, indexed: IndexedTask) -> None:
    """What training cannot use is refused before work: a training split of one image (BatchNorm
    needs two; a train_fraction that rounds to 1 does this) or, for a multiclass task, of one class
    (nothing to tell apart: the loss is 0 from the first step and AUC undefined)."""
    train = indexed.splits["train"]
    hint = " (train_fraction or a size variant -S/-XS/-XXS keeps too little of it?)"
    if len(train) < 2:
        raise UserError(f"task {task.name}: the training split has {len(train)} image; training needs at least 2" + hint)
    if task.type == "multiclass":
        present = np.unique(np.asarray(train.targets))
        if len(present) < 2:
            name = indexed.classes[int(present[0])] if len(present) and len(indexed.classes) > int(present[0]) else "?"
            raise UserError(f"task {task.name}: every training image is of class '{name}'; a multiclass task "
                            "needs at least 2 classes in its training split" + hint)
