"""Every SSL loss (utility/methods/*.py) and its gradient against a reference written here directly
from its paper, element by element in float64 (no code shared with the implementation); the weighted
kNN (utility/metrics/knn.py) against scikit-learn; the EMA schedule and update; the per-method
settings validation; the engine's after-step hook; encoder files of every method loading into get_model."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from utility.errors import UserError
from utility.methods.barlow_twins import barlow_twins_loss
from utility.methods.byol import byol_loss
from utility.methods.mocov2 import MoCoV2Method, moco_loss
from utility.methods.momentum import MomentumNet, cosine_tau
from utility.methods.ssl_registry import METHODS, method_class, resolve_settings
from utility.methods.vicreg import vicreg_loss
from utility.metrics.knn import knn_accuracy, knn_predict


def leaf(*shape: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64).requires_grad_(True)


def ref_barlow(z1, z2, lambd):
    """Zbontar et al. eq. (1)-(2): C_ij = sum_b zn1_bi zn2_bj / sqrt(sum_b zn1_bi^2 sum_b zn2_bj^2) with zn the
    batch-centred, batch-scaled projections (the paper's BN; variance with 1/N plus BN's eps)."""
    n, d = z1.shape

    def bn(z):
        cols = []
        for i in range(d):
            mu = sum(z[b, i] for b in range(n)) / n
            var = sum((z[b, i] - mu) ** 2 for b in range(n)) / n
            cols.append(torch.stack([(z[b, i] - mu) / torch.sqrt(var + 1e-5) for b in range(n)]))
        return cols  # per feature, a [n] vector
    a, b = bn(z1), bn(z2)
    loss = 0
    for i in range(d):
        for j in range(d):
            c = (a[i] * b[j]).sum() / n
            loss = loss + ((1 - c) ** 2 if i == j else lambd * c ** 2)
    return loss


def ref_vicreg(z1, z2, sim, std, cov):
    """Bardes et al.: s = mean squared distance; v = mean_j relu(1 - sqrt(Var(z_j) + 1e-4)) (unbiased Var);
    c = sum_{i != j} Cov(z)_ij^2 / d (np.cov); v averaged over the two branches, c summed."""
    n, d = z1.shape
    s = ((z1 - z2) ** 2).sum() / (n * d)

    def v(z):
        return sum(torch.relu(1 - torch.sqrt(torch.var(z[:, j]) + 1e-4)) for j in range(d)) / d

    def c(z):
        zc = z - z.mean(0, keepdim=True)
        total = 0
        for i in range(d):
            for j in range(d):
                if i != j:
                    total = total + ((zc[:, i] * zc[:, j]).sum() / (n - 1)) ** 2
        return total / d
    return sim * s + std * (v(z1) + v(z2)) / 2 + cov * (c(z1) + c(z2))


def ref_byol(p1, p2, t1, t2):
    """Grill et al. eq. (2): || p/||p|| - t/||t|| ||^2 per image, both directions, batch means."""
    def one(p, t):
        return torch.stack([((p[b] / p[b].norm() - t[b] / t[b].norm()) ** 2).sum() for b in range(p.shape[0])]).mean()
    return one(p1, t2.detach()) + one(p2, t1.detach())


def ref_moco(q, k, queue, temperature):
    """He et al. eq. (1): -log exp(q.k+/T) / (exp(q.k+/T) + sum_queue exp(q.k/T)), unit vectors, batch mean."""
    terms = []
    for b in range(q.shape[0]):
        qb, kb = q[b] / q[b].norm(), (k[b] / k[b].norm()).detach()
        pos = torch.exp(qb @ kb / temperature)
        neg = sum(torch.exp(qb @ (queue[j] / queue[j].norm()) / temperature) for j in range(queue.shape[0]))
        terms.append(-torch.log(pos / (pos + neg)))
    return torch.stack(terms).mean()


def compare(ours_fn, ref_fn, inputs):
    """Value and gradient w.r.t. every input of ours vs the reference."""
    ours = ours_fn(*inputs)
    g_ours = torch.autograd.grad(ours, [x for x in inputs if x.requires_grad], allow_unused=True)
    ref = ref_fn(*inputs)
    g_ref = torch.autograd.grad(ref, [x for x in inputs if x.requires_grad], allow_unused=True)
    assert float(ours.detach()) == pytest.approx(float(ref.detach()), rel=1e-9, abs=1e-10)
    for a, b in zip(g_ours, g_ref):
        if a is None or b is None:
            assert a is None or torch.count_nonzero(a) == 0
            continue
        torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-10)


def test_barlow_twins_matches_paper():
    compare(lambda a, b: barlow_twins_loss(a, b, 0.0051), lambda a, b: ref_barlow(a, b, 0.0051),
            [leaf(5, 3, seed=1), leaf(5, 3, seed=2)])


def test_vicreg_matches_paper():
    compare(lambda a, b: vicreg_loss(a, b, 25, 25, 1), lambda a, b: ref_vicreg(a, b, 25, 25, 1),
            [leaf(7, 5, seed=3), 0.3 * leaf(7, 5, seed=4)])


def test_byol_matches_paper_and_targets_get_no_gradient():
    inputs = [leaf(5, 4, seed=s) for s in (5, 6, 7, 8)]
    compare(byol_loss, ref_byol, inputs)
    assert float(byol_loss(*[inputs[0].detach()] * 4)) == pytest.approx(0, abs=1e-12)


def test_moco_matches_paper():
    queue = torch.nn.functional.normalize(leaf(9, 4, seed=11).detach(), dim=1)
    compare(lambda q, k: moco_loss(q, k, queue, 0.2), lambda q, k: ref_moco(q, k, queue, 0.2),
            [leaf(5, 4, seed=9), leaf(5, 4, seed=10)])


def test_moco_queue_is_a_ring_buffer():
    m = MoCoV2Method(None, METHODS["mocov2"].Settings(queue_size=5, proj_dim=2))
    before = m.queue.clone()
    keys = torch.arange(6.0).view(3, 2)
    m.enqueue(keys)
    m.enqueue(keys + 10)
    # slots 0-2 then 3, 4, 0 (wrap): the oldest keys are replaced first
    expected = torch.stack([keys[2] + 10, keys[1], keys[2], keys[0] + 10, keys[1] + 10])
    torch.testing.assert_close(m.queue, expected)
    assert m.ptr == 1 and not torch.equal(before, m.queue)
    state = m.state_dict()
    fresh = MoCoV2Method(None, METHODS["mocov2"].Settings(queue_size=5, proj_dim=2))
    fresh.load_state_dict(state)
    assert torch.equal(fresh.queue, m.queue) and fresh.ptr == 1


def test_knn_matches_sklearn_weighted_cosine_vote():
    from sklearn.neighbors import KNeighborsClassifier

    rng = np.random.default_rng(0)
    train, query = rng.normal(size=(60, 8)), rng.normal(size=(25, 8))
    y, yq = rng.integers(0, 4, 60), rng.integers(0, 4, 25)
    for k, t in ((1, 0.07), (5, 0.07), (20, 0.5), (200, 0.1)):
        ref = KNeighborsClassifier(n_neighbors=min(k, 60), metric="cosine", algorithm="brute",
                                   weights=lambda d, t=t: np.exp((1 - d) / t)).fit(train, y)
        ours = knn_predict(torch.tensor(train), torch.tensor(y), torch.tensor(query), 4, k, t)
        assert ours.tolist() == ref.predict(query).tolist()
        acc = knn_accuracy(torch.tensor(train), torch.tensor(y), torch.tensor(query), torch.tensor(yq), 4, k, t)
        assert acc == pytest.approx(float((ref.predict(query) == yq).mean()))


def test_tau_schedule_and_ema_update():
    assert cosine_tau(0.996, 0, 100) == pytest.approx(0.996)
    assert cosine_tau(0.996, 100, 100) == pytest.approx(1.0)
    assert cosine_tau(0.9, 50, 100) == pytest.approx(1 - 0.1 * 0.5)
    net = MomentumNet(nn.Linear(3, 2), nn.Linear(2, 2))
    assert all(not p.requires_grad for p in net.target_parameters())
    with torch.no_grad():
        for p in net.online_parameters():
            p.add_(1.0)
    online = [p.detach().clone() for p in net.online_parameters()]
    old = [p.detach().clone() for p in net.target_parameters()]
    net.update_target(0.9)
    for t, o, s in zip(net.target_parameters(), old, online):
        torch.testing.assert_close(t, 0.9 * o + 0.1 * s)


@pytest.mark.parametrize("name,given,top,message", [
    ("byl", {}, set(), "unknown method 'byl'; did you mean 'byol'?"),
    ("byol", {"tau_bse": 0.9}, set(), "did you mean 'tau_base'?"),
    ("byol", {"queue_size": 10}, set(), "method_settings.queue_size is a setting of mocov2, not of byol"),
    ("byol", {"tau_base": 1.5}, set(), "method_settings.tau_base of byol: value 1.5"),
    ("mocov2", {"momentum": -0.1}, set(), "method_settings.momentum of mocov2: value -0.1"),
    ("vicreg", {}, {"temperature"}, "temperature: SimCLR setting(s), but method is vicreg"),
    ("simclr", {"lambd": 0.1}, set(), "SimCLR takes its settings as top-level keys"),
])
def test_settings_validation(name, given, top, message):
    with pytest.raises(UserError) as exc:
        resolve_settings(name, given, top)
    assert message in str(exc.value)


def test_predecessor_shim_top_level_keys():
    """SimCLR's settings come from its top-level keys (the one compatibility shim) and config.yaml keeps
    them there; method_settings with SimCLR is refused, even with a valid key (it would be ignored);
    another method's settings are recorded with the defaults filled in."""
    from utility.config.schemas import PretrainConfig
    from utility.runs.ssl_config import resolve_method
    cfg = PretrainConfig(name="p", dataset_base_dir="d", temperature=0.2, projection_dim=8)
    cls, settings, recorded = resolve_method(cfg)
    assert cls.name == "simclr" and (settings.temperature, settings.projection_dim) == (0.2, 8)
    assert recorded is cfg and recorded.method_settings == {}
    with pytest.raises(UserError, match="method_settings.temperature: SimCLR takes its settings as top-level keys"):
        resolve_method(PretrainConfig(name="p", dataset_base_dir="d", method_settings={"temperature": 0.1}))
    byol = PretrainConfig(name="p", dataset_base_dir="d", method="byol", method_settings={"tau_base": 0.99})
    _, settings, recorded = resolve_method(byol)
    assert recorded.method_settings == settings.model_dump(mode="json") and recorded.method_settings["tau_base"] == 0.99
    assert recorded.method_settings["proj_dim"] == 256 and byol.method_settings == {"tau_base": 0.99}


def test_defaults_are_the_papers():
    s = {n: method_class(n).Settings() for n in METHODS}
    assert s["barlow_twins"].lambd == 0.0051 and s["barlow_twins"].proj_dim == 8192
    assert s["byol"].tau_base == 0.996 and s["byol"].proj_dim == 256
    assert (s["vicreg"].sim_coeff, s["vicreg"].std_coeff, s["vicreg"].cov_coeff) == (25, 25, 1)
    m = s["mocov2"]
    assert (m.queue_size, m.proj_dim, m.momentum, m.temperature) == (65536, 128, 0.999, 0.2)
    with pytest.raises(UserError, match="queue_size 65536 is larger than the 1000 images"):
        method_class("mocov2").check(m, 1000, 32)


def test_every_methods_encoder_file_loads_into_get_model(tmp_path):
    """Each method's network keeps the encoder under ``.encoder``; the file holds exactly torchvision's
    ResNet keys without fc, and get_model takes it as it is (checked on one; the keys on all)."""
    import copy

    import torchvision

    from utility.methods.ssl_base import save_encoder
    from utility.models import build_encoder, get_model

    torch.manual_seed(0)
    enc, width = build_encoder("resnet18")
    tv_keys = {k for k in torchvision.models.resnet18().state_dict() if not k.startswith("fc.")}
    for name, cls in METHODS.items():
        if name == "mae":  # masks ViT patches: its encoder file is tested with a ViT in tests/test_dino_mae.py
            continue
        small = {} if name == "simclr" else {k: 8 for k in cls.Settings.model_fields if k.endswith(("hidden", "dim"))}
        model = cls.build_model(copy.deepcopy(enc), width, resolve_settings(name, small, set()))
        save_encoder(model, tmp_path / f"{name}.tar")
        sd = torch.load(tmp_path / f"{name}.tar", weights_only=True)
        assert set(sd) == tv_keys, name
        assert all(torch.equal(sd[k], v) for k, v in enc.state_dict().items()), name
    net = get_model("resnet18", tmp_path / "byol.tar", classes=3)
    own = net.state_dict()
    assert all(torch.equal(own[f"encoder.{k}"] if f"encoder.{k}" in own else own[k], v) for k, v in enc.state_dict().items())


def test_method_steps_callback_calls_after_step_once_per_optimizer_step_and_state_is_kept(tmp_path):
    """The hook sees the plain model after each optimizer step (the weights already updated) with the
    1-based step and the planned total; the method's state_dict goes into checkpoint_last.pt and back."""
    from torch.utils.data import DataLoader

    from utility.methods.base import NoEvaluation
    from utility.runs.callbacks import MethodSteps
    from utility.training.engine import Amp, Trainer, TrainerOptions

    class Hooked(NoEvaluation):
        def __init__(self):
            self.calls, self.counter = [], 0

        def train_loss(self, model, batch, ctx):
            return model(batch.float()).pow(2).mean(), batch.shape[0]

        def after_step(self, model, step, total):
            self.calls.append((step, total, model.weight.detach().clone()))
            self.counter += 1

        def state_dict(self):
            return {"counter": self.counter}

        def load_state_dict(self, state):
            self.counter = state["counter"]

    torch.manual_seed(0)
    model = nn.Linear(3, 1)
    method = Hooked()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    loader = DataLoader(torch.randn(12, 3), batch_size=4)
    tr = Trainer(model, method, opt, None, Amp(torch.device("cpu")), tmp_path,
                 TrainerOptions(epochs=2, seed=0, verbose=False), callbacks=[MethodSteps(method)])
    tr.fit(loader, None)
    assert [(s, t) for s, t, _ in method.calls] == [(k, 6) for k in range(1, 7)]
    assert torch.equal(method.calls[-1][2], model.weight.detach())  # after the last update
    assert not torch.equal(method.calls[0][2], method.calls[1][2])
    tr.close()
    again = Hooked()
    tr2 = Trainer(nn.Linear(3, 1), again, torch.optim.SGD(nn.Linear(3, 1).parameters(), lr=0.1), None,
                  Amp(torch.device("cpu")), tmp_path, TrainerOptions(epochs=2, seed=0, verbose=False))
    assert tr2.resume() and again.counter == 6
    tr2.close()
