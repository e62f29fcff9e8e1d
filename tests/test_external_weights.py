"""Released models as sources (utility/models/external.py): files built here in each layout (a timm ViT
with its classifier and another resolution, a DINOv2 teacher checkpoint with chunked blocks and heads, a
RadImageNet-style ResNet port) load key for key into our encoders through model_path_format and give the
source network's outputs; an incomplete file is refused naming the key; without the format, refused."""
from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from utility.errors import UserError
from utility.models import build_encoder, build_network

TINY = "vit:img=16,patch=4,dim=32,depth=2,heads=2"


def features(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model.encoder(x) if hasattr(model, "head") else model(x)


def test_timm_file_with_classifier_and_another_grid(tmp_path):
    from timm.layers import resample_abs_pos_embed

    torch.manual_seed(0)
    src, _ = build_encoder(TINY.replace("img=16", "img=24"), 3)
    sd = {**src.state_dict(), "head.weight": torch.randn(5, 32), "head.bias": torch.randn(5)}
    torch.save(sd, tmp_path / "timm.pth")
    net, notes = build_network(TINY, 2, 3, tmp_path / "timm.pth", weights_format="timm")
    own = net.encoder.state_dict()
    for k, v in src.state_dict().items():
        want = resample_abs_pos_embed(v, (4, 4), (6, 6), num_prefix_tokens=1) if k == "pos_embed" else v
        torch.testing.assert_close(own[k], want, msg=k)
    assert any("resampled from a 6x6 to a 4x4 grid" in n for n in notes)
    with pytest.raises(UserError, match="unexpected keys in the file .*head.weight"):
        build_network(TINY, 2, 3, tmp_path / "timm.pth")  # auto: our layout only


def test_dinov2_teacher_checkpoint(tmp_path):
    torch.manual_seed(1)
    src, _ = build_encoder(TINY, 3)
    sd = {}
    for k, v in src.state_dict().items():  # DINOv2's FSDP BlockChunk layout: blocks.<chunk>.<i>
        sd["backbone." + (k.replace("blocks.", "blocks.0.", 1) if k.startswith("blocks.") else k)] = v
    sd["backbone.mask_token"] = torch.zeros(1, 32)
    sd["dino_head.mlp.0.weight"] = torch.randn(8, 32)
    sd["ibot_head.last_layer.weight_g"] = torch.randn(8, 1)
    torch.save(sd, tmp_path / "dinov2.pth")  # the teacher entry as a file (weights_only refuses pickled args)
    with pytest.raises(UserError, match="does not fit this encoder"):
        build_network(TINY, 2, 3, tmp_path / "dinov2.pth")
    net, notes = build_network(TINY, 2, 3, tmp_path / "dinov2.pth", weights_format="dinov2")
    x = torch.rand(2, 3, 16, 16)
    src.eval()
    torch.testing.assert_close(features(net, x), src(x))
    assert notes == []


def test_radimagenet_resnet_port_and_partial_file_refused(tmp_path):
    torch.manual_seed(2)
    tv = torchvision.models.resnet18()
    port = nn.Sequential(*list(tv.children())[:-1])  # how the ports hold the ResNet: children without fc
    sd = {f"backbone.{k}": v for k, v in port.state_dict().items()}
    torch.save(sd, tmp_path / "radimagenet.pt")
    net, _ = build_network("resnet18", 3, 3, tmp_path / "radimagenet.pt", weights_format="radimagenet_resnet50")
    x = torch.rand(2, 3, 32, 32)
    tv.fc = nn.Identity()
    tv.eval()
    torch.testing.assert_close(features(net, x), tv(x))
    del sd["backbone.7.1.bn2.weight"]
    torch.save(sd, tmp_path / "partial.pt")
    with pytest.raises(UserError, match=r"1 encoder weights missing from the file \(layer4.1.bn2.weight\)"):
        build_network("resnet18", 3, 3, tmp_path / "partial.pt", weights_format="radimagenet_resnet50")


def test_study_source_passes_format_and_model_name():
    from utility.study.plan import source_keys
    from utility.study.spec import PretrainSource

    src = PretrainSource(encoder="x.pth", format="dinov2", model_name="vit_small_patch14_dinov2")
    assert source_keys(src) == {"model_path_format": "dinov2", "model_name": "vit_small_patch14_dinov2"}
    assert source_keys(PretrainSource(encoder="x.pth")) == {}
    with pytest.raises(ValueError, match="go with 'encoder'"):
        PretrainSource(config="c.yaml", format="timm")
