"""The study file: which pretraining sources to compare on which tasks, how, how often.

Validated like every config: an unknown key (at any depth) names the closest valid one, a duplicate
label is an error (YAML would silently keep the last), and every referenced file, task and config
is checked before anything is written or queued.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal, Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from utility.config.loader import closest_key
from utility.config.yamlsafe import load_file
from utility.errors import UserError

LABEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PretrainSource(Strict):
    """A source pretrained by the study (``config`` + ``overrides``), an existing ``encoder`` file, or
    the encoder a pretraining ``run`` (under <output_root>/pretraining/) writes outside the study."""

    config: Optional[str] = None
    overrides: dict[str, Any] = Field(default_factory=dict)
    encoder: Optional[str] = None
    run: Optional[str] = None
    file: str = Field("encoder_pretrained.tar", description="with run: the file in the run's folder")
    format: Literal["auto", "timm", "dinov2", "radimagenet_resnet50"] = Field(
        "auto", description="with encoder: a released model's file layout (finetuning's model_path_format)")
    model_name: Optional[str] = Field(None, description="with encoder: its architecture, when not the finetune "
                                                        "config's (a foundation model: vit_small_patch14_dinov2)")

    @model_validator(mode="after")
    def _one(self) -> "PretrainSource":
        if sum(x is not None for x in (self.config, self.encoder, self.run)) != 1:
            raise ValueError("give one of 'config' (pretrained by the study), 'encoder' (an existing file) or "
                             "'run' (a pretraining run's encoder, made outside the study)")
        if self.encoder is None and (self.format != "auto" or self.model_name is not None):
            raise ValueError("'format' and 'model_name' go with 'encoder' (a file); a pretraining config has its own")
        if self.encoder is not None and self.overrides:
            raise ValueError("'overrides' only go with 'config'")
        return self


class FinetuneBase(Strict):
    """The finetuning config every run starts from (``config``), with ``overrides``."""

    config: str
    overrides: dict[str, Any] = Field(default_factory=dict)


class Repeats(Strict):
    """Each run repeated with these ``seeds``, or as ``folds``-fold cross-validation."""

    seeds: Optional[list[int]] = None
    folds: Optional[int] = Field(None, ge=2)

    @model_validator(mode="after")
    def _one(self) -> "Repeats":
        if (self.seeds is None) == (self.folds is None):
            raise ValueError("give either 'seeds: [..]' or 'folds: k'")
        if self.seeds is not None and (not self.seeds or len(set(self.seeds)) != len(self.seeds)):
            raise ValueError("'seeds' must be a non-empty list without repeats")
        return self

    @property
    def count(self) -> int:
        return len(self.seeds) if self.seeds is not None else int(self.folds or 0)


class TaskSetting(Strict):
    """Per-task settings: the name its runs carry (``label``, e.g. the predecessor's I1k for ImageNet-1k),
    config keys for that task only, and its own seeds."""

    label: Optional[str] = None
    overrides: dict[str, Any] = Field(default_factory=dict)
    seeds: Optional[list[int]] = None


class StudySpec(Strict):
    """A study: pretraining sources x tasks x modes x grid, each repeated (the study YAML)."""

    name: str
    pretrain: dict[str, Optional[PretrainSource]]
    finetune: FinetuneBase
    tasks: list[str] = Field(min_length=1)
    modes: dict[str, dict[str, Any]] = Field(default_factory=lambda: {"finetune": {}})
    repeats: Repeats = Field(default_factory=lambda: Repeats(seeds=[42]))
    grid: dict[str, list[Any]] = Field(default_factory=dict)
    task_settings: dict[str, TaskSetting] = Field(default_factory=dict, description="keyed by a task of 'tasks'")
    metrics: Optional[list[str]] = None
    gpus_per_job: int = Field(1, ge=0)
    allow_contamination: bool = Field(False, description="run although a pretraining source holds a task's "
                                      "test files or test subjects (utility/study/contamination.py)")
    output_root: Optional[str] = Field(None, description="runs, studies/ and the jobs file; default logs_and_checkpoints")
    config_dir: Optional[str] = Field(None, description="generated configs; default pkgs/FTE/config/<name>/")

    @property
    def reference(self) -> str:
        """The source others are compared against in the printed summary and the report: the
        random-init one when there is one, else the first."""
        return next((k for k, v in self.pretrain.items() if v is None), next(iter(self.pretrain)))

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        v = v.strip().strip("/")
        if not v or ".." in v.split("/") or not all(LABEL.match(p) for p in v.split("/")):
            raise ValueError("expected a relative name of letters, digits, '_', '-', '.', '+' and '/'")
        return v

    @field_validator("pretrain", "modes")
    @classmethod
    def _labels(cls, v: dict) -> dict:
        if not v:
            raise ValueError("needs at least one entry")
        bad = [k for k in v if not LABEL.match(str(k))]
        if bad:
            raise ValueError(f"label {bad[0]!r} may hold only letters, digits, '_', '-', '.', '+'")
        return v

    @field_validator("grid")
    @classmethod
    def _grid(cls, v: dict) -> dict:
        empty = [k for k, vals in v.items() if not isinstance(vals, list) or not vals]
        if empty:
            raise ValueError(f"grid axis '{empty[0]}' needs a non-empty list of values")
        return v


class _UniqueKeyLoader(yaml.SafeLoader):
    """A YAML loader that refuses a key written twice in one mapping."""


def _construct_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: set = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise UserError(f"'{key}' appears twice in one mapping (line {key_node.start_mark.line + 1}); "
                            "labels and keys must be unique")
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _unknown_keys(model: type[BaseModel], data: Any, where: str) -> None:
    """Name the closest valid key for an unknown one, at any depth of the study file."""
    if not isinstance(data, dict):
        return
    fields = model.model_fields
    for key, value in data.items():
        if key not in fields:
            hint = closest_key(str(key), list(fields))
            raise UserError(f"unknown study key '{where}{key}'" + (f"; did you mean '{where}{hint}'?" if hint else ""))
        sub = {"finetune": FinetuneBase, "repeats": Repeats}.get(key) if model is StudySpec else None
        if sub is not None:
            _unknown_keys(sub, value, f"{where}{key}.")
        elif model is StudySpec and key == "task_settings" and isinstance(value, dict):
            for task, setting in value.items():
                _unknown_keys(TaskSetting, setting, f"task_settings.{task}.")
        elif model is StudySpec and key == "pretrain" and isinstance(value, dict):
            for label, src in value.items():
                _unknown_keys(PretrainSource, src, f"pretrain.{label}.")


def load_study(path: Path, overrides: Optional[dict[str, Any]] = None) -> StudySpec:
    if not path.is_file():
        raise UserError(f"study file not found: {path}")
    raw = load_file(path, f"study file {path}", _UniqueKeyLoader)
    if not isinstance(raw, dict):
        raise UserError(f"study file {path} must hold a mapping of key: value")
    raw.update(overrides or {})
    _unknown_keys(StudySpec, raw, "")
    try:
        return StudySpec.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        key = ".".join(str(p) for p in err["loc"]) or "(study)"
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "missing":
            raise UserError(f"study key '{key}' is required but missing from {path}") from None
        raise UserError(f"study {path}: '{key}': {msg}") from None
