"""Background anatomy of a coronary angiogram for the synthetic generator (:mod:`.synthetic`).

A coronary frame shows, besides the contrast-filled arteries, the projected shadows of the chest:
the heart (a large, soft, denser region), the lung fields (brighter, with a fine mottled texture
of small vessels and airways), the spine (a vertical band of vertebral bodies separated by
brighter disc spaces), ribs (gently curved oblique bands with denser edges) and the diaphragm (a
dome whose abdominal side is much denser).  :func:`anatomy_log_transmission` draws each as a term of
the log transmission ``log I`` (negative: it attenuates, positive: it transmits more than average),
from geometric primitives evaluated on the whole pixel grid: NumPy only, a few dozen full-frame
operations, no loop over pixels.  Sizes are fractions of the frame, so a frame of any size shows the
same anatomy.

Which structures appear, where, how strongly and at what angle is drawn per image; each appears in a
share of the images (the spine in about 60 %, ribs in 70 %, the diaphragm in 50 %, a lung field in
80 %), as the views of a coronary series differ.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

__all__ = ["anatomy_log_transmission"]


def _soft_step(x: np.ndarray, width: float) -> np.ndarray:
    """A logistic step from 0 (x << 0) to 1 (x >> 0) over about ``width``."""
    return 1.0 / (1.0 + np.exp(np.clip(-x / max(width, 1e-6), -30.0, 30.0)))


def _rotated(yy: np.ndarray, xx: np.ndarray, size: int, angle: float, centre: tuple[float, float]):
    """Coordinates (u along the angle, v across it), in pixels, about ``centre``."""
    c, s = math.cos(angle), math.sin(angle)
    dy, dx = yy - centre[0], xx - centre[1]
    return dy * c + dx * s, -dy * s + dx * c


def _texture(rng: np.random.Generator, size: int, sigma: float) -> np.ndarray:
    """Zero-mean, unit-std white noise blurred by a Gaussian of ``sigma`` pixels (float32)."""
    field = ndimage.gaussian_filter(rng.standard_normal((size, size), dtype=np.float32), sigma, mode="wrap",
                                    truncate=3.0)
    field -= field.mean()
    return field / max(float(field.std()), 1e-6)


def _heart(rng, yy, xx, size) -> np.ndarray:
    """A large ellipse, denser inside, its soft border crossing the frame."""
    cy, cx = rng.uniform(0.35, 1.0) * size, rng.uniform(0.1, 0.9) * size
    ay, ax = rng.uniform(0.35, 0.7, size=2) * size
    u, v = _rotated(yy, xx, size, rng.uniform(-0.6, 0.6), (cy, cx))
    inside = 1.0 - np.sqrt((u / ay) ** 2 + (v / ax) ** 2)
    return -rng.uniform(0.15, 0.45) * _soft_step(inside, rng.uniform(0.04, 0.12))


def _lung(rng, yy, xx, size, scale) -> np.ndarray:
    """A brighter field on one side of a soft curved border, with a fine mottled texture."""
    angle = rng.uniform(0.0, 2.0 * math.pi)
    u, v = _rotated(yy, xx, size, angle, (size / 2, size / 2))
    border = rng.uniform(-0.1, 0.35) * size + rng.uniform(-0.6, 0.6) * v**2 / size
    field = _soft_step(u - border, rng.uniform(0.02, 0.08) * size)
    mottle = _texture(rng, size, 1.5 * scale)
    return field * (rng.uniform(0.15, 0.4) + rng.uniform(0.02, 0.05) * mottle)


def _spine(rng, yy, xx, size) -> np.ndarray:
    """A vertical-ish band of vertebral bodies: denser blocks separated by brighter disc spaces."""
    angle = rng.normal(0.0, 0.15)  # the band's axis, from vertical
    centre = (size / 2, rng.uniform(-0.1, 1.1) * size)
    u, v = _rotated(yy, xx, size, angle, centre)
    half = rng.uniform(0.07, 0.12) * size
    band = _soft_step(half - np.abs(v), 0.015 * size)
    period = rng.uniform(0.12, 0.2) * size
    phase = rng.uniform(0.0, period)
    disc = np.cos(math.pi * (u + phase) / period) ** 8  # narrow bright gaps
    edges = np.exp(-0.5 * ((np.abs(v) - half) / (0.012 * size)) ** 2)  # denser cortical borders
    strength = rng.uniform(0.12, 0.3)
    return -strength * (band * (1.0 - 0.35 * disc) + 0.3 * edges)


def _ribs(rng, yy, xx, size) -> np.ndarray:
    """Three to seven gently curved, parallel oblique bands with denser edges."""
    out = np.zeros((size, size), dtype=np.float32)
    angle = rng.uniform(-0.7, 0.7)
    u, v = _rotated(yy, xx, size, angle, (size / 2, size / 2))
    n = int(rng.integers(3, 8))
    spacing = rng.uniform(0.16, 0.26) * size
    curve = rng.uniform(-1.2, 1.2) / size
    start = rng.uniform(-0.5, 0.0) * size
    for k in range(n):
        centre = start + k * spacing + rng.normal(0.0, 0.02) * size
        dist = u - centre - curve * v**2
        half = rng.uniform(0.03, 0.055) * size
        inside = _soft_step(half - np.abs(dist), 0.006 * size)
        edge = np.exp(-0.5 * ((np.abs(dist) - half) / (0.007 * size)) ** 2)
        out -= rng.uniform(0.03, 0.09) * (0.6 * inside + edge)
    return out


def _diaphragm(rng, yy, xx, size) -> np.ndarray:
    """A dome: everything below its soft edge (abdomen) much denser."""
    angle = rng.normal(0.0, 0.35)
    u, v = _rotated(yy, xx, size, angle, (size / 2, size / 2))
    top = rng.uniform(0.1, 0.55) * size
    dome = top + rng.uniform(0.4, 1.2) * (v - rng.uniform(-0.3, 0.3) * size) ** 2 / size
    return -rng.uniform(0.25, 0.6) * _soft_step(u - dome, rng.uniform(0.008, 0.03) * size)


def anatomy_log_transmission(rng: np.random.Generator, size: int) -> np.ndarray:
    """The background anatomy as a log transmission map (H, W) float32, zero mean.

    Args:
        rng: the image's background-anatomy stream.
        size: image side in pixels.
    """
    axis = np.arange(size, dtype=np.float32)
    yy, xx = axis[:, None], axis[None, :]
    scale = size / 256.0
    log_t = _heart(rng, yy, xx, size)
    if rng.random() < 0.8:
        log_t = log_t + _lung(rng, yy, xx, size, scale)
    if rng.random() < 0.6:
        log_t = log_t + _spine(rng, yy, xx, size)
    if rng.random() < 0.7:
        log_t = log_t + _ribs(rng, yy, xx, size)
    if rng.random() < 0.5:
        log_t = log_t + _diaphragm(rng, yy, xx, size)
    log_t = np.asarray(log_t, dtype=np.float32)
    return log_t - log_t.mean()
