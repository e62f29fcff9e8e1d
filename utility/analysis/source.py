"""What an analysis looks at: a finetuning run (``--run``) or a weights file with a task
(``--weights --task --model_name``), resolved into a config, a task, a device and data.

Everything a command needs is checked here before anything is written: the run directory, the
weights (they must fit the network), the split name, and labels when the command needs them.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

from utility.config.loader import read_run_config, read_yaml, validate
from utility.config.schemas import FTE_DEPRECATED, FTEConfig
from utility.config.recipe import recipe_of, task_for
from utility.config.tasks import TaskSpec, load_task
from utility.errors import UserError
from utility.paths import output_root, resolve_user_path

SPLITS = ("train", "val", "test")
RANDOM = "random"  # a weights value meaning: random initialisation (seeded by --seed)


@dataclass
class Subject:
    """One model on one task: its config (a run's, or built from the command line), its weights
    file (None: random init) and where its analysis outputs go."""

    cfg: FTEConfig
    task: TaskSpec
    weights: Optional[Path]
    base_dir: Path  # <run dir>/analysis or <weights dir>/analysis
    run_dir: Optional[Path] = None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    # ---------------------------------------------------------------- data
    @cached_property
    def data(self) -> Any:
        """Indexed task, one dataset and loader per split (no augmentation), built once."""
        from utility.methods.registry import pipeline_for
        from utility.runs.supervised_data import build_data

        return build_data(self.cfg, self.task, self.device, pipeline_for(self.task.type))

    @property
    def classes(self) -> list[str]:
        return self.data.indexed.classes

    @property
    def multilabel(self) -> bool:
        return self.task.type == "multilabel"

    @property
    def segmentation(self) -> bool:
        return self.task.type == "segmentation"

    def loader(self, split: str) -> Any:
        check_split(split)
        return self.data.loaders[split]

    def require_labels(self, command: str) -> None:
        """Image-level labels (classification) for kNN, probes, curves."""
        if self.segmentation:
            raise UserError(f"{command} needs image-level labels, but task {self.task.name} is a "
                            "segmentation task (pixel labels); use a classification task")

    # ---------------------------------------------------------------- models
    def network(self, weights: Optional[Path] | str = "own", need_head: bool = False) -> nn.Module:
        """The network with ``weights`` ('own': this subject's file; None: random init, seeded),
        on the device in eval mode. Weights that do not fit stop with the culprit named."""
        from utility.models import build_network

        path = self.weights if weights == "own" else weights
        if need_head and path is not None:
            check_has_head(Path(path), self.segmentation)
        if path is None:
            torch.manual_seed(self.cfg.seed)
        model, _ = build_network(self.cfg.model_name, len(self.classes), self.cfg.in_channels or 3,
                                 Path(path) if path is not None else None, False,
                                 segmentation=self.segmentation, head_norm=self.cfg.head_norm)
        return model.to(self.device).eval()

    def weights_key(self) -> str:
        """Identifies the weights for caches: the file's SHA-256, or random + seed."""
        return file_hash(self.weights) if self.weights is not None else f"random-seed{self.cfg.seed}"

    def out_dir(self, command: str, out: Optional[Path]) -> Path:
        """The command's output folder (created by the caller once all inputs are checked)."""
        folder = Path(out).resolve() if out is not None else self.base_dir / command
        if folder.exists() and not folder.is_dir():
            raise UserError(f"--out {folder} is a file; expected a folder (new or existing) for the outputs")
        return folder


def check_split(split: str) -> None:
    if split not in SPLITS:
        raise UserError(f"unknown split '{split}'; a task has the splits {', '.join(SPLITS)}")


def file_hash(path: Path) -> str:
    h = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def check_has_head(path: Path, segmentation: bool) -> None:
    """A file with only an encoder (pretraining output) cannot make predictions."""
    from utility.models.unet import is_unet_state
    from utility.models.weights import read_state_dict, split_state_dict

    sd = read_state_dict(path)
    has = is_unet_state(sd) if segmentation else bool(split_state_dict(sd)[1])
    if not has:
        raise UserError(f"{path} holds only an encoder (no classification head / decoder); this command "
                        "needs a finetuned model (finetuned_model.tar or a run's checkpoint)")


def run_weights(run_dir: Path, which: str) -> Path:
    """finetuned_model.tar (last) or checkpoint_best.pt (best) of a run."""
    names = {"last": ["finetuned_model.tar", "checkpoint_last.pt"], "best": ["checkpoint_best.pt"]}[which]
    for name in names:
        if (run_dir / name).is_file():
            return run_dir / name
    raise UserError(f"run {run_dir} has no {' or '.join(names)} (has it finished an epoch?)")


def resolve_weights(value: Optional[str]) -> Optional[Path]:
    if value is None or value == RANDOM:
        return None
    path = resolve_user_path(value)
    if not path.is_file():
        raise UserError(f"weights file not found: {value}")
    return path


def open_subject(args: Any) -> Subject:
    """From parsed arguments: ``run`` or ``weights`` + ``task`` + ``model_name``, plus overrides
    (data_root, device, batch_size, num_workers, seed)."""
    over = {k: getattr(args, k) for k in ("data_root", "batch_size", "num_workers", "seed", "device")
            if getattr(args, k, None) is not None}
    if getattr(args, "config", None):  # a finetuning config (lr-find): its starting weights, no run dir
        path = resolve_user_path(args.config)
        raw = read_run_config(path)
        raw.update(over)
        cfg = validate(FTEConfig, raw, str(path), FTE_DEPRECATED)
        weights = resolve_weights(cfg.model_path) if cfg.model_path else None
        run_dir = None
        base = output_root(cfg.output_root) / "analysis" / cfg.name
    elif getattr(args, "run", None):
        run_dir = resolve_user_path(args.run)
        if not (run_dir / "config.yaml").is_file():
            raise UserError(f"--run {args.run}: no config.yaml there; pass a finetuning run directory")
        raw = read_yaml(run_dir / "config.yaml")
        for k in ("task", "model_name"):
            if getattr(args, k, None):
                raise UserError(f"--{k} comes from the run's config.yaml; leave it out with --run")
        raw.update(over)
        cfg = validate(FTEConfig, raw, str(run_dir / "config.yaml"), FTE_DEPRECATED)
        weights = resolve_weights(args.weights) if getattr(args, "weights", None) else \
            run_weights(run_dir, getattr(args, "which", "last"))
        base = run_dir / "analysis"
    else:
        if not getattr(args, "task", None) or not getattr(args, "model_name", None) or not getattr(args, "weights", None):
            raise UserError("say what to analyse: --run <finetuning run dir>, or --weights <file|random> "
                            "--task <task> --model_name <name>")
        weights = resolve_weights(args.weights)
        raw = {"name": "analysis", "task": args.task, "model_name": args.model_name, "num_workers": 0, **over}
        if getattr(args, "in_channels", None):
            raw["in_channels"] = args.in_channels
        cfg = validate(FTEConfig, raw, "the command line")
        run_dir = None
        base = (weights.parent if weights is not None else Path.cwd()) / "analysis"
    task = task_for(load_task(cfg.task), recipe_of(cfg))  # labels as the run's recipe read them (CTBR)
    if run_dir is not None:  # someone's run: its task may name code to run
        from utility.data.targets import refuse_run_code

        refuse_run_code(task, run_dir / "config.yaml", bool(getattr(args, "trust_run_code", False)))
    return Subject(cfg, task, weights, base, run_dir, pick_device(cfg.device))


def pick_device(name: str) -> torch.device:
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device '{name}' was asked for but CUDA is not available here; use --device cpu or auto")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def other_subject(subject: Subject, other: str) -> Subject:
    """The second model of a comparison: a run directory, a weights file, or 'random'; same task."""
    path = resolve_user_path(other)
    if other != RANDOM and path.is_dir():
        if not (path / "config.yaml").is_file():
            raise UserError(f"--other {other}: a folder without config.yaml is not a run directory")
        cfg = validate(FTEConfig, read_yaml(path / "config.yaml"), str(path / "config.yaml"), FTE_DEPRECATED)
        if cfg.model_name != subject.cfg.model_name:
            subject_cfg = subject.cfg.model_copy(update={"model_name": cfg.model_name})
        else:
            subject_cfg = subject.cfg
        out = Subject(subject_cfg, subject.task, run_weights(path, "last"), subject.base_dir, path, subject.device)
    else:
        out = Subject(subject.cfg, subject.task, resolve_weights(other), subject.base_dir, None, subject.device)
    out.__dict__["data"] = subject.data  # same task and split: index and load once
    return out
