"""Tests for utility.training.optim: parameter groups, LARS, build_optimizer."""

import copy
import io

import pytest
import torch
from torch import nn

from utility.training.optim import LARS, build_optimizer, param_groups


def tiny_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(2, 3, 3, bias=False),
        nn.BatchNorm2d(3),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(3 * 2 * 2, 2),
    )


def batch(seed: int):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(4, 2, 4, 4, generator=g), torch.randint(0, 2, (4,), generator=g)


def compute_grads(model: nn.Module, seed: int) -> None:
    x, y = batch(seed)
    model.zero_grad(set_to_none=True)
    nn.functional.cross_entropy(model(x), y).backward()


def names_by_id(model):
    return {id(p): n for n, p in model.named_parameters()}


# ---------------------------------------------------------------- param_groups

def test_param_groups_resnet18_exact_membership():
    torchvision = pytest.importorskip("torchvision")
    model = torchvision.models.resnet18(weights=None)
    groups = param_groups(model, weight_decay=1e-4)
    assert len(groups) == 2
    decay, excl = groups
    assert decay["weight_decay"] == 1e-4 and decay["lars_exclude"] is False
    assert excl["weight_decay"] == 0.0 and excl["lars_exclude"] is True

    expected_decay, expected_excl = set(), set()
    for name, p in model.named_parameters():
        owner = model.get_submodule(name.rsplit(".", 1)[0])
        if isinstance(owner, nn.BatchNorm2d) or name.endswith(".bias"):
            expected_excl.add(name)
        else:
            assert isinstance(owner, (nn.Conv2d, nn.Linear)) and name.endswith(".weight")
            expected_decay.add(name)
    ids = names_by_id(model)
    got_decay = [ids[id(p)] for p in decay["params"]]
    got_excl = [ids[id(p)] for p in excl["params"]]
    assert set(got_decay) == expected_decay and len(got_decay) == len(expected_decay)
    assert set(got_excl) == expected_excl and len(got_excl) == len(expected_excl)
    # resnet18: 20 convs + fc weight; 20 BatchNorms x (weight, bias) + fc bias
    assert len(got_decay) == 21 and len(got_excl) == 41
    assert "fc.weight" in got_decay and "fc.bias" in got_excl and "bn1.weight" in got_excl
    assert "layer1.0.downsample" not in " ".join(got_decay)  # layer1 has no downsample
    assert "layer2.0.downsample.0.weight" in got_decay and "layer2.0.downsample.1.bias" in got_excl


def test_param_groups_omits_frozen_params():
    torchvision = pytest.importorskip("torchvision")
    model = torchvision.models.resnet18(weights=None)
    for p in list(model.conv1.parameters()) + list(model.bn1.parameters()) + list(model.layer1.parameters()):
        p.requires_grad_(False)
    groups = param_groups(model, weight_decay=0.1)
    ids = names_by_id(model)
    got = [ids[id(p)] for g in groups for p in g["params"]]
    expected = [n for n, p in model.named_parameters() if p.requires_grad]
    assert sorted(got) == sorted(expected)
    assert not any(n.startswith(("conv1.", "bn1.", "layer1.")) for n in got)

    for p in model.parameters():
        p.requires_grad_(False)
    assert param_groups(model, 0.1) == []


class WithVector(nn.Module):
    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(5))      # 1-D, not a bias, not in a norm layer
        self.mat = nn.Parameter(torch.ones(5, 5))


def test_param_groups_detects_all_norm_types_and_1d():
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3),                          # 0: weight decayed, bias excluded
        nn.GroupNorm(2, 4),                          # 1
        nn.InstanceNorm2d(4, affine=True),           # 2
        nn.LayerNorm([4, 6, 6]),                     # 3: multi-dim weight, excluded by module type
        nn.BatchNorm2d(4),                           # 4
        WithVector(),                                # 5
        nn.Linear(4, 4, bias=False),                 # 6
    )
    decay, excl = param_groups(model, 0.5)
    ids = names_by_id(model)
    assert sorted(ids[id(p)] for p in decay["params"]) == ["0.weight", "5.mat", "6.weight"]
    assert sorted(ids[id(p)] for p in excl["params"]) == sorted(
        ["0.bias", "1.weight", "1.bias", "2.weight", "2.bias", "3.weight", "3.bias", "4.weight", "4.bias",
         "5.scale"])


def test_param_groups_without_exclusion_and_empty_group_omitted():
    model = tiny_model()
    (only,) = param_groups(model, 0.3, exclude_bn_bias=False)
    assert only["weight_decay"] == 0.3 and only["lars_exclude"] is False
    assert len(only["params"]) == len(list(model.parameters()))

    linear = nn.Linear(3, 3, bias=False)
    (only,) = param_groups(linear, 0.3)
    assert only["lars_exclude"] is False and only["params"][0] is linear.weight


def test_param_groups_shared_parameter_once():
    lin = nn.Linear(3, 3)
    model = nn.Sequential(lin, nn.ReLU(), lin)
    groups = param_groups(model, 0.1)
    assert sum(len(g["params"]) for g in groups) == 2


# ---------------------------------------------------------------- LARS

def test_lars_two_steps_match_hand_reference():
    lr, wd, m, eta = 0.7, 0.05, 0.9, 0.02
    model = tiny_model()
    opt = build_optimizer(model, "LARS", lr=lr, weight_decay=wd, momentum=m, lars_eta=eta)
    assert isinstance(opt, LARS)
    conv_w, bn_w, bn_b, fc_w, fc_b = (model[0].weight, model[1].weight, model[1].bias,
                                      model[4].weight, model[4].bias)
    adapted = [conv_w, fc_w]
    plain = [bn_w, bn_b, fc_b]
    ref = {id(p): p.detach().clone() for p in model.parameters()}
    buf, trusts = {}, []
    for step in range(2):
        compute_grads(model, seed=step)
        for p in model.parameters():
            w, g = ref[id(p)], p.grad.detach().clone()
            if any(p is q for q in adapted):
                trust = eta * w.norm() / (g.norm() + wd * w.norm())
                trusts.append(float(trust))
                d = trust * (g + wd * w)
            else:
                d = g
            buf[id(p)] = d if step == 0 else m * buf[id(p)] + d
            ref[id(p)] = w - lr * buf[id(p)]
        opt.step()
        for p in model.parameters():
            torch.testing.assert_close(p.detach(), ref[id(p)], rtol=1e-6, atol=1e-7)
    # sanity: the trust ratio actually mattered (far from 1), so the check above discriminates
    assert len(trusts) == 4 and all(abs(t - 1) > 0.1 for t in trusts)
    assert all(p in opt.state for p in adapted + plain)


def test_lars_excluded_params_equal_plain_momentum_sgd_and_weights_do_not():
    lr, wd, m = 0.3, 0.1, 0.9
    model_a = tiny_model()
    model_b = copy.deepcopy(model_a)
    lars = build_optimizer(model_a, "lars", lr=lr, weight_decay=wd, momentum=m, lars_eta=0.001)
    excl_b = [model_b[1].weight, model_b[1].bias, model_b[4].bias]
    weights_b = [model_b[0].weight, model_b[4].weight]
    sgd_excl = torch.optim.SGD(excl_b, lr=lr, momentum=m)                 # no weight decay
    sgd_w = torch.optim.SGD(weights_b, lr=lr, momentum=m, weight_decay=wd)
    gen = torch.Generator().manual_seed(3)
    for _ in range(4):
        for pa, pb in zip(model_a.parameters(), model_b.parameters()):
            g = torch.randn(pa.shape, generator=gen)
            pa.grad, pb.grad = g.clone(), g.clone()
        lars.step()
        sgd_excl.step()
        sgd_w.step()
    a = dict(model_a.named_parameters())
    b = dict(model_b.named_parameters())
    for name in ("1.weight", "1.bias", "4.bias"):
        torch.testing.assert_close(a[name], b[name], rtol=1e-6, atol=1e-7)
    for name in ("0.weight", "4.weight"):
        assert not torch.allclose(a[name], b[name], atol=1e-3)


def test_lars_exclusion_overrides_group_weight_decay():
    p1 = nn.Parameter(torch.ones(4))
    p2 = nn.Parameter(torch.ones(4))
    opt = LARS([{"params": [p1], "weight_decay": 0.5, "lars_exclude": True}], lr=0.1, momentum=0.0)
    ref = torch.optim.SGD([p2], lr=0.1)
    p1.grad = torch.full((4,), 2.0)
    p2.grad = torch.full((4,), 2.0)
    opt.step()
    ref.step()
    assert torch.equal(p1.detach(), p2.detach())
    assert torch.allclose(p1.detach(), torch.full((4,), 0.8))


def test_lars_zero_norm_guard_and_none_grad():
    w = nn.Parameter(torch.zeros(3, 3))         # ||w|| = 0 -> trust ratio 1
    v = nn.Parameter(torch.ones(3, 3))          # zero grad -> ratio 1, d = wd * v
    u = nn.Parameter(torch.ones(2, 2))          # grad None -> untouched, no state
    opt = LARS([w, v, u], lr=0.5, momentum=0.9, weight_decay=0.1, eta=0.001)
    w.grad = torch.full((3, 3), 2.0)
    v.grad = torch.zeros(3, 3)
    opt.step()
    torch.testing.assert_close(w.detach(), torch.full((3, 3), -1.0))            # 0 - 0.5 * 2
    torch.testing.assert_close(v.detach(), torch.full((3, 3), 1 - 0.5 * 0.1))   # 1 - 0.5 * 0.1 * 1
    assert torch.equal(u.detach(), torch.ones(2, 2)) and u not in opt.state
    assert torch.isfinite(w).all() and torch.isfinite(v).all()


def _train(model, opt, seeds):
    for s in seeds:
        compute_grads(model, s)
        opt.step()


def test_lars_state_dict_resume_is_exact():
    kwargs = dict(lr=1.5, weight_decay=1e-3, momentum=0.9, lars_eta=0.01)
    model = tiny_model()
    opt = build_optimizer(model, "LARS", **kwargs)
    _train(model, opt, range(6))

    model2 = tiny_model()
    opt2 = build_optimizer(model2, "LARS", **kwargs)
    _train(model2, opt2, range(3))
    buf = io.BytesIO()
    torch.save({"model": model2.state_dict(), "opt": opt2.state_dict()}, buf)
    del model2, opt2
    buf.seek(0)
    ckpt = torch.load(buf)
    model3 = tiny_model(seed=123)          # different init, overwritten by the checkpoint
    opt3 = build_optimizer(model3, "LARS", **kwargs)
    model3.load_state_dict(ckpt["model"])
    opt3.load_state_dict(ckpt["opt"])
    assert all("momentum_buffer" in opt3.state[p] for p in model3.parameters())
    assert [g["lars_exclude"] for g in opt3.param_groups] == [False, True]
    _train(model3, opt3, range(3, 6))

    for (n, p), (_, q) in zip(model.named_parameters(), model3.named_parameters()):
        assert torch.equal(p, q), n
    for (n, p), (_, q) in zip(model.named_buffers(), model3.named_buffers()):
        assert torch.equal(p, q), n


# ---------------------------------------------------------------- build_optimizer

@pytest.mark.parametrize("name,cls", [("Adam", torch.optim.Adam), ("adamw", torch.optim.AdamW),
                                      ("SGD", torch.optim.SGD), ("LaRs", LARS)])
def test_build_optimizer_types_and_groups(name, cls):
    model = tiny_model()
    opt = build_optimizer(model, name, lr=0.01, weight_decay=0.2, momentum=0.8)
    assert type(opt) is cls
    assert [g["weight_decay"] for g in opt.param_groups] == [0.2, 0.0]
    assert [g["lars_exclude"] for g in opt.param_groups] == [False, True]
    assert all(g["lr"] == 0.01 for g in opt.param_groups)
    if cls is torch.optim.SGD:
        assert all(g["momentum"] == 0.8 and g["nesterov"] is False for g in opt.param_groups)
    if cls is LARS:
        assert all(g["momentum"] == 0.8 and g["eta"] == 0.001 for g in opt.param_groups)


def test_build_optimizer_no_exclusion_single_group():
    model = tiny_model()
    opt = build_optimizer(model, "AdamW", lr=0.01, weight_decay=0.2, exclude_bn_bias=False)
    assert len(opt.param_groups) == 1 and opt.param_groups[0]["weight_decay"] == 0.2


def test_adamw_does_not_decay_bn_and_bias():
    lr, wd = 0.1, 0.5
    model = tiny_model()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = build_optimizer(model, "AdamW", lr=lr, weight_decay=wd)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    after = dict(model.named_parameters())
    for n in ("1.weight", "1.bias", "4.bias"):
        assert torch.equal(after[n].detach(), before[n])
    for n in ("0.weight", "4.weight"):
        torch.testing.assert_close(after[n].detach(), before[n] * (1 - lr * wd))


def test_build_optimizer_unknown_name():
    with pytest.raises(ValueError, match="RMSprop") as exc:
        build_optimizer(tiny_model(), "RMSprop", lr=0.1, weight_decay=0.0)
    for valid in ("Adam", "AdamW", "SGD", "LARS"):
        assert valid in str(exc.value)
