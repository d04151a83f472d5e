"""Inference shared by the engines and the Python API: models from checkpoints, devices, predicting.

Below the engines (``predict``, ``evaluate``, ``finetune`` import it; it imports none of them):

* :func:`build_network` builds the network a ``config["network"]`` describes;
  :func:`load_model` takes a checkpoint or an exported model folder (through the one loader,
  :func:`vasomim.models.checkpoints.model_from_checkpoint`) or a shipped model name, and returns
  the network in eval mode with its input convention attached (``model.input_convention``).
* :func:`sliding_window` is the numeric core, a pure function on tensors: pad a normalised batch to
  the network's window (or grid), cut overlapping windows, run them as batches, blend them with
  Gaussian (or uniform) weights and crop the padding off.
* :func:`predict_image` is one image at its own geometry: resized by the checkpoint's fixed
  ``scale`` (network pixels per image pixel, the same for every image, so the aspect ratio and the
  vessel width the network saw in training are kept), windowed, optionally averaged with its
  horizontal flip, and brought back to the image's own ``(H, W)``. ``mode="resize"`` is the old
  path: squash to ``size x size`` and back.
* :func:`segment` is the Python API on one array or file.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Callable, Literal, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vasomim.data.io import ImageReadError, pil_to_gray_array, read_image
from vasomim.data.transforms import TransformConfig, normalize, resize
from vasomim.metrics import resize_to
from vasomim.models.checkpoints import model_from_checkpoint, strip_wrappers
from vasomim.models.segmentation import PATCH_SIZE, build_segmentation_model
from vasomim.shipped import find as find_shipped
from vasomim.shipped import list_shipped

__all__ = [
    "MODEL_REGISTRY",
    "as_gray",
    "build_network",
    "gaussian_weights",
    "input_convention",
    "load_model",
    "model_from_checkpoint",
    "network_grid",
    "predict_image",
    "predict_images",
    "reference_scale",
    "register_model",
    "resolve_device",
    "segment",
    "sliding_window",
    "strip_wrappers",
    "window_starts",
]

#: Shipped model names -> a function returning a local model folder or checkpoint path.
MODEL_REGISTRY: dict[str, Callable[[], str | os.PathLike]] = {}

def register_model(name: str, locate: Callable[[], str | os.PathLike]) -> None:
    """Make ``load_model(name)`` load what ``locate()`` returns (a model folder or checkpoint)."""
    MODEL_REGISTRY[name] = locate


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; anything else as ``torch.device(device)``."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


LAYOUTS = {"channels_last": torch.channels_last, "contiguous": torch.contiguous_format}


def training_layout(device: torch.device, choice: str = "auto") -> torch.memory_format:
    """The memory layout a segmentation network trains fastest in on ``device``.

    ``auto``: channels-last on CUDA and on CPUs with AVX512 (oneDNN's convolutions: 11-17% faster
    fine-tuning steps there); the default layout on other CPUs, where channels-last ties at 128 px
    and is 11-17% slower at 256 px (AVX2; ``benchmarks/bench_pretrain.py --sections finetune
    --ft-variants contig`` measures any machine). ``channels_last`` or ``contiguous`` force one,
    for a CPU the rule misjudges. The layout changes the speed only: results agree to float32
    rounding.
    """
    if choice != "auto":
        try:
            return LAYOUTS[choice]
        except KeyError:
            raise ValueError(f"layout {choice!r}: not one of auto, {', '.join(LAYOUTS)}") from None
    if device.type == "cuda" or torch.backends.cpu.get_cpu_capability().startswith("AVX512"):
        return torch.channels_last
    return torch.contiguous_format


# ----------------------------------------------------------------------------- conventions


def input_convention(img_size: int, in_chans: int, scale: float | None = None) -> dict:
    """The network's input convention as plain data (stored in every segmentation checkpoint).

    Args:
        img_size: Training side of the network: the window of :func:`predict_image`, and the square
            side of ``mode="resize"``.
        in_chans: 1 (gray) or 3 (gray replicated); selects the normalisation statistics of
            :class:`~vasomim.data.transforms.TransformConfig`.
        scale: Network pixels per image pixel at inference (:func:`reference_scale`); ``None``: each
            image gets ``img_size / sqrt(H * W)`` (aspect kept, but the scale follows the image).

    Returns:
        ``{"size", "channels", "mean", "std", "scale"}``.
    """
    mean, std = TransformConfig(size=img_size, channels=in_chans).stats()
    return {"size": int(img_size), "channels": int(in_chans), "mean": list(mean), "std": list(std),
            "scale": None if scale is None else float(scale)}


def reference_scale(shapes: Sequence[tuple[int, int]], img_size: int) -> float:
    """Inference scale of a network trained on images of these ``(H, W)``: ``img_size / median side``.

    The side of an image is ``sqrt(H * W)``. Training crops are resized to ``img_size``, so a whole
    training image seen at this scale has the area of one training window, as in the square
    resize it replaces (for square images both are the same resize).
    """
    if not shapes:
        raise ValueError("reference_scale needs at least one image shape")
    return float(img_size / np.median([math.sqrt(h * w) for h, w in shapes]))


def network_grid(network: dict) -> int:
    """The multiple an input side must be: the ViT patch (16), or ``2**levels`` for the CNN U-Net."""
    if network.get("arch") == "unet":
        return 2 ** int(network.get("levels", 4))
    return PATCH_SIZE


def as_gray(image: np.ndarray | str | os.PathLike, name: str = "<array>") -> np.ndarray:
    """An image as 2-D float32 gray in ``[0, 1]`` by the project's reading rule.

    A path is read with :func:`vasomim.data.io.read_image`. An array goes through the same rule as
    a file of that type: uint8 / 255, uint16 / 65535, bool as 0/1, float must lie in ``[0, 1]``,
    ``(H, W, 3|4)`` uint8 colour to luminance.
    """
    from PIL import Image

    if isinstance(image, (str, os.PathLike)):
        return read_image(image)
    arr = np.asarray(image)
    if arr.dtype.kind == "f":
        arr = arr.astype(np.float32)
    elif arr.dtype.kind in "iu" and arr.dtype not in (np.uint8, np.uint16):
        if arr.size and (arr.min() < 0 or arr.max() > 65535):
            raise ImageReadError(name, f"integer image with values outside 0..65535 "
                                       f"({arr.min()}..{arr.max()})")
        arr = arr.astype(np.int32)
    if not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] in (3, 4) and arr.dtype == np.uint8)):
        raise ImageReadError(name, f"expected a 2-D gray image (or H x W x 3/4 uint8), got "
                                   f"shape {arr.shape} {arr.dtype}")
    try:
        pil = Image.fromarray(arr)
    except TypeError as exc:
        raise ImageReadError(name, f"unsupported array type {arr.dtype} ({exc})") from None
    return pil_to_gray_array(pil, name)


# ----------------------------------------------------------------------------- models


def build_network(network: dict) -> nn.Module:
    """The segmentation network described by a checkpoint's ``config["network"]`` (random weights)."""
    return build_segmentation_model(**network)


def load_model(path_or_name: str | os.PathLike, device: str | torch.device = "auto") -> nn.Module:
    """A trained segmentation network, in eval mode, carrying its input convention.

    Args:
        path_or_name: A checkpoint written by ``vasomim finetune`` (``best.pth``), a folder written
            by ``vasomim export CKPT --to DIR`` (``DIR/model``), or a shipped model name
            (:data:`MODEL_REGISTRY`).
        device: ``auto`` (CUDA when available), ``cpu``, ``cuda``, ...

    Returns:
        The network; ``model.input_convention`` is its input convention (:func:`input_convention`:
        ``size``, ``channels``, ``mean``, ``std``, ``scale``) and ``model.network_config`` its
        architecture (``config["network"]``).
    """
    path = Path(path_or_name)
    if path.is_dir() or path.is_file():
        model, config = model_from_checkpoint(path)
    elif str(path_or_name) in MODEL_REGISTRY:
        return load_model(MODEL_REGISTRY[str(path_or_name)](), device)
    elif (shipped := find_shipped(str(path_or_name), "segmentation")) is not None:
        return load_model(shipped.weights, device)
    else:
        names = set(MODEL_REGISTRY) | {m.name for m in list_shipped() if m.kind == "segmentation"}
        known = ", ".join(sorted(names)) or "none in this install"
        raise FileNotFoundError(f"{path_or_name}: no such checkpoint file or model folder, and no "
                                f"shipped model of that name (shipped: {known})")
    model.input_convention = dict(config["input"])
    model.network_config = dict(config["network"])
    return model.to(resolve_device(device))


# ----------------------------------------------------------------------------- the numeric core


def window_starts(length: int, window: int, overlap: float) -> list[int]:
    """Start offsets of windows covering ``0..length`` with at least ``overlap`` shared, ends included.

    ``length >= window``. The ``n = ceil((length - window) / step) + 1`` starts (``step = window *
    (1 - overlap)``) are spread evenly from 0 to ``length - window`` (nnU-Net's placement).
    """
    if length < window:
        raise ValueError(f"length {length} is shorter than the window {window}")
    step = max(1, int(window * (1 - overlap)))
    n = math.ceil((length - window) / step) + 1
    if n == 1:
        return [0]
    return [round(i * (length - window) / (n - 1)) for i in range(n)]


def gaussian_weights(window: tuple[int, int], sigma_scale: float = 1 / 8) -> torch.Tensor:
    """Blending weights ``(h, w)``: a Gaussian of sigma ``side / 8`` at the centre, max 1, no zeros."""
    axes = []
    for side in window:
        x = torch.arange(side, dtype=torch.float32) - (side - 1) / 2
        axes.append(torch.exp(-0.5 * (x / (side * sigma_scale)) ** 2))
    w = axes[0][:, None] * axes[1][None, :]
    w = w / w.max()
    return w.clamp_min(w[w > 0].min())


def _pad(x: torch.Tensor, pads: tuple[int, int, int, int], mode: str) -> torch.Tensor:
    """F.pad (left, right, top, bottom); reflect falls back to replicate when a pad exceeds the image."""
    if not any(pads):
        return x
    if mode == "reflect" and (max(pads[:2]) >= x.shape[-1] or max(pads[2:]) >= x.shape[-2]):
        mode = "replicate"
    return F.pad(x, pads, mode=mode)


@torch.no_grad()
def sliding_window(
    model: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    window: int | tuple[int, int] | None,
    grid: int = 16,
    overlap: float = 0.5,
    blend: Literal["gaussian", "uniform"] = "gaussian",
    pad_mode: Literal["reflect", "replicate", "constant"] = "reflect",
    batch_size: int = 16,
) -> torch.Tensor:
    """Vessel probabilities ``(B, 1, H, W)`` of a normalised batch ``x (B, C, H, W)``, any ``H, W``.

    With ``window=None`` the batch is padded (bottom and right) to a multiple of ``grid`` and run in
    one pass. Otherwise it is padded (evenly on both sides) to at least the window, cut into
    windows that overlap by at least ``overlap`` (:func:`window_starts`), and the windows of the
    whole batch are run ``batch_size`` at a time; each window's sigmoid probabilities are added
    with ``blend`` weights (:func:`gaussian_weights`, or 1) and divided by the summed weights.
    The padding is cropped off. ``model`` maps ``(N, C, h, w)`` to logits ``(N, 1, h, w)``.
    """
    b, _, h, w = x.shape
    if window is None:
        ph, pw = -h % grid, -w % grid
        xp = _pad(x, (0, pw, 0, ph), pad_mode)
        return torch.sigmoid(model(xp).float())[..., :h, :w]
    wh, ww = (window, window) if isinstance(window, int) else window
    ph, pw = max(wh - h, 0), max(ww - w, 0)
    top, left = ph // 2, pw // 2
    xp = _pad(x, (left, pw - left, top, ph - top), pad_mode)
    H, W = xp.shape[-2:]
    boxes = [(y, z) for y in window_starts(H, wh, overlap) for z in window_starts(W, ww, overlap)]
    tiles = torch.stack([xp[:, :, y:y + wh, z:z + ww] for y, z in boxes], 1).flatten(0, 1)
    probs = torch.cat([torch.sigmoid(model(tiles[i:i + batch_size]).float())
                       for i in range(0, tiles.shape[0], batch_size)])
    probs = probs.view(b, len(boxes), 1, wh, ww)
    weight = (gaussian_weights((wh, ww)) if blend == "gaussian" else torch.ones(wh, ww)).to(probs)
    out = torch.zeros(b, 1, H, W, dtype=probs.dtype, device=probs.device)
    norm = torch.zeros(H, W, dtype=probs.dtype, device=probs.device)
    for k, (y, z) in enumerate(boxes):
        out[:, :, y:y + wh, z:z + ww] += probs[:, k] * weight
        norm[y:y + wh, z:z + ww] += weight
    return (out / norm)[:, :, top:top + h, left:left + w]


def _device_of(model: nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def predict_images(
    model: nn.Module,
    images: Sequence[np.ndarray],
    convention: dict,
    *,
    mode: Literal["native", "resize"] = "native",
    tta: bool = False,
    grid: int | None = None,
    overlap: float = 0.5,
    batch_size: int = 16,
) -> list[np.ndarray]:
    """Vessel probabilities ``(H, W)`` float32 in ``[0, 1]`` of gray ``[0, 1]`` images, in order.

    ``mode="native"`` keeps the geometry: each image is resized by ``convention["scale"]`` (aspect
    kept; ``img_size / sqrt(H * W)`` when the convention has none), normalised, run through
    :func:`sliding_window` with the training window ``convention["size"]``, and the probabilities
    are resized back (bilinear). ``mode="resize"`` squashes it to ``size x size`` (bicubic) as before.
    ``tta`` averages the probabilities with those of the horizontally flipped image. Images that
    come out at the same network size run as one batch.
    """
    if mode not in ("native", "resize"):
        raise ValueError(f"unknown inference mode {mode!r}; choose 'native' or 'resize'")
    model.eval()
    size = int(convention["size"])
    grid = grid or network_grid(getattr(model, "network_config", {}))
    device = _device_of(model)
    inputs = []
    for image in images:
        h, w = image.shape
        scale = convention.get("scale") or size / math.sqrt(h * w)
        shape = (size, size) if mode == "resize" else (max(1, round(h * scale)),
                                                       max(1, round(w * scale)))
        scaled = image if shape == (h, w) else resize(image, None, shape)[0]
        inputs.append(normalize(scaled, tuple(convention["mean"]), tuple(convention["std"])))
    groups: dict[tuple[int, int], list[int]] = {}
    for i, x in enumerate(inputs):
        groups.setdefault(tuple(x.shape[-2:]), []).append(i)
    out: list[np.ndarray | None] = [None] * len(inputs)
    for idx in groups.values():
        x = torch.stack([inputs[i] for i in idx]).to(device)
        if tta:
            x = torch.cat([x, x.flip(-1)])
        prob = sliding_window(model, x, size, grid, overlap, batch_size=batch_size)
        if tta:
            prob = 0.5 * (prob[:len(idx)] + prob[len(idx):].flip(-1))
        for i, p in zip(idx, prob[:, 0].cpu().numpy()):
            back = resize_to(p.astype(np.float32), images[i].shape)
            out[i] = np.clip(back, 0.0, 1.0).astype(np.float32, copy=False)
    return out  # type: ignore[return-value]


def predict_image(model: nn.Module, image: np.ndarray, convention: dict, **kwargs) -> np.ndarray:
    """One image through :func:`predict_images` (same keyword options)."""
    return predict_images(model, [image], convention, **kwargs)[0]


def segment(model: nn.Module, image: np.ndarray | str | os.PathLike, *, threshold: float = 0.5,
            tta: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Segment one angiogram with a model from :func:`load_model`.

    Args:
        model: A network carrying ``input_convention`` (what :func:`load_model` returns).
        image: A 2-D array of any dtype (read by the project's rule, :func:`as_gray`) or an image
            path.
        threshold: Probability at or above which a pixel is vessel.
        tta: Average with the horizontally flipped image.

    Returns:
        ``(prob, mask)``: float32 probabilities in ``[0, 1]`` and a bool mask, both ``(H, W)`` of
        the image.
    """
    convention = getattr(model, "input_convention", None)
    if convention is None:
        raise ValueError("model carries no input_convention; load it with vasomim.load_model")
    name = os.fspath(image) if isinstance(image, (str, os.PathLike)) else "<array>"
    prob = predict_image(model, as_gray(image, name), convention, tta=tta)
    return prob, prob >= threshold
