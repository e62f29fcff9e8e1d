"""DINO and MAE (utility/methods/dino.py, mae.py) against float64 references written here from the
papers' formulas (no code shared with the implementation): the DINO loss with centring and both
temperatures, the teacher-temperature warm-up, the centre and teacher EMA updates; the MAE loss on
normalised pixels over the masked patches only, the exact masking ratio, the patch order, the
encoder seeing only visible patches; resume state; settings refused for what they cannot serve."""
from __future__ import annotations

import math

import pytest
import torch

from utility.errors import UserError
from utility.methods.dino import DINOMethod, DINONet, DINOHead, dino_loss, teacher_temperature
from utility.methods.mae import MAEMethod, MAENet, keep_count, mae_loss, patchify
from utility.methods.momentum import cosine_tau
from utility.methods.ssl_registry import resolve_settings
from utility.models import build_encoder

TINY = "vit:img=16,patch=4,dim=32,depth=2,heads=2"


def rnd(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def ref_dino(student, teacher, center, ts, tt, n_crops, b):
    """Caron et al. eq. (1) over the multi-crop pairs: for each of the 2 global crops a (teacher) and every
    crop v != a (student), H(P_t(x_a), P_s(x_v)) with P_t = softmax((g_t - c) / tau_t), P_s = softmax(g_s /
    tau_s), averaged over the batch and the pairs; elementwise loops in float64."""
    total, terms = 0.0, 0
    for a in range(2):
        for v in range(n_crops):
            if v == a:
                continue
            for i in range(b):
                t = [(teacher[a * b + i][k] - center[0][k]) / tt for k in range(len(teacher[0]))]
                zt = sum(math.exp(x) for x in t)
                s = [student[v * b + i][k] / ts for k in range(len(student[0]))]
                zs = math.log(sum(math.exp(x) for x in s))
                total += -sum(math.exp(t[k]) / zt * (s[k] - zs) for k in range(len(t))) / b
            terms += 1
    return total / terms


def test_dino_loss_matches_paper_with_centering_and_temperatures():
    b, k, crops = 3, 5, 4
    student, teacher, center = rnd(crops * b, k, seed=1), rnd(2 * b, k, seed=2), rnd(1, k, seed=3)
    ours = dino_loss(student, teacher, center, 0.1, 0.04)
    ref = ref_dino(student.tolist(), teacher.tolist(), center.tolist(), 0.1, 0.04, crops, b)
    assert float(ours) == pytest.approx(ref, rel=1e-10)
    # the teacher side gets no gradient; a different centre changes the loss
    s, t = student.clone().requires_grad_(True), teacher.clone().requires_grad_(True)
    dino_loss(s, t, center, 0.1, 0.04).backward()
    assert t.grad is None and s.grad.abs().sum() > 0
    assert float(dino_loss(student, teacher, center * 0, 0.1, 0.04)) != pytest.approx(ref)


def test_teacher_temperature_warmup_center_and_ema():
    s = resolve_settings("dino", {"out_dim": 6, "hidden": 8, "bottleneck": 4, "teacher_temp": 0.07,
                                  "warmup_teacher_temp": 0.03, "teacher_temp_warmup": 0.5,
                                  "center_momentum": 0.8, "tau_base": 0.9, "local_crops": 0}, set())
    assert teacher_temperature(s, 0, 100) == pytest.approx(0.03)
    assert teacher_temperature(s, 25, 100) == pytest.approx(0.05)
    assert teacher_temperature(s, 50, 100) == teacher_temperature(s, 99, 100) == 0.07
    method = DINOMethod(None, s)
    torch.manual_seed(0)
    enc, width = build_encoder(TINY, 3)
    net = DINONet(enc, DINOHead(width, s)).double()
    x1, x2 = torch.rand(2, 3, 3, 16, 16, dtype=torch.float64)
    student, teacher = net(x1, x2)
    assert student.shape == teacher.shape == (6, 6)
    loss = method.objective((student, teacher))
    assert float(loss.detach()) == pytest.approx(float(dino_loss(student.detach(), teacher, torch.zeros(1, 6, dtype=torch.float64),
                                                        s.student_temp, 0.03)))
    torch.testing.assert_close(method.center, 0.2 * teacher.mean(0, keepdim=True))
    c1 = method.center.clone()
    method.objective((student, teacher))
    torch.testing.assert_close(method.center, 0.8 * c1 + 0.2 * teacher.mean(0, keepdim=True))
    loss.backward()
    with torch.no_grad():
        for p in net.online_parameters():
            p.add_(0.1)
    online = [p.detach().clone() for p in net.online_parameters()]
    old = [p.detach().clone() for p in net.target_parameters()]
    method.after_step(net, 3, 10)
    tau = cosine_tau(0.9, 2, 10)
    for t, o, on in zip(net.target_parameters(), old, online):
        torch.testing.assert_close(t, tau * o + (1 - tau) * on)
    state = method.state_dict()
    again = DINOMethod(None, s)
    again.load_state_dict(state)
    assert torch.equal(again.center, method.center) and (again.step, again.total_steps) == (3, 10)


def test_dino_local_crops_go_through_the_vit():
    from utility.methods.views import TwoViews

    s = resolve_settings("dino", {"out_dim": 6, "hidden": 8, "bottleneck": 4, "local_crops": 3, "local_size": 8},
                         set())
    views = TwoViews(16, jitter_strength=0.0, grayscale_data=True)
    method = DINOMethod(views, s, in_channels=1)
    enc, width = build_encoder(TINY, 1)
    net = DINONet(enc, DINOHead(width, s))
    x = torch.rand(4, 1, 16, 16)
    batch = {"image": x, "valid": torch.ones(4, dtype=torch.bool), "index": torch.arange(4)}
    from utility.training.engine import StepContext
    import contextlib

    loss, n = method.train_loss(net, batch, StepContext(torch.device("cpu"), contextlib.nullcontext))
    assert n == 4 and torch.isfinite(loss)
    student, teacher = net(x, x, [x[..., :8, :8]] * 3)
    assert student.shape == (20, 6) and teacher.shape == (8, 6)


def ref_mae(pred, target, mask):
    """He et al.: per masked patch, MSE between the prediction and the patch's pixels normalised by their
    mean and (unbiased, as the paper's code) standard deviation + eps 1e-6; mean over the masked patches."""
    total, count = 0.0, 0
    for i in range(len(pred)):
        for j in range(len(pred[i])):
            if not mask[i][j]:
                continue
            t = target[i][j]
            mu = sum(t) / len(t)
            var = sum((v - mu) ** 2 for v in t) / (len(t) - 1)
            total += sum((p - (v - mu) / math.sqrt(var + 1e-6)) ** 2 for p, v in zip(pred[i][j], t)) / len(t)
            count += 1
    return total / count


def test_mae_loss_matches_paper():
    pred, target = rnd(2, 5, 12, seed=4), rnd(2, 5, 12, seed=5)
    mask = torch.tensor([[1, 0, 1, 1, 0], [0, 0, 1, 1, 1]], dtype=torch.float64)
    ours = mae_loss(pred, target, mask, True)
    assert float(ours) == pytest.approx(ref_mae(pred.tolist(), target.tolist(), mask.tolist()), rel=1e-10)
    plain = ((pred - target) ** 2).mean(-1)
    assert float(mae_loss(pred, target, mask, False)) == pytest.approx(float((plain * mask).sum() / 6))


@pytest.mark.parametrize("ratio,size", [(0.75, 16), (0.6, 20), (0.9, 16)])
def test_mae_masking_ratio_is_exact_and_the_encoder_sees_only_visible_patches(ratio, size):
    s = resolve_settings("mae", {"mask_ratio": ratio, "decoder_dim": 16, "decoder_depth": 1, "decoder_heads": 2},
                         set())
    torch.manual_seed(0)
    enc, width = build_encoder(TINY, 1)
    net = MAENet(enc, width, s)
    n_patches = (size // 4) ** 2
    noise = torch.rand(3, n_patches)
    x = torch.rand(3, 1, size, size)
    h, _, mask = net.encode_visible(x, noise)
    keep = keep_count(n_patches, ratio)
    assert mask.sum(1).tolist() == [n_patches - keep] * 3
    assert h.shape[1] == 1 + keep  # class token + visible patches
    # the kept patches are those of the smallest noise
    assert torch.equal(mask == 0, noise <= noise.sort(1).values[:, keep - 1:keep])
    pred, target, mask2 = net(x, noise)
    assert pred.shape == target.shape == (3, n_patches, 16) and torch.equal(mask, mask2)


def test_patchify_follows_the_token_order():
    enc, _ = build_encoder(TINY, 3)
    x = torch.rand(2, 3, 16, 12)
    tokens = enc.patch_embed(x).flatten(1, 2)  # dynamic_img_size: [B, h, w, D]
    w = enc.patch_embed.proj.weight.permute(0, 2, 3, 1).reshape(32, -1)
    torch.testing.assert_close(tokens, patchify(x, 4) @ w.t() + enc.patch_embed.proj.bias, rtol=1e-5, atol=1e-5)


def test_mae_refuses_a_resnet_and_keeps_its_generator_state(tmp_path):
    s = resolve_settings("mae", {"decoder_dim": 16, "decoder_depth": 1, "decoder_heads": 2}, set())
    enc, width = build_encoder("resnet18", 1)
    with pytest.raises(UserError, match="mae needs a ViT encoder"):
        MAEMethod.build_model(enc, width, s)
    m = MAEMethod(None, s)
    state = m.state_dict()
    first = m.noise(2, 16, torch.device("cpu"))
    again = MAEMethod(None, s)
    again.load_state_dict(state)
    assert torch.equal(again.noise(2, 16, torch.device("cpu")), first)
    # the encoder file of an MAE network is the plain ViT and loads into finetuning's network
    from utility.methods.ssl_base import save_encoder
    from utility.models import get_model

    venc, vw = build_encoder(TINY, 1)
    save_encoder(MAEMethod.build_model(venc, vw, s), tmp_path / "mae.tar")
    net = get_model(TINY, tmp_path / "mae.tar", classes=2, in_channels=1)
    assert torch.equal(net.encoder.pos_embed, venc.pos_embed)


def test_defaults_are_the_papers():
    d, m = DINOMethod.Settings(), MAEMethod.Settings()
    assert (d.out_dim, d.hidden, d.bottleneck, d.student_temp, d.teacher_temp, d.center_momentum, d.tau_base) == \
        (65536, 2048, 256, 0.1, 0.04, 0.9, 0.996)
    assert (m.mask_ratio, m.decoder_dim, m.decoder_depth, m.decoder_heads, m.norm_pix_loss) == (0.75, 512, 8, 16, True)


def test_head_bn_puts_a_batchnorm_after_each_hidden_layer():
    """head_bn (the paper's use_bn_in_head): Linear-BN-GELU per hidden layer; the output is the same
    cosine layer (every row of the last layer unit norm, so |logit| <= 1)."""
    s = DINOMethod.Settings(out_dim=32, hidden=24, bottleneck=8, head_layers=3, head_bn=True)
    head = DINOHead(16, s)
    kinds = [type(m).__name__ for m in head.mlp]
    assert kinds == ["Linear", "BatchNorm1d", "GELU", "Linear", "BatchNorm1d", "GELU", "Linear"]
    assert [m.num_features for m in head.mlp if isinstance(m, torch.nn.BatchNorm1d)] == [24, 24]
    out = head(rnd(6, 16, seed=1).float())
    assert out.shape == (6, 32) and out.abs().max() <= 1 + 1e-6
    assert "BatchNorm1d" not in [type(m).__name__ for m in DINOHead(16, DINOMethod.Settings(out_dim=32)).mlp]
    assert DINOMethod.Settings().head_bn is False and DINOMethod.Settings().export == "teacher"
