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

import importlib
from typing import Any, Callable, Optional, Protocol

from utility.errors import UserError

_BUILTIN = {"multiclass": "utility.methods.classification", "multilabel": "utility.methods.classification",
            "segmentation": "utility.methods.segmentation"}
_PIPELINES: dict[str, "Pipeline"] = {}


class Pipeline(Protocol):
    segmentation: bool

    def dataset(self, cfg: Any, task: Any, split: Any, name: str, prep: Any, num_classes: int,
                cache_dir: Any) -> Any:
        """The dataset of one split."""

    def method(self, cfg: Any, task: Any, indexed: Any, augment: Optional[Any], bad: Any) -> Any:
        """The engine method (loss, evaluation, artifacts)."""


def register_pipeline(*task_types: str) -> Callable[[type], type]:
    def deco(cls: type) -> type:
        for t in task_types:
            _PIPELINES[t] = cls()
        return cls
    return deco


def pipeline_for(task_type: str) -> Pipeline:
    if task_type not in _PIPELINES and task_type in _BUILTIN:
        importlib.import_module(_BUILTIN[task_type])
    if task_type not in _PIPELINES:
        raise UserError(f"no pipeline for task type '{task_type}' (known: {', '.join(sorted(set(_BUILTIN) | set(_PIPELINES)))})")
    return _PIPELINES[task_type]
