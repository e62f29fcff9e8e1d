"""Reading images from disk into float32 numpy arrays shaped [C, H, W] (intensities untouched)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

PIL_FORMATS = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif", ".webp"}


class UnreadableImage(Exception):
    """A file that exists but cannot be decoded as an image (reason in the message)."""


def read_image(path: Path) -> np.ndarray:
    """Load ``path`` as float32 [C, H, W], keeping raw intensities (16-bit stays 0..65535)."""
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
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
