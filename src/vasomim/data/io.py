"""Reading single images and masks, and writing PNGs atomically.

The reading rule (documented once, used everywhere):

* An image becomes a 2-D ``float32`` array in ``[0, 1]``: 8-bit data is divided by 255, 16-bit data
  by 65535 (the full range of the container, never by the image's own min/max, so intensities are
  never silently stretched; 12-bit data stored in a 16-bit PNG therefore reads at most 0.0625, and
  ``vasomim data check`` warns about it).  Colour images (RGB, RGBA, palette) are converted to
  luminance with ITU-R 601-2 weights (Pillow's ``L`` conversion); the alpha channel is dropped.
* DICOM files (``.dcm``/``.dicom``, or any file without an image suffix whose preamble says
  ``DICM``) follow the DICOM rule of :mod:`vasomim.data.dicom` (rescale, VOI LUT or window,
  MONOCHROME1 inverted).  A frame of a multi-frame file is addressed as ``path#f012``.  A
  multi-frame DICOM read without a frame index is an error (a cine is many images, not one); a
  multi-frame raster file (multi-page TIFF, MPO JPEG, APNG) without an index reads its first frame,
  since its extra frames are usually previews.
* A mask becomes a 2-D ``bool`` array.  Gray masks may use 0/255, 0/1 or any 8-bit scale: a pixel is
  vessel when its value is ``>= 128`` for masks whose maximum exceeds 1 (``>= 32768`` for 16-bit
  masks whose maximum exceeds 255), and ``== 1`` for 0/1 masks; 1-bit masks are taken as they are.
  With ``labels=`` (nnU-Net label maps) a pixel is vessel when its value is one of the labels.
  Colour masks (RGB or palette images whose colours are not all gray) are refused instead of guessed.

Every failure raises :class:`ImageReadError`, whose message names the file and the reason in one line.
Nothing keeps a file open between calls, so the readers are safe in DataLoader worker processes.
"""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterable, Iterator

import numpy as np
from PIL import Image, UnidentifiedImageError

from vasomim.data.dicom import is_dicom_file, read_dicom_frame, read_dicom_header, split_frame_id
from vasomim.data.errors import IMAGE_SUFFIXES, ImageReadError, first_line


def looked_for(dicom: bool = True) -> str:
    """The files a folder is searched for, in words (for "no images found" errors)."""
    return (f"looked for {', '.join(IMAGE_SUFFIXES)}" + (", .dcm, .dicom and files with a DICOM preamble"
                                                         if dicom else "") + ", recursively")


def _check_file(path: str | os.PathLike) -> Path:
    p = Path(path)
    if not p.exists():
        raise ImageReadError(p, "file not found")
    if p.is_dir():
        raise ImageReadError(p, "is a directory, not an image")
    if p.stat().st_size == 0:
        raise ImageReadError(p, "empty file (0 bytes)")
    return p


def _open(path: str | os.PathLike) -> Image.Image:
    p = _check_file(path)
    try:
        img = Image.open(p)
    except UnidentifiedImageError:
        raise ImageReadError(p, "not a readable image (unknown or corrupt format)") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise ImageReadError(p, f"unreadable image header ({first_line(exc)})") from None
    try:
        img.load()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        img.close()
        raise ImageReadError(p, f"corrupt or truncated image ({first_line(exc)})") from None
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
        raw = np.array(img, dtype=np.float32)
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


@dataclass(frozen=True)
class ImageInfo:
    """What a file's header says, read without decoding pixels.

    Attributes:
        width, height: Size in pixels.
        mode: Pillow's mode for raster files (``L``, ``RGBA``, ``I;16``, ``P``, ...), or
            ``"<photometric> <bits>-bit"`` for DICOM (``MONOCHROME1 12-bit``).
        frames: Number of frames (1 for an ordinary image).
        format: File format as Pillow names it (``PNG``, ``JPEG``, ...) or ``DICOM``.
    """

    width: int
    height: int
    mode: str
    frames: int
    format: str


def image_info(path: str | os.PathLike) -> ImageInfo:
    """Read the header of an image or DICOM file (``path#fNNN`` ids are accepted): size, mode, frames."""
    base, _frame = split_frame_id(path)
    if is_dicom_file(base):
        ds = read_dicom_header(base)
        if "Rows" not in ds or "Columns" not in ds:
            raise ImageReadError(base, "DICOM file holds no image (no Rows/Columns)")
        bits = int(ds.get("BitsStored", ds.get("BitsAllocated", 0)))
        mode = f"{ds.get('PhotometricInterpretation', 'MONOCHROME2')} {bits}-bit"
        frames = max(int(ds.get("NumberOfFrames", 1) or 1), 1)
        return ImageInfo(int(ds.Columns), int(ds.Rows), mode, frames, "DICOM")
    p = _check_file(base)
    try:
        with Image.open(p) as img:
            return ImageInfo(img.width, img.height, img.mode, getattr(img, "n_frames", 1), img.format or "?")
    except UnidentifiedImageError:
        raise ImageReadError(p, "not a readable image (unknown or corrupt format)") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise ImageReadError(p, f"unreadable image header ({first_line(exc)})") from None


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read an angiogram as 2-D float32 gray in ``[0, 1]`` (see the module docstring for the rule).

    Args:
        path: An image file (png/jpg/bmp/tif, any Pillow mode), a DICOM file, or one frame of a
            multi-frame file written ``path#f012``.
    """
    base, frame = split_frame_id(path)
    if frame is not None and Path(path).exists():  # a file whose name really ends in "#f<digits>"
        base, frame = os.fspath(path), None
    if is_dicom_file(base):
        return read_dicom_frame(base, frame)
    with _open(base) as img:
        n_frames = getattr(img, "n_frames", 1)
        if frame is not None and frame >= n_frames:
            raise ImageReadError(base, f"frame {frame} requested but the file has {n_frames} frame(s)")
        if frame:
            try:
                img.seek(frame)
                img.load()
            except (OSError, EOFError, ValueError) as exc:
                raise ImageReadError(base, f"corrupt frame {frame} ({first_line(exc)})") from None
        return pil_to_gray_array(img, path)


def _mask_values(img: Image.Image, path: str | os.PathLike) -> np.ndarray:
    """The single-channel values of a mask image; colour is refused."""
    mode = img.mode
    if mode in ("RGB", "RGBA", "RGBX", "CMYK", "YCbCr", "LAB", "HSV", "P", "PA"):
        arr = np.asarray(img.convert("RGB"))
        if not (np.array_equal(arr[..., 0], arr[..., 1]) and np.array_equal(arr[..., 0], arr[..., 2])):
            kind = "palette (colour-mapped)" if mode in ("P", "PA") else f"colour ({mode})"
            raise ImageReadError(path, f"mask is a {kind} image; save it as a single-channel 0/255 PNG")
        return arr[..., 0]
    if mode == "LA":
        return np.asarray(img.getchannel("L"))
    return np.asarray(img)


def read_mask(
    path: str | os.PathLike,
    expected_shape: tuple[int, int] | None = None,
    labels: Iterable[int] | None = None,
) -> np.ndarray:
    """Read a binary vessel mask as a 2-D bool array.

    Args:
        path: A single-channel mask image (0/255, 0/1, >=128 or 1-bit; gray stored as RGB is
            accepted).
        expected_shape: ``(height, width)`` of the image the mask belongs to; a different size is an
            error.
        labels: Read the file as an integer label map and mark the pixels whose value is in
            ``labels`` (used for nnU-Net ``labelsTr``); ``None`` applies the binary conventions
            above.
    """
    with _open(path) as img:
        raw = _mask_values(img, path)
    if raw.ndim != 2:
        raise ImageReadError(path, f"expected a 2-D mask, got shape {raw.shape}")
    if labels is not None:
        if raw.dtype.kind not in "biu":
            raise ImageReadError(path, f"label map must hold integers, got {raw.dtype}")
        out = np.isin(raw, np.asarray(list(labels)))
    elif raw.dtype == bool:
        out = raw
    else:
        vmax = raw.max()
        out = raw == 1 if vmax == 1 else raw >= (128 if vmax <= 255 else 32768)
    if expected_shape is not None and tuple(out.shape) != tuple(expected_shape):
        raise ImageReadError(
            path, f"mask size {out.shape[1]}x{out.shape[0]} differs from its image {expected_shape[1]}x{expected_shape[0]}"
        )
    return np.ascontiguousarray(out)


def _naming(exc: OSError, path: Path) -> OSError:
    """`exc` with `path` as its file name (a failed write or rename would name nothing, or the temporary)."""
    if exc.errno is None:
        return OSError(f"{path}: {exc}")
    return type(exc)(exc.errno, exc.strerror or os.strerror(exc.errno), str(path))


@contextmanager
def atomic_file(path: str | os.PathLike, durable: bool = False) -> Iterator[BinaryIO]:
    """A binary temporary file beside `path`, renamed onto `path` when the block ends without error.

    A reader never sees a half-written file and a failure leaves the previous file intact: the
    temporary file is removed, and an ``OSError`` (read-only folder, full disk, permission) names
    `path`. ``durable`` also syncs the data to disk before the rename (checkpoints).
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except FileExistsError as exc:  # a file where a folder of the path should be
        raise FileExistsError(exc.errno, "a file is in the way of this output folder", exc.filename) from None
    except OSError as exc:
        raise (exc if exc.filename else _naming(exc, path)) from None
    try:
        with os.fdopen(fd, "wb") as fh:
            yield fh
            if durable:
                fh.flush()
                os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; outputs are meant to be read by others
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise _naming(exc, path) from exc
        raise


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write UTF-8 `text` to `path` through :func:`atomic_file` (never a half file)."""
    with atomic_file(path) as fh:
        fh.write(text.encode("utf-8"))


def write_png_atomic(path: str | os.PathLike, array: np.ndarray) -> None:
    """Write a uint8/bool/uint16 2-D or RGB array as PNG via a temporary file and an atomic rename."""
    arr = np.asarray(array)
    if arr.dtype == bool:
        arr = arr.astype(np.uint8) * 255
    with atomic_file(path) as fh:
        Image.fromarray(arr).save(fh, format="PNG")
