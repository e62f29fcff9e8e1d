"""Encoders by name, weight files in every accepted layout, and ``get_model`` (in-process, CPU)."""
from __future__ import annotations

import sys
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn

REPO = Path(__file__).resolve().parent.parent

from utility.errors import UserError
from utility.models import (Classifier, build_encoder, get_model, load_into_classifier,
                            read_state_dict)


def randomized(sd: dict[str, torch.Tensor], seed: int) -> dict[str, torch.Tensor]:
    """A copy of ``sd`` with every float tensor (BN statistics included) replaced by random values,
    so a load that silently skips a key cannot pass by coincidence of equal initialisations."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for k, v in sd.items():
        if v.is_floating_point():
            out[k] = torch.rand(v.shape, generator=g) + 0.1 if "running_var" in k else torch.randn(v.shape, generator=g)
        else:
            out[k] = v.clone() + 3
    return out


def tv_encoder_sd(name: str = "resnet18", seed: int = 0) -> dict[str, torch.Tensor]:
    """A torchvision ResNet's state dict without fc (a pretraining encoder file)."""
    net = getattr(torchvision.models, name)(weights=None)
    return randomized({k: v for k, v in net.state_dict().items() if not k.startswith("fc.")}, seed)


def assert_encoder_equals(model: Classifier, enc_sd: dict[str, torch.Tensor]) -> None:
    own = model.encoder.state_dict()
    assert own.keys() == enc_sd.keys()
    for k, v in enc_sd.items():
        assert torch.equal(own[k], v), k


# ----------------------------------------------------------------------------- encoders

@pytest.mark.parametrize("name,width", [("resnet18", 512), ("resnet34", 512), ("resnet50", 2048),
                                        ("timm:resnet10t", 512)])
def test_build_encoder_feature_width(name, width):
    enc, w = build_encoder(name)
    assert w == width
    enc.eval()
    with torch.no_grad():
        out = enc(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, width)


def test_build_encoder_one_channel_and_unknown_name():
    enc, w = build_encoder("resnet18", in_channels=1)
    assert enc.conv1.in_channels == 1
    assert enc.eval()(torch.randn(2, 1, 32, 32)).shape == (2, w)
    enc, w = build_encoder("timm:resnet10t", in_channels=1)
    assert enc.eval()(torch.randn(2, 1, 32, 32)).shape == (2, w)
    with pytest.raises(UserError, match="resnet_does_not_exist"):
        build_encoder("resnet_does_not_exist")


# ----------------------------------------------------------------------------- weight files

def test_load_encoder_only_file(tmp_path):
    sd = tv_encoder_sd()
    torch.save(sd, tmp_path / "encoder_pretrained.tar")
    model = get_model("resnet18", None, 3)
    head_before = model.head.weight.clone()
    notes = load_into_classifier(model, tmp_path / "encoder_pretrained.tar", allow_partial=False)
    assert notes == []
    assert_encoder_equals(model, sd)
    assert torch.equal(model.head.weight, head_before)  # no head in the file: head untouched


def test_load_torchvision_full_state_dict_drops_fc(tmp_path):
    net = torchvision.models.resnet18(weights=None, num_classes=1000)
    full = randomized(net.state_dict(), 1)
    assert "fc.weight" in full
    torch.save(full, tmp_path / "tv.pth")
    model = get_model("resnet18", tmp_path / "tv.pth", 5)
    assert_encoder_equals(model, {k: v for k, v in full.items() if not k.startswith("fc.")})
    assert model.head.weight.shape == (5, 512)


def test_load_module_prefixed_dict(tmp_path):
    sd = tv_encoder_sd(seed=2)
    torch.save(OrderedDict((f"module.{k}", v) for k, v in sd.items()), tmp_path / "dp.tar")
    model = get_model("resnet18", tmp_path / "dp.tar", 3)
    assert_encoder_equals(model, sd)
    # a DataParallel-wrapped finetuned model: module.encoder.* / module.head.*
    src = Classifier(*build_encoder("resnet18"), 3)
    full = randomized(src.state_dict(), 3)
    torch.save({f"module.{k}": v for k, v in full.items()}, tmp_path / "dp_ft.tar")
    model = get_model("resnet18", tmp_path / "dp_ft.tar", 3)
    for k, v in model.state_dict().items():
        assert torch.equal(v, full[k]), k


def test_load_finetuned_classifier_same_and_other_classes(tmp_path):
    src = Classifier(*build_encoder("resnet18"), 4)
    full = randomized(src.state_dict(), 4)
    torch.save(full, tmp_path / "finetuned_model.tar")
    same = get_model("resnet18", None, 4)
    notes = load_into_classifier(same, tmp_path / "finetuned_model.tar", allow_partial=False)
    assert notes == []
    for k, v in same.state_dict().items():
        assert torch.equal(v, full[k]), k  # encoder and head

    other = get_model("resnet18", None, 7)
    head_before = other.head.weight.clone()
    notes = load_into_classifier(other, tmp_path / "finetuned_model.tar", allow_partial=False)
    assert len(notes) == 1 and "head" in notes[0] and "new head" in notes[0]
    assert_encoder_equals(other, {k[len("encoder."):]: v for k, v in full.items() if k.startswith("encoder.")})
    assert torch.equal(other.head.weight, head_before) and other.head.weight.shape == (7, 512)


def test_load_resume_checkpoint(tmp_path):
    src = Classifier(*build_encoder("resnet18"), 3)
    full = randomized(src.state_dict(), 5)
    opt = torch.optim.SGD(src.parameters(), lr=0.1)
    torch.save({"model": full, "optimizer": opt.state_dict(), "epoch": 2, "batch_in_epoch": 0,
                "config": {"lr": 0.1}}, tmp_path / "checkpoint_last.pt")
    model = get_model("resnet18", tmp_path / "checkpoint_last.pt", 3)
    for k, v in model.state_dict().items():
        assert torch.equal(v, full[k]), k


def test_resnet34_file_into_resnet18_is_refused_unless_partial(tmp_path):
    path = tmp_path / "r34_encoder.tar"
    sd34 = tv_encoder_sd("resnet34", seed=6)
    torch.save(sd34, path)
    with pytest.raises(UserError) as err:
        get_model("resnet18", path, 3)
    assert str(path) in str(err.value) and "model_name" in str(err.value)

    model = get_model("resnet18", None, 3)
    notes = load_into_classifier(model, path, allow_partial=True)
    assert notes and "unexpected" in " ".join(notes)
    own = model.encoder.state_dict()
    # the keys both architectures share with the same shape were loaded
    shared = [k for k in own if k in sd34 and own[k].shape == sd34[k].shape]
    assert "conv1.weight" in shared and "layer1.1.conv1.weight" in shared
    for k in shared:
        assert torch.equal(own[k], sd34[k]), k


class Payload:
    """Not a tensor: unpickling it would run arbitrary code."""

    def __reduce__(self):
        return (print, ("unpickled!",))


def test_pickled_object_is_refused(tmp_path, capsys):
    path = tmp_path / "evil.tar"
    torch.save({"conv1.weight": torch.zeros(1), "payload": Payload()}, path)
    with pytest.raises(UserError) as err:
        read_state_dict(path)
    assert str(path) in str(err.value)
    assert "unpickled!" not in capsys.readouterr().out
    with pytest.raises(UserError):
        get_model("resnet18", path, 3)


def test_missing_and_non_state_dict_files(tmp_path):
    with pytest.raises(UserError, match="not found"):
        get_model("resnet18", tmp_path / "nope.tar", 3)
    torch.save([torch.zeros(2)], tmp_path / "list.tar")
    with pytest.raises(UserError, match="state dict"):
        get_model("resnet18", tmp_path / "list.tar", 3)


# ----------------------------------------------------------------------------- get_model

def test_get_model_plain_network():
    model = get_model("resnet18", None, 3)
    assert isinstance(model, nn.Module)
    assert all(p.requires_grad for p in model.parameters())
    out = model.eval()(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 3)
    assert model.head.weight.shape == (3, 512)
    assert not any("loss" in type(m).__name__.lower() for m in model.modules())


def test_get_model_takes_the_head_norm_from_a_finetuned_file(tmp_path):
    """A model finetuned with head_norm: batchnorm comes back with its head's statistics (outputs equal);
    forcing a plain head on that file is refused naming the head's keys, never a silent drop."""
    torch.manual_seed(0)
    src = Classifier(build_encoder("resnet18", 1)[0], 512, 3, head_norm="batchnorm")
    src.train()(torch.randn(8, 1, 16, 16))  # running statistics away from their initial values
    torch.save(src.state_dict(), tmp_path / "finetuned_model.tar")
    model = get_model("resnet18", tmp_path / "finetuned_model.tar", 3, in_channels=1).eval()
    assert isinstance(model.head.norm, nn.BatchNorm1d)
    assert torch.equal(model.head.norm.running_mean, src.head.norm.running_mean)
    x = torch.randn(4, 1, 16, 16)
    assert torch.allclose(model(x), src.eval()(x), atol=1e-6)
    with pytest.raises(UserError, match="head.norm.running_mean"):
        get_model("resnet18", tmp_path / "finetuned_model.tar", 3, in_channels=1, head_norm="none")


def test_get_model_frozen_encoder_semantics():
    model = get_model("resnet18", None, 3, frozen_encoder=True)
    assert not any(p.requires_grad for p in model.encoder.parameters())
    assert all(p.requires_grad for p in model.head.parameters())
    model.train()
    assert model.training and model.head.training
    bns = [m for m in model.encoder.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns and not any(m.training for m in bns)
    # a training-mode forward/backward changes neither BN statistics nor encoder weights
    before = {k: v.clone() for k, v in model.encoder.state_dict().items()}
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    loss = nn.functional.cross_entropy(model(torch.randn(4, 3, 32, 32)), torch.tensor([0, 1, 2, 0]))
    loss.backward()
    opt.step()
    for k, v in model.encoder.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert all(p.grad is None for p in model.encoder.parameters())
    model.eval()
    model.train()
    assert not any(m.training for m in bns)


def test_freeze_encoder_unfreeze_last_n():
    model = get_model("resnet18", None, 3)
    model.freeze_encoder(unfreeze_last_n=1)
    model.train()
    assert all(p.requires_grad for p in model.encoder.layer4.parameters())
    assert model.encoder.layer4.training
    for block in (model.encoder.conv1, model.encoder.bn1, model.encoder.layer1, model.encoder.layer3):
        assert not any(p.requires_grad for p in block.parameters())
    assert not model.encoder.layer3.training and not model.encoder.bn1.training


def test_get_model_finds_a_relative_file_from_another_folder_and_names_the_demo_encoder(tmp_path, monkeypatch):
    """A newcomer outside the repository root: a relative path is looked up in the cwd, then the repository;
    a missing file's message says where `make demo` puts its encoder. in_channels=1 takes grayscale."""
    import pytest
    import torch

    from utility.errors import UserError
    from utility.models import get_model

    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match="logs_and_checkpoints/pretraining/demo/SimCLR/encoder_pretrained.tar"):
        get_model("resnet18", "no/such/encoder.tar", classes=2)
    enc = get_model("resnet18", None, classes=2, in_channels=1)
    torch.save(enc.encoder.state_dict(), tmp_path / "enc.tar")
    net = get_model("resnet18", "enc.tar", classes=2, in_channels=1)
    assert net(torch.zeros(2, 1, 32, 32)).shape == (2, 2)


def test_head_norm_batchnorm_standardises_features_before_the_head(tmp_path):
    """MAE's linear-probe protocol: BatchNorm (no affine, eps 1e-6) then the linear head; the reference
    is computed here from the features (batch statistics in training, running statistics in eval)."""
    from utility.models import build_network

    torch.manual_seed(0)
    model, _ = build_network("resnet18", 3, 3, frozen_encoder=True, head_norm="batchnorm")
    assert not any(True for _ in model.head.norm.parameters())  # no affine parameters
    x = torch.randn(6, 3, 32, 32)
    model.train()
    feats = model.encoder(x).double()
    ref = (feats - feats.mean(0)) / torch.sqrt(feats.var(0, unbiased=False) + 1e-6)
    ref = ref @ model.head.weight.double().T + model.head.bias.double()
    torch.testing.assert_close(model(x).double(), ref, rtol=1e-4, atol=1e-4)
    model.eval()
    run_mean, run_var = model.head.norm.running_mean.double(), model.head.norm.running_var.double()
    torch.testing.assert_close(run_mean, 0.1 * feats.mean(0), rtol=1e-4, atol=1e-5)  # momentum 0.1 from 0
    ref = (feats - run_mean) / torch.sqrt(run_var + 1e-6) @ model.head.weight.double().T + model.head.bias.double()
    torch.testing.assert_close(model(x).double(), ref, rtol=1e-4, atol=1e-4)
    # a finetuned file keeps head.weight/head.bias and loads back with its statistics; a plain head refuses it
    torch.save(model.state_dict(), tmp_path / "finetuned_model.tar")
    again, notes = build_network("resnet18", 3, 3, tmp_path / "finetuned_model.tar", head_norm="batchnorm")
    assert notes == [] and {"head.weight", "head.bias", "head.norm.running_var"} <= set(again.state_dict())
    for k, v in again.state_dict().items():
        assert torch.equal(v, model.state_dict()[k]), k
    _, notes = build_network("resnet18", 3, 3, tmp_path / "finetuned_model.tar")
    assert len(notes) == 1 and "head" in notes[0]
    with pytest.raises(UserError, match="head_norm"):
        build_network("resnet18", 3, 3, segmentation=True, head_norm="batchnorm")
    plain, _ = build_network("resnet18", 3, 3)
    assert type(plain.head) is nn.Linear  # the default: today's head
