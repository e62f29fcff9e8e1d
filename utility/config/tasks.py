"""Tasks are data: a YAML file in config/tasks/ says where the images are, how targets are read,
how splits are made, the loss, the metrics and the augmentation preset. A new task needs no code.

Size variants (``CX8-S``, ``ImageNet-1kXS``, ``BraTS-M``) are the base task with a seeded stratified
fraction of its training set, as in the predecessor's experiments (E2).
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from utility.config.yamlsafe import load_file
from utility.errors import UserError
from utility.paths import TASKS_DIR

SIZE_VARIANTS: dict[str, float] = {"M": 0.5, "S": 0.1, "XS": 0.01, "XXS": 0.001}
_VARIANT_RE = re.compile(r"^(?P<base>.+?)(?P<sep>-?)(?P<size>XXS|XS|M|S)$")


class SplitSpec(BaseModel):
    """Where one split's samples come from: a folder, a list file, rows of the labels CSV,
    or a seeded stratified fraction carved out of another split."""

    model_config = ConfigDict(extra="forbid")
    dir: Optional[str] = None
    list: Optional[str] = None
    csv_rows: bool = False
    split_column: Optional[str] = None
    split_value: Optional[str] = None
    from_: Optional[str] = Field(None, alias="from")
    fraction: Optional[float] = Field(None, gt=0, lt=1)

    @model_validator(mode="after")
    def _one_source(self) -> "SplitSpec":
        sources = [self.dir is not None, self.list is not None, self.csv_rows, self.from_ is not None]
        if sum(sources) != 1:
            raise ValueError("a split needs exactly one of dir, list, csv_rows, from")
        if (self.from_ is None) != (self.fraction is None):
            raise ValueError("'from' and 'fraction' go together")
        return self


class LayoutSpec(BaseModel):
    """How targets are read for an image. ``reader`` names a registered target reader."""

    model_config = ConfigDict(extra="forbid")
    reader: str = "folders"
    labels_file: Optional[str] = None
    path_column: int | str = 0
    label_column: int | str = 1
    delimiter: Optional[str] = None
    label_separator: str = "|"
    match: Literal["basename", "relpath", "stem"] = "basename"
    header: Optional[bool] = None
    synset_file: Optional[str] = None
    solution_file: Optional[str] = None
    class_stride: int = Field(1, ge=1)
    # segmentation (see utility/data/segdata.py)
    image_channels: Optional[list[str]] = Field(
        None, description="suffixes of sibling files stacked as channels; only files ending in the first are indexed")
    masks: Optional[list[tuple[str, str]]] = Field(
        None, description="[regex, replacement] rules turning an image path into its mask path(s)")
    mask_kind: Literal["label_map", "binary"] = Field(
        "label_map", description="label_map: one mask of class values; binary: mask i marks class i+1 (higher wins)")
    label_values: Optional[dict[int, int]] = Field(None, description="raw mask value -> class, e.g. {4: 3}")
    # body_part reader (CTBR, see utility/data/body_part.py)
    dicom_root: Optional[str] = Field(None, description="folder of the slices' source DICOMs (absolute or "
                                                        "under the task folder; ~ and $VARS expanded)")
    dicom_path: Optional[tuple[str, str]] = Field(
        None, description="[regex, replacement] from a slice's path below its split folder to its DICOM "
                          "below dicom_root; default ['\\.npy$', '.dcm']")
    body_part_rule: Literal["single", "lowest"] = Field(
        "single", description="lowest: the predecessor's keywords, several regions -> lowest class (recipe)")


class IdRule(BaseModel):
    """Where one id per sample comes from (exactly one source): a labels-table ``column``, a ``regex``
    on the path relative to the task folder (its first group, or the whole match, is the id), a DICOM
    attribute (``dicom: PatientID``; the image itself, or its DICOM under ``layout.dicom_root``), or a
    ``reader: module:function`` of this project called with (relative paths, ReaderContext) -> ids."""

    model_config = ConfigDict(extra="forbid")
    column: Optional[str] = None
    regex: Optional[str] = None
    dicom: Optional[str] = None
    reader: Optional[str] = None

    @model_validator(mode="after")
    def _one(self) -> "IdRule":
        given = [k for k in ("column", "regex", "dicom", "reader") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of column, regex, dicom, reader")
        if self.regex is not None:
            try:
                re.compile(self.regex)
            except re.error as exc:
                raise ValueError(f"regex {self.regex!r} does not compile: {exc}") from None
        if self.dicom is not None and not re.fullmatch(r"[A-Za-z][A-Za-z0-9]*", self.dicom):
            raise ValueError(f"dicom: expected a DICOM keyword such as PatientID, got {self.dicom!r}")
        if self.reader is not None and ":" not in self.reader:
            raise ValueError("reader: expected module:function (a module of this project)")
        return self

    @property
    def builtin(self) -> bool:
        """Depends only on paths and files the index stamps (cacheable)."""
        return self.reader is None and self.dicom is None


class SubjectRule(IdRule):
    """The subject (patient) of each sample, and optionally its ``session`` (study/visit) id."""

    session: Optional[IdRule] = None


class TaskSpec(BaseModel):
    """One downstream task, loaded from YAML."""

    model_config = ConfigDict(extra="forbid")
    name: str
    type: Literal["multiclass", "multilabel", "segmentation"] = "multiclass"
    description: str = ""
    root: str = Field(description="folder under the data root")
    data_format: list[str] = [".png"]
    classes: Optional[list[str]] = None
    layout: LayoutSpec = LayoutSpec()
    splits: dict[str, SplitSpec]
    loss: Literal["ce", "bce", "dice", "ce_dice"] = "ce"
    # segmentation: loss = ce_weight * CE + dice_weight * (1 - soft Dice)
    ce_weight: float = Field(1.0, ge=0)
    dice_weight: float = Field(1.0, ge=0)
    dice_smooth: float = Field(1.0, ge=0)
    dice_include_background: bool = False
    regions: Optional[dict[str, list[int]]] = Field(
        None, description="extra Dice/IoU over unions of classes, e.g. BraTS ET: [3], TC: [1, 3], WT: [1, 2, 3]")
    avg_classes: Optional[list[list[int]]] = Field(
        None, description="what *_avg_class_<i> scores (entry i: classes taken as one; default class i); "
                          "BraTS: [[0], [3], [1, 2, 3], [1, 3]] = background, ET, WT, TC as in the predecessor")
    overlays: int = Field(4, ge=0, description="test images saved as image|truth|prediction PNGs")
    normalizer: Literal["naive", "01_clipped_CT", "imagenet", "windowed"] = "naive"
    window: Optional[tuple[float, float]] = None
    shape_desired: tuple[int, int] = (224, 224)
    augmentation: str = "default"
    primary_metric: str = "accuracy"
    primary_mode: Literal["max", "min"] = "max"
    per_class_metrics: bool = True
    train_fraction: Optional[float] = Field(None, gt=0, le=1)
    subject: Optional[SubjectRule] = Field(
        None, description="where each sample's subject (patient) id comes from; none: each sample is its own")
    source_file: Optional[str] = None

    @model_validator(mode="after")
    def _splits(self) -> "TaskSpec":
        if self.window is not None and not self.window[0] < self.window[1]:
            raise ValueError(f"window {list(self.window)} must be [low, high] with low < high (a zero-width "
                             "window divides by 0)")
        missing = {"train", "val", "test"} - set(self.splits)
        if missing:
            raise ValueError(f"splits must define train, val and test (missing: {sorted(missing)})")
        for name, s in self.splits.items():
            if s.from_ is not None and s.from_ not in self.splits:
                raise ValueError(f"split '{name}' is carved from unknown split '{s.from_}'")
        if self.subject is not None and self.subject.column is not None and self.layout.labels_file is None:
            raise ValueError("subject.column needs layout.labels_file (the table holding that column)")
        if self.type == "multilabel" and self.loss != "bce":
            raise ValueError("multilabel tasks use loss: bce")
        if self.type == "segmentation":
            if self.loss not in ("ce", "dice", "ce_dice"):
                raise ValueError("segmentation tasks use loss: ce, dice or ce_dice")
            if not self.classes or len(self.classes) < 2:
                raise ValueError("segmentation tasks need classes: [background, ...] (at least 2)")
            if self.primary_metric == "accuracy":
                self.primary_metric = "dice_mean_fg"
            named = [(f"region '{r}'", m) for r, m in (self.regions or {}).items()]
            named += [(f"avg_classes[{i}]", m) for i, m in enumerate(self.avg_classes or [])]
            for what, members in named:
                if not members or any(not 0 <= c < len(self.classes) for c in members):
                    raise ValueError(f"{what} must name classes in 0..{len(self.classes) - 1}")
        elif self.loss in ("dice", "ce_dice"):
            raise ValueError(f"loss '{self.loss}' is for segmentation tasks")
        return self


def available_tasks() -> list[str]:
    return sorted(p.stem for p in TASKS_DIR.glob("*.yaml"))


def _read_task_yaml(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Read a task YAML; ``extends: OTHER`` merges OTHER's keys under this file's."""
    data = load_file(path, f"task file {path}") or {}
    if not isinstance(data, dict):
        raise UserError(f"task file {path} must hold a mapping")
    base_name = data.pop("extends", None)
    if base_name is None:
        return data
    base_path = _find_task_file(str(base_name), path.parent)
    if base_path is None or base_path in seen:
        raise UserError(f"task file {path}: 'extends: {base_name}' names no task file (or a cycle)")
    merged = _read_task_yaml(base_path, seen + (path,))
    for key, value in data.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = {**merged[key], **value}
        else:
            merged[key] = value
    return merged


def _find_task_file(name: str, base_dir: Path = TASKS_DIR) -> Path | None:
    p = Path(name).expanduser()
    if p.suffix in (".yaml", ".yml") and p.is_file():
        return p.resolve()
    for d in (base_dir, TASKS_DIR):
        cand = d / f"{name}.yaml"
        if cand.is_file():
            return cand.resolve()
    return None


def load_task(name: str) -> TaskSpec:
    """Resolve a task name (preset, size variant of a preset, or a YAML path) into a TaskSpec."""
    fraction: float | None = None
    path = _find_task_file(name)
    if path is None:
        m = _VARIANT_RE.match(name)
        if m and _find_task_file(m["base"]) is not None:
            path = _find_task_file(m["base"])
            fraction = SIZE_VARIANTS[m["size"]]
    if path is None:
        import difflib

        names = available_tasks()
        hint = difflib.get_close_matches(name, names, n=1, cutoff=0.4)
        raise UserError(
            f"unknown task '{name}'" + (f"; did you mean '{hint[0]}'?" if hint else "")
            + f" Presets: {', '.join(names)} (each also with -M, -S, -XS, -XXS), or a path to a task YAML.")
    data = _read_task_yaml(path)
    data["source_file"] = str(path)
    data.setdefault("name", path.stem)
    if fraction is not None:
        data["name"] = name
        data["train_fraction"] = fraction
    try:
        return TaskSpec.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(task)"
        raise UserError(f"task file {path}: '{where}': {first['msg']}") from None
