"""How close synthetic angiograms are to real ones: statistics computed the same way on both.

Every function takes one frame (or one binary vessel mask) and returns plain NumPy values; pooling
over frames and comparing two sets is done by :func:`compare` (used by
``benchmarks/synth_realism.py``).  The statistics:

* **Intensity histogram** (:func:`normalise_frame`, :func:`histogram`): each frame is mapped to
  ``[0, 1]`` by its own 0.5th and 99.5th percentiles (clipped), which removes global brightness
  and contrast, so what is compared is the *shape* of the distribution: how much of the frame is
  dark (collimator, vessels), how skewed the background is.  Two sets are compared by the 1-D
  Wasserstein distance of their pooled normalised intensities and by the intersection of their
  64-bin histograms (1 = identical).
* **Vessel width** (:func:`vessel_widths`): at every skeleton pixel of a mask, the width across the
  vessel.  The mask is upsampled 2x (nearest) first; there the Euclidean distance from a skeleton
  pixel to the nearest background pixel centre equals the width in original pixels exactly for an
  axis-aligned tube of any integer width (odd or even), and approximately otherwise.
* **Tortuosity** (:func:`branch_tortuosity`): the skeleton is cut into branches at its junctions
  (pixels whose 8-neighbourhood has three or more 0->1 crossings, so a staircase step is not a
  junction, removed with their 8-neighbours); each branch is ordered along its longest geodesic path, its coordinates smoothed
  (Gaussian, sigma 2 px, ends held in place, which removes the 8-connected staircase's excess
  length: a digital line at 22.5 degrees would otherwise measure 1.08), and the ratio arc length /
  chord is returned per branch of chord at least ``min_chord`` pixels.
* **Noise power spectrum** (:func:`radial_psd`, :func:`noise_psd`): the radially averaged power
  spectrum of the high-pass residual ``x - gaussian(x, 2)`` of the normalised frame (Hann window,
  power per unit frequency area normalised so that white noise of variance ``v`` gives ``v`` at
  every frequency).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components, dijkstra

__all__ = [
    "normalise_frame",
    "histogram",
    "wasserstein",
    "histogram_intersection",
    "vessel_widths",
    "branch_tortuosity",
    "radial_psd",
    "high_pass",
    "noise_psd",
    "frame_stats",
    "pool",
    "describe",
    "compare",
]

HIST_BINS = 64
PSD_BINS = 32


def normalise_frame(image: np.ndarray, low: float = 0.5, high: float = 99.5) -> np.ndarray:
    """A frame mapped to ``[0, 1]`` by its own ``low``/``high`` percentiles, clipped (float64)."""
    x = np.asarray(image, dtype=np.float64)
    lo, hi = np.percentile(x, [low, high])
    if hi <= lo:
        return np.zeros_like(x)
    return np.clip((x - lo) / (hi - lo), 0.0, 1.0)


def histogram(values: np.ndarray, bins: int = HIST_BINS) -> np.ndarray:
    """Normalised histogram (sums to 1) of values in ``[0, 1]`` over ``bins`` equal bins."""
    h, _ = np.histogram(np.asarray(values, dtype=np.float64).ravel(), bins=bins, range=(0.0, 1.0))
    return h / max(h.sum(), 1)


def wasserstein(a: np.ndarray, b: np.ndarray) -> float:
    """1-D Wasserstein (earth mover's) distance between two samples: the mean |quantile difference|.

    Computed on 1000 evenly spaced quantiles, which is exact to within 1/1000 of the range for the
    large samples compared here and cheap for millions of pixels.
    """
    q = (np.arange(1000) + 0.5) / 1000
    return float(np.mean(np.abs(np.quantile(np.ravel(a), q) - np.quantile(np.ravel(b), q))))


def histogram_intersection(p: np.ndarray, q: np.ndarray) -> float:
    """``sum(min(p, q))`` of two normalised histograms: 1 for identical ones, 0 for disjoint ones."""
    return float(np.minimum(p, q).sum())


# ------------------------------------------------------------------------------------ vessel shape


def _skeleton(mask: np.ndarray) -> np.ndarray:
    from skimage.morphology import skeletonize

    return skeletonize(np.asarray(mask, dtype=bool))


def vessel_widths(mask: np.ndarray) -> np.ndarray:
    """Vessel width (pixels) at every skeleton pixel of ``mask``, in original-image pixels.

    A straight axis-aligned tube ``w`` pixels wide is ``2w`` pixels wide on the 2x nearest-upsampled
    mask, an even number, so its skeleton runs next to the centre line and its distance to the nearest
    background pixel centre is ``w`` upsampled pixels: half the width in original pixels, from the
    centre.  The width is therefore that distance itself, for odd and even ``w`` alike.
    """
    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        return np.zeros(0)
    up = np.repeat(np.repeat(mask, 2, axis=0), 2, axis=1)
    dist = ndimage.distance_transform_edt(np.pad(up, 1))[1:-1, 1:-1]
    return dist[_skeleton(up)].astype(np.float64)


_RING = ((-1, -1), (-1, 0), (-1, 1), (0, 1), (1, 1), (1, 0), (1, -1), (0, -1))  # clockwise 8-neighbours


def _crossings(skel: np.ndarray) -> np.ndarray:
    """Number of 0->1 transitions around each pixel's 8-neighbourhood (clockwise), (H, W) int."""
    p = np.pad(skel, 1).astype(np.int8)
    h, w = skel.shape
    ring = [p[1 + dy:1 + dy + h, 1 + dx:1 + dx + w] for dy, dx in _RING]
    return sum(((ring[k] == 0) & (ring[(k + 1) % 8] == 1)).astype(np.int8) for k in range(8))


def _branch_paths(skel: np.ndarray) -> list[np.ndarray]:
    """The skeleton's branches between junctions, each as its longest geodesic path (n, 2) (y, x)."""
    skel = np.asarray(skel, dtype=bool)
    # A junction pixel and its skeleton neighbours go: two branches leaving a junction side by side
    # (as S and SE) cross the ring once together, so the pixel next to the junction can look like a
    # plain path pixel and would otherwise keep the branches joined.
    junction = ndimage.binary_dilation(skel & (_crossings(skel) >= 3), structure=np.ones((3, 3)))
    pieces = skel & ~junction
    ys, xs = np.nonzero(pieces)
    n = len(ys)
    if n == 0:
        return []
    index = -np.ones(skel.shape, dtype=np.int64)
    index[ys, xs] = np.arange(n)
    padded = np.pad(index, 1, constant_values=-1)
    rows, cols, weights = [], [], []
    for dy, dx in ((0, 1), (1, -1), (1, 0), (1, 1)):  # each undirected 8-neighbour pair once
        other = padded[1 + ys + dy, 1 + xs + dx]
        ok = other >= 0
        rows.append(np.arange(n)[ok])
        cols.append(other[ok])
        weights.append(np.full(int(ok.sum()), np.hypot(dy, dx)))
    r, c, wt = np.concatenate(rows), np.concatenate(cols), np.concatenate(weights)
    graph = coo_matrix((wt, (r, c)), shape=(n, n)).tocsr()
    n_comp, label = connected_components(graph, directed=False)
    # Double sweep (exact for trees, the longest path of a path-like branch): from any node of each
    # branch to its farthest node A, then from A to its farthest node B; the branch is the path A..B.
    first = np.full(n_comp, -1)
    first[label[::-1]] = np.arange(n)[::-1]
    dist = dijkstra(graph, directed=False, indices=first)
    dist[~np.isfinite(dist)] = -1.0
    ends_a = dist.argmax(axis=1)
    dist, pred = dijkstra(graph, directed=False, indices=ends_a, return_predecessors=True)
    dist[~np.isfinite(dist)] = -1.0
    ends_b = dist.argmax(axis=1)
    paths = []
    for k in range(n_comp):
        node, path = ends_b[k], [ends_b[k]]
        while node != ends_a[k]:
            node = pred[k, node]
            path.append(node)
        paths.append(np.stack([ys[path], xs[path]], axis=1).astype(np.float64))
    return paths


def _smooth_path(path: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian smoothing along an ordered path that keeps its two ends in place.

    The path is extended at each end by its point reflection about the end point
    (``2 p[0] - p[k]``), so a straight stretch stays straight and an end is not pulled inwards.
    """
    k = min(int(4 * sigma) + 1, len(path) - 1)
    ext = np.concatenate([2 * path[0] - path[k:0:-1], path, 2 * path[-1] - path[-2:-k - 2:-1]])
    return ndimage.gaussian_filter1d(ext, sigma=sigma, axis=0, mode="nearest")[k:k + len(path)]


def branch_tortuosity(mask: np.ndarray, min_chord: float = 10.0, smooth: float = 2.0,
                      skeleton: bool = True) -> np.ndarray:
    """Arc length / chord of every branch of ``mask`` whose chord is at least ``min_chord`` pixels.

    Args:
        mask: a binary vessel mask (skeletonised first), or a skeleton with ``skeleton=False``.
        min_chord: shortest end-to-end distance of a branch that is counted (short branches are
            mostly skeleton spurs, and their ratio is dominated by pixel steps).
        smooth: sigma (pixels, along the path) of the Gaussian smoothing of the ordered path.
        skeleton: skeletonise ``mask`` first.
    """
    skel = _skeleton(mask) if skeleton else np.asarray(mask, dtype=bool)
    out = []
    for path in _branch_paths(skel):
        chord = float(np.hypot(*(path[-1] - path[0])))
        if chord < min_chord:
            continue
        if smooth > 0 and len(path) > 2:
            path = _smooth_path(path, smooth)
        arc = float(np.hypot(*np.diff(path, axis=0).T).sum())
        out.append(arc / max(chord, 1e-9))
    return np.asarray(out, dtype=np.float64)


# ------------------------------------------------------------------------------------------ noise


def radial_psd(image: np.ndarray, bins: int = PSD_BINS) -> tuple[np.ndarray, np.ndarray]:
    """Radially averaged power spectrum of a 2-D array: ``(frequencies, power)``.

    The mean is removed and a 2-D Hann window applied; power is ``|FFT|^2 / sum(window^2)``, so a
    white noise of variance ``v`` has expected power ``v`` at every frequency.  ``bins`` equal
    rings of radial frequency from 0 to 0.5 cycles/pixel (the corners beyond 0.5 are left out);
    ``frequencies`` are the ring centres.
    """
    x = np.asarray(image, dtype=np.float64)
    h, w = x.shape
    window = np.outer(np.hanning(h), np.hanning(w))
    power = np.abs(np.fft.fft2((x - x.mean()) * window)) ** 2 / (window**2).sum()
    fy, fx = np.fft.fftfreq(h)[:, None], np.fft.fftfreq(w)[None, :]
    radius = np.hypot(fy, fx)
    ring = np.minimum((radius / 0.5 * bins).astype(np.int64), bins)  # bins == beyond Nyquist
    total = np.bincount(ring.ravel(), power.ravel(), minlength=bins + 1)[:bins]
    count = np.bincount(ring.ravel(), minlength=bins + 1)[:bins]
    freqs = (np.arange(bins) + 0.5) * 0.5 / bins
    return freqs, total / np.maximum(count, 1)


def high_pass(image: np.ndarray, sigma: float = 2.0) -> np.ndarray:
    """The residual ``x - gaussian(x, sigma)`` of the normalised frame (:func:`normalise_frame`)."""
    x = normalise_frame(image)
    return x - ndimage.gaussian_filter(x, sigma, mode="reflect")


def noise_psd(image: np.ndarray, sigma: float = 2.0, bins: int = PSD_BINS) -> np.ndarray:
    """PSD (see :func:`radial_psd`) of the high-pass residual (:func:`high_pass`)."""
    return radial_psd(high_pass(image, sigma), bins)[1]


# --------------------------------------------------------------------------------- sets of frames


def frame_stats(image: np.ndarray, mask: np.ndarray, min_chord: float = 10.0) -> dict:
    """Every statistic of one frame (0-255 or [0, 1] gray) and its vessel mask."""
    x = normalise_frame(image)
    residual = high_pass(image)
    return {
        "intensity": x.astype(np.float32).ravel(),
        "widths": vessel_widths(mask),
        "tortuosity": branch_tortuosity(mask, min_chord=min_chord),
        "psd": radial_psd(residual)[1],
        "residual_std": float(residual.std()),
        "vessel_fraction": float(np.mean(mask)),
    }


def _summary(values: np.ndarray) -> dict:
    if values.size == 0:
        return {"n": 0, "mean": float("nan"), "median": float("nan"), "p90": float("nan")}
    return {"n": int(values.size), "mean": float(values.mean()), "median": float(np.median(values)),
            "p90": float(np.percentile(values, 90))}


def pool(stats: list[dict]) -> dict:
    """Pool the per-frame statistics of a set of frames."""
    return {
        "intensity": np.concatenate([s["intensity"] for s in stats]),
        "widths": np.concatenate([s["widths"] for s in stats]),
        "tortuosity": np.concatenate([s["tortuosity"] for s in stats]),
        "psd": np.mean([s["psd"] for s in stats], axis=0),
        "vessel_fraction": np.array([s["vessel_fraction"] for s in stats]),
        "residual_std": np.array([s["residual_std"] for s in stats]),
    }


def compare(a: dict, b: dict) -> dict:
    """Distances between two pooled sets (:func:`pool`): intensity, width and tortuosity
    distributions (Wasserstein; histogram intersection for intensity) and the noise spectra
    (RMS difference of ``10 log10`` PSD, in dB, over the rings above 0.05 cycles/pixel, where the
    high-pass residual holds its power)."""
    freqs = (np.arange(PSD_BINS) + 0.5) * 0.5 / PSD_BINS
    band = freqs > 0.05
    db = 10 * np.log10(np.maximum(a["psd"][band], 1e-20)) - 10 * np.log10(np.maximum(b["psd"][band], 1e-20))
    return {
        "intensity_w1": wasserstein(a["intensity"], b["intensity"]),
        "intensity_hi": histogram_intersection(histogram(a["intensity"]), histogram(b["intensity"])),
        "width_w1": wasserstein(a["widths"], b["widths"]) if a["widths"].size and b["widths"].size else float("nan"),
        "tortuosity_w1": (wasserstein(a["tortuosity"], b["tortuosity"])
                          if a["tortuosity"].size and b["tortuosity"].size else float("nan")),
        "psd_db_rms": float(np.sqrt(np.mean(db**2))),
    }


def describe(pooled: dict) -> dict:
    """Summaries of a pooled set: width and tortuosity quantiles, vessel fraction, PSD shape."""
    psd = pooled["psd"]
    return {
        "width": _summary(pooled["widths"]),
        "tortuosity": _summary(pooled["tortuosity"]),
        "vessel_fraction": float(np.mean(pooled["vessel_fraction"])),
        "residual_std": float(np.mean(pooled["residual_std"])),
        "psd_hi_mid": float(psd[-4:].mean() / max(psd[12:16].mean(), 1e-20)),
    }
