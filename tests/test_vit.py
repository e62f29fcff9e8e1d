"""ViT encoders end to end (utility/models/vit.py, vit_seg.py): names, channels, position-embedding
interpolation, linear-eval frozenness through the real finetuning run, layer-wise unfreezing and lr
decay, and segmentation with the multi-level decoder learning generated masks."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from conftest import small_run_config, write_yaml
from utility.entry import run_entry
from utility.errors import UserError
from utility.models import build_encoder, build_network
from utility.models.vit import layer_decay_scales, parse_vit_spec
from utility.runs.finetune import main as finetune_main
from utility.training.optim import build_optimizer

TINY = "vit:img=16,patch=4,dim=32,depth=2,heads=2"


def test_spec_and_channels():
    assert parse_vit_spec("vit:img=32,patch=8,dim=64,depth=3") == {
        "img_size": 32, "patch_size": 8, "embed_dim": 64, "depth": 3, "num_heads": 2}
    for ch in (1, 3):
        enc, width = build_encoder(TINY, ch)
        assert width == 32 and enc(torch.rand(2, ch, 16, 16)).shape == (2, 32)
    with pytest.raises(UserError, match="lacks depth"):
        build_encoder("vit:patch=4,dim=32")
    with pytest.raises(UserError, match="'size=3' is not one of"):
        build_encoder("vit:size=3,patch=4,dim=32,depth=1")


def test_other_input_size_interpolates_the_position_embedding():
    """A 16-px encoder on 24-px images equals a 24-px encoder whose embedding is the bicubic resample."""
    from timm.layers import resample_abs_pos_embed

    torch.manual_seed(0)
    small, _ = build_encoder(TINY, 1)
    big, _ = build_encoder(TINY.replace("img=16", "img=24"), 1)
    sd = dict(small.state_dict())
    sd["pos_embed"] = resample_abs_pos_embed(sd["pos_embed"], (6, 6), (4, 4), num_prefix_tokens=1)
    big.load_state_dict(sd)
    x = torch.rand(3, 1, 24, 24)
    small.eval(), big.eval()
    torch.testing.assert_close(small(x), big(x))


def test_unfreeze_last_n_and_layer_decay():
    model, _ = build_network(TINY, 3, 1, frozen_encoder=True, unfreeze_last_n=1)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {n for n, _ in model.named_parameters() if n.startswith(("encoder.blocks.1.", "encoder.norm.",
                                                                                  "head."))}
    model, _ = build_network(TINY, 3, 1)
    scales = layer_decay_scales(model, 0.5)
    assert scales["encoder.pos_embed"] == scales["encoder.patch_embed.proj.weight"] == 0.125  # 0.5 ** 3
    assert scales["encoder.blocks.0.attn.qkv.weight"] == 0.25 and scales["encoder.blocks.1.mlp.fc1.bias"] == 0.5
    assert scales["head.weight"] == scales["encoder.norm.weight"] == 1.0
    opt = build_optimizer(model, "AdamW", 0.1, 0.05, lr_scales=scales)
    lr_of = {id(p): g["lr"] for g in opt.param_groups for p in g["params"]}
    named = dict(model.named_parameters())
    assert all(lr_of[id(p)] == pytest.approx(0.1 * scales[n]) for n, p in named.items())
    assert opt.param_groups[0]["lr"] == 0.1  # what train.log shows: the head's lr
    assert len(lr_of) == len(named)


def test_linear_eval_leaves_the_vit_untouched(tmp_path, make_folder_dataset, write_task_yaml):
    """The real finetuning run, frozen ViT, AdamW with weight decay: every encoder parameter and buffer in
    finetuned_model.tar equals the file it started from; the head trained; layer_decay refused on a ResNet."""
    make_folder_dataset(tmp_path / "data" / "tiny", ["bar_h", "bar_v"], 8)
    task = write_task_yaml(root="tiny")
    torch.manual_seed(3)
    enc, _ = build_encoder(TINY, 1)
    start = {k: v.clone() for k, v in enc.state_dict().items()}
    torch.save(start, tmp_path / "enc.tar")
    cfg = write_yaml(tmp_path / "run.yaml", small_run_config(
        task=task, model_name=TINY, in_channels=1, model_path=str(tmp_path / "enc.tar"), frozen_encoder=True,
        weight_decay=0.5, lr=0.05, epochs=2, data_root=str(tmp_path / "data"), output_root=str(tmp_path / "out")))
    assert run_entry(finetune_main, ["-c", str(cfg)]) == 0
    done = torch.load(tmp_path / "out" / "finetuning" / "t" / "run" / "finetuned_model.tar", weights_only=True)
    done = done.get("model", done)
    for k, v in start.items():
        assert torch.equal(done[f"encoder.{k}"], v), k
    head0 = build_network(TINY, 2, 1)[0].head  # the head is initialised after the encoder: compare shapes only
    assert done["head.weight"].shape == head0.weight.shape and done["head.weight"].abs().sum() > 0
    assert run_entry(finetune_main, ["-c", str(cfg), "--name", "t/r2", "--model_name", "resnet18",
                                     "--model_path", "null", "--layer_decay", "0.7"]) == 2


def squares(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Images with a bright square (class 1) on noise; masks of the square."""
    g = torch.Generator().manual_seed(seed)
    x = 0.3 * torch.rand(n, 1, 20, 20, generator=g)
    y = torch.zeros(n, 20, 20, dtype=torch.long)
    for i in range(n):
        r, c, s = (int(v) for v in torch.randint(0, 10, (3,), generator=g))
        s = 4 + s % 6
        x[i, 0, r:r + s, c:c + s] += 0.6
        y[i, r:r + s, c:c + s] = 1
    return x, y


def test_vit_segmentation_learns_generated_masks():
    """20-px inputs (not a multiple of the 16-px encoder's grid, nor its size): the network pads, the
    embedding is interpolated, and after training the foreground IoU is far above a blank prediction's 0."""
    from utility.models.vit_seg import ViTSegNet

    assert isinstance(build_network("unet_" + TINY, 2, 1, segmentation=True)[0], ViTSegNet)
    torch.manual_seed(0)
    model = ViTSegNet(TINY, 2, 1, channels=16)
    x, y = squares(16, 1)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(30):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    model.eval()
    xt, yt = squares(16, 2)
    with torch.no_grad():
        pred = model(xt).argmax(1)
    assert pred.shape == yt.shape
    iou = ((pred == 1) & (yt == 1)).sum() / ((pred == 1) | (yt == 1)).sum()
    assert iou > 0.8
