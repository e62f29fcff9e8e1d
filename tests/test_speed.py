"""GPU speed features (utility/training/speed.py): what each key turns on with CUDA, and that on CPU every
one of them is a no-op that leaves the losses bit-for-bit as they were (no GPU is needed for this file;
the CUDA paths themselves run in benchmarks/gpu_acceptance.py)."""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


from utility.config.schemas import FTEConfig
from utility.training.engine import Amp, EpochSampler, Trainer, TrainerOptions
from utility.training.optim import build_optimizer
from utility.training.session import RESUME_FREE_KEYS, RunSession
from utility.training.speed import SPEED_KEYS, SpeedPlan, apply_to_model, plan_speed

CUDA = torch.device("cuda")  # a device object only: nothing here runs on it


def conv_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3))


def cfg(**kw) -> SimpleNamespace:
    base = {"channels_last": "auto", "compile": False, "cudnn_benchmark": "auto", "fused_optimizer": "auto",
            "amp": "auto", "device": "cpu"}
    return SimpleNamespace(**{**base, **kw})


def test_config_keys_defaults_and_resume_free():
    c = FTEConfig(name="x", task="t")
    assert (c.channels_last, c.compile, c.cudnn_benchmark, c.fused_optimizer) == ("auto", False, "auto", "auto")
    assert set(SPEED_KEYS) <= RESUME_FREE_KEYS  # switching one on for a resumed run is not a new run


def test_cuda_plan_auto_and_explicit():
    p = plan_speed(cfg(), CUDA, conv_net())
    assert (p.channels_last, p.cudnn_benchmark, p.fused_optimizer, p.compile) == (True, True, True, False)
    assert not plan_speed(cfg(amp="off"), CUDA, conv_net()).channels_last  # fp32: no tensor-core gain
    assert plan_speed(cfg(amp="off", channels_last="on"), CUDA, conv_net()).channels_last
    assert not plan_speed(cfg(channels_last="on"), CUDA, nn.Linear(4, 2)).channels_last  # no convolution
    off = plan_speed(cfg(channels_last="off", cudnn_benchmark="off", fused_optimizer="off"), CUDA, conv_net())
    assert off.describe() == "none"
    assert plan_speed(cfg(compile=True), CUDA, conv_net()).compile
    dp = plan_speed(cfg(compile=True), CUDA, conv_net(), parallel_mode="dp")
    assert not dp.compile and "DataParallel" in dp.notes[0]


def test_cpu_plan_is_all_off_and_names_what_was_asked():
    p = plan_speed(cfg(channels_last="on", compile=True, cudnn_benchmark="on", fused_optimizer="on"),
                   torch.device("cpu"), conv_net())
    assert p.describe() == "none"
    assert "channels_last" in p.notes[0] and "compile" in p.notes[0] and "CUDA only" in p.notes[0]
    assert plan_speed(cfg(), torch.device("cpu"), conv_net()).notes == []  # auto: nothing to say


def test_channels_last_conversion_keeps_outputs():
    """The layout change itself (runs on CPU too when forced): weights NHWC, same outputs."""
    model, ref = conv_net(), conv_net()
    apply_to_model(model, SpeedPlan(channels_last=True))
    w = model[0].weight
    assert w.is_contiguous(memory_format=torch.channels_last) and not w.is_contiguous()
    x = torch.randn(2, 3, 8, 8)
    torch.testing.assert_close(model(x), ref(x), rtol=1e-5, atol=1e-6)


def test_fused_is_not_used_off_cuda():
    for name in ("Adam", "AdamW", "SGD", "LARS"):
        opt = build_optimizer(conv_net(), name, 0.01, 1e-4, fused=True)
        assert not opt.defaults.get("fused"), name


def train_losses(run_dir: Path, speed_keys: dict) -> list[float]:
    """Two epochs through RunSession.place and the engine on CPU; the train.log losses."""
    run_dir.mkdir()
    c = cfg(**speed_keys)
    session = RunSession(c, run_dir, "none", torch.device("cpu"), "fresh")
    model = conv_net()
    module = session.place(model)
    opt = build_optimizer(model, "AdamW", 0.01, 1e-4, fused=session.speed.fused_optimizer)
    g = torch.Generator().manual_seed(0)
    ds = TensorDataset(torch.randn(16, 3, 8, 8, generator=g), torch.randint(0, 3, (16,), generator=g))

    class Method:
        def train_loss(self, m, batch, ctx):
            return F.cross_entropy(m(batch[0]), batch[1]), len(batch[1])

    tr = Trainer(model, Method(), opt, None, Amp(torch.device("cpu")), run_dir,
                 TrainerOptions(epochs=2, seed=0, verbose=False), module)
    tr.save = lambda: None
    tr.fit(DataLoader(ds, batch_size=4, sampler=EpochSampler(len(ds), 0)), None)
    tr.close()
    lines = (run_dir / "train.log").read_text().splitlines()
    col = lines[0].split(",").index("loss")
    return [float(ln.split(",")[col]) for ln in lines[1:]]


def test_cpu_losses_unchanged_with_every_speed_key_on(tmp_path):
    before = torch.backends.cudnn.benchmark
    base = train_losses(tmp_path / "base", {"channels_last": "off", "compile": False, "cudnn_benchmark": "off",
                                            "fused_optimizer": "off"})
    on = train_losses(tmp_path / "on", {"channels_last": "on", "compile": True, "cudnn_benchmark": "on",
                                        "fused_optimizer": "on"})
    assert len(base) == 8 and on == base  # exactly equal: nothing changed on CPU
    assert torch.backends.cudnn.benchmark == before
