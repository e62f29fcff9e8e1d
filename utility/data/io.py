"""Reading images from disk into float32 numpy arrays shaped [C, H, W] (intensities untouched).

Formats: PNG/JPEG/BMP/TIFF (8 and 16 bit), .npy, DICOM (.dcm; rescale slope/intercept applied, so CT
is in HU), NIfTI (.nii/.nii.gz; a 2-D image, or one slice of a volume addressed as
``volume.nii.gz::<k>`` along the configured slice axis — see :func:`expand_volumes`).
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


def read_image(path: Path) -> np.ndarray:
    """Load ``path`` as float32 [C, H, W], keeping raw intensities (16-bit stays 0..65535)."""
    name = path.name
    slice_index: int | None = None
    if SLICE_SEP in name:
        base, _, k = name.rpartition(SLICE_SEP)
        path, slice_index = path.with_name(base), int(k)
        name = base
    lower = name.lower()
    suffix = path.suffix.lower()
    try:
        if lower.endswith((".nii", ".nii.gz")):
            arr = _read_nifti(path, slice_index)
        elif suffix == ".dcm":
            arr = _read_dicom(path)
        elif suffix == ".npy":
            arr = np.load(path, allow_pickle=False)
        elif suffix in PIL_FORMATS:
            with Image.open(path) as im:
                im.load()
                arr = _pil_to_array(im)
        else:
            raise UnreadableImage(f"unsupported image format '{suffix}'")
    except UnreadableImage:
        raise
    except Exception as exc:  # PIL/numpy raise many types for corrupt files
        raise UnreadableImage(f"{type(exc).__name__}: {exc}") from None
    return to_chw(arr, path)


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


def to_chw(arr: np.ndarray, path: Path) -> np.ndarray:
    """[H, W] -> [1, H, W]; [H, W, C] (C <= 4) -> [C, H, W]; [C, H, W] kept."""
    arr = np.asarray(arr)
    if arr.ndim == 2:
        arr = arr[None]
    elif arr.ndim == 3 and arr.shape[-1] in (1, 2, 3, 4) and arr.shape[0] not in (1, 3):
        arr = np.moveaxis(arr, -1, 0)
    elif arr.ndim != 3:
        raise UnreadableImage(f"expected a 2-D image, got an array of shape {arr.shape}")
    if arr.shape[0] == 4:  # drop alpha
        arr = arr[:3]
    return arr.astype(np.float32, copy=False)
