"""Typed config schemas. Each field is one YAML key; the predecessor's keys keep their meaning."""
from __future__ import annotations

import difflib
from typing import Annotated, Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from utility.config.loader import HINT_CUTOFF
from utility.config.recipe import fill_defaults
from utility.config.runname import check_run_name

PositiveInt = Annotated[int, Field(ge=1)]
NonNegInt = Annotated[int, Field(ge=0)]
# numpy seeds are 32-bit; larger seeds overflowed deep inside torch after the run had started
Seed = Annotated[int, Field(ge=0, le=2**32 - 1)]
# contrastive logits are cosine / T: below 1e-3 they pass 1000 and the loss turns inf/NaN (1e-30 did)
Temperature = Annotated[float, Field(ge=1e-3)]


def keys_error(keys: tuple[str, ...], what: str) -> ValueError:
    """A mistake that involves several keys: the message names every one of them (a model-level
    error has no single key for the loader to name)."""
    return ValueError(f"config key{'s' if len(keys) > 1 else ''} {' and '.join(repr(k) for k in keys)}: {what}")


OPTIMIZERS = {"adam": "Adam", "adamw": "AdamW", "sgd": "SGD", "lars": "LARS"}


def optimizer_name(v: str) -> str:
    """Case-insensitive optimizer name -> its canonical spelling."""
    if str(v).lower() not in OPTIMIZERS:
        raise ValueError("expected one of Adam, AdamW, SGD, LARS")
    return OPTIMIZERS[str(v).lower()]


class RunBase(BaseModel):
    """Keys every training entry point shares (loop sizes, device, precision, outputs)."""

    # inf/nan are never a setting (lr: .inf trained with NaN losses)
    # frozen: a validated config is never changed; derived values go into a copy (model_copy(update=...))
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    name: str = Field(description="run directory under logs_and_checkpoints/<kind>/")
    seed: Seed = 42
    num_workers: NonNegInt = 4
    prefetch_factor: Optional[PositiveInt] = 2
    batch_size: PositiveInt = 32
    epochs: PositiveInt = 10
    device: str = Field("auto", description="auto, cpu, cuda or cuda:<index>")
    amp: Literal["auto", "fp16", "bf16", "off"] = Field(
        "auto", description="auto: fp16 with GradScaler on CUDA, float32 on CPU")
    parallel: Literal["auto", "none", "dp", "ddp"] = Field(
        "auto", description="ddp under torchrun, dp with several visible GPUs, else none")
    verbose: bool = True
    debug: bool = False
    recipe: Literal["modern", "predecessor"] = Field(
        "modern", description="predecessor: train exactly as the predecessor did (docs/recipes.md)")
    log_losses: bool = True
    output_root: Optional[str] = Field(None, description="default: logs_and_checkpoints/ in the repo")
    data_root: Optional[str] = Field(None, description="default: datasets/ in the repo")
    channels_last: Literal["auto", "on", "off"] = Field(
        "auto", description="NHWC conv weights on CUDA; auto: on with mixed precision (docs/gpu.md)")
    compile: bool = Field(False, description="torch.compile the model on CUDA (first steps slower)")
    cudnn_benchmark: Literal["auto", "on", "off"] = Field("auto", description="auto: on with CUDA (fixed shapes)")
    fused_optimizer: Literal["auto", "on", "off"] = Field("auto", description="fused Adam/AdamW/SGD on CUDA")
    checkpoint_every_steps: Optional[PositiveInt] = Field(
        None, description="also save a resume checkpoint every N steps (long epochs)")
    trackers: list[Literal["wandb", "mlflow"]] = Field(
        [], description="also log the run to these experiment trackers (requirements-trackers.txt)")
    tracker_project: Optional[str] = Field(None, description="wandb project / MLflow experiment; "
                                           "default: the run name's first folder, else finetuning/pretraining")

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        v = v.strip().lower()
        if v in ("auto", "cpu", "cuda", "gpu") or (v.startswith("cuda:") and v[5:].isdigit()):
            return "cuda" if v == "gpu" else v
        raise ValueError("expected auto, cpu, cuda or cuda:<index>")

    @field_validator("trackers", mode="before")
    @classmethod
    def _trackers(cls, v):  # one name or a list, any case, each once
        items = [] if v is None else [v] if isinstance(v, str) else list(v)
        return list(dict.fromkeys(str(t).strip().lower() for t in items))

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return check_run_name(v)


class DataKeys(BaseModel):
    """Keys of the data pipeline (shared by finetuning and pretraining)."""

    model_config = ConfigDict(allow_inf_nan=False)

    opmode: Literal["disk", "pre_cache", "live_cache"] = "disk"
    data_format: Optional[list[str]] = Field(None, description="file extensions; default from the task")
    normalizer: Optional[Literal["naive", "01_clipped_CT", "imagenet", "windowed"]] = None
    window: Optional[tuple[float, float]] = Field(None, description="[low, high] for normalizer windowed")
    shape_desired: Optional[tuple[PositiveInt, PositiveInt]] = None
    tf_device: Literal["auto", "gpu", "cpu"] = Field(
        "auto", description="auto: batched on the device with CUDA, per sample in the loader workers otherwise")
    no_augs: bool = False
    noise_injection: Optional[tuple[Annotated[float, Field(ge=0)], Annotated[float, Field(ge=0, le=1)]]] = None
    test_nan_inf: bool = True
    cache_dir: Optional[str] = Field(None, description="where cached images live; default /dev/shm/<user>-mi-cache")
    index_cache_dir: Optional[str] = Field(
        None, description="where file indexes are cached; default <output_root>/index_cache; off disables")
    reindex: bool = Field(False, description="index the data anew (file systems with unreliable directory mtimes)")
    slice_axis: Optional[Annotated[int, Field(ge=0, le=2)]] = Field(
        None, description="read NIfTI volumes as 2-D slices along this axis")
    max_bad_fraction: Annotated[float, Field(ge=0, le=1)] = Field(
        0.05, description="stop when more than this fraction of a split is unreadable")

    @field_validator("data_format", mode="before")
    @classmethod
    def _formats(cls, v):  # one extension or a list, with or without the dot
        if v is None:
            return None
        if not isinstance(v, (str, list, tuple)) or not all(isinstance(s, str) for s in ([v] if isinstance(v, str) else v)):
            raise ValueError("expected a file extension such as .png, or a list of them")
        items = [v] if isinstance(v, str) else list(v)
        return [s if str(s).startswith(".") else f".{s}" for s in map(str, items)]

    @field_validator("shape_desired", mode="before")
    @classmethod
    def _shape(cls, v):
        return (v, v) if isinstance(v, int) else v


class FTEConfig(RunBase, DataKeys):
    """Finetuning (``pkgs/FTE/finetune.py``)."""

    task: str = Field(description="task preset name (config/tasks/*.yaml) or a path to a task YAML")
    model_name: str = "resnet50"
    in_channels: Optional[Literal[1, 3]] = Field(None, description="encoder input channels; default 3")
    model_path: Optional[str] = Field(None, description="weights to start from; null = random init")
    model_path_format: Literal["auto", "timm", "dinov2", "radimagenet_resnet50"] = Field(
        "auto", description="layout of a released model's model_path (utility/models/external.py); auto = ours")
    allow_partial_load: bool = Field(False, description="load what fits from model_path and list the keys "
                                                         "not loaded (else any mismatch stops the run)")
    unet_decoder: Literal["auto", "smp", "predecessor"] = Field(
        "auto", description="segmentation decoder: smp, or the predecessor's backboned_unet; auto = predecessor "
                            "when model_path is a predecessor U-Net file")
    frozen_encoder: bool = False
    unfreeze_last_n: NonNegInt = Field(0, description="with frozen_encoder: train the last N encoder blocks")
    head_dropout: Annotated[float, Field(ge=0, lt=1)] = 0.0
    head_norm: Literal["none", "batchnorm"] = Field(
        "none", description="classification: batchnorm = a BatchNorm without affine parameters before the linear "
                            "head (MAE's linear-probing protocol; standardises frozen ViT features); none = plain head")
    syncbn: bool = False

    optimizer: str = "AdamW"
    lr: Annotated[float, Field(gt=0)] = 1e-3
    layer_decay: Optional[Annotated[float, Field(gt=0, le=1)]] = Field(
        None, description="ViT encoders: layer-wise lr decay (block i of L gets lr x decay^(L+1-(i+1)); MAE "
                          "finetuning uses 0.65-0.75); null = one lr")
    weight_decay: Annotated[float, Field(ge=0)] = 1e-5
    momentum: Annotated[float, Field(ge=0, lt=1)] = 0.9
    scheduler: Optional[Literal["decay", "cosine", "decaying_cosine", "cosine_total"]] = "decay"
    decay_per_epoch: Annotated[float, Field(gt=0, le=1)] = 0.95
    scheduling_interval: Literal["epoch", "step"] = "epoch"
    annealing_time: Optional[Annotated[float, Field(gt=0)]] = None
    warmup_epochs: Annotated[float, Field(ge=0)] = 0.0
    w_l: Optional[list[Annotated[float, Field(ge=0)]]] = None

    best_metric: Optional[str] = Field(None, description="val metric that picks the best checkpoint")
    best_mode: Optional[Literal["max", "min"]] = None
    short_training: bool = False
    train_fraction: Optional[Annotated[float, Field(gt=0, le=1)]] = Field(
        None, description="seeded stratified fraction of the training set (size variants -M/-S/...)")
    folds: Optional[Annotated[int, Field(ge=2)]] = Field(None, description="k-fold cross-validation")
    fold: Optional[NonNegInt] = Field(None, description="run only this fold (0-based) of `folds`")
    save_predictions: bool = Field(True, description="write per-image test predictions")
    ci_resamples: NonNegInt = Field(1000, description="subject bootstrap resamples for test_ci.csv (0: none)")
    ci_level: Annotated[float, Field(gt=0, lt=1)] = Field(0.95, description="test_ci.csv interval level")
    allow_subject_overlap: bool = Field(False, description="a subject in more than one of train/val/test: "
                                        "warn (recorded in leakage.txt) instead of refusing the run")
    check_duplicates: Optional[bool] = Field(None, description="look for identical image files across splits "
                                             "(content hash); default: when the task has at most 200,000 files")

    _optimizer = field_validator("optimizer")(classmethod(lambda cls, v: optimizer_name(v)))
    _recipe_defaults = model_validator(mode="before")(classmethod(lambda cls, v: fill_defaults(v, "fte")))

    @field_validator("scheduler", mode="before")
    @classmethod
    def _scheduler(cls, v):
        return None if isinstance(v, str) and v.lower() in ("none", "null", "") else v

    @model_validator(mode="after")
    def _consistent(self) -> "FTEConfig":
        if self.normalizer == "windowed" and self.window is None:
            raise keys_error(("normalizer", "window"), "normalizer 'windowed' needs window: [low, high]")
        if self.window is not None and self.window[0] >= self.window[1]:
            raise keys_error(("window",), f"{list(self.window)} must be [low, high] with low < high")
        if self.w_l is not None and not any(w > 0 for w in self.w_l):
            raise keys_error(("w_l",), "class weights are all 0: every loss would be 0/0 = NaN; give at "
                             "least one class a positive weight")
        if self.fold is not None and self.folds is None:
            raise keys_error(("fold", "folds"), f"fold {self.fold} is one fold of a k-fold split, but folds "
                             "(the number of folds) is not set; set folds too, or remove fold")
        if self.fold is not None and self.folds is not None and self.fold >= self.folds:
            raise keys_error(("fold", "folds"), f"fold {self.fold} is outside 0..{self.folds - 1} "
                             f"(folds {self.folds}; fold counts from 0)")
        return self


# Keys the predecessor had that are accepted but no longer do anything.
FTE_DEPRECATED: dict[str, str] = {
    "w_m": "per-class metric weights never had an effect; metrics are reported per class and as means",
}


class Milestone(BaseModel):
    """A collapse guard: by ``epoch`` (the first monitor measurement at or after it) each given value must
    be reached, else the pretraining stops with this reason (exit 3, no encoder_pretrained.tar)."""

    model_config = ConfigDict(extra="forbid")

    epoch: PositiveInt
    knn_accuracy: Optional[Annotated[float, Field(ge=0, le=1)]] = None
    linear_accuracy: Optional[Annotated[float, Field(ge=0, le=1)]] = None
    rankme: Optional[Annotated[float, Field(ge=1)]] = Field(None, description="effective rank of the embeddings")

    @model_validator(mode="after")
    def _some(self) -> "Milestone":
        if self.knn_accuracy is None and self.linear_accuracy is None and self.rankme is None:
            raise ValueError(f"milestone at epoch {self.epoch} sets no value: give knn_accuracy, linear_accuracy "
                             "or rankme")
        return self


class MonitorConfig(BaseModel):
    """Online monitor of a pretraining run: weighted kNN accuracy (and optionally a linear probe) of the
    current encoder on a labelled task's train -> val split, every ``every`` epochs (and the last one)."""

    model_config = ConfigDict(extra="forbid")

    task: str = Field(description="a task preset or task YAML with train and val splits")
    every: PositiveInt = 5
    knn_k: PositiveInt = 20
    knn_t: Annotated[float, Field(gt=0)] = 0.07
    linear: bool = Field(False, description="also a logistic-regression probe on the frozen features")
    batch_size: Optional[PositiveInt] = Field(None, description="feature extraction batch; default batch_size")
    query: str = Field("val", description="the task split measured against train; use one the pretraining "
                                          "data do not contain (the run warns when they do)")
    milestones: list[Milestone] = Field([], description="collapse guard: values to reach by an epoch")

    @model_validator(mode="after")
    def _linear_for_milestones(self) -> "MonitorConfig":
        if any(m.linear_accuracy is not None for m in self.milestones) and not self.linear:
            raise ValueError("a milestone sets linear_accuracy but the monitor has linear: false; set linear: true")
        return self

    @model_validator(mode="before")
    @classmethod
    def _known(cls, v: Any) -> Any:
        if isinstance(v, str):
            return {"task": v}
        for key in v if isinstance(v, dict) else ():
            if key not in cls.model_fields:
                hint = difflib.get_close_matches(str(key), list(cls.model_fields), n=1, cutoff=HINT_CUTOFF)
                raise ValueError(f"unknown monitor key '{key}'" + (f"; did you mean '{hint[0]}'?" if hint else
                                 f" (valid: {', '.join(cls.model_fields)})"))
        return v


PREDECESSOR_ENCODERS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")


class PretrainConfig(RunBase, DataKeys):
    """Self-supervised pretraining (``pkgs/SSL/pretrain.py``, ``pkgs/SimCLR/main.py``); the predecessor's
    SimCLR keys keep their meaning."""

    dataset: Literal["Custom_2D"] = Field("Custom_2D", description="images found recursively in folders")
    dataset_base_dir: list[str] = Field(description="folder(s) of unlabeled images (recursive)")
    random_subset: Annotated[float, Field(gt=0, le=1)] = 1.0
    subject_regex: Optional[str] = Field(None, description="the subject (patient) of an image: group 1 of this "
                                         "regex on its path below its dataset_base_dir folder; random_subset "
                                         "then takes whole subjects; default: each image its own")
    grayscale: bool = False
    image_size: PositiveInt = Field(224, description="crop size of the views")
    resnet: str = Field("resnet50", description="encoder name (any backbone finetuning supports)")
    encoder_network: Optional[str] = Field(
        None, description="the predecessor's override of resnet (one of PREDECESSOR_ENCODERS)")
    init_encoder: Optional[str] = Field(
        None, description="start from this encoder file (fresh optimizer), e.g. the predecessor's IxR -> IxR_2")
    in_channels: Literal[1, 3] = 3
    projection_head: Literal["predecessor", "mlp"] = "predecessor"
    projection_hidden: Optional[PositiveInt] = Field(None, description="default: the encoder width")
    projection_dim: PositiveInt = 256
    temperature: Temperature = 0.5
    loss_device: Literal["gather", "per_replica", "gpu", "cpu", "cuda"] = Field(
        "gather", description="gather: negatives from all ranks; per_replica: one NT-Xent per GPU replica, "
                              "averaged; the predecessor's gpu = per_replica, cpu = gather")
    jitter_strength: Annotated[float, Field(ge=0)] = 1.0
    jitter_p: Annotated[float, Field(ge=0, le=1)] = 0.8
    blur_p: Annotated[float, Field(ge=0, le=1)] = 0.0
    crop_scale: tuple[float, float] = (0.08, 1.0)
    hflip_p: Annotated[float, Field(ge=0, le=1)] = Field(0.5, description="0 where mirror images differ (digits, text)")
    optimizer: str = "LARS"
    lr: Optional[Annotated[float, Field(gt=0)]] = Field(None, description="default 0.075*sqrt(batch) for LARS")
    base_lr: Optional[Annotated[float, Field(gt=0)]] = Field(None, description="lr = base_lr x scaling(batch)")
    lr_scaling: Literal["linear", "sqrt", "none"] = "sqrt"
    lr_rule: Literal["auto", "predecessor", "config"] = Field(
        "auto", description="predecessor: LARS ignores lr (0.075*sqrt(batch), cosine over epochs per epoch, "
                            "stepwise_scheduler on top); config: lr/base_lr and scheduler as given; auto: "
                            "predecessor when the config carries predecessor-only keys (utility/runs/pretrain.py)")
    weight_decay: Annotated[float, Field(ge=0)] = 1e-6
    momentum: Annotated[float, Field(ge=0, lt=1)] = 0.9
    stepwise_scheduler: Optional[Literal["None", "CosineAnnealing", "Exponential", "DecayingCosine"]] = None
    scheduler: Optional[Literal["decay", "cosine", "decaying_cosine", "cosine_total"]] = "cosine_total"
    scheduling_interval: Literal["epoch", "step"] = "step"
    decay_per_epoch: Annotated[float, Field(gt=0, le=1)] = 0.95
    annealing_time: Optional[Annotated[float, Field(gt=0)]] = None
    warmup_epochs: Annotated[float, Field(ge=0)] = 0.0
    enc_save_frequency: Optional[PositiveInt] = Field(10, description="epochs between encoder_<epoch>.tar")
    model_save_frequency: Optional[PositiveInt] = Field(None, description="resume checkpoints are saved every epoch")
    low_verbosity: bool = False
    dataparallel: bool = False
    syncbn: bool = False
    nodes: PositiveInt = 1
    gpus: Optional[NonNegInt] = None
    nr: NonNegInt = 0
    method: str = Field("simclr", description="simclr, barlow_twins, byol, vicreg, mocov2 "
                                              "(utility/methods/ssl_registry.py)")
    method_settings: dict[str, Any] = Field(
        default_factory=dict, description="the method's own settings (SimCLR's are the top-level keys "
                                          "temperature, projection_*, loss_device); validated per method")
    monitor: Optional[MonitorConfig] = None

    @field_validator("dataset_base_dir", mode="before")
    @classmethod
    def _dirs(cls, v):
        return [v] if isinstance(v, str) else v

    _recipe_defaults = model_validator(mode="before")(classmethod(lambda cls, v: fill_defaults(v, "ssl")))

    @model_validator(mode="before")
    @classmethod
    def _encoder_network(cls, v: Any) -> Any:
        """The predecessor's encoder_network overrides resnet; it ran ResNets only."""
        if isinstance(v, dict) and v.get("encoder_network") is not None:
            name = str(v["encoder_network"])
            if name not in PREDECESSOR_ENCODERS:
                raise keys_error(("encoder_network",), f"{name!r} is not an encoder the predecessor could run; "
                                 f"supported: {', '.join(PREDECESSOR_ENCODERS)} (or set resnet: <any encoder "
                                 "of this tool> and remove encoder_network)")
            v = {**v, "resnet": name}
        return v

    _optimizer = field_validator("optimizer")(classmethod(lambda cls, v: optimizer_name(v)))

    @field_validator("crop_scale")
    @classmethod
    def _crop_scale(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not 0 < v[0] <= v[1] <= 1:
            raise ValueError("expected [min, max] with 0 < min <= max <= 1 (fractions of the image area)")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> "PretrainConfig":
        shape = self.shape_desired
        if shape is not None and (self.image_size > shape[0] or self.image_size > shape[1]):
            raise keys_error(("image_size", "shape_desired"),
                             f"image_size {self.image_size} is larger than shape_desired {list(shape)}")

        if self.nodes > 1:
            raise ValueError("nodes > 1: launch with torchrun --nnodes (see docs/multi_gpu.md)")
        late = [m.epoch for m in (self.monitor.milestones if self.monitor else []) if m.epoch > self.epochs]
        if late:
            raise keys_error(("monitor", "epochs"), f"milestone epoch {late[0]} is after the last epoch "
                             f"({self.epochs}); it would never be checked")
        return self


PRETRAIN_DEPRECATED: dict[str, str] = {
    "pretrain": "unused by the predecessor too", "dataset_dir": "use dataset_base_dir",
    "checkpoint_epoch": "unused by the predecessor too", "model_path": "unused by the predecessor too",
    "logistic_batch_size": "unused by the predecessor too", "logistic_epochs": "unused by the predecessor too",
    "reload": "resume is automatic: start the same command again; to continue from another run's encoder "
              "on new data (the predecessor's IxR -> IxR_2) use init_encoder: <encoder file>",
    "epoch_num": "resume is automatic and continues from the last checkpoint (init_encoder: start from an encoder)",
    "start_epoch": "resume is automatic and continues from the last checkpoint (init_encoder: start from an encoder)",
}
