"""The predecessor's finetuned weight files load exactly (issue 11 item 4).

The predecessor's networks are defined here, independently of utility/models, following its key
layout (../shared/UPSTREAM.md "get_model"): a classifier ``encoder.*`` (torchvision ResNet, fc removed)
+ ``head.weight`` (no bias) + ``loss_criterion.*``; a U-Net from the backboned_unet package under
``unet.`` (``unet.backbone.*`` a full torchvision ResNet, ``unet.upsample_blocks.<i>.*``,
``unet.final_conv.*``). Every weight and BN statistic is randomised so a key that silently failed to
load cannot pass by equal initialisation; outputs are compared on the same input.
"""
from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn
from torch.nn import functional as F

from utility.errors import UserError
from utility.models import build_network, get_model


def randomize_(module: nn.Module, seed: int) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for k, v in module.state_dict().items():
            if v.is_floating_point():
                v.copy_(torch.rand(v.shape, generator=g) + 0.5 if "running_var" in k
                        else 0.2 * torch.randn(v.shape, generator=g))
    return module


# ----------------------------------------------------------------------------- the predecessor's networks

class PredecessorClassifier(nn.Module):
    def __init__(self, classes: int, class_weights: list[float]) -> None:
        super().__init__()
        self.encoder = torchvision.models.resnet18(weights=None)
        self.encoder.fc = nn.Identity()
        self.head = nn.Linear(512, classes, bias=False)
        self.loss_criterion = nn.CrossEntropyLoss(weight=torch.tensor(class_weights))

    def forward(self, x):
        return self.head(self.encoder(x))


class PredecessorUpsampleBlock(nn.Module):
    """backboned_unet's UpsampleBlock with batch norm (``parametric``: transposed conv, else bilinear)."""

    def __init__(self, ch_in, ch_out, skip_in, parametric):
        super().__init__()
        self.parametric = parametric
        if parametric:
            self.up = nn.ConvTranspose2d(ch_in, ch_out, kernel_size=(4, 4), stride=2, padding=1, bias=False)
        else:
            self.up = None
            self.conv1 = nn.Conv2d(ch_in + skip_in, ch_out, kernel_size=(3, 3), padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(ch_out)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(ch_out + skip_in if parametric else ch_out, ch_out, (3, 3), padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(ch_out)

    def forward(self, x, skip):
        if self.parametric:
            x = self.relu(self.bn1(self.up(x)))
        else:
            x = F.interpolate(x, scale_factor=2, mode="bilinear")
        if skip is not None:
            x = torch.cat([x, skip], 1)
        if not self.parametric:
            x = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(x)))


class PredecessorBackbonedUnet(nn.Module):
    def __init__(self, classes, parametric, filters=(256, 128, 64, 32, 16)):
        super().__init__()
        self.backbone = torchvision.models.resnet18(weights=None)  # with its (unused) fc, as there
        self.shortcut_features = [None, "relu", "layer1", "layer2", "layer3"]
        skip_chs = [0, 64, 64, 128, 256]
        ins = [512] + list(filters[:-1])
        self.upsample_blocks = nn.ModuleList(
            PredecessorUpsampleBlock(i, o, skip_chs[4 - n], parametric) for n, (i, o) in enumerate(zip(ins, filters)))
        self.final_conv = nn.Conv2d(filters[-1], classes, kernel_size=(1, 1))

    def forward(self, x):
        features = {None: None}
        for name, child in self.backbone.named_children():
            x = child(x)
            if name in self.shortcut_features:
                features[name] = x
            if name == "layer4":
                break
        for skip, block in zip(self.shortcut_features[::-1], self.upsample_blocks):
            x = block(x, features[skip])
        return self.final_conv(x)


class PredecessorSegModel(nn.Module):
    def __init__(self, classes, parametric):
        super().__init__()
        self.unet = PredecessorBackbonedUnet(classes, parametric)
        self.loss_criterion = nn.CrossEntropyLoss(weight=torch.ones(classes))

    def forward(self, x):
        return self.unet(x)


def save_predecessor(model: nn.Module, path) -> None:
    torch.save(model.state_dict(), path)


# ----------------------------------------------------------------------------- classifier

def test_predecessor_classifier_loads_with_equal_outputs(tmp_path, capsys):
    pred = randomize_(PredecessorClassifier(6, [1, 2, 1, 1, 1, 0.5]), 1).eval()
    path = tmp_path / "finetuned_model.tar"
    save_predecessor(pred, path)
    assert {"head.weight", "loss_criterion.weight"} <= set(torch.load(path, weights_only=True))
    model = get_model("resnet18", path, 6).eval()
    assert torch.equal(model.head.bias, torch.zeros(6))
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), pred(x), rtol=1e-5, atol=1e-5)
    assert "warning" not in capsys.readouterr().err


def test_weights_never_dropped_silently(tmp_path, capsys):
    pred = randomize_(PredecessorClassifier(6, [1] * 6), 2)
    sd = pred.state_dict()
    path = tmp_path / "other.tar"
    torch.save({**sd, "extra.weight": torch.zeros(2)}, path)
    with pytest.raises(UserError, match=r"extra\.weight"):
        get_model("resnet18", path, 6)
    model = get_model("resnet18", path, 6, allow_partial_load=True)
    assert "extra.weight" in capsys.readouterr().err
    assert torch.equal(model.head.weight, sd["head.weight"])
    # a head of another number of classes: an error naming the head's keys, unless partial loads are allowed
    path6 = tmp_path / "six.tar"
    torch.save(sd, path6)
    with pytest.raises(UserError, match=r"head\.weight"):
        get_model("resnet18", path6, 4)
    model = get_model("resnet18", path6, 4, allow_partial_load=True)
    err = capsys.readouterr().err
    assert "not loaded" in err and "head.weight" in err
    assert torch.equal(model.encoder.conv1.weight, sd["encoder.conv1.weight"])


# ----------------------------------------------------------------------------- U-Net

@pytest.mark.parametrize("parametric", [True, False], ids=["transposed_conv", "bilinear"])
def test_predecessor_unet_loads_with_equal_outputs(tmp_path, parametric, capsys):
    pred = randomize_(PredecessorSegModel(4, parametric), 3).eval()
    path = tmp_path / "finetuned_model.tar"
    save_predecessor(pred, path)
    keys = set(torch.load(path, weights_only=True))
    assert "unet.backbone.fc.weight" in keys and "unet.final_conv.weight" in keys
    model = get_model("unet_resnet18_backbone", path, 4).eval()  # the decoder chosen from the file
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), pred(x), rtol=1e-5, atol=1e-5)
    assert "warning" not in capsys.readouterr().err
    # our file of this variant has the predecessor's layout (less the unused fc and the loss buffers)
    ours = {k for k in model.state_dict() if not k.endswith("num_batches_tracked")}
    assert ours == {k for k in keys if not k.startswith(("unet.backbone.fc.", "loss_criterion."))
                    and not k.endswith("num_batches_tracked")}
    torch.save(model.state_dict(), tmp_path / "ours.tar")
    again = get_model("unet_resnet18_backbone", tmp_path / "ours.tar", 4).eval()
    with torch.no_grad():
        torch.testing.assert_close(again(x), pred(x), rtol=1e-5, atol=1e-5)


def test_predecessor_unet_mismatch_and_decoder_choice(tmp_path, capsys):
    pred = randomize_(PredecessorSegModel(4, True), 4)
    path = tmp_path / "finetuned_model.tar"
    save_predecessor(pred, path)
    with pytest.raises(UserError, match=r"unet\.final_conv\.weight"):
        get_model("unet_resnet18_backbone", path, 3)  # another number of classes
    with pytest.raises(UserError, match="unet_decoder"):
        get_model("unet_resnet18_backbone", path, 4, unet_decoder="smp")
    model = get_model("unet_resnet18_backbone", path, 3, allow_partial_load=True)
    err = capsys.readouterr().err
    assert "unet.final_conv.weight" in err and "not loaded" in err
    assert torch.equal(model.unet.upsample_blocks[0].up.weight, pred.unet.upsample_blocks[0].up.weight)
    # predecessor decoder on an encoder file: the backbone loads, frozen_encoder freezes it
    enc = {k: v for k, v in pred.unet.backbone.state_dict().items() if not k.startswith("fc.")}
    torch.save(enc, tmp_path / "encoder_pretrained.tar")
    net, notes = build_network("unet_resnet18_backbone", 2, weights=tmp_path / "encoder_pretrained.tar",
                               unet_decoder="predecessor", frozen_encoder=True)
    assert notes == [] and torch.equal(net.unet.backbone.layer4[1].conv2.weight, enc["layer4.1.conv2.weight"])
    assert not any(p.requires_grad for p in net.unet.backbone.parameters())
    assert all(p.requires_grad for p in net.unet.upsample_blocks.parameters())
    assert net.eval()(torch.randn(1, 3, 40, 48)).shape == (1, 2, 40, 48)  # padded to 64x64 and cropped back


@pytest.mark.e2e  # trains in-process
def test_predecessor_unet_through_finetune_model_path(tmp_path):
    """``model_path: <predecessor U-Net file>`` in a finetuning run (in-process through run_entry): the decoder is chosen from the file
    (no warning, nothing dropped) and the first logged loss equals the predecessor model's loss on the
    one training batch (frozen encoder: backbone BN in eval mode, decoder BN on batch statistics)."""
    import csv

    from conftest import run_inproc, small_run_config, write_yaml
    from datasets.prepare_demo_seg import write_demo
    from utility.config.tasks import load_task
    from utility.data.dataset import Preprocess
    from utility.data.index import index_task
    from utility.data.segdata import make_seg_dataset
    from utility.methods.segmentation import SegLoss

    write_demo(tmp_path / "data" / "demo_seg", {"train": 3, "val": 1, "test": 1}, size=32)
    pred = randomize_(PredecessorSegModel(3, True), 5)
    weights = tmp_path / "finetuned_model.tar"
    torch.save(pred.state_dict(), weights)
    cfg = small_run_config(name="seg/pred", task="demo_seg", model_name="unet_resnet18_backbone",
                           shape_desired=[32, 32], batch_size=4, no_augs=True, frozen_encoder=True,
                           model_path=str(weights))
    from utility.runs.finetune import main

    proc = run_inproc(main, ["-c", write_yaml(tmp_path / "cfg.yaml", cfg), "--data_root", tmp_path / "data",
                             "--output_root", tmp_path / "out"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "warning: loading" not in proc.stderr
    run = tmp_path / "out" / "finetuning" / "seg" / "pred"
    with (run / "train.log").open() as fh:
        first = float(next(csv.DictReader(fh))["loss"])
    task = load_task("demo_seg")
    split = index_task(task, tmp_path / "data", seed=0).splits["train"]
    opts = type("C", (), {"opmode": "disk", "debug": False, "test_nan_inf": True})()
    ds = make_seg_dataset(opts, task, split, "train", Preprocess(3, (32, 32), "naive"), 3, None)
    x = torch.stack([ds[i]["image"] for i in range(len(ds))])
    y = torch.stack([ds[i]["target"] for i in range(len(ds))])
    pred.train()
    pred.unet.backbone.eval()
    with torch.no_grad():
        ref = SegLoss(task.loss, None, task.ce_weight, task.dice_weight, task.dice_smooth,
                      task.dice_include_background)(pred(x), y).item()
    assert first == pytest.approx(ref, rel=1e-4, abs=1e-5)
    saved = set(torch.load(run / "finetuned_model.tar", weights_only=True))
    assert "unet.upsample_blocks.0.up.weight" in saved and "unet.final_conv.weight" in saved
