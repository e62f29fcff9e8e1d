"""Adversarial weights and checkpoints: NaN/inf values, truncated or foreign files, symlinks, resume
checkpoints from another architecture or with impossible counters."""
from __future__ import annotations

import pytest
import torch

from adversarial.harness import Case, check
from utility.config.loader import dump_config, load_config
from utility.config.schemas import FTEConfig
from utility.errors import UserError
from utility.runs.finetune import main as finetune_main
from utility.training.checkpoint import restoring, set_rng_state


def weights(ws, sd, name="w.tar") -> str:
    path = ws.user / name
    torch.save(sd, path)
    return str(path)


def with_model(make):
    def build(ws):
        return ["-c", str(ws.write_config("c.yaml", model_path=make(ws)))]
    return build


def resnet_sd(value: float | None = None) -> dict[str, torch.Tensor]:
    import torchvision

    sd = torchvision.models.resnet18().state_dict()
    if value is not None:
        sd["layer1.0.conv1.weight"][0, 0, 0, 0] = value
    return sd


def truncated(ws) -> str:
    path = weights(ws, resnet_sd(), "t.tar")
    data = open(path, "rb").read()
    open(path, "wb").write(data[: len(data) // 3])
    return path


def broken_link(ws) -> str:
    link = ws.user / "gone.tar"
    link.symlink_to(ws.user / "never_there.tar")
    return str(link)


def resume_with(ck_update: dict):
    """A run directory of this very config whose checkpoint_last.pt is ``ck_update`` over a minimal one."""
    def build(ws):
        argv = ["-c", str(ws.write_config("c.yaml", tf_device="cpu"))]
        cfg, _ = load_config(FTEConfig, argv, "finetune.py")
        run_dir = ws.out / "finetuning" / cfg.name
        run_dir.mkdir(parents=True)
        dump_config(cfg, run_dir / "config.yaml")
        ck = {"model": {"conv.weight": torch.zeros(1)}, "optimizer": {}, "scaler": {}, "epoch": 0,
              "batch_in_epoch": 1, "global_step": 1, "rng": {}, "best_value": None, "best_epoch": None}
        torch.save({**ck, **ck_update}, run_dir / "checkpoint_last.pt")
        return argv
    return build


CASES = [
    Case("nan-weights", with_model(lambda ws: weights(ws, resnet_sd(float("nan")))), 2, "NaN/inf values"),
    Case("inf-weights", with_model(lambda ws: weights(ws, resnet_sd(float("inf")))), 2, "NaN/inf values"),
    Case("truncated-weights", with_model(truncated), 2, "cannot load weights"),
    Case("text-as-weights", with_model(lambda ws: str(ws.file("w.tar", "not weights"))), 2, "cannot load weights"),
    Case("broken-symlink-weights", with_model(broken_link), 2, "never_there.tar"),
    Case("weights-not-tensors", with_model(lambda ws: weights(ws, {"a": 1})), 2, "state dict of tensors"),
    Case("checkpoint-negative-epoch", resume_with({"epoch": -3}), 2, "expected a whole number >= 0"),
    Case("checkpoint-float-step", resume_with({"global_step": 1.5}), 2, "'global_step'"),
    Case("checkpoint-other-architecture", resume_with({}), 2, "does not fit this run"),
    Case("checkpoint-text-epoch", resume_with({"epoch": "2"}), 2, "'epoch' is '2'"),
]


@pytest.mark.parametrize("case", CASES, ids=repr)
def test_weights(case, tmp_path):
    check(case, finetune_main, tmp_path)


@pytest.mark.parametrize("state", [{"torch": torch.zeros(3)}, {}, {"torch": torch.get_rng_state(), "numpy": 5}])
def test_malformed_rng_state_is_one_line(tmp_path, state):
    with pytest.raises(UserError, match="checkpoint_last.pt does not fit this run"):
        with restoring(tmp_path / "checkpoint_last.pt"):
            set_rng_state(state)
