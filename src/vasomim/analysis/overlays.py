"""Overlay pictures of a segmentation on its angiogram.

Colour code (colour-blind safe pair plus white): true positives white, false positives orange
(predicted but not in the reference), false negatives blue (missed).  Without a reference the
prediction is drawn in orange (or the colour asked for).
"""

from __future__ import annotations

import numpy as np

TP = np.array([255, 255, 255], dtype=np.float32)
FP = np.array([230, 159, 0], dtype=np.float32)
FN = np.array([0, 114, 178], dtype=np.float32)


def overlay(
    image01: np.ndarray, pred: np.ndarray, gt: np.ndarray | None = None, alpha: float = 0.65, colour: np.ndarray = FP
) -> np.ndarray:
    """RGB uint8 (H, W, 3) picture of ``pred`` (and its errors against ``gt``) blended on a gray image.

    Args:
        image01: 2-D gray image in [0, 1].
        pred: bool mask, same shape.
        gt: optional bool reference mask, same shape.
        alpha: opacity of the colours.
        colour: RGB colour of the mask when no reference is given (e.g. ``TP`` to draw a reference).
    """
    img = np.clip(np.asarray(image01, dtype=np.float32), 0, 1)
    if img.shape != pred.shape or (gt is not None and gt.shape != img.shape):
        raise ValueError(f"overlay: shapes differ (image {img.shape}, pred {pred.shape}, gt {None if gt is None else gt.shape})")
    rgb = np.repeat(img[..., None] * 255.0, 3, axis=2)
    pred = pred.astype(bool)
    layers = [(pred, np.asarray(colour, np.float32))] if gt is None else [(pred & gt, TP), (pred & ~gt, FP), (~pred & gt.astype(bool), FN)]
    for m, colour in layers:
        rgb[m] = (1 - alpha) * rgb[m] + alpha * colour
    return rgb.round().astype(np.uint8)


def side_by_side(*panels: np.ndarray, gap: int = 4) -> np.ndarray:
    """Concatenate gray (H, W) or RGB (H, W, 3) uint8 panels of equal height, with a white gap."""
    rgb = [np.repeat(p[..., None], 3, axis=2) if p.ndim == 2 else p for p in panels]
    h = rgb[0].shape[0]
    if any(p.shape[0] != h for p in rgb):
        raise ValueError("side_by_side: panels must have the same height")
    sep = np.full((h, gap, 3), 255, dtype=np.uint8)
    out = []
    for i, p in enumerate(rgb):
        if i:
            out.append(sep)
        out.append(p.astype(np.uint8))
    return np.concatenate(out, axis=1)
