"""Predecessor SimCLR configs train as the predecessor trained them (issue "No silent wrong numbers", 5).

Unit level: the predecessor's ``loss_device`` values validate and map to ours, how a config is
recognised as the predecessor's (``lr_rule: auto``), the LR rule and its one-line description, the
epoch-cosine x stepwise schedule, and the per-replica loss under DataParallel. The end-to-end runs
(train.log LR values) are in tests/test_simclr_e2e.py.
"""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from conftest import write_yaml
from utility.config.loader import load_config, validate
from utility.config.schemas import PRETRAIN_DEPRECATED, PretrainConfig
from utility.errors import UserError
from utility.methods.ntxent import nt_xent
from utility.methods.simclr import PER_REPLICA, per_replica_nt_xent
from utility.runs.pretrain_config import lr_plan, raw_config, resolve_lr_rule
from utility.training.schedulers import build_epoch_times_step_scheduler

pytestmark = pytest.mark.filterwarnings("ignore:config key .* has no effect")


def predecessor_config(data_dir: str = "data/unlabeled", **over) -> dict:
    """A SimCLR config in the predecessor's style: its full key set, loss_device gpu, LARS with an
    lr it never used, stepwise_scheduler "None"."""
    cfg = {
        "nodes": 1, "gpus": 1, "nr": 0, "dataparallel": False, "num_workers": 0, "prefetch_factor": 2,
        "seed": 3, "batch_size": 8, "image_size": 16, "start_epoch": 0, "epochs": 3, "dataset": "Custom_2D",
        "dataset_base_dir": data_dir, "random_subset": 1.0, "opmode": "disk", "grayscale": False,
        "data_format": [".png", ".jpg"], "normalizer": "naive", "shape_desired": [24, 24], "tf_device": "gpu",
        "loss_device": "gpu", "resnet": "resnet18", "projection_dim": 32, "optimizer": "LARS",
        "stepwise_scheduler": "None", "lr": 3.0e-4, "weight_decay": 1.0e-6, "temperature": 0.5,
        "name": "pred/run", "log_losses": True, "low_verbosity": True, "enc_save_frequency": 10,
        "model_save_frequency": 10, "reload": False, "epoch_num": 0,
    }
    cfg.update(over)
    return cfg


def load(tmp_path: Path, data: dict, *overrides: str) -> tuple[PretrainConfig, dict]:
    path = write_yaml(tmp_path / "cfg.yaml", data)
    argv = ["-c", str(path), *overrides]
    cfg, _ = load_config(PretrainConfig, argv, "main.py", PRETRAIN_DEPRECATED)
    return cfg, raw_config(argv)


# ----------------------------------------------------------------------------- loss_device

@pytest.mark.parametrize("value, per_replica", [("gpu", True), ("cpu", False), ("per_replica", True),
                                                ("gather", False)])
def test_predecessor_loss_device_values_validate_and_map(value, per_replica):
    cfg = validate(PretrainConfig, predecessor_config(loss_device=value), "cfg.yaml", PRETRAIN_DEPRECATED)
    assert cfg.loss_device == value
    assert (cfg.loss_device in PER_REPLICA) is per_replica


def test_per_replica_loss_is_the_mean_over_dataparallel_chunks():
    torch.manual_seed(0)
    z1, z2 = torch.randn(10, 6), torch.randn(10, 6)
    # DataParallel over 3 GPUs splits a batch of 10 as Tensor.chunk does: 4, 4, 2
    expected = (nt_xent(z1[:4], z2[:4], 0.5, False) + nt_xent(z1[4:8], z2[4:8], 0.5, False)
                + nt_xent(z1[8:], z2[8:], 0.5, False)) / 3
    got = per_replica_nt_xent(z1, z2, 0.5, 3)
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-7)
    # and it is not the gathered loss (the check above is not vacuous)
    assert abs(float(got) - float(nt_xent(z1, z2, 0.5, False))) > 1e-3
    torch.testing.assert_close(per_replica_nt_xent(z1, z2, 0.5, 1), nt_xent(z1, z2, 0.5, False))


# ----------------------------------------------------------------------------- which rule

def test_predecessor_config_recognised_and_rule_line(tmp_path):
    cfg, raw = load(tmp_path, predecessor_config(batch_size=512, epochs=100))
    rule, why = resolve_lr_rule(cfg, raw)
    assert rule == "predecessor"
    for key in ("stepwise_scheduler", "nodes", "nr", "loss_device: gpu", "reload", "epoch_num"):
        assert key in why
    plan = lr_plan(cfg, rule, why)
    assert plan.lr0 == pytest.approx(0.075 * math.sqrt(512), rel=1e-12)
    assert plan.line.startswith("lr rule: predecessor LARS, 0.075*sqrt(512)=1.697, cosine over 100 epochs")
    assert "config lr 0.0003 ignored" in plan.line
    assert plan.per_epoch == "cosine_total" and plan.per_step is None and plan.interval == "step"


@pytest.mark.parametrize("marker", [{"loss_device": "gpu"}, {"loss_device": "cpu"},
                                    {"stepwise_scheduler": "None"}, {"reload": False}, {"nr": 0}])
def test_one_predecessor_marker_is_enough(tmp_path, marker):
    data = {"name": "x", "dataset_base_dir": "d", "optimizer": "LARS", "lr": 0.3, "batch_size": 16, **marker}
    cfg, raw = load(tmp_path, data)
    assert resolve_lr_rule(cfg, raw)[0] == "predecessor"


def test_own_config_keeps_its_lr_and_schedule(tmp_path):
    data = {"name": "x", "dataset_base_dir": "d", "optimizer": "LARS", "lr": 0.3, "batch_size": 16,
            "loss_device": "per_replica", "dataparallel": True, "resnet": "resnet18", "dataset": "Custom_2D"}
    cfg, raw = load(tmp_path, data)
    rule, why = resolve_lr_rule(cfg, raw)
    assert rule == "config" and why == ""
    plan = lr_plan(cfg, rule, why)
    assert plan.lr0 == 0.3 and plan.per_epoch is None and plan.per_step == "cosine_total"
    assert plan.line == "lr rule: config, LARS lr 0.3, schedule cosine_total per step"


def test_explicit_lr_rule_wins(tmp_path):
    cfg, raw = load(tmp_path, predecessor_config(), "--lr_rule", "config")
    rule, why = resolve_lr_rule(cfg, raw)
    assert rule == "config"
    plan = lr_plan(cfg, rule, why)
    assert plan.lr0 == 3e-4 and plan.per_step is None and plan.per_epoch is None  # stepwise "None": constant
    cfg, raw = load(tmp_path, {"name": "x", "dataset_base_dir": "d", "batch_size": 64}, "--lr_rule", "predecessor")
    rule, why = resolve_lr_rule(cfg, raw)
    assert rule == "predecessor" and lr_plan(cfg, rule, why).lr0 == pytest.approx(0.6, rel=1e-12)


def test_predecessor_adam_uses_lr_and_only_the_stepwise_schedule(tmp_path):
    cfg, raw = load(tmp_path, predecessor_config(optimizer="AdamW", stepwise_scheduler="Exponential"))
    plan = lr_plan(cfg, *resolve_lr_rule(cfg, raw))
    assert plan.lr0 == 3e-4 and plan.per_epoch is None and plan.per_step == "decay" and plan.interval == "step"
    assert plan.line.startswith("lr rule: predecessor AdamW, lr 0.0003, stepwise_scheduler Exponential per step")
    cfg, raw = load(tmp_path, predecessor_config(optimizer="Adam"))
    plan = lr_plan(cfg, *resolve_lr_rule(cfg, raw))
    assert plan.per_step is None and plan.per_epoch is None and "constant" in plan.line  # not our cosine default


@pytest.mark.parametrize("own", [{"scheduler": "cosine_total"}, {"base_lr": 0.1}, {"warmup_epochs": 1}])
def test_own_lr_keys_in_a_predecessor_config_refused(tmp_path, own):
    cfg, raw = load(tmp_path, predecessor_config(**own))
    with pytest.raises(UserError) as exc:
        resolve_lr_rule(cfg, raw)
    msg = str(exc.value)
    assert next(iter(own)) in msg and "lr_rule: config" in msg and "\n" not in msg
    cfg, raw = load(tmp_path, predecessor_config(**own), "--lr_rule", "config")
    assert resolve_lr_rule(cfg, raw)[0] == "config"


# ----------------------------------------------------------------------------- the schedule

def test_epoch_cosine_times_stepwise_schedule():
    spe, epochs, lr0 = 4, 3, 0.075 * math.sqrt(8)
    for stepwise in (None, "cosine_total"):
        p = torch.nn.Parameter(torch.zeros(1))
        opt = torch.optim.SGD([p], lr=lr0)
        sched = build_epoch_times_step_scheduler(opt, "cosine_total", stepwise, steps_per_epoch=spe, epochs=epochs)
        for k in range(spe * epochs):
            outer = (1 + math.cos(math.pi * (k // spe) / epochs)) / 2
            inner = 1.0 if stepwise is None else (1 + math.cos(math.pi * k / (spe * epochs))) / 2
            assert opt.param_groups[0]["lr"] == pytest.approx(lr0 * outer * inner, rel=1e-12, abs=1e-15), (stepwise, k)
            opt.step()
            sched.step()
        # resumable: a fresh scheduler loaded from the state continues at the same position
        again = torch.optim.SGD([p], lr=lr0)
        s2 = build_epoch_times_step_scheduler(again, "cosine_total", stepwise, steps_per_epoch=spe, epochs=epochs)
        s2.load_state_dict(sched.state_dict())
        assert again.param_groups[0]["lr"] == pytest.approx(opt.param_groups[0]["lr"], rel=1e-12)
