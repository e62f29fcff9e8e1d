"""Reading images from disk into float32 numpy arrays shaped [C, H, W] (intensities untouched).

Formats: PNG/JPEG/BMP/TIFF (8 and 16 bit), .npy, DICOM (.dcm; rescale slope/intercept applied, so CT
is in HU), NIfTI (.nii/.nii.gz; a 2-D image, or one slice of a volume addressed as
``volume.nii.gz::<k>`` along the configured slice axis — see :func:`expand_volumes`).

Where the channel axis is (see :func:`to_chw`):

* image formats (PIL) and DICOM: the format says it. A 2-D array is one channel; a 3-D array is
  always [H, W, C], however small H is (a 3x40 RGB PNG is [3, 3, 40], never 3 channels of 40x3).
* arrays (.npy, a NIfTI slice) carry no such information, so one documented rule decides: [C, H, W]
  when the first dimension is a channel count (1-4) and the last is not, otherwise [H, W, C] when
  the last is a channel count (this includes the ambiguous shapes such as 3x40x3 or 1x40x1: numpy
  images are [H, W, C] by convention), otherwise the file is refused (no channel axis, e.g. 5x40x40).
* a fourth channel (RGBA) is alpha and dropped; 2 channels are kept (repeated to 3 later).
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image

PIL_FORMATS = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif", ".webp"}
SLICE_SEP = "::"


class UnreadableImage(Exception):
    """A file that exists but cannot be decoded as an image (reason in the message)."""


def split_slice(name: str) -> tuple[str, int | None]:
    """``vol.nii.gz::12`` -> (``vol.nii.gz``, 12); any other name (a file that merely holds ``::``,
    such as ``scan::1.png``) is itself, with no slice."""
    base, sep, k = name.rpartition(SLICE_SEP)
    if sep and k.isdigit() and base.lower().endswith((".nii", ".nii.gz")):
        return base, int(k)
    return name, None


def read_image(path: Path) -> np.ndarray:
    """Load ``path`` as float32 [C, H, W], keeping raw intensities (16-bit stays 0..65535)."""
    name = path.name
    base, slice_index = split_slice(name)
    if slice_index is not None:
        path, name = path.with_name(base), base
    lower = name.lower()
    suffix = path.suffix.lower()
    try:
        if lower.endswith((".nii", ".nii.gz")):
            arr, layout = _read_nifti(path, slice_index), "array"
        elif suffix == ".dcm":
            arr, layout = _read_dicom(path), "hwc"
        elif suffix == ".npy":
            arr, layout = np.load(path, allow_pickle=False), "array"
        elif suffix in PIL_FORMATS:
            with Image.open(path) as im:
                im.load()
                arr, layout = _pil_to_array(im), "hwc"
        else:
            raise UnreadableImage(f"unsupported image format '{suffix}'")
    except UnreadableImage:
        raise
    except Exception as exc:  # PIL/numpy raise many types for corrupt files
        raise UnreadableImage(f"{type(exc).__name__}: {exc}") from None
    return to_chw(arr, layout)


def _read_dicom(path: Path) -> np.ndarray:
    import pydicom

    ds = pydicom.dcmread(str(path))
    arr = ds.pixel_array.astype(np.float32)
    slope = float(getattr(ds, "RescaleSlope", 1) or 1)
    intercept = float(getattr(ds, "RescaleIntercept", 0) or 0)
    arr = arr * slope + intercept
    if arr.ndim == 3 and int(getattr(ds, "SamplesPerPixel", 1)) == 1:
        raise UnreadableImage(f"multi-frame DICOM with {arr.shape[0]} frames; store one slice per file")
    return arr


@lru_cache(maxsize=2)
def _nifti_volume(path: str) -> np.ndarray:
    """The whole volume, kept for the next slices of the same file (loaders read slices in order)."""
    import nibabel as nib

    return np.asarray(nib.load(path).get_fdata(dtype=np.float32))


def _read_nifti(path: Path, slice_index: int | None) -> np.ndarray:
    vol = _nifti_volume(str(path))
    if slice_index is None:
        vol = np.squeeze(vol)
        if vol.ndim != 2:
            raise UnreadableImage(f"NIfTI volume of shape {vol.shape}: set slice_axis to read it as 2-D slices")
        return vol
    axis, k = divmod(slice_index, 1 << 20)
    return np.take(vol, k, axis=axis)


def nifti_slices(path: Path, axis: int) -> list[Path]:
    """One virtual path per slice of a NIfTI volume along ``axis`` (header only, no pixel data)."""
    import nibabel as nib

    shape = nib.load(str(path)).shape
    if axis >= len(shape):
        raise UnreadableImage(f"slice_axis {axis} but the volume has shape {shape}")
    return [path.with_name(f"{path.name}{SLICE_SEP}{(axis << 20) + k}") for k in range(shape[axis])]


def _pil_to_array(im: Image.Image) -> np.ndarray:
    if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        return np.asarray(im, dtype=np.float32)
    if im.mode in ("RGBA", "LA", "P", "CMYK", "YCbCr", "HSV", "1"):
        im = im.convert("RGB" if im.mode not in ("LA", "1") else "L")
    return np.asarray(im, dtype=np.float32)


CHANNEL_COUNTS = (1, 2, 3, 4)


def to_chw(arr: np.ndarray, layout: str = "array") -> np.ndarray:
    """A 2-D image as float32 [C, H, W] (C = 1, 2 or 3).

    ``layout="hwc"``: the source format says 3-D data is [H, W, C] (PIL, DICOM). ``layout="array"``:
    a bare array (.npy, NIfTI) whose channel axis follows the rule in this module's docstring.
    """
    arr = np.asarray(arr)
    if arr.dtype.kind not in "biuf":  # strings, objects, complex: no intensities
        raise UnreadableImage(f"array of dtype {arr.dtype} holds no pixel values")
    if arr.size == 0:
        raise UnreadableImage(f"empty image (shape {arr.shape})")
    if arr.ndim == 2:
        arr = arr[None]
    elif arr.ndim != 3:
        raise UnreadableImage(f"expected a 2-D image, got an array of shape {arr.shape}")
    elif layout == "hwc":
        arr = np.moveaxis(arr, -1, 0)
    elif layout != "array":
        raise ValueError(f"unknown layout {layout!r}")
    elif arr.shape[0] in CHANNEL_COUNTS and arr.shape[-1] not in CHANNEL_COUNTS:
        pass  # [C, H, W]
    elif arr.shape[-1] in CHANNEL_COUNTS:
        arr = np.moveaxis(arr, -1, 0)  # [H, W, C], also when both ends could be channels
    else:
        raise UnreadableImage(f"array of shape {arr.shape} has no channel axis: expected [H, W], "
                              f"[C, H, W] or [H, W, C] with C in 1-4")
    if arr.shape[0] == 4:  # drop alpha
        arr = arr[:3]
    elif arr.shape[0] not in CHANNEL_COUNTS:
        raise UnreadableImage(f"image with {arr.shape[0]} channels (shape {arr.shape}); expected 1-4")
    return arr.astype(np.float32, copy=False)
