"""Procedural X-ray angiogram-like images with exact vessel masks.

The generator is the embedded default dataset of the demo and of the tests: it needs no download,
is deterministic by seed and fast (fully vectorised NumPy; Python loops run only over the few dozen
vessel branches).  An image is built like a projection radiograph:

1. **Vessel trees.**  One to three branching trees of tapered, smoothly curved tubes.  Each root
   enters from (or starts near) an image edge; children leave their parent at 25-70 degrees and are
   thinner than the parent where they branch.  A branch's centreline is a random walk of its heading
   angle (white noise smoothed to a turning rate, plus a constant bend), sampled every pixel; its
   radius tapers linearly, wobbles slightly and may carry a focal narrowing (stenosis).
2. **Rasterisation.**  For every pixel centre ``p`` and centreline segment ``[a, b]`` with radii
   ``ra, rb`` the *power* ``r(t)^2 - |p - (a + t (b - a))|^2`` is computed at the closest point
   ``t`` (vectorised per branch over a window around each segment) and the maximum is kept per
   tree.  The vessel mask is exactly the set of pixels with positive power, and the X-ray path length
   through the tube there is the chord ``2 sqrt(power)``: thin vessels are faint, as in real images.
3. **Image formation.**  ``I = B * exp(-mu * path_vessels - mu_c * path_catheter) * C`` where ``B``
   is a smooth background (multi-scale random fields, one or two soft organ edges, vignetting),
   ``C`` the collimator transmission; then signal-dependent (quantum) noise, a Gaussian system PSF
   and additive electronic noise, quantised to 8 bits.

What is labelled: only the vessel trees.  The catheter (a long, uniform-width, dark tube ending at
the ostium of the first tree) is **not** in the mask, as in the manual labels of public coronary
datasets.  The collimator (dark bands along one or two borders, or a circular iris) is not vessel
either; vessel segments that fall behind it are dropped from both the image and the mask, since
they would be invisible.

Geometry is defined at a reference size of 256 pixels: lengths scale with ``size / 256`` and radii
mildly, with ``(size / 256) ** 0.75``, so that 64-pixel test images still show vessels 1-3 pixels
wide, 256-pixel images main vessels 6-9 pixels wide and 1024-pixel images about 20.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Iterable

import numpy as np
from scipy import ndimage

from vasomim.data.io import write_png_atomic
from vasomim.data.synthetic_scene import anatomy_log_transmission

REFERENCE_SIZE = 256
MIN_SIZE = 32


@dataclass(frozen=True)
class SynthConfig:
    """Parameters of the synthetic angiogram generator.

    Lengths and radii are given in pixels at the 256-pixel reference size (see the module docstring
    for how they scale).  Pairs are ``(low, high)`` ranges from which each image draws uniformly.

    Attributes:
        size: Default image side in pixels (images are square), used when :func:`synthesize` gets
            no explicit ``size``.
        n_trees: Inclusive range of the number of vessel trees per image.  The first tree is the
            main one; the others are 20-45 % thinner and shorter.
        catheter: Draw a catheter (never labelled as vessel).
        collimator: Draw a collimator edge (one or two dark border bands, or a circular iris).
        noise: Standard deviation of the additive (electronic) Gaussian noise, in units of the
            full intensity range [0, 1].
        quantum_noise: Standard deviation of the signal-dependent (Poisson-like) noise at intensity
            0.5; it scales with the square root of the local intensity.  0 disables it.
        contrast: Range of the vessel attenuation coefficient per pixel of path length.  The
            centre of a vessel of radius ``r`` is darkened by ``1 - exp(-2 r * contrast)``.
        catheter_contrast: Range of the catheter attenuation relative to the vessels'.
        root_radius: Range of the radius of a tree's root vessel where it starts.
        min_radius: Smallest radius of any branch; thinner children are not generated.  Never
            below 0.55 pixel at any size, which keeps every branch 8-connected in the mask.
        max_depth: Maximum branching depth (the root has depth 0).
        stenosis_prob: Probability that a branch of depth <= 1 carries a focal narrowing.
        curl: Standard deviation of the random turning rate of a branch, radians per pixel.
        blur: Standard deviation of the Gaussian system PSF.
        brightness: Range of the mean background intensity in [0, 1].
        anatomy: Draw the background anatomy of the chest (heart, lung field with its texture,
            spine, ribs, diaphragm; :mod:`vasomim.data.synthetic_scene`).
        anatomy_strength: Scale of that anatomy's log transmission.
        wash_in: Probability that a tree is only partly filled with contrast: the concentration
            falls off along the tree beyond a random front (a logistic in the path distance from
            the root); where it is below 15 % the vessel is neither drawn nor labelled.
        overlap: Vessels that cross add their attenuation (every tube is rasterised on its own
            and the chords summed), as in a projection; ``False`` keeps the per-tree maximum.
        motion_blur: Probability of cardiac motion blur: the vessel and catheter attenuation is
            smeared along a random direction over 1.5-5 pixels (at 256).  The mask stays the
            vessels' mid-exposure position.
        curl_scale: Correlation length, in pixels at 256, of the random turning of a branch.
        gamma: Range of the exponent of the display curve ``I ** gamma`` applied last (before
            quantisation); below 1 it brightens the mid-tones and compresses the highlights, as the
            logarithmic look-up tables of angiography systems do.  ``(1, 1)``: none.

    :meth:`realistic` gives the settings measured closest to real frames
    (``benchmarks/synth_realism.py``); the defaults are the classic generator, whose output for a
    seed is unchanged.
    """

    size: int = 256
    n_trees: tuple[int, int] = (1, 3)
    catheter: bool = True
    collimator: bool = True
    noise: float = 0.012
    quantum_noise: float = 0.02
    contrast: tuple[float, float] = (0.05, 0.1)
    catheter_contrast: tuple[float, float] = (1.0, 1.5)
    root_radius: tuple[float, float] = (2.8, 4.2)
    min_radius: float = 0.6
    max_depth: int = 3
    stenosis_prob: float = 0.3
    curl: float = 0.02
    blur: float = 0.7
    brightness: tuple[float, float] = (0.45, 0.65)
    anatomy: bool = False
    anatomy_strength: float = 1.0
    wash_in: float = 0.0
    overlap: bool = False
    motion_blur: float = 0.0
    curl_scale: float = 12.0
    gamma: tuple[float, float] = (1.0, 1.0)

    @classmethod
    def realistic(cls, **overrides) -> "SynthConfig":
        """The settings closest to real coronary frames (see ``BENCHMARKS.md``), with ``overrides``."""
        values = dict(REALISTIC)
        values.update(overrides)
        return cls(**values)


# SynthConfig.realistic(): chosen by benchmarks/synth_realism.py against the 55 real frames of
# ../shared/data (intensity histogram, vessel width and tortuosity, noise power spectrum).
REALISTIC: dict = dict(
    n_trees=(1, 4),
    root_radius=(3.2, 5.0),
    contrast=(0.05, 0.12),
    curl=0.04,
    curl_scale=8.0,
    noise=0.005,
    quantum_noise=0.033,
    blur=0.6,
    gamma=(0.5, 0.8),
    anatomy=True,
    anatomy_strength=1.5,
    wash_in=0.3,
    overlap=True,
    motion_blur=0.3,
)


def _radius_scale(size: int) -> float:
    """Factor applied to radii (and the PSF width) relative to the 256-pixel reference."""
    return (size / REFERENCE_SIZE) ** 0.75


@dataclass
class _Tube:
    """A sampled centreline (``points`` as (y, x), one pixel apart), its radii and its layer.

    ``dist`` is the path distance of each point from the tree's root, ``entry`` the radius of the
    parent where the branch leaves it (0 for a root), ``fill`` the contrast concentration per point
    (``None``: full).
    """

    points: np.ndarray
    radii: np.ndarray
    layer: int
    dist: np.ndarray | None = None
    entry: float = 0.0
    fill: np.ndarray | None = None


# --------------------------------------------------------------------------------------------
# geometry


def _walk(rng: np.random.Generator, start: np.ndarray, heading: float, length: float, curl: float,
          bend: float, scale: float, curl_scale: float = 12.0) -> tuple[np.ndarray, np.ndarray]:
    """A smooth random curve of ``length`` one-pixel steps from ``start``.

    The heading angle integrates a turning rate made of white noise smoothed over
    ``curl_scale * scale`` pixels (standard deviation ``curl / scale``) plus the constant
    ``bend / scale``.  Returns the points (n, 2) as (y, x) and the heading (n,) at each point.
    """
    n = max(int(round(length)), 2)
    smooth = curl_scale * scale
    turn = ndimage.gaussian_filter1d(rng.standard_normal(n), sigma=smooth, mode="nearest")
    turn *= math.sqrt(2.0 * math.sqrt(math.pi) * smooth)  # unit variance for smoothed white noise
    theta = heading + np.cumsum(turn * (curl / scale) + bend / scale)
    steps = np.stack([np.sin(theta), np.cos(theta)], axis=1)
    points = start + np.concatenate([np.zeros((1, 2)), np.cumsum(steps[:-1], axis=0)])
    return points, theta


def _inside_prefix(points: np.ndarray, size: int, margin: float) -> int:
    """Number of leading points to keep: up to the curve's first exit after it entered the image.

    "Inside" means within the image grown by ``margin`` pixels.  Cutting at the first exit keeps a
    branch from re-entering and costs nothing for the part outside; 0 if it is never inside.
    """
    inside = np.all((points > -margin) & (points < size - 1 + margin), axis=1)
    if not inside.any():
        return 0
    first_in = int(np.argmax(inside))
    out_after = np.flatnonzero(~inside[first_in:])
    return len(points) if out_after.size == 0 else first_in + int(out_after[0])


def _radius_profile(rng: np.random.Generator, n: int, r0: float, r_min: float, stenosis: bool,
                    scale: float) -> np.ndarray:
    """Radii along a branch: linear taper to 35-65 %, a +-8 % wobble and an optional stenosis."""
    s = np.linspace(0.0, 1.0, n)
    r = r0 * (1.0 - (1.0 - rng.uniform(0.35, 0.65)) * s)
    wobble = ndimage.gaussian_filter1d(rng.standard_normal(n), sigma=15.0 * scale, mode="nearest")
    r *= 1.0 + 0.08 * wobble * math.sqrt(2.0 * math.sqrt(math.pi) * 15.0 * scale)
    if stenosis and n > 20:
        centre = rng.uniform(0.2, 0.8) * n
        width = rng.uniform(2.5, 6.0) * scale
        r *= 1.0 - rng.uniform(0.3, 0.65) * np.exp(-0.5 * ((np.arange(n) - centre) / width) ** 2)
    return np.maximum(r, r_min)


def _grow_tree(rng: np.random.Generator, cfg: SynthConfig, size: int, layer: int) -> list[_Tube]:
    """One vessel tree: a root entering from an image edge and its recursive children."""
    scale = size / REFERENCE_SIZE
    rscale = _radius_scale(size)
    r_min = max(cfg.min_radius * rscale, 0.55)
    # Root: from a random edge, 5 % outside to 25 % inside it, heading roughly to the centre.
    side = int(rng.integers(4))
    along = rng.uniform(0.15, 0.85) * size
    inset = rng.uniform(-0.05, 0.25) * size
    y, x = [(inset, along), (along, size - 1 - inset), (size - 1 - inset, along), (along, inset)][side]
    start = np.array([y, x])
    to_centre = math.atan2((size - 1) / 2 - y, (size - 1) / 2 - x)
    # Trees after the first are secondary (a side branch or collateral seen separately): smaller.
    shrink = 1.0 if layer == 0 else rng.uniform(0.55, 0.8)
    root = (start, to_centre + rng.normal(0.0, 0.45), rng.uniform(*cfg.root_radius) * rscale * shrink,
            size * rng.uniform(0.6, 1.1) * shrink, 0, 0.0, 0.0)

    tubes: list[_Tube] = []
    pending = [root]
    while pending:
        start, heading, r0, length, depth, dist0, entry = pending.pop()
        # Roots wind less than their branches (no loops across the whole image).
        bend = rng.uniform(-1.0, 1.0) / (90.0 if depth else 180.0)
        curl = cfg.curl * (1.0 if depth else 0.6)
        points, theta = _walk(rng, start, heading, length, curl, bend, scale, cfg.curl_scale)
        stenosis = depth <= 1 and rng.random() < cfg.stenosis_prob
        radii = _radius_profile(rng, len(points), r0, r_min, stenosis, scale)
        keep = _inside_prefix(points, size, margin=r0 + 2.0)
        if keep < 2:
            continue
        points, theta, radii = points[:keep], theta[:keep], radii[:keep]
        dist = dist0 + np.arange(keep, dtype=np.float64)
        tubes.append(_Tube(points, radii, layer, dist, entry))
        if depth >= cfg.max_depth:
            continue
        # Children at irregular intervals, alternating sides, thinner than the parent there.
        sign = rng.choice([-1.0, 1.0])
        pos = rng.uniform(0.08, 0.25) * length
        while pos < 0.9 * keep:
            i = int(pos)
            r_child = radii[i] * rng.uniform(0.5, 0.85)
            if r_child >= r_min:
                child_len = (r_child / rscale) * rng.uniform(50.0, 90.0) * scale
                angle = theta[i] + sign * rng.uniform(0.45, 1.2)
                pending.append((points[i], angle, r_child, child_len, depth + 1, dist[i], radii[i]))
            sign = -sign
            pos += rng.uniform(25.0, 55.0) * scale
    return tubes


def _catheter(rng: np.random.Generator, tree_root: _Tube, size: int, layer: int) -> _Tube | None:
    """A catheter ending at the ostium of ``tree_root``: smooth, long, uniform width, unlabelled."""
    scale = size / REFERENCE_SIZE
    radius = tree_root.radii[0] * rng.uniform(0.7, 0.95)
    ostium = tree_root.points[0]
    first = tree_root.points[min(5, len(tree_root.points) - 1)]
    away = math.atan2(ostium[0] - first[0], ostium[1] - first[1])
    # The tip stops one radius short of the ostium, so that the two round ends barely overlap.
    tip = ostium + radius * np.array([math.sin(away), math.cos(away)])
    points, _ = _walk(rng, tip, away + rng.normal(0.0, 0.35), 1.6 * size, curl=0.004,
                      bend=rng.uniform(-1.0, 1.0) / 300.0, scale=scale)
    keep = _inside_prefix(points, size, margin=radius + 2.0)
    if keep < 2:
        return None
    return _Tube(points[:keep], np.full(keep, radius), layer)


def _rasterise(tubes: list[_Tube], n_layers: int, size: int,
               sum_tubes: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Per-layer vessel masks and X-ray path lengths, both (n_layers, H, W).

    The path length through a tube at a pixel is the chord ``2 sqrt(r^2 - d^2)`` at the closest
    centreline point (times the contrast fill there, if the tube has one).  Per layer, either the
    maximum power over its tubes is taken (``sum_tubes=False``: tubes of one tree merge), or each
    tube's own maximum is found and the chords of different tubes add up (crossing vessels are
    darker where they overlap).  A branch's first ``entry`` points, inside its parent, are skipped
    in that mode (they would double the parent's chord at every bifurcation).

    Each centreline segment ``[a, b]`` (length <= 1 px) is evaluated on the pixel window
    ``floor(a) + [-R, R + 1]^2`` with ``R = ceil(max radius) + 1``, which holds every pixel centre
    within the radius of the segment; all segments of a tube are done in one vectorised step.
    """
    power = np.zeros(n_layers * size * size, dtype=np.float32)
    path = np.zeros(n_layers * size * size, dtype=np.float32) if sum_tubes else None
    scratch = np.zeros(size * size, dtype=np.float32) if sum_tubes else None
    for tube in tubes:
        if sum_tubes and tube.entry > 0:
            skip = min(int(tube.entry), len(tube.points) - 2)
            tube = _Tube(tube.points[skip:], tube.radii[skip:], tube.layer,
                         fill=None if tube.fill is None else tube.fill[skip:])
        base = np.floor(tube.points[:-1])
        frac = (tube.points[:-1] - base).astype(np.float32)  # segment start within its pixel
        ey, ex = np.diff(tube.points, axis=0).astype(np.float32).T[:, :, None]
        ra = tube.radii[:-1, None].astype(np.float32)
        dr = np.diff(tube.radii)[:, None].astype(np.float32)
        half = int(math.ceil(tube.radii.max())) + 1
        off = np.arange(-half, half + 2)
        oy, ox = (g.ravel() for g in np.meshgrid(off, off, indexing="ij"))
        dy = oy.astype(np.float32) - frac[:, :1]  # pixel centre minus segment start, (n, window)
        dx = ox.astype(np.float32) - frac[:, 1:]
        t = np.clip((dy * ey + dx * ex) / np.maximum(ey * ey + ex * ex, 1e-12), 0.0, 1.0)
        r = ra + t * dr
        value = r * r - (dy - t * ey) ** 2 - (dx - t * ex) ** 2
        if tube.fill is not None:  # chord * fill = 2 sqrt(power * fill^2)
            fa = tube.fill[:-1, None].astype(np.float32)
            f = fa + t * np.diff(tube.fill)[:, None].astype(np.float32)
            value *= f * f
        py = base[:, :1].astype(np.int64) + oy
        px = base[:, 1:].astype(np.int64) + ox
        keep = (value > 0) & (py >= 0) & (py < size) & (px >= 0) & (px < size)
        index = (tube.layer * size + py[keep]) * size + px[keep]
        np.maximum.at(power, index, value[keep])
        if sum_tubes:
            local = py[keep] * size + px[keep]
            np.maximum.at(scratch, local, value[keep])
            touched = np.unique(local)
            path[tube.layer * size * size + touched] += 2.0 * np.sqrt(scratch[touched])
            scratch[touched] = 0.0
    power = power.reshape(n_layers, size, size)
    path = 2.0 * np.sqrt(power) if path is None else path.reshape(n_layers, size, size)
    return power > 0, path


# --------------------------------------------------------------------------------------------
# background, collimator


@lru_cache(maxsize=32)
def _rbf_matrix(size: int, cells: int) -> np.ndarray:
    """(size, cells + 2) row-normalised Gaussian weights from grid nodes to pixels (read-only).

    Interpolating a coarse random grid with it on both axes (two small matrix products) yields a
    smooth field far faster than blurring full-size noise with a wide Gaussian.
    """
    spacing = size / cells
    nodes = (np.arange(cells + 2) - 0.5) * spacing
    w = np.exp(-0.5 * ((np.arange(size)[:, None] + 0.5 - nodes[None, :]) / (0.8 * spacing)) ** 2)
    w /= w.sum(axis=1, keepdims=True)
    w = w.astype(np.float32)
    w.flags.writeable = False
    return w


def _normalised(field: np.ndarray) -> np.ndarray:
    field -= field.mean()
    return field / max(float(field.std()), 1e-6)


def _smooth_field(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Zero-mean, unit-std random field with correlation length ``size / cells`` (float32)."""
    w = _rbf_matrix(size, cells)
    grid = rng.standard_normal((cells + 2, cells + 2)).astype(np.float32)
    # einsum, not @: the products are tiny, and on a busy machine waking BLAS threads costs
    # far more than the arithmetic.
    return _normalised(np.einsum("ij,kj->ik", np.einsum("ij,jk->ik", w, grid), w))


def _texture(rng: np.random.Generator, size: int, sigma: float) -> np.ndarray:
    """Zero-mean, unit-std fine texture: white noise blurred by a Gaussian of ``sigma`` px."""
    noise = rng.standard_normal((size, size), dtype=np.float32)
    return _normalised(ndimage.gaussian_filter(noise, sigma=sigma, mode="wrap"))


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates as broadcastable float32 (H, 1) rows and (1, W) columns."""
    axis = np.arange(size, dtype=np.float32)
    return axis[:, None], axis[None, :]


def _background(rng: np.random.Generator, cfg: SynthConfig, size: int) -> np.ndarray:
    """Smooth anatomy-like background intensity in (0, 1): fields, organ edges, vignetting."""
    scale = size / REFERENCE_SIZE
    log_b = 0.22 * _smooth_field(rng, size, 3)
    log_b += 0.05 * _smooth_field(rng, size, 10)
    log_b += rng.uniform(0.01, 0.03) * _texture(rng, size, 2.0 * scale)
    yy, xx = _grid(size)
    # One or two large soft edges (heart border, diaphragm, lung field): a big disc whose boundary
    # crosses the image, brighter or darker inside.
    for _ in range(int(rng.integers(1, 3))):
        cy, cx = rng.uniform(-0.5, 1.5, size=2) * size
        radius = rng.uniform(0.5, 1.1) * size
        dist = np.sqrt((yy - cy) ** 2 + (xx - cx) ** 2) - radius
        width = rng.uniform(0.01, 0.06) * size
        log_b += rng.uniform(-0.3, 0.3) / (1.0 + np.exp(np.clip(dist / width, -30, 30)))
    rr = ((yy - size / 2) ** 2 + (xx - size / 2) ** 2) / (size / 2) ** 2
    log_b -= rng.uniform(0.0, 0.25) * rr
    return rng.uniform(*cfg.brightness) * np.exp(log_b - log_b.mean())


def _collimator(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Collimator transmission (H, W) in (0, 1] and the hard collimated region (bool).

    Either one or two straight leaves along random borders (slightly tilted) or a circular iris;
    the edge is soft over about one pixel at 256.
    """
    yy, xx = _grid(size)
    if rng.random() < 0.3:
        centre = (0.5 + rng.normal(0.0, 0.04, size=2)) * size
        radius = rng.uniform(0.52, 0.68) * size
        inside = radius - np.sqrt((yy - centre[0]) ** 2 + (xx - centre[1]) ** 2)
    else:
        inside = np.full((size, size), np.inf, dtype=np.float32)
        for side in rng.choice(4, size=int(rng.integers(1, 3)), replace=False):
            depth = rng.uniform(0.02, 0.14) * size
            tilt = rng.uniform(-0.06, 0.06)
            along, across = (xx, yy) if side in (0, 2) else (yy, xx)
            if side in (2, 1):
                across = size - 1 - across
            inside = np.minimum(inside, across - depth - tilt * (along - size / 2))
    edge = max(0.8 * size / REFERENCE_SIZE, 0.5)
    floor = rng.uniform(0.05, 0.25)
    opening = 1.0 / (1.0 + np.exp(np.clip(-inside / edge, -30, 30)))
    return floor + (1.0 - floor) * opening, inside < 0


def _wash_in(rng: np.random.Generator, tubes: list[_Tube], n_trees: int, probability: float,
             size: int) -> list[_Tube]:
    """Partly filled trees: contrast fill ``1 / (1 + exp((dist - front) / width))`` along each tree.

    A tree is partly filled with ``probability``; its front lies at 30-100 % of its longest path
    distance, the fall-off ``width`` is 2-8 % of the image side.  Points whose fill is below 0.15
    are cut off (a branch keeps the prefix above it; a branch beyond the front goes), so the mask
    holds only vessel pixels that the contrast darkens.
    """
    out: list[_Tube] = []
    for layer in range(n_trees):
        members = [t for t in tubes if t.layer == layer]
        if not members or rng.random() >= probability:
            out += members
            continue
        reach = max(float(t.dist[-1]) for t in members)
        front = rng.uniform(0.3, 1.0) * reach
        width = rng.uniform(0.02, 0.08) * size
        for t in members:
            fill = 1.0 / (1.0 + np.exp(np.clip((t.dist - front) / width, -30.0, 30.0)))
            keep = int(np.count_nonzero(fill >= 0.15))  # fill falls along a branch: a prefix
            if keep >= 2:
                out.append(_Tube(t.points[:keep], t.radii[:keep], t.layer, t.dist[:keep], t.entry, fill[:keep]))
    return out


def _motion_kernel(rng: np.random.Generator, size: int) -> np.ndarray:
    """A normalised line kernel 1.5-5 pixels long (at 256) in a random direction, bilinear splats."""
    length = rng.uniform(1.5, 5.0) * size / REFERENCE_SIZE
    angle = rng.uniform(0.0, math.pi)
    half = int(math.ceil(length / 2)) + 1
    s = np.linspace(-length / 2, length / 2, max(int(4 * length), 2) + 1)
    y, x = s * math.sin(angle) + half, s * math.cos(angle) + half
    kernel = np.zeros((2 * half + 1, 2 * half + 1), dtype=np.float64)
    y0, x0 = np.floor(y).astype(int), np.floor(x).astype(int)
    fy, fx = y - y0, x - x0
    for dy, dx, w in ((0, 0, (1 - fy) * (1 - fx)), (0, 1, (1 - fy) * fx), (1, 0, fy * (1 - fx)), (1, 1, fy * fx)):
        np.add.at(kernel, (y0 + dy, x0 + dx), w)
    return (kernel / kernel.sum()).astype(np.float32)


# --------------------------------------------------------------------------------------------
# public API


def synthesize(seed: int, size: int | None = None, config: SynthConfig | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Generate one angiogram-like image and its exact vessel mask.

    Args:
        seed: Any non-negative integer; the same seed (with the same size and config) always gives
            the same output.  Trees, catheter, background, collimator and noise draw from separate
            random streams, so switching the catheter off leaves the mask unchanged.
        size: Image side in pixels (square images, at least 32).  ``None`` uses ``config.size``
            (256 by default).
        config: Generator parameters; ``None`` uses :class:`SynthConfig` defaults.

    Returns:
        ``(image, mask)``: ``image`` is ``uint8`` (H, W), dark vessels on a brighter background;
        ``mask`` is ``bool`` (H, W), exactly the vessel pixels whose attenuation darkened the image
        (catheter and collimator excluded).
    """
    cfg = config or SynthConfig()
    size = int(cfg.size if size is None else size)
    if size < MIN_SIZE:
        raise ValueError(f"synthetic image size must be at least {MIN_SIZE} pixels, got {size}")
    if not 1 <= cfg.n_trees[0] <= cfg.n_trees[1]:
        raise ValueError(f"n_trees must be a range (low, high) with 1 <= low <= high, got {cfg.n_trees}")
    # Streams 5-7 serve only the options the classic settings leave off, so those keep their output.
    tree_rng, cath_rng, bg_rng, coll_rng, noise_rng, anat_rng, fill_rng, motion_rng = (
        np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(8)
    )
    rscale = _radius_scale(size)

    n_trees = int(tree_rng.integers(cfg.n_trees[0], cfg.n_trees[1] + 1))
    tubes = [tube for layer in range(n_trees) for tube in _grow_tree(tree_rng, cfg, size, layer)]
    catheter = _catheter(cath_rng, tubes[0], size, layer=n_trees) if cfg.catheter and tubes else None
    if cfg.wash_in > 0:
        tubes = _wash_in(fill_rng, tubes, n_trees, cfg.wash_in, size)
    if catheter is not None:
        tubes.append(catheter)
    mask_layers, path = _rasterise(tubes, n_trees + 1, size, sum_tubes=cfg.overlap)

    image = _background(bg_rng, cfg, size)
    if cfg.anatomy:
        image *= np.exp(cfg.anatomy_strength * anatomy_log_transmission(anat_rng, size))
    if cfg.collimator:
        transmission, collimated = _collimator(coll_rng, size)
        mask_layers[:n_trees, collimated] = False
        path[:n_trees, collimated] = 0.0
        image *= transmission
    mask = mask_layers[:n_trees].any(axis=0)

    # Path length through each tube is the chord 2 sqrt(power); overlapping trees add up.
    mu = bg_rng.uniform(*cfg.contrast) / rscale
    attenuation = mu * path[:n_trees].sum(axis=0) + mu * bg_rng.uniform(*cfg.catheter_contrast) * path[n_trees]
    if cfg.motion_blur > 0 and motion_rng.random() < cfg.motion_blur:
        attenuation = ndimage.correlate(attenuation, _motion_kernel(motion_rng, size), mode="nearest")
    image *= np.exp(-attenuation).astype(np.float32)

    noise = noise_rng.standard_normal((2, size, size), dtype=np.float32)
    image += cfg.quantum_noise * np.sqrt(np.maximum(image, 0.0) / 0.5) * noise[0]
    image = ndimage.gaussian_filter(image, sigma=cfg.blur * rscale, mode="nearest")
    image += cfg.noise * noise[1]
    if cfg.gamma != (1.0, 1.0):
        image = np.clip(image, 0.0, 1.0) ** np.float32(motion_rng.uniform(*cfg.gamma))
    return np.clip(np.rint(image * 255.0), 0, 255).astype(np.uint8), mask


def synthesize_batch(seeds: Iterable[int], size: int | None = None,
                     config: SynthConfig | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Generate one image per seed: ``(images uint8 (N, H, W), masks bool (N, H, W))``.

    Args:
        seeds: Seeds, one per image (see :func:`synthesize`).
        size: Image side in pixels; ``None`` uses ``config.size``.
        config: Generator parameters; ``None`` uses the defaults.
    """
    pairs = [synthesize(int(s), size, config) for s in seeds]
    side = int((config or SynthConfig()).size if size is None else size)
    if not pairs:
        return np.zeros((0, side, side), np.uint8), np.zeros((0, side, side), bool)
    return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])


def write_dataset(out_dir: str | Path, count: int, size: int | None = None, seed: int = 0,
                  config: SynthConfig | None = None, progress: bool = True) -> list[Path]:
    """Write ``count`` synthetic image/mask pairs as PNG files, resuming what is already there.

    Image ``i`` uses seed ``seed + i`` and is written to ``out_dir/images/synth_{i:04d}.png`` (8-bit
    gray) with its mask at ``out_dir/masks/synth_{i:04d}.png`` (0/255).  A pair whose image and mask
    both exist is skipped; files are written atomically, so an interrupted run leaves no partial file.

    Args:
        out_dir: Dataset root (created if needed).
        count: Number of pairs.
        size: Image side in pixels; ``None`` uses ``config.size`` (256 by default).
        seed: Seed of the first image.
        config: Generator parameters; ``None`` uses the defaults.
        progress: Show a tqdm progress bar.

    Returns:
        The paths of all ``count`` images, in order, whether written now or found already present.
    """
    from tqdm import tqdm

    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    out_dir = Path(out_dir)
    images: list[Path] = []
    for i in tqdm(range(count), desc="synth", unit="img", disable=not progress):
        image_path = out_dir / "images" / f"synth_{i:04d}.png"
        mask_path = out_dir / "masks" / f"synth_{i:04d}.png"
        images.append(image_path)
        if image_path.is_file() and mask_path.is_file():
            continue
        image, mask = synthesize(seed + i, size, config)
        write_png_atomic(mask_path, mask)
        write_png_atomic(image_path, image)
    return images
