"""What a pretraining config means beyond its schema: which method, its resolved settings, and the
checks that refuse a run no step of which could be taken (batch, image count, method limits)."""
from __future__ import annotations

from typing import Any

from utility.config.schemas import SimCLRConfig
from utility.data.index import Split
from utility.errors import UserError
from utility.methods.ssl_base import MethodSettings, SSLMethod
from utility.methods.ssl_registry import SIMCLR_KEYS, method_class, resolve_settings
from utility.paths import resolve_user_path
from utility.distributed import world_size


def resolve_method(cfg: SimCLRConfig) -> tuple[type[SSLMethod], MethodSettings, SimCLRConfig]:
    """The method class, its settings, and the config that records every setting in force (config.yaml;
    a new object: a validated config is never changed)."""
    cls = method_class(cfg.method)
    if cls.name == "simclr":
        if cfg.method_settings:
            resolve_settings("simclr", cfg.method_settings, set())  # raises, naming the keys
        given: dict[str, Any] = {k: getattr(cfg, k) for k in SIMCLR_KEYS}
        return cls, resolve_settings("simclr", given, set()), cfg
    settings = resolve_settings(cls.name, dict(cfg.method_settings), set(cfg.model_fields_set))
    return cls, settings, cfg.model_copy(update={"method_settings": settings.model_dump(mode="json")})


def check_batch_size(cfg: SimCLRConfig, cls: type[SSLMethod]) -> None:
    """Refuse, before any work, a batch size with which no step of the method can ever be taken."""
    need, label = cls.min_batch, cls.label
    if cfg.batch_size < need:
        why = ("NT-Xent contrasts each image with the others in its batch" if cls.name == "simclr"
               else "its BatchNorm layers and batch statistics need several images")
        raise UserError(f"batch_size {cfg.batch_size}: a {label} batch needs at least {need} images "
                        f"({why}); no step could be taken")
    w = world_size()
    if w > 1 and cfg.batch_size // w < need:
        raise UserError(f"batch_size {cfg.batch_size} over {w} processes is {cfg.batch_size // w} image(s) per "
                        f"process; {label} needs at least {need} per process (batch_size >= {need * w})")


def check_image_count(cfg: SimCLRConfig, split: Split, cls: type[SSLMethod], settings: MethodSettings) -> None:
    """Refuse data that can never fill one batch, and settings the data cannot serve (a MoCo queue
    longer than the dataset)."""
    where = ", ".join(str(resolve_user_path(d)) for d in cfg.dataset_base_dir)
    subset = f" after random_subset {cfg.random_subset}" if cfg.random_subset < 1 else ""
    n, need = len(split), cls.min_batch
    if n < need:
        raise UserError(f"dataset_base_dir {where}: {n} image{'s' if n != 1 else ''}{subset}; {cls.label} needs "
                        f"at least {need} images to form a batch")
    if cfg.batch_size > n:
        raise UserError(f"batch_size {cfg.batch_size} is larger than the {n} images found{subset} in "
                        f"dataset_base_dir {where}")
    cls.check(settings, n, cfg.batch_size)
