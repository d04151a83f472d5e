"""Reading DICOM X-ray angiograms (single images and multi-frame cines) as gray float frames.

pydicom >= 3 is an optional dependency (``pip install 'vasomim[dicom]'``); it is imported only when
a DICOM file is actually read, and its absence (or an older version) gives an
:class:`~vasomim.data.errors.ImageReadError` that says how to install it.

The DICOM reading rule, applied to every frame (PS3.3 C.11: modality LUT, then VOI LUT, then the
photometric interpretation). The transforms are pydicom's (``pydicom.pixels.apply_modality_lut``
and ``apply_voi_lut``), which read LUT data in either byte order; vasomim only scales their output
to ``[0, 1]``:

1. Stored values ``x`` become modality values ``y``: through a Modality LUT Sequence when present,
   else the rescale ``y = RescaleSlope * x + RescaleIntercept`` (identity when absent).
2. The VOI transform maps ``y`` to ``[0, 1]``, the first one present of:

   * a VOI LUT Sequence: ``LUTData[clip(y - first_mapped, 0, n - 1)] / (2**bits - 1)`` with
     ``(n, first_mapped, bits)`` from the LUT Descriptor;
   * a window (first Window Center / Width pair), with the VOI LUT Function of PS3.3 C.11.2.1.2:
     ``LINEAR`` (default): ``clip((y - (c - 0.5)) / (w - 1) + 0.5, 0, 1)``,
     ``LINEAR_EXACT``: ``clip((y - c) / w + 0.5, 0, 1)``,
     ``SIGMOID``: ``1 / (1 + exp(-4 (y - c) / w))``;
   * otherwise the full range of the modality values, never the frame's own min/max: the
     container's values ``0 .. 2**BitsStored - 1`` (or the signed range when Pixel Representation
     is 1) passed through the rescale, or ``0 .. 2**bits - 1`` of a Modality LUT, map linearly onto
     ``[0, 1]``.  So a 12-bit frame is divided by 4095.
3. ``MONOCHROME1`` (minimum value shown white) is inverted, ``1 - v``, so that every frame reads
   as ``MONOCHROME2``: vessels dark on a bright background, as in a raster angiogram.  RGB frames
   (rare) become luminance with the ITU-R 601-2 weights over the container range; other
   photometric interpretations (palette colour, ...) are refused.

A multi-frame file (a cine) is a sequence of images: frame ``k`` of ``run.dcm`` has the id
``run.dcm#f012`` (:func:`frame_id`), which :func:`vasomim.data.io.read_image` accepts.
"""

from __future__ import annotations

import copy
import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from vasomim.data.errors import IMAGE_SUFFIXES, ImageReadError, first_line

DICOM_SUFFIXES = (".dcm", ".dicom")
_FRAME_ID = re.compile(r"^(?P<path>.+)#f(?P<frame>\d+)$")
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float64)  # ITU-R 601-2, as Pillow's "L" conversion


def frame_id(path: str | os.PathLike, frame: int) -> str:
    """The id of one frame of a multi-frame file: ``path#f012`` (at least three digits)."""
    return f"{os.fspath(path)}#f{frame:03d}"


def split_frame_id(image_id: str | os.PathLike) -> tuple[str, int | None]:
    """Split ``path#f012`` into ``(path, 12)``; an id without a frame suffix gives ``(path, None)``."""
    s = os.fspath(image_id)
    m = _FRAME_ID.match(s)
    if m is None:
        return s, None
    return m.group("path"), int(m.group("frame"))


def is_dicom_file(path: str | os.PathLike) -> bool:
    """True for a ``.dcm``/``.dicom`` file, or a file without a known suffix whose preamble says ``DICM``.

    Only files without a known image suffix are opened (to read 132 bytes), so this stays cheap when
    listing large folders of PNGs.
    """
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix in DICOM_SUFFIXES:
        return True
    if suffix in IMAGE_SUFFIXES:
        return False
    try:
        with open(p, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def _pydicom(path: str | os.PathLike):
    try:
        import pydicom
    except ImportError:
        raise ImageReadError(path, "reading DICOM needs pydicom: pip install 'vasomim[dicom]'") from None
    if int(pydicom.__version__.split(".")[0]) < 3:
        raise ImageReadError(path, f"reading DICOM needs pydicom >= 3 (found {pydicom.__version__}): "
                                   "pip install 'vasomim[dicom]'")
    return pydicom


def read_dicom_header(path: str | os.PathLike) -> Any:
    """The DICOM dataset without its pixel data (fast; used for listing frames and checking files)."""
    pydicom = _pydicom(path)
    p = Path(path)
    if not p.is_file():
        raise ImageReadError(p, "file not found")
    if p.stat().st_size == 0:
        raise ImageReadError(p, "empty file (0 bytes)")
    try:
        ds = pydicom.dcmread(p, stop_before_pixels=True)
    except pydicom.errors.InvalidDicomError:
        raise ImageReadError(p, "not a DICOM file (no DICM preamble)") from None
    except Exception as exc:  # pydicom raises many types on damaged headers
        raise ImageReadError(p, f"unreadable DICOM header ({first_line(exc)})") from None
    return ds


def dicom_frame_count(path: str | os.PathLike) -> int:
    """Number of frames in a DICOM file (1 for a single image); errors if it holds no image."""
    ds = read_dicom_header(path)
    if "Rows" not in ds or "Columns" not in ds:
        raise ImageReadError(path, "DICOM file holds no image (no Rows/Columns)")
    return max(int(ds.get("NumberOfFrames", 1) or 1), 1)


def _decode(path: str | os.PathLike, index: int | None) -> tuple[Any, np.ndarray]:
    """Decode all frames (``index=None``) or one frame; returns the dataset and a (F,H,W[,3]) array."""
    pydicom = _pydicom(path)
    ds = read_dicom_header(path)
    n_frames = max(int(ds.get("NumberOfFrames", 1) or 1), 1)
    if index is not None and not 0 <= index < n_frames:
        raise ImageReadError(path, f"frame {index} requested but the file has {n_frames} frame(s)")
    try:
        arr = pydicom.pixels.pixel_array(os.fspath(path), index=index)  # decodes only the frame asked for
    except Exception as exc:  # missing PixelData, unsupported transfer syntax, truncated data, ...
        raise ImageReadError(path, f"cannot decode DICOM pixel data ({first_line(exc)})") from None
    colour = ds.get("SamplesPerPixel", 1) > 1
    if index is not None or n_frames == 1:
        arr = arr[None]
    if arr.ndim != (4 if colour else 3):
        raise ImageReadError(path, f"unexpected DICOM pixel array shape {arr.shape}")
    return ds, arr


def _container_range(ds: Any) -> tuple[float, float]:
    bits = int(ds.get("BitsStored", ds.get("BitsAllocated", 16)))
    if int(ds.get("PixelRepresentation", 0)) == 1:
        return -(2.0 ** (bits - 1)), 2.0 ** (bits - 1) - 1
    return 0.0, 2.0**bits - 1


def _modality_range(ds: Any) -> tuple[float, float]:
    """The modality values of the container's extremes, as pydicom's windowing scales its output.

    A Modality LUT gives ``0 .. 2**bits - 1`` (PS3.3 C.11.1.1.1); otherwise the container range goes
    through the rescale (in the order of the stored values: a negative slope swaps the ends).
    """
    from pydicom.pixels import apply_modality_lut

    seq = ds.get("ModalityLUTSequence")
    if seq:
        return 0.0, 2.0 ** int(seq[0].LUTDescriptor[2]) - 1
    lo, hi = apply_modality_lut(np.array(_container_range(ds), dtype=np.float64), ds)
    return float(lo), float(hi)


def apply_window(values: np.ndarray, center: float, width: float, function: str = "LINEAR") -> np.ndarray:
    """Map modality values to ``[0, 1]`` with a DICOM window (PS3.3 C.11.2.1.2), by pydicom's windowing.

    Args:
        values: Modality values (after the modality LUT or rescale), any shape.
        center, width: Window Center and Window Width.  ``LINEAR`` needs ``width >= 1``, the others
            ``width > 0``.
        function: VOI LUT Function: ``LINEAR`` (default), ``LINEAR_EXACT`` or ``SIGMOID``.

    Returns:
        float32 array of the same shape in ``[0, 1]``.
    """
    from pydicom.dataset import Dataset
    from pydicom.pixels import apply_windowing

    function = (function or "LINEAR").upper()
    if function not in ("LINEAR", "LINEAR_EXACT", "SIGMOID"):
        raise ValueError(f"unknown VOI LUT Function {function!r}")
    if width < 1 if function == "LINEAR" else width <= 0:
        raise ValueError(f"{function} window width must be {'>= 1' if function == 'LINEAR' else '> 0'}, got {width}")
    ds = Dataset()  # a 16-bit unsigned container: pydicom's output spans 0 .. 65535
    ds.PhotometricInterpretation, ds.BitsStored, ds.PixelRepresentation = "MONOCHROME2", 16, 0
    ds.WindowCenter, ds.WindowWidth, ds.VOILUTFunction = float(center), float(width), function
    out = apply_windowing(np.asarray(values, dtype=np.float64), ds) / 65535.0
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def _voi(ds: Any, values: np.ndarray, path: str | os.PathLike) -> np.ndarray:
    """Step 2 of the module rule: modality values -> [0, 1] (float64, clipped)."""
    from pydicom.pixels import apply_voi_lut

    seq = ds.get("VOILUTSequence")
    try:
        if seq:
            bits = int(seq[0].LUTDescriptor[2])
            indices = np.rint(values).astype(np.int64)  # LUT inputs are integers; the rescale may give floats
            return np.clip(apply_voi_lut(indices, ds, prefer_lut=True) / (2.0**bits - 1), 0.0, 1.0)
        if "WindowCenter" in ds and "WindowWidth" in ds:
            lo, hi = _modality_range(ds)  # pydicom maps the window onto this range
            return np.clip((apply_voi_lut(values, ds, prefer_lut=False) - lo) / (hi - lo), 0.0, 1.0)
    except (ValueError, TypeError, IndexError, AttributeError, ZeroDivisionError) as exc:
        raise ImageReadError(path, f"invalid DICOM VOI LUT or window ({first_line(exc)})") from None
    lo, hi = sorted(_modality_range(ds))
    return np.clip((values - lo) / (hi - lo), 0.0, 1.0)


def _lut_widened(ds: Any) -> Any:
    """`ds`, or a copy whose Modality LUT says 16 bits where it says 9-15 (valid DICOM, e.g. 12).

    pydicom holds the LUT entries as ``uint{bits}`` and knows no 12-bit integers; the values are
    the same in 16 bits. The [0, 1] scaling keeps the declared depth (:func:`_modality_range`).
    """
    seq = ds.get("ModalityLUTSequence")
    if not seq or int(seq[0].LUTDescriptor[2]) in (8, 16):
        return ds
    ds = copy.deepcopy(ds)  # a header without pixel data: cheap
    descriptor = list(ds.ModalityLUTSequence[0].LUTDescriptor)
    descriptor[2] = 16 if descriptor[2] > 8 else 8
    ds.ModalityLUTSequence[0].LUTDescriptor = descriptor
    return ds


def _to_gray(ds: Any, arr: np.ndarray, path: str | os.PathLike) -> np.ndarray:
    """Apply the module's reading rule to a (F,H,W[,3]) stored-value array -> (F,H,W) float32."""
    from pydicom.pixels import apply_modality_lut

    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    if photometric in ("MONOCHROME1", "MONOCHROME2"):
        try:
            values = apply_modality_lut(arr, _lut_widened(ds)).astype(np.float64)
        except (ValueError, TypeError, IndexError, AttributeError) as exc:
            raise ImageReadError(path, f"invalid DICOM modality LUT ({first_line(exc)})") from None
        out = _voi(ds, values, path)
        if photometric == "MONOCHROME1":
            out = 1.0 - out
        return out.astype(np.float32)
    if photometric in ("RGB", "YBR_FULL", "YBR_FULL_422") and arr.ndim == 4:
        lo, hi = _container_range(ds)
        return ((arr.astype(np.float64) @ _LUMA - lo) / (hi - lo)).clip(0, 1).astype(np.float32)
    raise ImageReadError(path, f"unsupported DICOM photometric interpretation {photometric!r}")


def read_dicom_frames(path: str | os.PathLike) -> list[np.ndarray]:
    """Read every frame of a DICOM file as 2-D float32 gray in ``[0, 1]`` (module rule).

    Args:
        path: A DICOM file, single- or multi-frame.

    Returns:
        One ``(H, W)`` array per frame; frame ``k`` is addressed elsewhere as ``frame_id(path, k)``.
    """
    ds, arr = _decode(path, None)
    return list(_to_gray(ds, arr, path))


def read_dicom_frame(path: str | os.PathLike, frame: int | None = None) -> np.ndarray:
    """Read one frame of a DICOM file as 2-D float32 gray in ``[0, 1]``.

    Args:
        path: A DICOM file.
        frame: Frame index.  ``None`` is accepted only for a single-frame file: a cine has no "the
            image", so a multi-frame file without an index is an error that says how to address a
            frame.
    """
    if frame is None:
        n = dicom_frame_count(path)
        if n > 1:
            raise ImageReadError(
                path, f"multi-frame DICOM ({n} frames): read one frame as {Path(path).name}#f000, or all with read_dicom_frames"
            )
        frame = 0
    ds, arr = _decode(path, frame)
    return _to_gray(ds, arr, path)[0]
