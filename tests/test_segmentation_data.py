"""Segmentation data: BraTS (npy, stacked channels, {4: 3}), LiTS (PNG, binary masks, tumour wins) and
the generic layouts (folders / CSV), nearest-resized int64 targets, caching of image and mask, broken
masks, and mask alignment under DeviceAugment and CpuAugment."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

REPO = Path(__file__).resolve().parent.parent

from utility.data.augment import AugPreset, CpuAugment, CropSpec, DeviceAugment, load_preset
from utility.data.dataset import Preprocess
from utility.data.index import index_task
from utility.data.segdata import SegDataset, make_seg_dataset
from utility.config.tasks import TaskSpec, load_task

# ----------------------------------------------------------------------------- fixtures writing tiny data


def brats_label_map(rng: np.random.Generator, size: int) -> np.ndarray:
    """Raw BraTS labels {0,1,2,4}: a whole tumour (2) with a core (1) and an enhancing rim (4)."""
    yy, xx = np.mgrid[0:size, 0:size]
    cy, cx = rng.integers(size // 3, 2 * size // 3, size=2)
    r = np.hypot(yy - cy, xx - cx)
    seg = np.zeros((size, size), dtype=np.uint8)
    seg[r < size * 0.35] = 2
    seg[r < size * 0.22] = 4
    seg[r < size * 0.12] = 1
    return seg


def write_brats(root: Path, splits=("train", "val", "test"), patients=2, slices=3, size=24) -> dict[str, list]:
    """BraTS/<split>/<patient>/<id>_{t1,t1ce,t2,flair,seg}.npy; every modality is a function of the mask."""
    rng = np.random.default_rng(0)
    out: dict[str, list] = {}
    for split in splits:
        out[split] = []
        for p in range(patients):
            for s in range(slices):
                sid = f"BraTS20_{split}_{p:03d}_{s:02d}"
                d = root / "BraTS" / split / f"BraTS20_{split}_{p:03d}"
                d.mkdir(parents=True, exist_ok=True)
                seg = brats_label_map(rng, size)
                noise = rng.normal(0, 1, (size, size))
                np.save(d / f"{sid}_t1.npy", (100 + 50 * seg + noise).astype(np.float32))
                np.save(d / f"{sid}_t1ce.npy", (300 + 200 * (seg == 4) + noise).astype(np.float32))
                np.save(d / f"{sid}_t2.npy", (10 * seg + noise).astype(np.float32))
                np.save(d / f"{sid}_flair.npy", (500 + 100 * (seg > 0) + noise).astype(np.float32))
                np.save(d / f"{sid}_seg.npy", seg)
                out[split].append((d / f"{sid}_t1.npy", seg))
    return out


def write_lits(root: Path, splits=("train", "val", "test"), volumes=2, slices=3, size=24) -> dict[str, list]:
    """Clean_LiTS/<split>/volumes/volume-<v>_<s>.png + segmentations/segmentation-<v>_{liver,lesion}mask_<s>.png;
    the lesion mask also covers pixels outside the liver (tumour must win where they overlap)."""
    rng = np.random.default_rng(1)
    out: dict[str, list] = {}
    for split in splits:
        out[split] = []
        vol_dir, seg_dir = root / "Clean_LiTS" / split / "volumes", root / "Clean_LiTS" / split / "segmentations"
        vol_dir.mkdir(parents=True, exist_ok=True)
        seg_dir.mkdir(parents=True, exist_ok=True)
        for v in range(100 * len(out) - 100, 100 * len(out) - 100 + volumes):  # own volume numbers per split
            for s in range(slices):
                yy, xx = np.mgrid[0:size, 0:size]
                cy, cx = rng.integers(size // 3, 2 * size // 3, size=2)
                liver = np.hypot(yy - cy, xx - cx) < size * 0.3
                lesion = np.hypot(yy - cy - 2, xx - cx - 2) < size * 0.12
                labels = np.where(lesion, 2, np.where(liver, 1, 0))
                img = (40 + 80 * liver + 120 * lesion + rng.integers(0, 10, (size, size))).clip(0, 255)
                Image.fromarray(img.astype(np.uint8)).save(vol_dir / f"volume-{v}_{s}.png")
                Image.fromarray((liver * 255).astype(np.uint8)).save(seg_dir / f"segmentation-{v}_livermask_{s}.png")
                Image.fromarray((lesion * 255).astype(np.uint8)).save(seg_dir / f"segmentation-{v}_lesionmask_{s}.png")
                out[split].append((vol_dir / f"volume-{v}_{s}.png", labels))
    return out


@pytest.fixture
def brats_root(tmp_path):
    write_brats(tmp_path / "data")
    return tmp_path / "data"


def _cfg(opmode="disk", debug=False):
    return type("Cfg", (), {"opmode": opmode, "debug": debug, "test_nan_inf": True})()


def _dataset(task: TaskSpec, data_root: Path, split="train", shape=(24, 24), opmode="disk", cache_dir=None):
    indexed = index_task(task, data_root, seed=0)
    prep = Preprocess(3, shape, task.normalizer)
    ds = make_seg_dataset(_cfg(opmode), task, indexed.splits[split], split, prep, indexed.num_classes, cache_dir)
    return indexed, ds


# ----------------------------------------------------------------------------- predecessor layouts

def test_brats_layout(brats_root):
    task = load_task("BraTS")
    indexed, ds = _dataset(task, brats_root)
    train = indexed.splits["train"]
    assert len(train) == 6 and all(p.name.endswith("_t1.npy") for p in train.paths)
    assert indexed.num_classes == 4
    s = ds[0]
    assert s["image"].shape == (3, 24, 24) and s["image"].dtype == torch.float32
    assert s["target"].dtype == torch.int64 and s["target"].shape == (24, 24)
    raw = np.load(str(train.paths[0]).replace("_t1.npy", "_seg.npy"))
    np.testing.assert_array_equal(s["target"].numpy(), np.where(raw == 4, 3, raw))
    assert set(np.unique(s["target"].numpy())) == {0, 1, 2, 3}
    # channels are t1, t1ce, flair (naive min-max over the stacked image): t1ce marks ET, flair the tumour
    x = s["image"].numpy()
    et, tumour = s["target"].numpy() == 3, s["target"].numpy() > 0
    assert x[1][et].mean() > x[1][~et].mean() + 0.1
    assert x[2][tumour].mean() > x[2][~tumour].mean() + 0.05


def test_brats_size_variant_and_nearest_resize(tmp_path):
    write_brats(tmp_path / "data", patients=5, slices=4)
    variant = load_task("BraTS-M")
    assert variant.train_fraction == 0.5
    indexed = index_task(variant, tmp_path / "data", seed=0)
    train = indexed.splits["train"]  # half of the 5 patients (round(2.5) = 2), each with its 4 slices
    assert train.subject_count() == 2 and len(train) == 8
    assert set(train.subject_ids().tolist()) <= {f"BraTS20_train_{p:03d}" for p in range(5)}
    _, ds = _dataset(load_task("BraTS"), tmp_path / "data", shape=(40, 40))
    t = ds[0]["target"]
    assert t.shape == (40, 40) and set(np.unique(t.numpy())) <= {0, 1, 2, 3}  # nearest: no blended labels


def test_lits_layout_tumour_wins(tmp_path):
    truth = write_lits(tmp_path / "data")
    task = load_task("LiTS")
    indexed, ds = _dataset(task, tmp_path / "data")
    assert indexed.classes == ["background", "liver", "tumour"]
    assert len(indexed.splits["train"]) == 6
    assert all("volumes" in p.parts for p in indexed.splits["train"].paths)
    expected = {p: lab for p, lab in truth["train"]}
    for i in range(len(ds)):
        s = ds[i]
        np.testing.assert_array_equal(s["target"].numpy(), expected[indexed.splits["train"].paths[i]])
    assert load_task("LiTS-S").train_fraction == 0.1


def _write_task(tmp_path: Path, **layout) -> TaskSpec:
    data = {"name": "gen", "type": "segmentation", "root": "gen", "classes": ["background", "organ", "lesion"],
            "layout": layout, "splits": {"train": {"dir": "images"}, "val": {"from": "train", "fraction": 0.25},
                                         "test": {"dir": "images"}},
            "shape_desired": [32, 32], "augmentation": "none", "loss": "ce_dice"}
    path = tmp_path / "gen.yaml"
    path.write_text(yaml.safe_dump(data))
    return load_task(str(path))


def test_generic_folders_and_csv_layouts(tmp_path):
    from datasets.prepare_demo_seg import phantom

    root = tmp_path / "data" / "gen"
    rng = np.random.default_rng(0)
    masks = {}
    rows = ["image,mask"]
    for i in range(8):
        img, mask = phantom(rng, 32)
        (root / "images").mkdir(parents=True, exist_ok=True)
        (root / "masks").mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(root / "images" / f"im_{i}.png")
        Image.fromarray(mask).save(root / "masks" / f"im_{i}.png")
        np.save(root / "masks" / f"im_{i}.npy", mask.astype(np.int16))
        masks[f"im_{i}.png"] = mask
        rows.append(f"images/im_{i}.png,masks/im_{i}.npy")
    (root / "pairs.csv").write_text("\n".join(rows) + "\n")
    by_folder = _write_task(tmp_path, reader="seg_masks", masks=[["/images/([^/]+)$", "/masks/\\1"]])
    by_csv = _write_task(tmp_path, reader="seg_csv", labels_file="pairs.csv", path_column="image",
                         label_column="mask")
    for task in (by_folder, by_csv):
        indexed, ds = _dataset(task, tmp_path / "data", split="test", shape=(32, 32))
        assert len(indexed.splits["train"]) == 6 and len(indexed.splits["val"]) == 2
        for i in range(len(ds)):
            np.testing.assert_array_equal(ds[i]["target"].numpy(), masks[indexed.splits["test"].paths[i].name])


def test_cache_holds_image_and_mask(brats_root, tmp_path):
    task = load_task("BraTS")
    _, ds = _dataset(task, brats_root, opmode="live_cache", cache_dir=tmp_path / "cache")
    first = [ds[i] for i in range(len(ds))]
    assert ds.cache.complete and ds.mask_cache.complete
    _, again = _dataset(task, brats_root, opmode="live_cache", cache_dir=tmp_path / "cache")
    again.load_pair = None  # served from the stores: reading files would fail
    for i, s in enumerate(first):
        t = again[i]
        assert torch.equal(t["image"], s["image"]) and torch.equal(t["target"], s["target"])
        assert t["target"].dtype == torch.int64


def test_broken_mask_and_bad_labels_are_bad_files(brats_root):
    task = load_task("BraTS")
    indexed, ds = _dataset(task, brats_root)
    seg0 = Path(str(indexed.splits["train"].paths[0]).replace("_t1.npy", "_seg.npy"))
    seg0.write_bytes(b"not an npy file")
    seg1 = Path(str(indexed.splits["train"].paths[1]).replace("_t1.npy", "_seg.npy"))
    np.save(seg1, np.full((24, 24), 7, dtype=np.uint8))
    s0, s1, s2 = ds[0], ds[1], ds[2]
    assert not s0["valid"] and "mask" in s0["bad"]
    assert not s1["valid"] and "outside" in s1["bad"]
    assert s2["valid"] and s2["bad"] == ""
    assert s0["target"].shape == (24, 24) and s0["image"].shape == (3, 24, 24)


def test_task_validation():
    base = {"name": "x", "root": "x", "splits": {"train": {"dir": "a"}, "val": {"dir": "b"}, "test": {"dir": "c"}}}
    with pytest.raises(ValueError):
        TaskSpec.model_validate({**base, "type": "segmentation"})  # no classes
    with pytest.raises(ValueError):
        TaskSpec.model_validate({**base, "loss": "dice"})  # dice on a classification task
    t = TaskSpec.model_validate({**base, "type": "segmentation", "classes": ["bg", "fg"], "loss": "dice"})
    assert t.primary_metric == "dice_mean_fg"


# ----------------------------------------------------------------------------- augmentation alignment

def _image_of(mask: torch.Tensor) -> torch.Tensor:
    """image = f(mask): 3 channels, each a different affine function of the label."""
    m = mask.float()
    return torch.stack([m / 3, 1 - m / 3, (m == 2).float()], dim=-3)


def _agreement(x: torch.Tensor, mask: torch.Tensor) -> float:
    decoded = (x[..., 0, :, :] * 3).round().long()
    return float((decoded == mask).float().mean())


def _blobs(n=8, size=32, seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    out = torch.zeros(n, size, size, dtype=torch.long)
    for i in range(n):
        cy, cx = torch.randint(8, 24, (2,), generator=g).tolist()
        r = torch.hypot((yy - cy).float(), (xx - cx).float())
        out[i][r < 9] = 1
        out[i][r < 4] = 2
        out[i][: 3, :] = 3  # an asymmetric stripe: a flip of the image alone would be caught
    return out


def test_device_augment_keeps_mask_aligned():
    torch.manual_seed(0)
    mask = _blobs()
    x = _image_of(mask)
    preset = AugPreset(random_resized_crop=CropSpec(scale=(0.6, 1.0)), hflip=0.5, vflip=0.5, rotation=20,
                       rotation_p=1.0)
    xa, ma = DeviceAugment(preset, (32, 32))(x, mask)
    assert ma.dtype == torch.int64 and ma.shape == mask.shape
    assert set(ma.unique().tolist()) <= {0, 1, 2, 3}
    assert not torch.equal(ma, mask)  # it did move things
    assert _agreement(xa, ma) > 0.88  # only interpolated edges may disagree
    assert _agreement(xa, mask) < 0.9  # ... while the unmoved mask does not fit the moved image
    # flips alone are exact
    xf, mf = DeviceAugment(AugPreset(hflip=0.5, vflip=0.5), (32, 32))(x, mask)
    assert _agreement(xf, mf) == 1.0
    for name in ("brats", "lits"):
        xp, mp = DeviceAugment(load_preset(name), (32, 32))(x, mask)
        assert _agreement(xp, mp) > 0.88


def test_cpu_augment_keeps_mask_aligned():
    np.random.seed(0)
    import random

    random.seed(0)
    mask = _blobs(n=6)
    preset = AugPreset(random_resized_crop=CropSpec(scale=(0.6, 1.0)), hflip=0.5, vflip=0.5, rotation=20,
                       rotation_p=1.0)
    moved = 0
    for name, p in (("custom", preset), ("brats", load_preset("brats")), ("lits", load_preset("lits"))):
        aug = CpuAugment(p, (32, 32))
        for i in range(len(mask)):
            x = _image_of(mask[i])
            xa, ma = aug(x, mask[i])
            assert ma.dtype == torch.int64 and ma.shape == (32, 32)
            assert _agreement(xa, ma) > 0.88, name  # bilinear image vs nearest mask at edges
            moved += int(not torch.equal(ma, mask[i]))
    assert moved > 5


def test_dataset_applies_cpu_transform_to_both(brats_root):
    task = load_task("BraTS")
    _, ds = _dataset(task, brats_root)
    calls = []

    def flip(x, m):
        calls.append(1)
        return x.flip(-1), m.flip(-1)

    plain = ds[0]
    ds.transform = flip
    s = ds[0]
    assert calls and torch.equal(s["target"], plain["target"].flip(-1)) and torch.equal(s["image"], plain["image"].flip(-1))
