"""Pretraining data: the unlabeled images of ``dataset_base_dir`` (through the index cache), their
deterministic preprocessing, the shared cache and the loader. Split out of runs/pretrain.py so the
entry stays one screen."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from utility.config.schemas import PretrainConfig
from utility.data.cache import SharedStore
from utility.config.tasks import IdRule, TaskSpec
from utility.data.compact import concat
from utility.data.splits import grouped_random_subset
from utility.data.subjects import concat_ids, read_ids
from utility.data.dataset import ImageDataset, Preprocess
from utility.data.index import Split
from utility.data.index_cache import IndexCache, cached_listing
from utility.data.loader import build_loader, fill_cache
from utility.errors import UserError
from utility.paths import resolve_user_path
from utility.runs.ssl_config import check_image_count
from utility.runs.startup import Startup, index_cache_for
from utility.distributed import is_dist, main_decides


_PRETRAIN_TASK = TaskSpec(name="pretraining", root=".", splits={k: {"dir": k} for k in ("train", "val", "test")})


def distinct_folders(dirs: list[str]) -> list[Path]:
    """The dataset_base_dir folders by real path, each image once: a folder named twice, or inside
    another listed folder, would train its images twice per epoch; it is dropped and the count says so."""
    if not dirs:
        raise UserError("dataset_base_dir is empty; expected one or more folders of images")
    folders = []
    for d in dirs:
        if not str(d).strip():  # '' would resolve to the current folder
            raise UserError("dataset_base_dir holds an empty folder name; expected folders of images")
        folder = resolve_user_path(d)  # the real path (symlinks resolved)
        if not folder.is_dir():
            raise UserError(f"dataset_base_dir not found: {folder}")
        folders.append(folder)
    keep = [f for i, f in enumerate(folders)
            if not any(o in f.parents or (o == f and j < i) for j, o in enumerate(folders) if j != i)]
    if len(keep) < len(folders):
        print(f"dataset_base_dir: {len(folders)} folders given, {len(keep)} distinct by real path; "
              f"{len(folders) - len(keep)} dropped (the same folder again, or inside another listed folder)")
    return keep


def unlabeled_split(cfg: PretrainConfig, cache: IndexCache | None = None) -> Split:
    """Every image under the dataset_base_dir folders (listed once per folder state with a cache)."""
    formats = cfg.data_format or [".png", ".jpg", ".jpeg", ".npy"]
    parts = []
    for folder in distinct_folders(cfg.dataset_base_dir):
        found = cached_listing(folder, formats, cfg.slice_axis, cache)
        if not found:
            raise UserError(f"no {', '.join(formats)} images under {folder} (data_format)")
        parts.append(found)
    paths = concat(parts)
    subjects = None
    if cfg.subject_regex:  # relative to each folder: pretraining folders have no task folder above them
        subjects = concat_ids([read_ids(IdRule(regex=cfg.subject_regex), _PRETRAIN_TASK, Path(p.root),
                                        Path(p.root), p, f"dataset_base_dir {p.root}") for p in parts],
                              [len(p) for p in parts])
    split = Split("train", paths, np.zeros(len(paths), np.int64), subjects)
    if cfg.random_subset < 1:
        idx = grouped_random_subset(None if subjects is None else subjects.codes, len(paths), cfg.random_subset,
                                    cfg.seed)
        split = split.subset(idx)
    return split


def build_pretrain_data(cfg: PretrainConfig, device: torch.device, startup: Startup, method_cls: Any,
                        settings: Any) -> tuple[Split, Preprocess, ImageDataset, Any, int]:
    """(split, preprocessing, dataset, loader, workers); image count and normaliser checked first."""
    index_cache = index_cache_for(cfg)
    with startup.phase("index", lambda: f"{len(split)} images; {index_cache.last if index_cache else 'built'}"):
        if is_dist() and index_cache is not None:  # rank 0 lists (and writes the cache) first
            main_decides(lambda: len(unlabeled_split(cfg, index_cache)))
        split = unlabeled_split(cfg, index_cache)
    check_image_count(cfg, split, method_cls, settings)
    shape = tuple(cfg.shape_desired or (cfg.image_size, cfg.image_size))
    prep = Preprocess(channels=1 if cfg.grayscale else 3, shape=shape,  # type: ignore[arg-type]
                      normalizer=cfg.normalizer or "naive", window=tuple(cfg.window) if cfg.window else None)
    if prep.normalizer == "imagenet":
        raise UserError("normalizer 'imagenet' standardises intensities, but the views' colour jitter needs "
                        "[0, 1] images; use naive, 01_clipped_CT or windowed")
    cache = None
    with startup.phase("cache planning", f"opmode {cfg.opmode}"):
        if cfg.opmode != "disk":
            cache = SharedStore(split.paths, prep.channels, shape, repr(prep),  # type: ignore[arg-type]
                                resolve_user_path(cfg.cache_dir) if cfg.cache_dir else None, "pretraining images")
    ds = ImageDataset(split, prep, False, 1, cache, debug=cfg.debug, test_nan_inf=cfg.test_nan_inf)
    workers = 0 if cfg.debug else cfg.num_workers
    if cfg.opmode == "pre_cache":
        with startup.phase("cache fill", "pre_cache"):
            fill_cache(ds, workers, cfg.batch_size)
    loader = build_loader(ds, cfg.batch_size, cfg.seed, True, workers, cfg.prefetch_factor,
                          pin_memory=device.type == "cuda")

    return split, prep, ds, loader, workers
