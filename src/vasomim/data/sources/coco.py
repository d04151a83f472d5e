"""COCO masks: polygons rasterised by the pixel-centre rule, and RLE (compressed or not) decoded."""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np


def rasterize_polygons(polygons: Iterable[Sequence[float]], shape: tuple[int, int]) -> np.ndarray:
    """Fill COCO polygons into a bool mask.

    Coordinates follow COCO: ``x`` to the right, ``y`` down, pixel ``(row i, column j)`` covers
    ``[j, j+1) x [i, i+1)`` and has its centre at ``(j + 0.5, i + 0.5)``.  A pixel is in the mask
    when its centre lies inside the polygon or on its boundary.  So the rectangle with corners
    ``(2, 1)`` and ``(6, 4)`` fills columns 2..5 of rows 1..3: 12 pixels, its area.

    Args:
        polygons: Flat vertex lists ``[x1, y1, x2, y2, ...]``; several polygons are united.  Lists
            with fewer than three vertices have no area and draw nothing.
        shape: ``(height, width)`` of the mask; parts outside are clipped.
    """
    from skimage.draw import polygon as fill_polygon

    mask = np.zeros(shape, dtype=bool)
    for poly in polygons:
        xy = np.asarray(poly, dtype=np.float64).reshape(-1, 2)
        if len(xy) < 3:
            continue
        rr, cc = fill_polygon(xy[:, 1] - 0.5, xy[:, 0] - 0.5, shape=shape)
        mask[rr, cc] = True
    return mask


def rle_counts_from_string(counts: str) -> np.ndarray:
    """Run lengths of a COCO compressed RLE string (the ``counts`` that pycocotools writes).

    The format (pycocotools' ``rleToString``): each count is written in 5-bit groups, least
    significant first, each group as one character ``48 + group`` with bit 0x20 set when another
    group follows; the last group's bit 0x10 is the sign. From the fourth count on, the string
    holds the difference to the count two places before. Decoded here without a per-character
    Python loop.
    """
    c = np.frombuffer(counts.encode("ascii"), dtype=np.uint8).astype(np.int64) - 48
    if c.size == 0:
        return np.zeros(0, dtype=np.int64)
    if c.min() < 0 or c.max() > 63:
        raise ValueError("not a COCO compressed RLE string (characters outside '0'..'o')")
    last = (c & 0x20) == 0  # the last character of each value
    if not last[-1]:
        raise ValueError("truncated COCO compressed RLE string")
    ends = np.flatnonzero(last)
    starts = np.concatenate(([0], ends[:-1] + 1))
    group = np.repeat(np.arange(len(ends)), ends - starts + 1)
    shift = 5 * (np.arange(c.size) - starts[group])
    values = np.add.reduceat((c & 0x1F) << shift, starts)
    negative = (c[ends] & 0x10) != 0
    values = values - (negative.astype(np.int64) << (5 * (ends - starts + 1)))
    # undo the deltas: counts[m] = values[m] + counts[m - 2] for m > 2
    out = values.copy()
    out[3::2] = np.cumsum(values[1::2])[1:]
    out[4::2] = np.cumsum(values[2::2])[1:]
    return out


def decode_rle(counts: str | Sequence[int], size: Sequence[int]) -> np.ndarray:
    """A COCO RLE mask as a bool ``(height, width)`` array.

    Args:
        counts: Compressed string (``"43V10O..."``) or the uncompressed list of run lengths. Runs
            alternate background and foreground, starting with background, over the pixels in
            column-major order (COCO's convention).
        size: ``[height, width]``.

    Raises:
        ValueError: Malformed string, negative runs, or runs that do not add up to height x width.
    """
    h, w = (int(v) for v in size)
    runs = rle_counts_from_string(counts) if isinstance(counts, str) else np.asarray(counts, dtype=np.int64)
    if runs.ndim != 1 or (runs.size and runs.min() < 0):
        raise ValueError("RLE counts must be non-negative run lengths")
    if int(runs.sum()) != h * w:
        raise ValueError(f"RLE runs cover {int(runs.sum())} pixels, the mask {h}x{w} has {h * w}")
    flat = np.repeat((np.arange(runs.size) % 2).astype(bool), runs)
    return flat.reshape(w, h).T
