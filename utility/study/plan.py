"""From a study to runs: one finetuning config per (source, task, mode, grid point, repeat), one
pretraining config per source the study pretrains, and the queue lines with their dependencies.

Run names follow the predecessor's scheme so its notebooks keep working:
``<study>/PT_<source>_FT_<task>[_<mode> unless finetune][_<key><value>...]``, then ``_f1``, ``_f2``, ...
for the second, third, ... repeat. Generated configs are plain run configs, runnable by hand.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

from utility.config.loader import read_run_config, validate
from utility.config.schemas import FTE_DEPRECATED, PRETRAIN_DEPRECATED, FTEConfig, PretrainConfig
from utility.config.tasks import load_task
from utility.config.yamlsafe import load_file
from utility.errors import UserError
from utility.paths import DEFAULT_OUTPUT_ROOT, REPO_ROOT, resolve_user_path
from utility.study.spec import PretrainSource, StudySpec

@dataclass
class PretrainJob:
    label: str
    name: str                 # run name under pretraining/
    config_path: Path
    config: dict[str, Any]
    encoder: Path             # what finetuning runs load
    job_id: str


@dataclass
class FinetuneRun:
    name: str                 # run name under finetuning/
    source: str
    task: str
    mode: str
    grid: dict[str, Any]
    repeat: int               # 0-based
    seed: Optional[int]
    fold: Optional[int]
    config_path: Path
    config: dict[str, Any]
    after: Optional[str] = None   # the pretraining job it waits for
    job_id: str = ""

    @property
    def run_subdir(self) -> str:
        """Where the run's logs are, below finetuning/ (k-fold runs write into fold_<i>/)."""
        return f"{self.name}/fold_{self.fold}" if self.fold is not None else self.name


@dataclass
class Plan:
    spec: StudySpec
    output_root: Path
    config_dir: Path
    study_dir: Path
    pretrain: list[PretrainJob] = field(default_factory=list)
    runs: list[FinetuneRun] = field(default_factory=list)

    jobs_path: Optional[Path] = None   # --jobs: another jobs file than the study's own

    @property
    def jobs_file(self) -> Path:
        return self.jobs_path or self.study_dir / "Jobs.csv"

    @property
    def queue_log_dir(self) -> Path:
        return self.study_dir / "queue"


def grid_points(grid: dict[str, list[Any]]) -> list[dict[str, Any]]:
    points: list[dict[str, Any]] = [{}]
    for key, values in grid.items():
        points = [{**p, key: v} for p in points for v in values]
    return points


def value_tag(v: Any) -> str:
    text = f"{v:g}" if isinstance(v, float) else str(v)
    return "".join(c if c.isalnum() or c in "-.+" else "-" for c in text)


def task_label(task: str) -> str:
    """A preset name as it is (``digits-S``); a task given as a YAML path by its file name (``tiny``)."""
    return Path(task).stem if task.endswith((".yaml", ".yml")) or "/" in task else task


def run_name(study: str, source: str, task: str, mode: str, point: dict[str, Any], repeat: int,
             label: Optional[str] = None) -> str:
    name = f"PT_{source}_FT_{label or task_label(task)}"
    if mode != "finetune":
        name += f"_{mode}"
    for key, v in point.items():
        name += f"_{key}{value_tag(v)}"
    if repeat > 0:
        name += f"_f{repeat}"
    return f"{study}/{name}"


def job_id(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()[:10]


def make_plan(spec: StudySpec) -> Plan:
    """Every run of the study with its config; refuses (UserError) anything that would not run."""
    out_root = resolve_user_path(spec.output_root) if spec.output_root else DEFAULT_OUTPUT_ROOT
    config_dir = resolve_user_path(spec.config_dir) if spec.config_dir else REPO_ROOT / "pkgs" / "FTE" / "config" / spec.name
    plan = Plan(spec, out_root, config_dir, out_root / "studies" / spec.name)
    for task in spec.tasks:
        load_task(task)  # an unknown task is refused here, with the closest preset named
    stray = [t for t in spec.task_settings if t not in spec.tasks]
    if stray:
        raise UserError(f"study key 'task_settings.{stray[0]}': not one of the study's tasks ({', '.join(spec.tasks)})")
    if spec.metrics:
        from utility.study.metricnames import check_study_metrics

        check_study_metrics(spec.metrics, spec.tasks)
    base_path = resolve_user_path(spec.finetune.config)
    base = read_run_config(base_path)
    base.update(spec.finetune.overrides)
    encoders: dict[str, Optional[Path]] = {}
    for label, src in spec.pretrain.items():
        if src is None:
            encoders[label] = None
        elif src.run is not None:  # made outside the study: checked when the run loads it
            encoders[label] = out_root / "pretraining" / src.run / src.file
        elif src.encoder is not None:
            enc = resolve_user_path(src.encoder)
            if not enc.is_file():
                raise UserError(f"study source '{label}': encoder file not found: {enc}")
            encoders[label] = enc
        else:
            job = _pretrain_job(spec, label, src.config or "", src.overrides, out_root, config_dir)
            plan.pretrain.append(job)
            encoders[label] = job.encoder
    after = {j.label: j.job_id for j in plan.pretrain}
    for label in spec.pretrain:
        for task in spec.tasks:
            setting = spec.task_settings.get(task)
            seeds = setting.seeds if setting is not None and setting.seeds else None
            for mode, mode_over in spec.modes.items():
                for point in grid_points(spec.grid):
                    for r in range(len(seeds) if seeds else spec.repeats.count):
                        plan.runs.append(_finetune_run(spec, {**base, **source_keys(spec.pretrain[label])},
                                                       label, encoders[label], task, mode, mode_over,
                                                       point, r, out_root, config_dir, after.get(label)))
    names = [r.name for r in plan.runs]
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise UserError(f"two runs of the study would be named {dup}; make labels or grid values distinct")
    return plan


def source_keys(src: Optional[PretrainSource]) -> dict[str, Any]:
    """Finetuning keys an encoder-file source sets for its runs: its layout and architecture."""
    if src is None or src.encoder is None:
        return {}
    return {**({"model_path_format": src.format} if src.format != "auto" else {}),
            **({"model_name": src.model_name} if src.model_name else {})}


def _pretrain_job(spec: StudySpec, label: str, config: str, overrides: dict[str, Any], out_root: Path,
                  config_dir: Path) -> PretrainJob:
    path = resolve_user_path(config)
    raw = read_run_config(path)
    raw.update(overrides)
    raw["name"] = overrides.get("name") or f"{spec.name}/{label}"   # a name given: shared by studies
    if spec.output_root:
        raw["output_root"] = str(out_root)
    try:
        cfg = validate(PretrainConfig, raw, str(path), PRETRAIN_DEPRECATED)
    except UserError as exc:
        raise UserError(f"study source '{label}' (pretraining config {path}): {exc}") from None
    data = {k: v for k, v in raw.items()}
    name = cfg.name
    pre_dir = config_dir if spec.config_dir else REPO_ROOT / "pkgs" / "SimCLR" / "config" / spec.name
    return PretrainJob(label, name, pre_dir / f"PT_{label}.yaml", data,
                       out_root / "pretraining" / name / "encoder_pretrained.tar", job_id(f"pretrain:{name}"))


def _finetune_run(spec: StudySpec, base: dict[str, Any], source: str, encoder: Optional[Path], task: str,
                  mode: str, mode_over: dict[str, Any], point: dict[str, Any], repeat: int, out_root: Path,
                  config_dir: Path, after: Optional[str]) -> FinetuneRun:
    setting = spec.task_settings.get(task)
    name = run_name(spec.name, source, task, mode, point, repeat, setting.label if setting else None)
    cfg: dict[str, Any] = dict(base)
    cfg.update({"name": name, "task": task, "model_path": portable(encoder) if encoder is not None else None})
    if spec.output_root:
        cfg["output_root"] = str(out_root)
    cfg.update(setting.overrides if setting else {})
    cfg.update(mode_over)
    cfg.update(point)
    seed = fold = None
    seeds = setting.seeds if setting is not None and setting.seeds else spec.repeats.seeds
    if seeds is not None:
        seed = seeds[repeat]
        cfg["seed"] = seed
    else:
        fold = repeat
        cfg.update({"folds": spec.repeats.folds, "fold": fold})
    try:
        validate(FTEConfig, cfg, "the study's finetune config", FTE_DEPRECATED)
    except UserError as exc:
        raise UserError(f"run {name}: {exc}") from None
    rel = name.split("/", 1)[1] if "/" in name else name
    return FinetuneRun(name, source, task, mode, dict(point), repeat, seed, fold, config_dir / f"{rel}.yaml",
                       cfg, after, job_id(f"finetune:{name}"))


def config_hash(cfg: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(cfg, sort_keys=True, default=str).encode()).hexdigest()[:12]


def write_configs(plan: Plan) -> int:
    """Write every generated config; an existing one with other settings is refused (naming the run
    and the first differing key), an identical one is left alone. Returns how many were new."""
    items = [(j.name, j.config_path, j.config) for j in plan.pretrain] + [(r.name, r.config_path, r.config)
                                                                          for r in plan.runs]
    for name, path, cfg in items:  # check all before writing any
        if path.exists():
            old = load_file(path, f"generated config {path}") or {}
            diff = [k for k in sorted(set(old) | set(cfg)) if old.get(k) != cfg.get(k)]
            if diff:
                k = diff[0]
                raise UserError(f"run {name} exists with {k}: {old.get(k)!r}, the study now says {cfg.get(k)!r} "
                                f"({path}); give the study another name or change it back (nothing was overwritten)")
    new = 0
    for _, path, cfg in items:
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(yaml.safe_dump(cfg, sort_keys=False))
            new += 1
    return new


def portable(path: Path) -> str:
    """A path inside the repository relative to it (configs keep working in another clone), else absolute."""
    try:
        return str(path.relative_to(REPO_ROOT))
    except ValueError:
        return str(path)
