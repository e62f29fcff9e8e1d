"""Reading every supported format with intensities kept, the normalizers, channel conformity, resize.

All data is generated in ``tmp_path``; nothing here needs a GPU.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import make_folder_dataset, small_run_config, task_dict, write_yaml
from utility.data.dataset import Preprocess
from utility.data.index import find_images
from utility.data.io import UnreadableImage, read_image
from utility.data.preprocess import (IMAGENET_MEAN, IMAGENET_STD, conform_channels, normalize, resize,
                                     value_range_of)

RNG = np.random.default_rng(1234)


def _u8(shape) -> np.ndarray:
    return RNG.integers(0, 256, size=shape, dtype=np.uint8)


def _save(path, arr, **kw):
    Image.fromarray(arr).save(path, **kw)
    return path


# ----------------------------------------------------------------------------- PIL formats

@pytest.mark.parametrize("ext", [".png", ".bmp", ".tif", ".tiff"])
def test_8bit_gray_lossless(tmp_path, ext):
    a = _u8((7, 9))
    x = read_image(_save(tmp_path / f"g{ext}", a))
    assert x.dtype == np.float32 and x.shape == (1, 7, 9)
    np.testing.assert_array_equal(x[0], a.astype(np.float32))


@pytest.mark.parametrize("ext", [".png", ".bmp", ".tif"])
def test_8bit_rgb_lossless(tmp_path, ext):
    a = _u8((6, 5, 3))
    x = read_image(_save(tmp_path / f"c{ext}", a))
    assert x.shape == (3, 6, 5)
    np.testing.assert_array_equal(x, np.moveaxis(a, -1, 0).astype(np.float32))


def test_png_rgba_alpha_dropped_colour_kept(tmp_path):
    a = _u8((6, 5, 4))
    a[..., 3] = RNG.integers(0, 256, size=(6, 5))  # alpha must not scale the colours
    x = read_image(_save(tmp_path / "rgba.png", a))
    assert x.shape == (3, 6, 5)
    np.testing.assert_array_equal(x, np.moveaxis(a[..., :3], -1, 0).astype(np.float32))


@pytest.mark.parametrize("ext", [".png", ".tif"])
def test_16bit_values_kept(tmp_path, ext):
    a = RNG.integers(0, 65536, size=(8, 10)).astype(np.uint16)
    a[0, 0], a[0, 1] = 65535, 0
    x = read_image(_save(tmp_path / f"d16{ext}", a))
    assert x.shape == (1, 8, 10)
    np.testing.assert_array_equal(x[0], a.astype(np.float32))
    assert x.max() == 65535.0
    assert value_range_of(x) == 65535.0


def test_jpeg_matches_decoder_and_source(tmp_path):
    yy, xx = np.mgrid[0:32, 0:32]
    a = ((xx * 4 + yy * 3) % 256).astype(np.uint8)  # smooth: JPEG keeps it close
    p = _save(tmp_path / "j.JPEG", a, quality=95)
    x = read_image(p)
    assert x.shape == (1, 32, 32)
    with Image.open(p) as im:
        np.testing.assert_array_equal(x[0], np.asarray(im, dtype=np.float32))
    assert np.abs(x[0] - a).mean() < 3.0  # intensities on the 0..255 scale, not rescaled
    rgb = np.stack([a, 255 - a, a // 2], axis=-1)
    xc = read_image(_save(tmp_path / "c.jpg", rgb, quality=95))
    assert xc.shape == (3, 32, 32)
    assert np.abs(xc - np.moveaxis(rgb, -1, 0)).mean() < 4.0


# ----------------------------------------------------------------------------- numpy

def test_npy_2d_and_hwc(tmp_path):
    a = RNG.normal(100, 500, size=(5, 7)).astype(np.float32)  # negative and > 255 kept
    np.save(tmp_path / "a.npy", a)
    x = read_image(tmp_path / "a.npy")
    assert x.shape == (1, 5, 7)
    np.testing.assert_array_equal(x[0], a)

    b = RNG.normal(0, 1000, size=(5, 7, 3)).astype(np.float64)
    np.save(tmp_path / "b.npy", b)
    y = read_image(tmp_path / "b.npy")
    assert y.shape == (3, 5, 7) and y.dtype == np.float32
    np.testing.assert_allclose(y, np.moveaxis(b, -1, 0).astype(np.float32))

    c = RNG.integers(-2000, 4000, size=(3, 6, 8)).astype(np.int16)  # already [C, H, W]
    np.save(tmp_path / "c.npy", c)
    np.testing.assert_array_equal(read_image(tmp_path / "c.npy"), c.astype(np.float32))


# ----------------------------------------------------------------------------- channel axis

@pytest.mark.parametrize("hw", [(3, 40), (4, 40), (1, 40), (2, 3), (40, 3)])
def test_rgb_png_channels_come_from_the_format_not_a_small_dimension(tmp_path, hw):
    """PIL gives [H, W, C]: a 3 px tall RGB PNG is 3 channels of 3x40, not 40 channels... or 3 of 40x3."""
    a = _u8((*hw, 3))
    x = read_image(_save(tmp_path / "thin.png", a))
    assert x.shape == (3, *hw)
    np.testing.assert_array_equal(x, np.moveaxis(a, -1, 0).astype(np.float32))


def test_thin_rgba_png_alpha_dropped(tmp_path):
    a = _u8((3, 40, 4))
    x = read_image(_save(tmp_path / "thin_rgba.png", a))
    assert x.shape == (3, 3, 40)
    np.testing.assert_array_equal(x, np.moveaxis(a[..., :3], -1, 0).astype(np.float32))


def test_thin_rgb_png_through_preprocess_keeps_colour(tmp_path):
    a = np.zeros((3, 40, 3), np.uint8)
    a[..., 0] = 255  # pure red
    y = Preprocess(3, (3, 40), "windowed", (0.0, 255.0))(read_image(_save(tmp_path / "red.png", a)))
    assert y.shape == (3, 3, 40)
    assert torch.all(y[0] == 1) and torch.all(y[1:] == 0)


@pytest.mark.parametrize("shape, expected, move", [
    ((3, 40, 3), (3, 3, 40), True),    # ambiguous: numpy's [H, W, C] convention wins
    ((1, 5, 7), (1, 5, 7), False),     # [1, H, W]
    ((5, 7, 1), (1, 5, 7), True),      # [H, W, 1]
    ((3, 6, 8), (3, 6, 8), False),     # [C, H, W]
    ((6, 8, 3), (3, 6, 8), True),      # [H, W, C]
    ((2, 6, 8), (2, 6, 8), False),     # two channels kept
    ((1, 40, 1), (1, 1, 40), True),    # ambiguous, [H, W, C]
])
def test_npy_channel_rule(tmp_path, shape, expected, move):
    a = RNG.normal(0, 100, size=shape).astype(np.float32)
    np.save(tmp_path / "a.npy", a)
    x = read_image(tmp_path / "a.npy")
    assert x.shape == expected
    np.testing.assert_array_equal(x, np.moveaxis(a, -1, 0) if move else a)


def test_npy_four_channels_rgba_to_rgb(tmp_path):
    hwc = RNG.normal(0, 100, size=(6, 8, 4)).astype(np.float32)
    np.save(tmp_path / "hwc.npy", hwc)
    np.testing.assert_array_equal(read_image(tmp_path / "hwc.npy"), np.moveaxis(hwc[..., :3], -1, 0))
    chw = RNG.normal(0, 100, size=(4, 6, 8)).astype(np.float32)
    np.save(tmp_path / "chw.npy", chw)
    np.testing.assert_array_equal(read_image(tmp_path / "chw.npy"), chw[:3])


@pytest.mark.parametrize("shape", [(5, 40, 40), (6, 7, 8), (2, 3, 4, 5)])
def test_npy_without_channel_axis_refused(tmp_path, shape):
    np.save(tmp_path / "a.npy", np.zeros(shape, np.float32))
    with pytest.raises(UnreadableImage, match="shape"):
        read_image(tmp_path / "a.npy")


# ----------------------------------------------------------------------------- DICOM

def _write_ct_dicom(path, raw: np.ndarray, slope=2.0, intercept=-1024.0):
    import pydicom
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"  # CT Image Storage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "CT"
    ds.PatientName = "Test^Phantom"
    ds.Rows, ds.Columns = raw.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1  # signed
    ds.RescaleSlope = slope
    ds.RescaleIntercept = intercept
    ds.PixelData = raw.astype("<i2").tobytes()
    ds.save_as(str(path), enforce_file_format=True)
    return path


def test_dicom_ct_rescale_applied(tmp_path):
    raw = RNG.integers(-500, 2500, size=(12, 10)).astype(np.int16)
    raw[0, 0], raw[0, 1] = -500, 2000
    x = read_image(_write_ct_dicom(tmp_path / "ct.dcm", raw))
    assert x.shape == (1, 12, 10)
    np.testing.assert_array_equal(x[0], raw.astype(np.float32) * 2 - 1024)
    assert x.min() < -1024 + 1 and x.max() > 2000  # HU, not 0..255 or raw values


def test_dicom_without_rescale_is_raw(tmp_path):
    raw = RNG.integers(0, 3000, size=(6, 6)).astype(np.int16)
    p = _write_ct_dicom(tmp_path / "plain.dcm", raw, slope=1.0, intercept=0.0)
    np.testing.assert_array_equal(read_image(p)[0], raw.astype(np.float32))


# ----------------------------------------------------------------------------- NIfTI

def test_nifti_2d(tmp_path):
    import nibabel as nib

    a = RNG.normal(0, 300, size=(9, 11)).astype(np.float32)
    p = tmp_path / "img.nii.gz"
    nib.save(nib.Nifti1Image(a, np.eye(4)), str(p))
    x = read_image(p)
    assert x.shape == (1, 9, 11)
    np.testing.assert_allclose(x[0], a, rtol=0, atol=1e-4)


@pytest.mark.parametrize("axis", [2, 0])
def test_nifti_volume_read_as_slices(tmp_path, axis):
    import nibabel as nib

    vol = RNG.normal(0, 500, size=(6, 7, 5)).astype(np.float32)
    (tmp_path / "vols").mkdir()
    nib.save(nib.Nifti1Image(vol, np.eye(4)), str(tmp_path / "vols" / "v.nii.gz"))
    np.save(tmp_path / "vols" / "other.npy", np.zeros((4, 4), np.float32))  # not indexed

    found = find_images(tmp_path / "vols", [".nii.gz"], slice_axis=axis)
    assert len(found) == vol.shape[axis]
    for k, p in enumerate(found):
        x = read_image(p)
        assert x.shape[0] == 1
        np.testing.assert_allclose(x[0], np.take(vol, k, axis=axis), atol=1e-4)
    # without slice_axis a 3-D volume is one entry, and reading it is a clear error
    whole = find_images(tmp_path / "vols", [".nii.gz"])
    assert len(whole) == 1
    with pytest.raises(UnreadableImage, match="slice_axis"):
        read_image(whole[0])


# ----------------------------------------------------------------------------- broken files

def test_garbage_and_truncated_files_raise_unreadable(tmp_path):
    for name in ("g.png", "g.jpg", "g.tif", "g.npy", "g.dcm", "g.nii.gz", "g.bmp"):
        (tmp_path / name).write_bytes(b"this is not an image at all" * 10)
        with pytest.raises(UnreadableImage):
            read_image(tmp_path / name)
    good = _save(tmp_path / "ok.png", _u8((64, 64)))
    data = good.read_bytes()
    (tmp_path / "trunc.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(UnreadableImage):
        read_image(tmp_path / "trunc.png")
    (tmp_path / "x.xyz").write_bytes(b"abc")
    with pytest.raises(UnreadableImage, match="unsupported"):
        read_image(tmp_path / "x.xyz")


# ----------------------------------------------------------------------------- normalizers

def test_naive_minmax():
    x = torch.tensor([[[-10.0, 0.0, 30.0], [10.0, 20.0, 5.0]]])
    y = normalize(x, "naive")
    expected = (x + 10) / 40
    torch.testing.assert_close(y, expected)
    assert y.min() == 0 and y.max() == 1


def test_ct_clipped_exact():
    x = torch.tensor([[[-3000.0, -1024.0, 0.0, 1024.0, 3072.0, 9000.0]]])
    y = normalize(x, "01_clipped_CT")
    torch.testing.assert_close(y, torch.tensor([[[0.0, 0.0, 0.25, 0.5, 1.0, 1.0]]]))
    # not per-image min-max: an image that spans less than the range keeps its absolute HU meaning
    z = normalize(torch.tensor([[[0.0, 1024.0]]]), "01_clipped_CT")
    torch.testing.assert_close(z, torch.tensor([[[0.25, 0.5]]]))


def test_windowed_exact():
    x = torch.tensor([[[-500.0, -100.0, 0.0, 100.0, 300.0, 800.0]]])
    y = normalize(x, "windowed", window=(-100.0, 300.0))
    torch.testing.assert_close(y, torch.tensor([[[0.0, 0.0, 0.25, 0.5, 1.0, 1.0]]]))
    with pytest.raises(ValueError, match="window"):
        normalize(x, "windowed")


def test_imagenet_rgb_and_gray_exact():
    a = RNG.integers(0, 256, size=(3, 5, 6)).astype(np.float32)
    a[0, 0, 0] = 255
    y = Preprocess(3, (5, 6), "imagenet")(a)
    mean = np.array(IMAGENET_MEAN, np.float32).reshape(3, 1, 1)
    std = np.array(IMAGENET_STD, np.float32).reshape(3, 1, 1)
    np.testing.assert_allclose(y.numpy(), (a / 255 - mean) / std, rtol=1e-5, atol=1e-5)

    g = RNG.integers(0, 256, size=(1, 5, 6)).astype(np.float32)
    g[0, 0, 0] = 200
    yg = Preprocess(1, (5, 6), "imagenet")(g)
    np.testing.assert_allclose(yg.numpy(), (g / 255 - np.mean(IMAGENET_MEAN)) / np.mean(IMAGENET_STD),
                               rtol=1e-5, atol=1e-5)
    # a 16-bit image is scaled by its own full range
    h = np.full((1, 4, 4), 30000, np.float32)
    h[0, 0, 0] = 65535
    yh = Preprocess(1, (4, 4), "imagenet")(h)
    np.testing.assert_allclose(yh[0, 0, 0].item(), (1 - np.mean(IMAGENET_MEAN)) / np.mean(IMAGENET_STD),
                               rtol=1e-5)


@pytest.mark.parametrize("name,window", [("naive", None), ("01_clipped_CT", None), ("imagenet", None),
                                         ("windowed", (-100.0, 300.0))])
@pytest.mark.parametrize("value", [0.0, 7.0, 255.0, 4000.0])
def test_constant_image_finite(name, window, value):
    x = np.full((3, 8, 8), value, np.float32)
    y = Preprocess(3, (4, 4), name, window)(x)
    assert y.shape == (3, 4, 4)
    assert torch.isfinite(y).all()
    assert (y - y[:, :1, :1]).abs().max() < 1e-4  # each channel still constant (up to float rounding)
    if name == "naive":
        assert (y == 0).all()


def test_unknown_normalizer_raises():
    with pytest.raises(ValueError, match="unknown normalizer"):
        normalize(torch.zeros(1, 2, 2), "zscore")


# ----------------------------------------------------------------------------- channels and resize

def test_conform_channels():
    g = torch.rand(1, 4, 5)
    g3 = conform_channels(g, 3)
    assert g3.shape == (3, 4, 5)
    for c in range(3):
        torch.testing.assert_close(g3[c], g[0])
    rgb = torch.rand(3, 4, 5)
    lum = conform_channels(rgb, 1)
    assert lum.shape == (1, 4, 5)
    torch.testing.assert_close(lum[0], 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2])
    batch = torch.rand(2, 1, 4, 5)
    assert conform_channels(batch, 3).shape == (2, 3, 4, 5)
    assert conform_channels(rgb, 3) is rgb
    with pytest.raises(ValueError):
        conform_channels(torch.rand(5, 4, 4), 3)


def test_resize_to_shape_desired():
    x = torch.rand(3, 40, 30)
    y = resize(x, (16, 24))
    assert y.shape == (3, 16, 24)
    const = torch.full((1, 40, 30), 0.5)
    torch.testing.assert_close(resize(const, (7, 9)), torch.full((1, 7, 9), 0.5))
    mask = torch.zeros(1, 40, 30)
    mask[:, 10:30, 5:20] = 2.0
    mask[:, 0:5, :] = 3.0
    m = resize(mask, (20, 15), mode="nearest")
    assert set(m.unique().tolist()) <= {0.0, 2.0, 3.0}


def test_preprocess_pipeline_on_file(tmp_path):
    """gray 16-bit PNG -> 3 channels, 24x20, naive: channels equal, range [0, 1]."""
    a = RNG.integers(0, 65536, size=(50, 40)).astype(np.uint16)
    x = read_image(_save(tmp_path / "p.png", a))
    y = Preprocess(3, (24, 20), "naive")(x)
    assert y.shape == (3, 24, 20) and y.dtype == torch.float32
    # equal up to rounding: each channel is resized on its own, and nothing promises identical
    # rounding for every plane on every CPU
    torch.testing.assert_close(y[0], y[1], rtol=0, atol=1e-6)
    torch.testing.assert_close(y[1], y[2], rtol=0, atol=1e-6)
    assert 0 <= y.min() < 0.2 and 0.8 < y.max() <= 1


# ----------------------------------------------------------------------------- config -> dataset

def test_config_normalizer_overrides_task(tmp_path, monkeypatch):
    """The predecessor ignored the normalizer key: here the config's value reaches the dataset."""
    from utility.data.dataset import ImageDataset
    from utility.methods.registry import pipeline_for
    from utility.runs.supervised_data import build_data
    from utility.config.schemas import FTEConfig
    from utility.config.tasks import load_task

    make_folder_dataset(tmp_path / "data" / "tiny", ["a", "b"], 4, size=16)
    task = load_task(str(write_yaml(tmp_path / "tiny.yaml", task_dict(normalizer="naive"))))
    base = small_run_config(task=str(tmp_path / "tiny.yaml"), data_root=str(tmp_path / "data"),
                            shape_desired=[8, 8])
    for norm, window in (("naive", None), ("windowed", [100.0, 200.0]), ("imagenet", None)):
        cfg = FTEConfig(**base, normalizer=norm, window=window)
        data = build_data(cfg, task, torch.device("cpu"), pipeline_for(task.type))
        ds: ImageDataset = data.datasets["train"]
        assert ds.prep.normalizer == norm
        assert ds.prep.shape == (8, 8)
        raw = read_image(ds.split.paths[0])
        x = ds[0]["image"]
        expected = Preprocess(3, (8, 8), norm, tuple(window) if window else None)(raw)
        torch.testing.assert_close(x, expected)
        if norm == "imagenet":
            assert x.min() < 0  # mean/std applied, not min-max
