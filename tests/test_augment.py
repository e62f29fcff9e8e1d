"""Augmentation: per-sample random parameters on whole batches, masks co-transformed, noise injection,
presets, the cpu (per-sample, in the loader) path. CPU only."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import write_png
from utility.data.augment import (AUG_DIR, AugPreset, CpuAugment, DeviceAugment, add_noise, build_augment,
                             load_preset)
from utility.data.cache import SharedStore
from utility.data.dataset import ImageDataset, Preprocess
from utility.data.index import Split
from utility.errors import UserError

PRESETS = sorted(p.stem for p in AUG_DIR.glob("*.yaml"))
GEOMETRIC = [n for n in PRESETS if (lambda p: p.random_resized_crop or p.hflip or p.vflip or p.rotation)(
    load_preset(n))]


def _block_mask(b: int, size: int = 64, block: int = 16, labels: int = 4) -> torch.Tensor:
    """[B, size, size] int64: random labels in blocks (regions large against interpolation borders)."""
    g = torch.randint(0, labels, (b, size // block, size // block))
    return g.repeat_interleave(block, 1).repeat_interleave(block, 2)


def _interior(mask: torch.Tensor) -> torch.Tensor:
    """Pixels whose 3x3 neighbourhood holds one label (away from region borders)."""
    m = mask.float()[:, None]
    return (F.max_pool2d(m, 3, 1, 1) == -F.max_pool2d(-m, 3, 1, 1))[:, 0]


def _check_aligned(img: torch.Tensor, mask: torch.Tensor, orig_mask: torch.Tensor, labels: int = 4) -> None:
    """img must still be f(mask) = mask / (labels-1) in every channel almost everywhere."""
    assert set(mask.unique().tolist()) <= set(range(labels)), "mask values left the label set"
    assert mask.dtype == torch.int64
    assert not torch.equal(mask, orig_mask), "augmentation did nothing: the test would prove nothing"
    for c in range(img.shape[1]):
        agree = torch.round(img[:, c] * (labels - 1)).long() == mask
        inner = _interior(mask)
        assert agree.float().mean() > 0.9, f"channel {c}: image and mask disagree on {1 - agree.float().mean():.1%}"
        assert inner.float().mean() > 0.5
        assert agree[inner].float().mean() > 0.98, "image and mask were transformed differently"


# ----------------------------------------------------------------------------- presets

@pytest.mark.parametrize("name", PRESETS)
def test_every_preset_loads_and_builds(name):
    preset = load_preset(name)
    assert isinstance(preset, AugPreset)
    dev, cpu = build_augment(name, (32, 32), no_augs=False, noise=None, tf_device="gpu")
    assert cpu is None
    x = torch.rand(4, 3, 32, 32)
    if dev is not None:
        assert dev(x).shape == x.shape
    dev_c, cpu_c = build_augment(name, (32, 32), no_augs=False, noise=None, tf_device="cpu")
    assert dev_c is None  # no noise: nothing left for the device
    if cpu_c is not None:
        assert cpu_c(x[0]).shape == (3, 32, 32)
    assert (dev is None) == (cpu_c is None) == (name not in GEOMETRIC)


def test_unknown_preset_lists_presets():
    with pytest.raises(UserError) as exc:
        build_augment("no_such_preset", (32, 32), no_augs=False, noise=None)
    msg = str(exc.value)
    assert "no_such_preset" in msg
    for name in PRESETS:
        assert name in msg


def test_no_augs_gives_none():
    assert build_augment("default", (32, 32), no_augs=True, noise=None) == (None, None)
    assert build_augment("default", (32, 32), no_augs=True, noise=None, tf_device="cpu") == (None, None)
    assert build_augment("none", (32, 32), no_augs=False, noise=None) == (None, None)
    # no_augs keeps requested noise injection (and only that)
    dev, cpu = build_augment("default", (32, 32), no_augs=True, noise=(0.1, 1.0))
    assert cpu is None and isinstance(dev, DeviceAugment) and dev.ops is None
    x = torch.rand(3, 3, 32, 32)
    assert not torch.equal(dev(x), x)


# ----------------------------------------------------------------------------- per-sample parameters

def test_identical_images_get_different_augmentations():
    """The predecessor drew one crop/flip per GPU chunk; every image must get its own."""
    torch.manual_seed(0)
    aug = DeviceAugment(load_preset("default"), (64, 64))
    img = torch.rand(1, 3, 64, 64)
    out = aug(img.repeat(16, 1, 1, 1))
    assert out.shape == (16, 3, 64, 64)
    flat = out.flatten(1)
    distinct = []  # crops are integer boxes, so an occasional repeat is legitimate
    for o in flat:
        if not any(torch.allclose(o, d) for d in distinct):
            distinct.append(o)
    assert len(distinct) >= 12, f"only {len(distinct)} different augmentations in a batch of 16"


def test_flip_drawn_per_sample():
    torch.manual_seed(1)
    aug = DeviceAugment(AugPreset(hflip=0.5), (16, 16))
    img = torch.rand(1, 1, 16, 16)
    out = aug(img.repeat(64, 1, 1, 1))
    flipped = torch.tensor([torch.allclose(o, img[0].flip(-1)) for o in out])
    same = torch.tensor([torch.allclose(o, img[0]) for o in out])
    assert bool((flipped | same).all())
    assert 10 < int(flipped.sum()) < 54  # both outcomes in one batch


# ----------------------------------------------------------------------------- masks

@pytest.mark.parametrize("name", ["default", "chest_xray", "digits"])
def test_device_augment_keeps_mask_aligned(name):
    torch.manual_seed(2)
    mask = _block_mask(16)
    img = (mask.float() / 3)[:, None].repeat(1, 3, 1, 1)
    x, m = DeviceAugment(load_preset(name), (64, 64))(img, mask)
    assert x.shape == img.shape and m.shape == mask.shape
    _check_aligned(x, m, mask)


@pytest.mark.parametrize("name", ["default", "chest_xray", "digits"])
def test_cpu_augment_keeps_mask_aligned(name):
    torch.manual_seed(3)
    np.random.seed(3)
    mask = _block_mask(12)
    img = (mask.float() / 3)[:, None].repeat(1, 3, 1, 1)
    aug = CpuAugment(load_preset(name), (64, 64))
    outs = [aug(img[i], mask[i]) for i in range(len(img))]
    x = torch.stack([o[0] for o in outs])
    m = torch.stack([o[1] for o in outs])
    assert x.shape == img.shape and x.dtype == torch.float32
    _check_aligned(x, m, mask)


# ----------------------------------------------------------------------------- noise

def test_noise_p1_changes_every_image_p0_none():
    torch.manual_seed(4)
    x = torch.rand(32, 3, 16, 16)
    out = DeviceAugment(AugPreset(), (16, 16), noise=(0.1, 1.0))(x.clone())
    changed = (out - x).flatten(1).abs().amax(1) > 0
    assert bool(changed.all())
    assert 0.05 < float((out - x).std()) < 0.2  # sigma respected
    out0 = DeviceAugment(AugPreset(), (16, 16), noise=(0.1, 0.0))(x.clone())
    assert torch.equal(out0, x)
    outs = add_noise(x, 0.1, 0.5)
    n_changed = int(((outs - x).flatten(1).abs().amax(1) > 0).sum())
    assert 4 < n_changed < 28  # drawn per sample
    unchanged = (outs - x).flatten(1).abs().amax(1) == 0
    assert torch.equal(outs[unchanged], x[unchanged])


def test_rician_noise_non_negative():
    torch.manual_seed(5)
    x = torch.rand(16, 1, 32, 32)
    x[:, :, :8] = 0  # background, where Gaussian noise would go negative
    out = add_noise(x, 0.3, 1.0, "rician")
    assert (out >= 0).all()
    assert not torch.equal(out, x)
    assert (add_noise(x, 0.3, 1.0, "gaussian") < 0).any()  # the check above is not vacuous
    aug = DeviceAugment(AugPreset(noise_type="rician"), (32, 32), noise=(0.3, 1.0))
    assert (aug(x) >= 0).all()


def test_cpu_tf_device_noise_stays_on_device():
    dev, cpu = build_augment("default", (32, 32), no_augs=False, noise=(0.1, 1.0), tf_device="cpu")
    assert isinstance(cpu, CpuAugment)
    assert isinstance(dev, DeviceAugment) and dev.ops is None  # geometry not applied twice
    x = torch.rand(2, 3, 32, 32)
    assert not torch.equal(dev(x), x)


# ----------------------------------------------------------------------------- cpu path in the dataset

def test_cpu_augment_used_per_sample_in_dataset(tmp_path):
    """tf_device: cpu -> CpuAugment runs per sample in the dataset; the cached item is never altered."""
    rng = np.random.default_rng(0)
    paths = [write_png(tmp_path / "img" / f"{i}.png", rng.integers(0, 256, (40, 40), dtype=np.uint8))
             for i in range(3)]
    split = Split("train", paths, [0, 1, 0])
    prep = Preprocess(3, (32, 32), "naive")
    store = SharedStore(paths, 3, (32, 32), repr(prep), cache_dir=tmp_path / "cache")
    ds = ImageDataset(split, prep, False, 2, cache=store)
    dev, cpu = build_augment("default", (32, 32), no_augs=False, noise=None, tf_device="cpu")
    assert dev is None and isinstance(cpu, CpuAugment)
    clean = ds[0]["image"].clone()
    ds.transform = cpu
    outs = []
    for epoch in range(6):  # parameters are drawn per (seed, epoch, sample): the same sample differs by epoch
        ds.epoch = epoch
        outs.append(ds[0]["image"])
    ds.epoch = 0
    assert torch.equal(ds[0]["image"], ds[0]["image"]), "one epoch, one sample: one draw"
    for o in outs:
        assert o.shape == (3, 32, 32) and o.dtype == torch.float32
    assert any(not torch.allclose(outs[0], o) for o in outs[1:]), "same augmentation in every epoch"
    assert sum(not torch.allclose(o, clean) for o in outs) >= 3
    assert torch.equal(store.get(0), clean), "the transform wrote into the cache"
    ds.transform = None
    assert torch.equal(ds[0]["image"], clean)
