"""The U-Net: encoder files load key for key (SimCLR-style torchvision state dict without fc), finetuned
U-Net files load through get_model, mismatches fail unless partial loading is allowed, and a frozen
encoder keeps its weights and BatchNorm statistics while the decoder trains."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import torchvision


from utility.errors import UserError
from utility.models import get_model
from utility.methods.segmentation import SegLoss
from utility.models import build_network
from utility.models.unet import UNet, encoder_of


def build_unet(*args, **kw):
    return build_network(*args, segmentation=True, **kw)


def simclr_encoder_file(path: Path, name: str = "resnet18", seed: int = 0) -> dict[str, torch.Tensor]:
    """What SimCLR writes as encoder_pretrained.tar: a torchvision ResNet state dict without fc."""
    torch.manual_seed(seed)
    net = getattr(torchvision.models, name)(weights=None)
    for m in net.modules():  # non-default BN statistics, so loading them is visible
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
    sd = {k: v for k, v in net.state_dict().items() if not k.startswith("fc.")}
    torch.save(sd, path)
    return sd


def test_names():
    assert encoder_of("unet_resnet50_backbone") == "resnet50"
    assert encoder_of("unet_resnet18") == "resnet18"
    assert encoder_of("resnet34") == "resnet34"
    assert UNet("wide_resnet50_2", 2).encoder.layer1[0].conv1.out_channels == 128


def test_encoder_file_loads_equal(tmp_path):
    sd = simclr_encoder_file(tmp_path / "encoder_pretrained.tar")
    model = get_model("unet_resnet18_backbone", tmp_path / "encoder_pretrained.tar", 4)
    own = model.encoder.state_dict()
    assert set(own) == set(sd)
    for k, v in sd.items():
        assert torch.equal(own[k], v), k
    out = model.eval()(torch.randn(2, 3, 48, 40))
    assert out.shape == (2, 4, 48, 40)  # classes include background; odd sizes padded and cropped back
    # a torchvision state dict with fc loads too (fc dropped)
    full = torchvision.models.resnet18(weights=None).state_dict()
    torch.save(full, tmp_path / "tv.pth")
    m2 = get_model("unet_resnet18_backbone", tmp_path / "tv.pth", 2)
    assert torch.equal(m2.encoder.conv1.weight, full["conv1.weight"])


def test_finetuned_unet_file_round_trip_and_mismatches(tmp_path):
    model, _ = build_unet("resnet18", 3)
    torch.save(model.state_dict(), tmp_path / "finetuned_model.tar")
    again = get_model("unet_resnet18_backbone", tmp_path / "finetuned_model.tar", 3)
    for k, v in model.state_dict().items():
        assert torch.equal(again.state_dict()[k], v), k
    with pytest.raises(UserError, match="segmentation_head"):
        get_model("unet_resnet18_backbone", tmp_path / "finetuned_model.tar", 5)
    partial, notes = build_unet("resnet18", 5, weights=tmp_path / "finetuned_model.tar", allow_partial=True)
    assert notes and torch.equal(partial.encoder.conv1.weight, model.encoder.conv1.weight)
    simclr_encoder_file(tmp_path / "r34.tar", "resnet34")
    with pytest.raises(UserError, match="does not fit"):
        get_model("unet_resnet18_backbone", tmp_path / "r34.tar", 3)


def test_frozen_encoder_keeps_weights_and_bn_stats(tmp_path):
    simclr_encoder_file(tmp_path / "enc.tar")
    model, _ = build_unet("resnet18", 3, weights=tmp_path / "enc.tar", frozen_encoder=True)
    enc_before = {k: v.clone() for k, v in model.encoder.state_dict().items()}
    dec_before = {k: v.clone() for k, v in model.decoder.state_dict().items()}
    model.train()
    assert not any(m.training for m in model.encoder.modules() if isinstance(m, torch.nn.BatchNorm2d))
    assert model.decoder.training
    assert all(not p.requires_grad for p in model.encoder.parameters())
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    x, y = torch.randn(2, 3, 32, 32), torch.randint(0, 3, (2, 32, 32))
    for _ in range(1):
        loss = SegLoss("ce_dice")(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    for k, v in model.encoder.state_dict().items():
        assert torch.equal(v, enc_before[k]), k  # weights and running statistics
    assert any(not torch.equal(v, dec_before[k]) for k, v in model.decoder.state_dict().items())


def test_unfreeze_last_n():
    model, _ = build_unet("resnet18", 2, frozen_encoder=True, unfreeze_last_n=1)
    model.train()
    assert all(p.requires_grad for p in model.encoder.layer4.parameters())
    assert model.encoder.layer4.training and not model.encoder.layer3.training
    assert not any(p.requires_grad for p in model.encoder.layer3.parameters())
