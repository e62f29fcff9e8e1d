"""Task type -> supervised pipeline (its dataset and its method), found by name like target readers.

A pipeline module registers itself with :func:`register_pipeline`; the built-in ones are imported
on first use, so a classification run never loads segmentation code::

    @register_pipeline("my_type")
    class MyPipeline:
        segmentation = False   # the network: classifier (False) or U-Net (True)
        def dataset(self, cfg, task, split, name, prep, num_classes, cache_dir): ...
        def method(self, cfg, task, indexed, augment, bad): ...
"""
from __future__ import annotations

from typing import Any, Callable, Optional, Protocol

from utility.registry import Registry


class Pipeline(Protocol):
    segmentation: bool

    def dataset(self, cfg: Any, task: Any, split: Any, name: str, prep: Any, num_classes: int,
                cache_dir: Any) -> Any:
        """The dataset of one split."""

    def method(self, cfg: Any, task: Any, indexed: Any, augment: Optional[Any], bad: Any) -> Any:
        """The engine method (loss, evaluation, artifacts)."""


PIPELINES: Registry["Pipeline"] = Registry(
    "pipeline", lambda t, known: f"no pipeline for task type '{t}' (known: {', '.join(sorted(known))})")
for _type, _module in (("multiclass", "utility.methods.classification"),
                       ("multilabel", "utility.methods.classification"),
                       ("segmentation", "utility.methods.segmentation")):
    PIPELINES.lazy(_type, _module)  # importing the module registers its pipeline


def register_pipeline(*task_types: str) -> Callable[[type], type]:
    def deco(cls: type) -> type:
        PIPELINES.register(*task_types, entry=cls())
        return cls
    return deco


def pipeline_for(task_type: str) -> Pipeline:
    return PIPELINES.find(task_type)
