"""recipe: modern | predecessor. For each difference (utility/config/recipe.py DIFFERENCES): the
predecessor's behaviour under ``recipe: predecessor``, checked against a small reference written here
from the predecessor's formulas, and the modern behaviour under ``recipe: modern``."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml
from torch import nn

from utility.config.loader import closest_key, load_config
from utility.config.recipe import (DIFFERENCES, RECIPE_TABLE, excludes_bn_bias, recipe_of, snapshot_epoch,
                                   task_for)
from utility.config.schemas import FTE_DEPRECATED, PRETRAIN_DEPRECATED, FTEConfig, PretrainConfig
from utility.config.tasks import load_task
from utility.data.augment import DeviceAugment, build_augment
from utility.data.body_part import class_of
from utility.data.noise import add_noise
from utility.data.predecessor_augment import PredecessorAugment
from utility.errors import UserError
from utility.methods.segmentation import seg_loss_for
from utility.runs.pretrain_config import build_lr_schedule, lr_plan
from utility.training.optim import build_optimizer
from utility.training.schedulers import build_scheduler

REPO = Path(__file__).resolve().parent.parent
PRE, MOD = RECIPE_TABLE["predecessor"], RECIPE_TABLE["modern"]


def fte(**keys) -> FTEConfig:
    return FTEConfig(**{"name": "r", "task": "LiTS", **keys})


def ssl(**keys) -> PretrainConfig:
    return PretrainConfig(**{"name": "p", "dataset_base_dir": "d", **keys})


# ----------------------------------------------------------------------------- loss

def test_segmentation_loss_is_weighted_ce_only_under_predecessor():
    torch.manual_seed(0)
    logits, y = torch.randn(2, 3, 5, 5), torch.randint(0, 3, (2, 5, 5))
    w = [1.0, 3.0, 10.0]
    # the predecessor's SegmentationLoss: CrossEntropyLoss(weight=w_l, mean) = sum w[y] * nll / sum w[y]
    logp = logits.log_softmax(1).permute(0, 2, 3, 1).reshape(-1, 3)
    t = y.reshape(-1)
    wt = torch.tensor(w)[t]
    ref = (wt * -logp[torch.arange(len(t)), t]).sum() / wt.sum()
    task = load_task("LiTS")
    pre = seg_loss_for(fte(recipe="predecessor", w_l=w), task)(logits, y)
    assert pre.item() == pytest.approx(ref.item(), rel=1e-5)
    modern = seg_loss_for(fte(w_l=w), task)  # the preset's CE + soft Dice
    assert task.loss == "ce_dice" and modern.dice_weight > 0
    assert modern(logits, y).item() == pytest.approx(ref.item() + modern.dice(logits, y).item(), rel=1e-5)


# ----------------------------------------------------------------------------- augmentation

# the predecessor's per-task pipelines (ops in order; every one with p = 0.2)
PIPES = {"ImageNet-1k": ["RandomResizedCrop", "RandomHorizontalFlip", "ColorJitter", "RandomGrayscale",
                         "RandomGaussianBlur", "RandomSharpness"],
         "CTBR-S": ["RandomResizedCrop", "RandomHorizontalFlip", "ColorJitter", "RandomGaussianBlur", "RandomSharpness"],
         "CX8": ["RandomResizedCrop", "RandomHorizontalFlip", "ColorJitter", "RandomGaussianBlur", "RandomSharpness"],
         "LiTS-M": ["RandomResizedCrop", "RandomHorizontalFlip", "ColorJitter", "RandomGaussianBlur"],
         "BraTS": ["RandomResizedCrop", "RandomHorizontalFlip", "RandomGaussianBlur"]}


def floats(v) -> list[float]:
    """A kornia parameter (number, tuple or tensor) as a flat list of floats."""
    return [float(x) for x in (torch.as_tensor(v).flatten().tolist())]


@pytest.mark.parametrize("task", list(PIPES))
def test_predecessor_augmentation_ops_and_parameters(task):
    aug, cpu = build_augment("default", (32, 32), False, None, "cpu", PRE, task)
    assert isinstance(aug, PredecessorAugment) and cpu is None  # on the device whatever tf_device says
    ops = list(aug.seqs["crop"].children()) + list(aug.seqs["rgb"].children())
    assert [type(o).__name__ for o in ops] == PIPES[task]
    for op in ops[1:]:
        assert op.p == pytest.approx(0.2)
    crop = ops[0]
    assert crop.flags["size"] == (32, 32)
    assert floats(crop._param_generator.scale) == pytest.approx([0.08, 1.0])
    assert floats(crop._param_generator.ratio) == pytest.approx([3 / 4, 4 / 3])
    by_name = {type(o).__name__: o for o in ops}
    if "ColorJitter" in by_name:
        gen = by_name["ColorJitter"]._param_generator
        assert sum((floats(getattr(gen, k)) for k in ("brightness", "contrast", "saturation", "hue")), []) == \
            pytest.approx([0.1, 0.1, 0.1, 0.2])
    blur = by_name["RandomGaussianBlur"]
    assert blur.flags["kernel_size"] == (3, 3) and floats(blur._param_generator.sigma) == pytest.approx([0.1, 2.0])
    if "RandomSharpness" in by_name:
        import torchvision.transforms.functional as TF
        torch.manual_seed(0)
        x = torch.rand(200, 3, 8, 8)
        out = by_name["RandomSharpness"](x)
        hit = (out - x).abs().flatten(1).amax(1) > 0
        assert 10 < hit.sum() < 80  # p = 0.2 per image
        assert torch.allclose(out[hit], TF.adjust_sharpness(x[hit], 2.0), atol=1e-6)  # torchvision's factor 2


def test_predecessor_augmentation_applies_each_op_per_image_with_p_02():
    torch.manual_seed(0)
    aug = PredecessorAugment("BraTS", (16, 16), None)  # crop, flip, blur: unchanged with 0.8^3
    x = torch.rand(1500, 3, 16, 16)
    y, m = aug(x, torch.randint(0, 4, (1500, 16, 16)))
    unchanged = (y - x).abs().flatten(1).amax(1) < 1e-6
    assert unchanged.float().mean().item() == pytest.approx(0.8 ** 3, abs=0.05)
    assert m.shape == (1500, 16, 16) and m.dtype == torch.int64


def test_modern_augmentation_is_the_task_preset():
    aug, _ = build_augment("lits", (32, 32), False, None, "gpu", MOD, "LiTS")
    assert isinstance(aug, DeviceAugment)
    assert [type(o).__name__ for o in aug.ops.children()] == ["RandomResizedCrop", "RandomHorizontalFlip",
                                                              "RandomRotation"]
    assert build_augment("lits", (32, 32), True, (0.1, 1.0), "gpu", MOD, "LiTS")[0].noise == (0.1, 1.0)
    assert build_augment("lits", (32, 32), True, (0.1, 1.0), "gpu", PRE, "LiTS") == (None, None)  # no_augs: no noise


# ----------------------------------------------------------------------------- noise

@pytest.mark.parametrize("kind", ["gaussian", "rician"])
def test_noise_is_clipped_to_01_under_predecessor(kind):
    x = torch.rand(64, 3, 8, 8)
    torch.manual_seed(1)
    clipped = add_noise(x, 0.5, 1.0, kind, clip=True)
    torch.manual_seed(1)
    raw = add_noise(x, 0.5, 1.0, kind, clip=False)  # the modern recipe
    assert torch.equal(clipped, raw.clamp(0, 1))  # same draws, then clipped
    assert raw.max() > 1 and clipped.min() >= 0 and clipped.max() <= 1
    aug = PredecessorAugment("BraTS" if kind == "rician" else "CX8", (8, 8), (0.5, 1.0))
    assert aug.noise_type == kind and aug(x).max() <= 1 and aug(x).min() >= 0
    assert build_augment("default", (8, 8), False, (0.5, 1.0), "gpu", MOD, "CX8")[0].clip is False


# ----------------------------------------------------------------------------- weight decay

def test_adam_decays_every_parameter_under_predecessor():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.LazyLinear(2))
    model(torch.zeros(1, 3, 5, 5))
    n_params = len(list(model.parameters()))
    for opt_name in ("Adam", "AdamW"):
        pre = build_optimizer(model, opt_name, 1e-3, 0.1, exclude_bn_bias=excludes_bn_bias(PRE, opt_name))
        assert [(len(g["params"]), g["weight_decay"]) for g in pre.param_groups] == [(n_params, 0.1)]
        mod = build_optimizer(model, opt_name, 1e-3, 0.1, exclude_bn_bias=excludes_bn_bias(MOD, opt_name))
        assert [(len(g["params"]), g["weight_decay"]) for g in mod.param_groups] == [(2, 0.1), (n_params - 2, 0.0)]
    assert excludes_bn_bias(PRE, "LARS") and excludes_bn_bias(MOD, "LARS")


# ----------------------------------------------------------------------------- defaults

def test_defaults_for_missing_keys_follow_the_recipe(tmp_path):
    assert fte().decay_per_epoch == 0.95 and fte(recipe="predecessor").decay_per_epoch == 0.99
    assert ssl().decay_per_epoch == 0.95 and ssl(recipe="predecessor").decay_per_epoch == 0.5
    assert fte(recipe="predecessor", decay_per_epoch=0.9).decay_per_epoch == 0.9  # a given value wins
    dumped = fte(recipe="predecessor").model_dump(mode="json")  # what config.yaml records
    assert dumped["recipe"] == "predecessor" and dumped["decay_per_epoch"] == 0.99


# ----------------------------------------------------------------------------- schedules

def _factors(sched, n):
    out = []
    for _ in range(n):
        out.append(sched.get_last_lr()[0])
        sched.optimizer.step()
        sched.step()
    return out


def test_decaying_cosine_is_continuous_under_predecessor():
    eta, g, t0 = 1e-6, 0.9, 4
    ref = [(eta + 0.5 * (1 - eta) * (1 + math.cos(e / t0 * math.pi))) * g ** e for e in range(12)]  # theirs
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    pre = build_scheduler(opt, "decaying_cosine", interval="epoch", steps_per_epoch=5, epochs=12,
                          decay_per_epoch=g, annealing_time=t0, restarts=not PRE.continuous_decaying_cosine)
    assert _factors(pre, 12) == pytest.approx(ref, rel=1e-9)
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    mod = build_scheduler(opt, "decaying_cosine", interval="epoch", steps_per_epoch=5, epochs=12,
                          decay_per_epoch=g, annealing_time=t0, restarts=not MOD.continuous_decaying_cosine)
    restart = [(eta + 0.5 * (1 - eta) * (1 + math.cos((e % t0) / t0 * math.pi))) * g ** e for e in range(12)]
    assert _factors(mod, 12) == pytest.approx(restart, rel=1e-9)


@pytest.mark.parametrize("recipe", ["predecessor", "modern"])
def test_simclr_decaying_cosine_decay_only_under_modern(recipe):
    cfg = ssl(recipe=recipe, optimizer="Adam", lr=1.0, stepwise_scheduler="DecayingCosine", lr_rule="config",
              annealing_time=0.2, batch_size=10)  # decay_per_epoch missing: 0.5 (predecessor) / 0.95
    sched = build_lr_schedule(torch.optim.Adam([nn.Parameter(torch.zeros(1))], lr=1.0),
                              lr_plan(cfg, "config", ""), cfg, steps_per_epoch=22, n_images=215)
    eta = 1e-6
    if recipe == "predecessor":  # T0 = int(0.2 * 215 / 10) = 4 steps, decay computed but not applied
        ref = [eta + 0.5 * (1 - eta) * (1 + math.cos(k / 4 * math.pi)) for k in range(15)]
    else:  # restarts every 0.2 * 22 = 4.4 steps, times 0.95 per 22-step epoch
        ref = [(eta + 0.5 * (1 - eta) * (1 + math.cos(math.fmod(k, 4.4) / 4.4 * math.pi))) * 0.95 ** (k / 22)
               for k in range(15)]
    assert _factors(sched, 15) == pytest.approx(ref, rel=1e-9)


@pytest.mark.parametrize("recipe", ["predecessor", "modern"])
def test_stepwise_decay_counts_epochs_as_the_recipe_says(recipe):
    r = RECIPE_TABLE[recipe]
    from utility.config.recipe import epoch_steps
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = build_scheduler(opt, "decay", interval="step", steps_per_epoch=4, epochs=3, decay_per_epoch=0.5,
                            epoch_steps=epoch_steps(r, 30, 8))  # 30 images, batch 8: 4 batches, 3.75 "steps"
    # the predecessor: ExponentialLR(gamma = exp(log(alpha) / (len / batch))) stepped per batch
    gamma = math.exp(math.log(0.5) / (30 / 8)) if recipe == "predecessor" else 0.5 ** (1 / 4)
    assert _factors(sched, 9) == pytest.approx([gamma ** k for k in range(9)], rel=1e-9)


# ----------------------------------------------------------------------------- snapshots

def test_encoder_snapshot_numbering():
    # the predecessor: `for epoch in range(epochs): ... if epoch % k == 0: encoder_<epoch>` (0-based)
    ref = [e for e in range(12) if e % 5 == 0]
    assert [snapshot_epoch(PRE, done, 5) for done in range(1, 13) if snapshot_epoch(PRE, done, 5) is not None] == ref
    assert [n for n in (snapshot_epoch(MOD, d, 5) for d in range(1, 13)) if n is not None] == [5, 10]
    assert snapshot_epoch(PRE, 3, None) is None


# ----------------------------------------------------------------------------- CTBR labels

@pytest.mark.parametrize("value, lowest", [("THORAX ABDOMEN", 1), ("ABDOMEN PELVIS", 2), ("CHEST_ABDOMEN_PELVIS", 1),
                                           ("HEAD NECK THORAX", 0), ("Calves", 3), ("Extremities", 3)])
def test_body_part_lowest_class_under_predecessor(value, lowest):
    assert class_of(value, "f", "lowest") == lowest
    if value in ("Calves", "Extremities"):
        assert class_of(value, "f") == 3  # keywords the modern lists had missed
    else:
        with pytest.raises(UserError, match="several body regions"):
            class_of(value, "f")


def test_foot_is_outside_the_predecessor_classes():
    assert class_of("FOOT", "f") == 3 and class_of("Ankle left", "f") == 3
    with pytest.raises(UserError, match="matches no body region"):  # the predecessor's class 6
        class_of("FOOT", "f", "lowest")
    task = load_task("CTBR")
    assert task_for(task, PRE).layout.body_part_rule == "lowest" and task_for(task, MOD).layout.body_part_rule == "single"


# ----------------------------------------------------------------------------- keys

def test_encoder_network_overrides_resnet_and_refuses_others():
    assert ssl(resnet="resnet50", encoder_network="resnet18").resnet == "resnet18"
    with pytest.raises(Exception, match="resnet18, resnet34, resnet50, resnet101, resnet152"):
        ssl(encoder_network="vit_convnext")


def test_did_you_mean_only_for_close_names():
    valid = list(PretrainConfig.model_fields)
    assert closest_key("encoder_netwrk", valid) == "encoder_network"
    assert closest_key("learnin_rate", list(FTEConfig.model_fields)) is None  # not annealing_time
    assert closest_key("nework", valid) is None


def test_predecessor_keys_print_the_recipe_once(tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"name": "r", "task": "LiTS", "w_m": None}))
    cfg, _ = load_config(FTEConfig, ["-c", str(path)], "x", FTE_DEPRECATED)
    err = capsys.readouterr().err
    assert cfg.recipe == "modern" and err.count("recipe: modern in force") == 1
    assert "set recipe: predecessor" in err and "used: w_m)" in err
    load_config(FTEConfig, ["-c", str(path), "--recipe", "predecessor"], "x", FTE_DEPRECATED)
    assert "recipe: predecessor in force" in capsys.readouterr().err


def test_dataparallel_becomes_ddp_under_torchrun(monkeypatch, capsys):
    from utility.runs.pretrain_start import predecessor_parallel
    cfg = ssl(dataparallel=True)
    assert predecessor_parallel(cfg) == "dp"
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert predecessor_parallel(cfg) == "ddp"
    assert "running DDP" in capsys.readouterr().err
    assert predecessor_parallel(ssl(dataparallel=False)) == "auto"


def test_init_encoder_loads_weights_and_records_provenance(tmp_path):
    import torchvision

    from utility.methods.ssl_base import save_encoder
    from utility.runs.pretrain_start import start_from_encoder

    torch.manual_seed(0)
    src = nn.Module()
    src.encoder = torchvision.models.resnet18(num_classes=2)
    src.encoder.fc = nn.Identity()
    save_encoder(src, tmp_path / "enc.tar")
    target = torchvision.models.resnet18(num_classes=2)
    target.fc = nn.Identity()
    start_from_encoder(target, str(tmp_path / "enc.tar"), tmp_path / "run")
    for k, v in src.encoder.state_dict().items():
        assert torch.equal(v, target.state_dict()[k]), k
    record = yaml.safe_load((tmp_path / "run" / "provenance.yaml").read_text())
    import hashlib
    assert record["init_encoder_sha256"] == hashlib.sha256((tmp_path / "enc.tar").read_bytes()).hexdigest()
    with pytest.raises(UserError, match="init_encoder"):
        start_from_encoder(target, str(tmp_path / "missing.tar"), tmp_path / "run")
    assert PretrainConfig.model_fields["init_encoder"] and "init_encoder" in PRETRAIN_DEPRECATED["reload"]


def test_every_difference_is_a_row_of_the_docs_table():
    text = (REPO / "docs" / "recipes.md").read_text()
    for rule, *_ in DIFFERENCES:
        assert f"`{rule}`" in text, rule
    assert {d[0] for d in DIFFERENCES} == set(vars(recipe_of("modern"))) - {"name"}


def test_recipe_key_values_are_the_table():
    from typing import get_args

    from utility.config.recipe import RECIPES
    assert set(get_args(FTEConfig.model_fields["recipe"].annotation)) == set(RECIPES) == set(RECIPE_TABLE)
    with pytest.raises(Exception, match="modern"):
        fte(recipe="old")
