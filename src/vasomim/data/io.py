"""Reading single images and masks, and writing PNGs atomically.

The reading rule (documented once, used everywhere):

* An image becomes a 2-D ``float32`` array in ``[0, 1]``: 8-bit data is divided by 255, 16-bit data
  by 65535 (the full range of the container, never by the image's own min/max, so intensities are
  never silently stretched).  Colour images (RGB, RGBA, palette) are converted to luminance with
  ITU-R 601-2 weights (Pillow's ``L`` conversion); the alpha channel is dropped.
* A mask becomes a 2-D ``bool`` array.  Gray masks may use 0/255, 0/1 or any 8-bit scale: a pixel is
  vessel when its value is ``>= 128`` for masks whose maximum exceeds 1, and ``== 1`` for 0/1 masks.
  Colour masks are refused instead of guessed.

Every failure raises :class:`ImageReadError`, whose message names the file and the reason in one line.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


class ImageReadError(ValueError):
    """A file that cannot be used as an image or mask. ``str(err)`` is one line: ``path: reason``."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


def _open(path: str | os.PathLike) -> Image.Image:
    p = Path(path)
    if not p.exists():
        raise ImageReadError(p, "file not found")
    if p.is_dir():
        raise ImageReadError(p, "is a directory, not an image")
    if p.stat().st_size == 0:
        raise ImageReadError(p, "empty file (0 bytes)")
    try:
        img = Image.open(p)
        img.load()
    except UnidentifiedImageError:
        raise ImageReadError(p, "not a readable image (unknown or corrupt format)") from None
    except (OSError, SyntaxError, ValueError) as exc:
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ImageReadError(p, f"corrupt or truncated image ({msg})") from None
    return img


def pil_to_gray_array(img: Image.Image, path: str | os.PathLike = "<image>") -> np.ndarray:
    """Convert a loaded PIL image to float32 gray in [0, 1] following the module's reading rule."""
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        arr = np.asarray(img, dtype=np.float32) / 65535.0
    elif mode == "I":
        raw = np.asarray(img)
        if raw.min() < 0 or raw.max() > 65535:
            raise ImageReadError(path, f"32-bit integer image with values outside 0..65535 ({raw.min()}..{raw.max()})")
        scale = 65535.0 if raw.max() > 255 else 255.0
        arr = raw.astype(np.float32) / scale
    elif mode == "F":
        raw = np.asarray(img, dtype=np.float32)
        if not np.isfinite(raw).all():
            raise ImageReadError(path, "floating-point image contains NaN or infinite values")
        if raw.min() < 0 or raw.max() > 1:
            raise ImageReadError(path, f"floating-point image outside [0, 1] ({raw.min():.3g}..{raw.max():.3g}); rescale it first")
        arr = raw
    elif mode == "1":
        arr = np.asarray(img, dtype=np.float32)
    elif mode in ("L", "LA", "P", "PA", "RGB", "RGBA", "RGBX", "CMYK", "YCbCr", "LAB", "HSV"):
        if mode == "P" and "transparency" in img.info:
            img = img.convert("RGBA")
        arr = np.asarray(img.convert("L"), dtype=np.float32) / 255.0
    else:
        raise ImageReadError(path, f"unsupported image mode {mode!r}")
    if arr.ndim != 2 or arr.size == 0:
        raise ImageReadError(path, f"expected a 2-D image, got shape {arr.shape}")
    return np.ascontiguousarray(arr, dtype=np.float32)


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read an angiogram as 2-D float32 gray in [0, 1] (see the module docstring for the rule)."""
    with _open(path) as img:
        if getattr(img, "n_frames", 1) > 1:
            img.seek(0)
        return pil_to_gray_array(img, path)


def read_mask(path: str | os.PathLike, expected_shape: tuple[int, int] | None = None) -> np.ndarray:
    """Read a binary vessel mask (0/255, 0/1 or >=128 conventions) as a 2-D bool array."""
    with _open(path) as img:
        mode = img.mode
        if mode in ("RGB", "RGBA", "CMYK", "YCbCr", "LAB", "HSV"):
            arr = np.asarray(img.convert("RGB"))
            if not (np.array_equal(arr[..., 0], arr[..., 1]) and np.array_equal(arr[..., 0], arr[..., 2])):
                raise ImageReadError(path, f"mask is a colour ({mode}) image; save it as a single-channel 0/255 PNG")
            raw = arr[..., 0]
        elif mode in ("P", "PA"):
            raise ImageReadError(path, "mask is a palette (colour-mapped) image; save it as a single-channel 0/255 PNG")
        elif mode == "LA":
            raw = np.asarray(img.getchannel("L"))
        else:
            raw = np.asarray(img)
    if raw.ndim != 2:
        raise ImageReadError(path, f"expected a 2-D mask, got shape {raw.shape}")
    if raw.dtype == bool:
        out = raw
    else:
        vmax = raw.max()
        out = raw == 1 if vmax == 1 else raw >= (128 if vmax <= 255 else 32768)
    if expected_shape is not None and tuple(out.shape) != tuple(expected_shape):
        raise ImageReadError(
            path, f"mask size {out.shape[1]}x{out.shape[0]} differs from its image {expected_shape[1]}x{expected_shape[0]}"
        )
    return np.ascontiguousarray(out)


def write_png_atomic(path: str | os.PathLike, array: np.ndarray) -> None:
    """Write a uint8/bool/uint16 2-D or RGB array as PNG via a temporary file and an atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.asarray(array)
    if arr.dtype == bool:
        arr = arr.astype(np.uint8) * 255
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            Image.fromarray(arr).save(fh, format="PNG")
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
