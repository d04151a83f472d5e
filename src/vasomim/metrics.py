"""Segmentation metrics: Dice (DSC) and centerline Dice (clDice), per image, in NumPy.

Every function takes plain arrays and returns plain floats, so the same code scores a network's
output, a Frangi/Sato anatomy mask or a folder of PNGs written by another tool.

Scores are computed at the *original* image resolution: a prediction made at the network's input
size is first brought back with :func:`resize_to` (bilinear for probabilities, nearest for masks)
and thresholded with :func:`binarize`.

Conventions (the same everywhere in vasomim, never NaN):

* **Dice** ``2|P∩G| / (|P| + |G|)``. Both masks empty: 1.0 (the prediction is exactly right);
  exactly one empty: 0.0.
* **clDice** (Shit et al., CVPR 2021) with skeletons ``S(.)`` from
  :func:`skimage.morphology.skeletonize`:
  topology precision ``Tprec = |S(P)∩G| / |S(P)|``, topology sensitivity
  ``Tsens = |S(G)∩P| / |S(G)|``, ``clDice = 2·Tprec·Tsens / (Tprec + Tsens)``.
  Both masks empty: clDice, Tprec and Tsens are 1.0. Exactly one empty: all three are 0.0.
  Both non-empty but ``Tprec + Tsens == 0`` (the centerlines miss each other entirely): 0.0.
  Should the skeleton of a non-empty mask come out empty (scikit-image keeps at least one pixel
  of every component, so this is a guard, not an expected case), the mask itself stands in for
  its skeleton.
* **Spread** :func:`summarize` returns the mean and the *sample* standard deviation (``ddof=1``),
  the usual choice for a spread over seeds or folds; a single value has std 0.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np
from skimage.morphology import skeletonize
from skimage.transform import resize

__all__ = [
    "as_mask",
    "binarize",
    "cldice",
    "dice",
    "evaluate_batch",
    "evaluate_pair",
    "resize_to",
    "summarize",
    "topology_scores",
]


def as_mask(x: np.ndarray) -> np.ndarray:
    """Return ``x`` as a boolean mask: bool arrays as they are, anything else as ``x != 0``.

    Args:
        x: A binary mask: bool, 0/1 or 0/255 integers. Probabilities must go through
            :func:`binarize` first (``0.3 != 0`` would count as vessel).
    """
    x = np.asarray(x)
    return x if x.dtype == bool else x != 0


def _pair(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    p, g = as_mask(pred), as_mask(gt)
    if p.shape != g.shape:
        raise ValueError(
            f"prediction shape {p.shape} differs from ground-truth shape {g.shape}; "
            "resize the prediction back to the original resolution with resize_to first"
        )
    return p, g


def dice(pred: np.ndarray, gt: np.ndarray) -> float:
    """Dice similarity coefficient ``2|P∩G| / (|P| + |G|)`` of two binary masks.

    Args:
        pred, gt: Binary masks of the same shape (see :func:`as_mask`).

    Returns:
        float in [0, 1]; 1.0 when both masks are empty, 0.0 when exactly one is.
    """
    p, g = _pair(pred, gt)
    total = int(p.sum()) + int(g.sum())
    if total == 0:
        return 1.0
    return 2.0 * int(np.logical_and(p, g).sum()) / total


def _skeleton(mask: np.ndarray) -> np.ndarray:
    """Skeleton of a non-empty mask; the mask itself if the skeleton came out empty."""
    skel = skeletonize(mask)
    return skel if skel.any() else mask


def topology_scores(pred: np.ndarray, gt: np.ndarray) -> tuple[float, float, float]:
    """Topology precision, topology sensitivity and clDice of two binary masks.

    Args:
        pred, gt: 2-D binary masks of the same shape (see :func:`as_mask`).

    Returns:
        ``(tprec, tsens, cldice)``, each in [0, 1]; empty-mask cases as in the module docstring.
    """
    p, g = _pair(pred, gt)
    p_any, g_any = bool(p.any()), bool(g.any())
    if not p_any and not g_any:
        return 1.0, 1.0, 1.0
    if not p_any or not g_any:
        return 0.0, 0.0, 0.0
    sp, sg = _skeleton(p), _skeleton(g)
    tprec = int(np.logical_and(sp, g).sum()) / int(sp.sum())
    tsens = int(np.logical_and(sg, p).sum()) / int(sg.sum())
    if tprec + tsens == 0.0:
        return tprec, tsens, 0.0
    return tprec, tsens, 2.0 * tprec * tsens / (tprec + tsens)


def cldice(pred: np.ndarray, gt: np.ndarray) -> float:
    """Centerline Dice (Shit et al. 2021): harmonic mean of topology precision and sensitivity.

    Args:
        pred, gt: 2-D binary masks of the same shape (see :func:`as_mask`).

    Returns:
        float in [0, 1]; 1.0 when both masks are empty, 0.0 when exactly one is or when the two
        centerlines miss each other entirely.
    """
    return topology_scores(pred, gt)[2]


def evaluate_pair(pred: np.ndarray, gt: np.ndarray) -> dict[str, float]:
    """All per-image scores of one prediction: ``dice``, ``cldice``, ``tprec`` and ``tsens``.

    Args:
        pred, gt: 2-D binary masks of the same shape, at the original image resolution.
    """
    tprec, tsens, cl = topology_scores(pred, gt)
    return {"dice": dice(pred, gt), "cldice": cl, "tprec": tprec, "tsens": tsens}


def evaluate_batch(
    preds: Iterable[np.ndarray], gts: Iterable[np.ndarray]
) -> list[dict[str, float]]:
    """:func:`evaluate_pair` over paired sequences of masks (images may differ in size).

    Args:
        preds, gts: Equally long sequences of binary masks; ``preds[i]`` is scored against
            ``gts[i]``.

    Returns:
        One score dict per pair, in order.
    """
    preds, gts = list(preds), list(gts)
    if len(preds) != len(gts):
        raise ValueError(f"{len(preds)} predictions but {len(gts)} ground-truth masks")
    return [evaluate_pair(p, g) for p, g in zip(preds, gts)]


def summarize(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (``ddof=1``) of a list of scores.

    Args:
        values: Scores, e.g. one per seed or per fold. Must be non-empty and finite.

    Returns:
        ``(mean, std)``; ``std`` is 0.0 for a single value.
    """
    arr = np.asarray(values, dtype=np.float64).ravel()
    if arr.size == 0:
        raise ValueError("summarize needs at least one value")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"summarize got non-finite values: {arr[~np.isfinite(arr)].tolist()}")
    std = float(arr.std(ddof=1)) if arr.size > 1 else 0.0
    return float(arr.mean()), std


def resize_to(x: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Resize a 2-D probability map or mask to ``shape`` (the original image's ``(H, W)``).

    Floating-point input is treated as a probability map and resized bilinearly (half-pixel
    centres, edge values repeated, no anti-aliasing: what ``torch.nn.functional.interpolate``
    does with ``mode="bilinear", align_corners=False``); the result stays float. Boolean or
    integer input is treated as a mask or label map and resized with nearest neighbour at
    half-pixel centres (``mode="nearest-exact"`` in PyTorch); the result keeps the input dtype.

    Args:
        x: 2-D array.
        shape: Target ``(H, W)``.
    """
    x = np.asarray(x)
    shape = tuple(int(s) for s in shape)
    if x.ndim != 2 or len(shape) != 2:
        raise ValueError(f"resize_to expects a 2-D array and a 2-D shape, got {x.shape} -> {shape}")
    if x.shape == shape:
        return x.copy()
    if np.issubdtype(x.dtype, np.floating):
        return resize(x, shape, order=1, mode="edge", anti_aliasing=False, preserve_range=True)
    out = resize(x.astype(np.float64), shape, order=0, mode="edge", anti_aliasing=False,
                 preserve_range=True)
    return out.astype(x.dtype)


def binarize(prob: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """Boolean mask ``prob >= threshold`` (0.5 on a sigmoid output is logit >= 0).

    Args:
        prob: Probability map.
        threshold: Decision threshold.
    """
    return np.asarray(prob) >= threshold
