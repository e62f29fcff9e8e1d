"""What a pretraining config means beyond its schema: which method, its resolved settings, and the
checks that refuse a run no step of which could be taken (batch, image count, method limits)."""
from __future__ import annotations


from utility.config.schemas import PretrainConfig
from utility.data.index import Split
from utility.errors import UserError
from utility.methods.ssl_base import MethodSettings, SSLMethod
from utility.methods.ssl_registry import method_class, resolve_settings, settings_given
from utility.paths import resolve_user_path
from utility.distributed import world_size


def resolve_method(cfg: PretrainConfig) -> tuple[type[SSLMethod], MethodSettings, PretrainConfig]:
    """The method class, its settings, and the config that records every setting in force (config.yaml;
    a new object: a validated config is never changed)."""
    cls = method_class(cfg.method)
    settings = resolve_settings(cls.name, settings_given(cls, cfg.method_settings, cfg), set(cfg.model_fields_set))
    if cls.TOP_LEVEL_KEYS:  # recorded where the config holds them
        return cls, settings, cfg
    return cls, settings, cfg.model_copy(update={"method_settings": settings.model_dump(mode="json")})


def check_batch_size(cfg: PretrainConfig, cls: type[SSLMethod]) -> None:
    """Refuse, before any work, a batch size with which no step of the method can ever be taken."""
    need, label = cls.min_batch, cls.label
    if cfg.batch_size < need:
        raise UserError(f"batch_size {cfg.batch_size}: a {label} batch needs at least {need} images "
                        f"({cls.batch_why}); no step could be taken")
    w = world_size()
    if w > 1 and cfg.batch_size // w < need:
        raise UserError(f"batch_size {cfg.batch_size} over {w} processes is {cfg.batch_size // w} image(s) per "
                        f"process; {label} needs at least {need} per process (batch_size >= {need * w})")


def check_image_count(cfg: PretrainConfig, split: Split, cls: type[SSLMethod], settings: MethodSettings) -> None:
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
