"""Vascular anatomy extraction: vesselness, field of view, threshold and components (VasoMIM stage 1).

It turns an X-ray angiogram into a binary vessel mask with no training (Huang et al., AAAI 2026,
"Vascular Anatomy Extraction"). The masks guide the masking of the pre-training and are the
pseudo-labels of the consistency segmentor and of SPT.

- :mod:`vasomim.anatomy.vesselness`: the multi-scale Hessian map, equal to scikit-image's ``sato``
  for dark ridges (the paper's Eq. 1 is a typo as written; see there).
- :mod:`vasomim.anatomy.fov`: the exposed field of view inside a circular iris or shutters.
- here: the recipes (:data:`RECIPES`). ``paper``: the map's ``border`` zeroed, the ``alpha``-th
  percentile of the float map over the frame (NumPy's linear interpolation), ``V >= T and V > 0``
  ("0" being float rounding noise, :func:`_noise_floor`), and the 4-connected component of the
  argmax (seeded region growing with a binary criterion, one ``scipy.ndimage.label`` call).
  ``official``: the same on the uint8-truncated map, as the authors' code (which can put ``T`` at
  0 on faint frames). ``fov`` (default): the map zeroed outside the field of view and within 3 x the
  largest sigma of its edge, the percentile over the field of view, and every component of at
  least 0.2% of the frame kept. Every recipe flags a suspect mask (too small, or along the field of
  view's edge). A map that is zero everywhere gives an empty mask.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy import ndimage

from vasomim.anatomy.fov import _FOUR_CONNECTED_STACK, _fov_low_res, _to_full, field_of_view
from vasomim.anatomy.vesselness import DEFAULT_SIGMAS, _is_tensor, percentile_threshold, vesselness

__all__ = ["AnatomyResult", "DEFAULT_ALPHA", "DEFAULT_BORDER", "DEFAULT_RECIPE", "DEFAULT_SIGMAS", "MIN_COMPONENT",
           "RECIPES", "Recipe", "anatomy_details", "extract_anatomy", "field_of_view", "fov_margin", "get_recipe",
           "percentile_threshold", "vesselness"]

DEFAULT_ALPHA = 92.0
DEFAULT_BORDER = 20
DEFAULT_RECIPE = "fov"


@dataclass
class AnatomyResult:
    """Everything :func:`anatomy_details` computes for one image.

    Attributes:
        mask: bool (H, W) vessel mask.
        vesselness: float32 (H, W) vesselness map as thresholded (border, and for the ``fov``
            recipe the outside of the field of view, zeroed; uint8-truncated for ``official``).
        threshold: the percentile threshold ``T`` applied to the map.
        seed: (row, col) of the map's maximum (the region-growing seed), or ``None`` when the map
            is all zero.
        recipe: the recipe's name.
        fov: bool (H, W) field of view (computed for every recipe, used by ``fov``).
        region: bool (H, W) pixels over which the threshold was taken (the frame for ``paper``
            and ``official``; the field of view less its edge margin and the border for ``fov``).
        suspect: why the mask looks like no vessel tree (too small, or along the field of view's
            edge), or ``None``.
    """

    mask: np.ndarray
    vesselness: np.ndarray
    threshold: float
    seed: tuple[int, int] | None
    recipe: str = "fov"
    fov: np.ndarray | None = None
    region: np.ndarray | None = None
    suspect: str | None = None

    @property
    def vessel_fraction(self) -> float:
        return float(self.mask.mean())

    @property
    def fov_fraction(self) -> float:
        return 1.0 if self.fov is None else float(self.fov.mean())


# ----------------------------------------------------------------------------------------------
# Recipes: threshold and components
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Recipe:
    """How a vesselness map becomes a mask.

    Attributes:
        name: ``fov``, ``paper`` or ``official``.
        fov: zero the map outside the field of view and within ``margin`` of its edge, and take
            the percentile over the field of view only.
        uint8_map: truncate the map to uint8 before thresholding (the original code's
            ``sato(...).astype(np.uint8)``).
        components: ``seeded`` (the 4-connected component of the map's argmax, the paper's
            region growing), ``all`` (every pixel above the threshold) or ``large`` (4-connected
            components of at least ``min_component`` of the frame's pixels).
    """

    name: str
    fov: bool
    uint8_map: bool
    components: str


RECIPES: dict[str, Recipe] = {
    # Measured on the 40 labelled CIMAT frames (benchmarks/anatomy_quality.py): with the field of
    # view, seeded growing gives DSC 62 (min 20), all components 68 (min 47), components of at
    # least 0.2% of the frame 70 (min 51); 0.1-0.5% all give 70.
    "fov": Recipe("fov", fov=True, uint8_map=False, components="large"),
    "paper": Recipe("paper", fov=False, uint8_map=False, components="seeded"),
    "official": Recipe("official", fov=False, uint8_map=True, components="seeded"),
}
MIN_COMPONENT = 0.002  # of the frame's pixels, for components="large"
SUSPECT_FRACTION = 0.005  # a mask smaller than this share of the frame is suspect
SUSPECT_EDGE_SHARE = 0.5  # ... and so is one lying mostly along the field of view's edge


def get_recipe(name: str) -> Recipe:
    try:
        return RECIPES[name]
    except KeyError:
        raise ValueError(f"unknown anatomy recipe {name!r}; use one of {', '.join(RECIPES)}") from None


def fov_margin(sigmas: Sequence[float]) -> float:
    """Pixels next to the field of view's edge where the map is zeroed: 3 x the largest scale."""
    return 3.0 * max(float(s) for s in sigmas)


def _zero_border(maps: np.ndarray, border: int) -> None:
    if border > 0:
        _, H, W = maps.shape
        b = min(border, H, W)
        maps[:, :b, :] = 0
        maps[:, -b:, :] = 0
        maps[:, :, :b] = 0
        maps[:, :, -b:] = 0


def _threshold(maps: np.ndarray, valid: np.ndarray | None, alpha: float) -> np.ndarray:
    """Per-image ``alpha``-th percentile, over the valid pixels only when ``valid`` is given."""
    flat = maps.reshape(len(maps), -1)
    if valid is None:
        return percentile_threshold(flat, alpha)
    vflat = valid.reshape(len(maps), -1)
    # one call per image: the valid sets differ in size
    return np.array([np.percentile(m[v], alpha) if v.any() else np.inf for m, v in zip(flat, vflat)])


def _components(binary: np.ndarray, maps: np.ndarray, floors: np.ndarray, rule: str, min_pixels: int):
    """Keep the components of a (B, H, W) binary stack that ``rule`` names; returns (masks, seeds)."""
    B, H, W = binary.shape
    labels, _ = ndimage.label(binary, structure=_FOUR_CONNECTED_STACK)
    flat = maps.reshape(B, -1)
    seed_flat = flat.argmax(axis=1)
    has_seed = flat[np.arange(B), seed_flat] > floors
    rows, cols = np.divmod(seed_flat, W)
    seeds = [(int(r), int(c)) if s else None for r, c, s in zip(rows, cols, has_seed)]
    if rule == "seeded":
        seed_label = np.where(has_seed, labels[np.arange(B), rows, cols], -1)
        return labels == seed_label[:, None, None], seeds
    if rule == "all":
        return binary.copy(), seeds
    if rule == "large":
        keep = np.bincount(labels.ravel()) >= min_pixels
        keep[0] = False
        return keep[labels], seeds
    raise ValueError(f"unknown component rule {rule!r}; use seeded, all or large")


def _postprocess(
    maps: np.ndarray,
    images: np.ndarray,
    recipe: Recipe,
    alpha: float,
    border: int,
    sigmas: Sequence[float],
    floors: np.ndarray,
) -> list["AnatomyResult"]:
    """Everything after the vesselness, for a (B, H, W) float32 stack of maps (modified in place)."""
    B, H, W = maps.shape
    fov_small, dist_small, f = _fov_low_res(images, 0.35)
    # the collimator's edge responds within ~2 sigma of it, on either side; the fov recipe's margin
    # (3 sigma) keeps its own masks out of this band. Both are decided at low resolution and
    # upsampled as bytes.
    edge_band = 2.0 * max(float(s) for s in sigmas)
    fov = _to_full(fov_small, f, (H, W))
    near_edge = _to_full(np.abs(dist_small) <= edge_band, f, (H, W))
    if recipe.uint8_map:
        maps = maps.astype(np.uint8).astype(np.float32)  # the original's truncation (and wrap-around)
    _zero_border(maps, border)
    valid = None
    if recipe.fov:
        valid = _to_full(dist_small > fov_margin(sigmas), f, (H, W))
        _zero_border(valid, border)
        maps[~valid] = 0
    thr = _threshold(maps, valid, alpha)
    if not recipe.uint8_map:
        thr = thr.astype(np.float32)  # the float recipes compare in float32, as they always have
    binary = (maps >= thr[:, None, None]) & (maps > floors[:, None, None])
    masks, seeds = _components(binary, maps, floors, recipe.components, int(round(MIN_COMPONENT * H * W)))
    results = []
    for b in range(B):
        region = valid[b] if valid is not None else np.ones((H, W), dtype=bool)
        res = AnatomyResult(masks[b], maps[b], float(thr[b]), seeds[b], recipe=recipe.name, fov=fov[b], region=region)
        res.suspect = _suspect_reason(masks[b], near_edge[b], edge_band)
        results.append(res)
    return results


def _suspect_reason(mask: np.ndarray, near_edge: np.ndarray, edge_band: float) -> str | None:
    """Why a mask looks like no vessel tree, every reason joined by "; " (None when it looks fine)."""
    n = int(mask.sum())
    frac = n / mask.size
    reasons = []
    if frac < SUSPECT_FRACTION:
        reasons.append(f"mask covers {100 * frac:.2f}% of the frame (< {100 * SUSPECT_FRACTION:.1f}%)")
    on_edge = int((mask & near_edge).sum()) / max(n, 1)
    if on_edge > SUSPECT_EDGE_SHARE:
        reasons.append(f"{100 * on_edge:.0f}% of the mask lies within {edge_band:.0f} px of the field of view's edge")
    return "; ".join(reasons) or None


def _noise_floor(max_abs_intensity) -> np.ndarray:
    """Responses at or below ``1e-6`` of the image's largest intensity count as zero.

    A flat image gives a float32 map of ~1e-14 rounding noise instead of exact zeros; without a floor
    its "vessel" would be a random noise component.  Real ridges respond at ~1e-2 of the intensity
    range and more, so the floor never touches them (on real data ``T`` is orders of magnitude above).
    """
    return 1e-6 * np.asarray(max_abs_intensity, dtype=np.float32)


def anatomy_details(
    image,
    *,
    recipe: str = DEFAULT_RECIPE,
    alpha: float = DEFAULT_ALPHA,
    border: int = DEFAULT_BORDER,
    sigmas: Sequence[float] = DEFAULT_SIGMAS,
) -> AnatomyResult | list[AnatomyResult]:
    """Run the full extraction and return mask, map, threshold, seed, field of view and verdict.

    Same arguments as :func:`extract_anatomy`.  A 2-D NumPy image gives one
    :class:`AnatomyResult`; a (B, 1, H, W) tensor gives a list of B (the vesselness runs on the
    tensor's device, the threshold and components on the CPU).
    """
    settings = get_recipe(recipe)
    if not 0 <= alpha <= 100:
        raise ValueError(f"alpha must be a percentile in [0, 100], got {alpha}")
    if border < 0:
        raise ValueError(f"border must be >= 0, got {border}")
    if _is_tensor(image):
        if settings.uint8_map:  # the original reads 8-bit images
            image = image.round().clamp(0, 255)
        maps = vesselness(image, sigmas)[:, 0].detach().cpu().numpy()
        images = image[:, 0].detach().float().cpu().numpy()
    else:
        image = np.asarray(image)
        if image.ndim != 2:
            raise ValueError(f"expected a 2-D image, got shape {image.shape}")
        if settings.uint8_map:
            image = np.clip(np.round(image), 0, 255)
        maps = vesselness(image, sigmas)[None]
        images = image[None]
    floors = _noise_floor(np.abs(images).reshape(len(images), -1).max(axis=1))
    results = _postprocess(maps, images, settings, alpha, border, sigmas, floors)
    return results if _is_tensor(image) else results[0]


def extract_anatomy(
    image,
    *,
    recipe: str = DEFAULT_RECIPE,
    alpha: float = DEFAULT_ALPHA,
    border: int = DEFAULT_BORDER,
    sigmas: Sequence[float] = DEFAULT_SIGMAS,
):
    """Binary vascular anatomy mask of an angiogram (VasoMIM stage 1).

    Args:
        image: 2-D NumPy array with 0-255 intensities (dark vessels on a bright background), or a
            torch tensor (B, 1, H, W) on CPU or CUDA.
        recipe: ``"fov"`` (default): field-of-view aware; the map is zeroed outside the exposed
            region and within 3 x the largest sigma of its edge, thresholded over the field of
            view, and every component of at least 0.2% of the frame is kept.  ``"paper"``: the
            paper's pipeline (float map, border, percentile over the frame, 4-connected
            component of the argmax).  ``"official"``: the authors' code exactly (map truncated to
            uint8 before the percentile, growing over its nonzero pixels).
        alpha: percentile of the vesselness map used as threshold (reference 92).
        border: width in pixels of the frame zeroed on the vesselness map (reference 20 px on
            512x512 images).  Scale it with your image size.
        sigmas: Hessian scales in pixels.

    Returns:
        A bool (H, W) array, or for a tensor input a bool tensor (B, 1, H, W) on the input's device.
    """
    res = anatomy_details(image, recipe=recipe, alpha=alpha, border=border, sigmas=sigmas)
    if isinstance(res, list):
        import torch

        masks = np.stack([r.mask for r in res])[:, None]
        return torch.from_numpy(masks).to(image.device)
    return res.mask
