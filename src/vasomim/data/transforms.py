"""Joint image/mask transforms for pre-training and fine-tuning.

Everything here works on numpy arrays (image: 2-D float32 in ``[0, 1]``; mask: 2-D bool) and draws
its randomness from an explicit ``numpy.random.Generator``, so a transform is deterministic given
its generator and safe in DataLoader workers (see :func:`vasomim.data.datasets.sample_rng` for how
the datasets seed it).

Geometry is shared: one set of crop/flip parameters is drawn per sample and applied to the image
(bicubic) and the mask (nearest), both resampled by Pillow on the same output grid.  Output pixel
``i`` of a crop ``(top, left, height, width)`` resized to ``size`` samples the source at
``left + (i + 0.5) * width / size`` (pixel centres), so every mask pixel lands on the image pixel it
came from.  Bicubic overshoot is clipped back to ``[0, 1]``.  Photometric jitter touches the image
only.

:func:`build_transform` turns a :class:`TransformConfig` into the callable the datasets use:
``(image, mask | None, rng) -> (FloatTensor (C, H, W), FloatTensor (1, H, W) | None)``.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import torch
from PIL import Image
from pydantic import field_validator, model_validator

from vasomim.config import StrictModel

__all__ = [
    "GRAY_MEAN",
    "GRAY_STD",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "TransformConfig",
    "JointTransform",
    "build_transform",
    "random_resized_crop_params",
    "resized_crop",
    "joint_random_resized_crop",
    "hflip",
    "random_hflip",
    "resize",
    "photometric_jitter",
    "flat_margin",
    "random_flat_margin",
    "normalize",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Gray statistics: the ImageNet statistics averaged over the channels (timm's convention for
# single-channel models), so a 1-channel and a 3-channel model see inputs on the same scale.
GRAY_MEAN = (0.449,)
GRAY_STD = (0.226,)

_RESAMPLE = {"nearest": Image.NEAREST, "bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC}


class TransformConfig(StrictModel):
    """Settings of the joint transform.

    Attributes:
        size: Output side in pixels (square output).
        scale: Range of the crop area as a fraction of the image area (RandomResizedCrop).
        zoom: Instead of ``scale``: crops at a fixed resolution.  The crop's side in image pixels is
            ``size / (base_scale * z)`` with ``z`` log-uniform in ``zoom`` (so ``base_scale=1`` and
            ``zoom=(1, 1)`` cut ``size x size`` windows at the image's native resolution); a crop
            larger than the image pads it (reflected image, background mask).
        base_scale: Network pixels per image pixel for ``zoom`` crops (the inference scale).
        ratio: Range of the crop aspect ratio (width / height), sampled log-uniformly.
        hflip: Probability of a horizontal flip.
        photometric: Apply the photometric jitter below to the image (training only).
        brightness: Largest additive brightness shift (uniform in ``[-b, b]``).
        contrast: Largest relative contrast change: a factor uniform in ``[1 - c, 1 + c]`` around
            the mean.
        gamma: Range of the gamma exponent, sampled log-uniformly.
        noise: Largest standard deviation of additive Gaussian noise (uniform in ``[0, noise]``).
        margin: Probability of a flat margin: one side of the crop, chosen at random, is replaced by
            a band of one grey level (uniform in ``[0, 1]``) with no vessels in the mask, as when a
            frame is letterboxed or placed on a larger canvas (training only).
        margin_width: Range of the band's width as a fraction of the crop's side (uniform).
        channels: 1 (gray) or 3 (gray replicated, for ImageNet-style models).
        mean, std: Normalisation per output channel.  Default: :data:`GRAY_MEAN`/:data:`GRAY_STD`
            for one channel, :data:`IMAGENET_MEAN`/:data:`IMAGENET_STD` for three.
    """

    size: int = 224
    scale: tuple[float, float] = (0.2, 1.0)
    zoom: tuple[float, float] | None = None
    base_scale: float = 1.0
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    hflip: float = 0.5
    photometric: bool = False
    brightness: float = 0.1
    contrast: float = 0.2
    gamma: tuple[float, float] = (0.8, 1.25)
    noise: float = 0.02
    margin: float = 0.0
    margin_width: tuple[float, float] = (0.05, 0.4)
    channels: Literal[1, 3] = 1
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None

    @field_validator("size")
    @classmethod
    def _positive_size(cls, v: int) -> int:
        if v < 1:
            raise ValueError("size must be >= 1")
        return v

    @field_validator("scale", "ratio", "gamma", "zoom")
    @classmethod
    def _ordered_range(cls, v: tuple[float, float] | None) -> tuple[float, float] | None:
        if v is not None and not 0 < v[0] <= v[1]:
            raise ValueError(f"expected 0 < low <= high, got {v}")
        return v

    @field_validator("hflip", "margin")
    @classmethod
    def _probability(cls, v: float) -> float:
        if not 0 <= v <= 1:
            raise ValueError("expected a probability in [0, 1]")
        return v

    @field_validator("margin_width")
    @classmethod
    def _fraction_range(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not 0 <= v[0] <= v[1] < 1:
            raise ValueError(f"expected 0 <= low <= high < 1 (fractions of the crop's side), got {v}")
        return v

    @model_validator(mode="after")
    def _stats_match_channels(self) -> "TransformConfig":
        for key in ("mean", "std"):
            value = getattr(self, key)
            if value is not None and len(value) != self.channels:
                raise ValueError(f"{key} has {len(value)} values for {self.channels} channel(s)")
        if self.std is not None and min(self.std) <= 0:
            raise ValueError("std values must be > 0")
        return self

    def stats(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """The ``(mean, std)`` in use, defaults filled in."""
        if self.channels == 1:
            return self.mean or GRAY_MEAN, self.std or GRAY_STD
        return self.mean or IMAGENET_MEAN, self.std or IMAGENET_STD


def _size_hw(out_size: int | tuple[int, int]) -> tuple[int, int]:
    return (out_size, out_size) if isinstance(out_size, int) else (int(out_size[0]), int(out_size[1]))


def random_resized_crop_params(
    h: int,
    w: int,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    rng: np.random.Generator,
) -> tuple[int, int, int, int]:
    """Draw a RandomResizedCrop box ``(top, left, height, width)`` inside an ``h x w`` image.

    The area fraction is uniform in ``scale`` and the aspect ratio (width/height) log-uniform in
    ``ratio``; up to ten draws are tried, then the largest centred box whose ratio is clamped to
    ``ratio`` is used (the usual RandomResizedCrop rule).
    """
    area = h * w
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(10):
        target = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(log_lo, log_hi))
        cw = int(round(math.sqrt(target * aspect)))
        ch = int(round(math.sqrt(target / aspect)))
        if 0 < cw <= w and 0 < ch <= h:
            top = int(rng.integers(0, h - ch + 1))
            left = int(rng.integers(0, w - cw + 1))
            return top, left, ch, cw
    in_ratio = w / h
    if in_ratio < ratio[0]:
        cw, ch = w, int(round(w / ratio[0]))
    elif in_ratio > ratio[1]:
        ch, cw = h, int(round(h * ratio[1]))
    else:
        cw, ch = w, h
    return (h - ch) // 2, (w - cw) // 2, ch, cw


def zoom_crop_params(
    h: int,
    w: int,
    size: int,
    base_scale: float,
    zoom: tuple[float, float],
    ratio: tuple[float, float],
    rng: np.random.Generator,
) -> tuple[int, int, int, int]:
    """A crop box ``(top, left, height, width)`` at a fixed resolution (see ``TransformConfig.zoom``).

    The side is ``size / (base_scale * z)`` image pixels (``z`` log-uniform in ``zoom``), the aspect
    ratio log-uniform in ``ratio``; the box lies inside the image where it fits, otherwise it is
    centred on that axis and overhangs both sides (negative ``top``/``left``).
    """
    z = math.exp(rng.uniform(math.log(zoom[0]), math.log(zoom[1])))
    aspect = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
    side = size / (base_scale * z)
    ch = max(1, int(round(side / math.sqrt(aspect))))
    cw = max(1, int(round(side * math.sqrt(aspect))))
    top = int(rng.integers(0, h - ch + 1)) if ch <= h else -((ch - h) // 2)
    left = int(rng.integers(0, w - cw + 1)) if cw <= w else -((cw - w) // 2)
    return top, left, ch, cw


def _pad_to_box(image: np.ndarray, mask: np.ndarray | None, box: tuple[int, int, int, int]):
    """Pad image (reflected) and mask (background) so that ``box`` lies inside; returns the shifted box."""
    top, left, ch, cw = box
    h, w = image.shape
    pt, pl = max(0, -top), max(0, -left)
    pb, pr = max(0, top + ch - h), max(0, left + cw - w)
    if not (pt or pl or pb or pr):
        return image, mask, box
    pads = ((pt, pb), (pl, pr))
    image = np.pad(image, pads, mode="symmetric")
    mask = np.pad(mask, pads, mode="constant") if mask is not None else None
    return image, mask, (top + pt, left + pl, ch, cw)


def resized_crop(
    array: np.ndarray,
    box: tuple[int, int, int, int],
    out_size: int | tuple[int, int],
    interpolation: Literal["nearest", "bilinear", "bicubic"] = "bicubic",
) -> np.ndarray:
    """Crop ``box = (top, left, height, width)`` and resize it to ``out_size`` in one Pillow call.

    Args:
        array: 2-D float32 (resampled as Pillow mode ``F``), or bool/uint8 (mode ``L``; use
            ``nearest``).
        box: The crop in source pixels.
        out_size: Output side, or ``(height, width)``.
        interpolation: ``nearest``, ``bilinear`` or ``bicubic`` (Pillow's filters, antialiased when
            shrinking).

    Returns:
        An array of the input dtype (float32, bool or uint8) and shape ``out_size``.
    """
    top, left, height, width = box
    oh, ow = _size_hw(out_size)
    if array.dtype == bool:
        src = Image.fromarray(array.view(np.uint8))
    elif array.dtype == np.uint8:
        src = Image.fromarray(array)
    else:
        src = Image.fromarray(np.asarray(array, dtype=np.float32))
    out = np.array(src.resize((ow, oh), _RESAMPLE[interpolation], box=(left, top, left + width, top + height)))
    return out.astype(bool) if array.dtype == bool else out


def joint_random_resized_crop(
    image: np.ndarray,
    mask: np.ndarray | None,
    out_size: int | tuple[int, int],
    scale: tuple[float, float] = (0.2, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    rng: np.random.Generator | None = None,
    interpolation: Literal["nearest", "bilinear", "bicubic"] = "bicubic",
) -> tuple[np.ndarray, np.ndarray | None]:
    """RandomResizedCrop of an image and its mask with one shared box.

    Args:
        image: 2-D float32 image.
        mask: 2-D bool mask of the same shape, or ``None``.
        out_size: Output side, or ``(height, width)``.
        scale, ratio: See :func:`random_resized_crop_params`.
        rng: Source of randomness (``None``: a fresh unseeded generator).
        interpolation: Filter for the image; the mask always uses ``nearest``.
    """
    rng = rng if rng is not None else np.random.default_rng()
    if mask is not None and mask.shape != image.shape:
        raise ValueError(f"mask shape {mask.shape} differs from image shape {image.shape}")
    box = random_resized_crop_params(image.shape[0], image.shape[1], scale, ratio, rng)
    out_image = resized_crop(image, box, out_size, interpolation)
    out_mask = resized_crop(mask, box, out_size, "nearest") if mask is not None else None
    return out_image, out_mask


def hflip(image: np.ndarray, mask: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """Mirror image and mask left-right (contiguous copies)."""
    flipped = np.ascontiguousarray(image[:, ::-1])
    return flipped, (np.ascontiguousarray(mask[:, ::-1]) if mask is not None else None)


def random_hflip(
    image: np.ndarray, mask: np.ndarray | None, p: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray | None]:
    """Apply :func:`hflip` to both with probability ``p`` (one draw from ``rng`` either way)."""
    return hflip(image, mask) if rng.random() < p else (image, mask)


def resize(
    image: np.ndarray, mask: np.ndarray | None, out_size: int | tuple[int, int]
) -> tuple[np.ndarray, np.ndarray | None]:
    """Resize a whole image (bicubic, clipped to ``[0, 1]``) and its mask (nearest) to ``out_size``."""
    box = (0, 0, image.shape[0], image.shape[1])
    out = np.clip(resized_crop(image, box, out_size, "bicubic"), 0.0, 1.0)
    return out, (resized_crop(mask, box, out_size, "nearest") if mask is not None else None)


def photometric_jitter(
    image: np.ndarray,
    rng: np.random.Generator,
    brightness: float = 0.1,
    contrast: float = 0.2,
    gamma: tuple[float, float] = (0.8, 1.25),
    noise: float = 0.02,
) -> np.ndarray:
    """Random gamma, contrast, brightness and Gaussian noise on a ``[0, 1]`` image (result clipped).

    Args:
        image: 2-D float32 in ``[0, 1]``.
        rng: Source of randomness.
        brightness: Additive shift uniform in ``[-brightness, brightness]``.
        contrast: Factor uniform in ``[1 - contrast, 1 + contrast]``, applied around the image mean.
        gamma: Exponent range, log-uniform.
        noise: Noise standard deviation uniform in ``[0, noise]``.
    """
    g = math.exp(rng.uniform(math.log(gamma[0]), math.log(gamma[1])))
    c = rng.uniform(1 - contrast, 1 + contrast)
    b = rng.uniform(-brightness, brightness)
    sigma = rng.uniform(0, noise)
    out = np.power(np.clip(image, 0.0, 1.0), g, dtype=np.float32)
    out = (out - out.mean()) * c + out.mean() + b
    if sigma > 0:
        out += rng.normal(0.0, sigma, size=out.shape).astype(np.float32)
    return np.clip(out, 0.0, 1.0).astype(np.float32, copy=False)


def flat_margin(
    image: np.ndarray, mask: np.ndarray | None, side: int, width: int, value: float
) -> tuple[np.ndarray, np.ndarray | None]:
    """Copies of image and mask with a flat band ``width`` pixels wide along one side.

    Args:
        image: 2-D float32.
        mask: 2-D bool of the same shape, or ``None``.
        side: 0 top, 1 bottom, 2 left, 3 right.
        width: Band width in pixels (``0`` changes nothing).
        value: The band's grey level; the mask is background there.
    """
    band = [(slice(0, width), slice(None)), (slice(image.shape[0] - width, None), slice(None)),
            (slice(None), slice(0, width)), (slice(None), slice(image.shape[1] - width, None))][side]
    image = image.copy()
    mask = mask.copy() if mask is not None else None
    if width > 0:
        image[band] = value
        if mask is not None:
            mask[band] = False
    return image, mask


def random_flat_margin(
    image: np.ndarray, mask: np.ndarray | None, p: float, width: tuple[float, float],
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray | None]:
    """:func:`flat_margin` with probability ``p``: a random side, a width uniform in ``width`` (a
    fraction of that side's extent) and a grey level uniform in ``[0, 1]``.

    The network then learns that a flat border is not anatomy and that vessels end at it, which a
    frame padded onto a larger canvas otherwise teaches it at inference only.  Draws nothing from
    ``rng`` when ``p`` is 0, so configs without margins keep their random streams.
    """
    if p <= 0 or rng.random() >= p:
        return image, mask
    side = int(rng.integers(4))
    extent = image.shape[0] if side < 2 else image.shape[1]
    pixels = int(round(rng.uniform(*width) * extent))
    return flat_margin(image, mask, side, pixels, float(rng.uniform(0.0, 1.0)))


def normalize(image: np.ndarray, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """``(image - mean) / std`` as a FloatTensor ``(C, H, W)``; ``C = len(mean)`` (gray replicated)."""
    m = np.asarray(mean, dtype=np.float32)[:, None, None]
    s = np.asarray(std, dtype=np.float32)[:, None, None]
    return torch.from_numpy((np.asarray(image, dtype=np.float32)[None] - m) / s)


class JointTransform:
    """The callable built by :func:`build_transform`; picklable, stateless between calls.

    Training: RandomResizedCrop, or a fixed-resolution crop with ``zoom`` (shared box) -> horizontal
    flip -> optional flat margin -> optional photometric jitter -> normalise.  Evaluation: resize to ``size x size`` -> normalise.

    Args:
        cfg: The settings.
        train: Random augmentation (``True``) or the deterministic evaluation path.
    """

    def __init__(self, cfg: TransformConfig, train: bool):
        self.cfg = cfg
        self.train = train
        self.mean, self.std = cfg.stats()

    def __call__(
        self, image: np.ndarray, mask: np.ndarray | None = None, rng: np.random.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Transform one sample.

        Args:
            image: 2-D float32 in ``[0, 1]``.
            mask: 2-D bool of the same shape, or ``None``.
            rng: Source of randomness (``None``: a fresh unseeded generator; the datasets always
                pass one).

        Returns:
            ``(image FloatTensor (C, size, size), mask FloatTensor (1, size, size) of 0/1, or
            None)``.
        """
        cfg = self.cfg
        if self.train:
            rng = rng if rng is not None else np.random.default_rng()
            if cfg.zoom is None:
                image, mask = joint_random_resized_crop(image, mask, cfg.size, cfg.scale, cfg.ratio, rng)
            else:
                if mask is not None and mask.shape != image.shape:
                    raise ValueError(f"mask shape {mask.shape} differs from image shape {image.shape}")
                box = zoom_crop_params(*image.shape, cfg.size, cfg.base_scale, cfg.zoom, cfg.ratio, rng)
                image, mask, box = _pad_to_box(image, mask, box)
                image = resized_crop(image, box, cfg.size, "bicubic")
                mask = resized_crop(mask, box, cfg.size, "nearest") if mask is not None else None
            np.clip(image, 0.0, 1.0, out=image)
            image, mask = random_hflip(image, mask, cfg.hflip, rng)
            image, mask = random_flat_margin(image, mask, cfg.margin, cfg.margin_width, rng)
            if cfg.photometric:
                image = photometric_jitter(image, rng, cfg.brightness, cfg.contrast, cfg.gamma, cfg.noise)
        else:
            image, mask = resize(image, mask, cfg.size)
        out_mask = torch.from_numpy(mask[None].astype(np.float32)) if mask is not None else None
        return normalize(image, self.mean, self.std), out_mask

    def __repr__(self) -> str:
        return f"JointTransform(train={self.train}, {self.cfg!r})"


def build_transform(cfg: TransformConfig | None = None, train: bool = True) -> JointTransform:
    """The joint transform for ``cfg`` (defaults when ``None``); see :class:`JointTransform`."""
    return JointTransform(cfg if cfg is not None else TransformConfig(), train)
