"""Segmenting angiograms with a trained network: batched at the network's input size, out at each
image's own resolution.

Every image is read with the data module's rule (gray float in ``[0, 1]``; DICOM frames as
``file.dcm#f012``), resized to the square input size of the network (bicubic, as in training's
evaluation transform), normalised, and run through the network in batches. The sigmoid
probabilities are brought back to the image's own ``(H, W)`` with :func:`vasomim.metrics.resize_to`
(bilinear) and thresholded there (:func:`vasomim.metrics.binarize`, 0.5 by default), so masks and
scores always live at the original resolution, whatever the network's input size.

A file that cannot be read does not stop a batch job: it comes back as a :class:`Prediction` with
its one-line ``error`` and the other files go on.

:func:`predict_paths` is ``vasomim predict``: images, folders (recursive) and DICOM cines in;
0/255 mask PNGs out (``OUT/masks``), optionally probability maps (``OUT/prob``) and overlays
(``OUT/overlay``). Output names follow the input's relative path with a ``.png`` suffix; a frame
``run.dcm#f012`` becomes ``run_f012.png``.
"""

from __future__ import annotations

import os
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from vasomim.data.dicom import dicom_frame_count, is_dicom_file, split_frame_id
from vasomim.data.io import IMAGE_SUFFIXES, ImageReadError, write_png_atomic
from vasomim.data.sources import Item, scan_files
from vasomim.data.transforms import TransformConfig, build_transform
from vasomim.metrics import binarize, resize_to

__all__ = [
    "InferenceDataset",
    "Prediction",
    "PredictSummary",
    "collect_inputs",
    "input_spec",
    "iter_predictions",
    "predict_paths",
    "predict_probabilities",
    "resolve_device",
]


def resolve_device(device: str = "auto") -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; anything else as ``torch.device(device)``."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def input_spec(img_size: int, in_chans: int) -> dict:
    """The network's input convention as plain data (stored in every segmentation checkpoint).

    Parameters
    ----------
    img_size:
        Square side the images are resized to.
    in_chans:
        1 (gray) or 3 (gray replicated); selects the normalisation statistics of
        :class:`~vasomim.data.transforms.TransformConfig`.

    Returns
    -------
    ``{"size", "channels", "mean", "std"}``.
    """
    mean, std = TransformConfig(size=img_size, channels=in_chans).stats()
    return {"size": int(img_size), "channels": int(in_chans), "mean": list(mean), "std": list(std)}


def _eval_transform(spec: dict):
    cfg = TransformConfig(size=spec["size"], channels=spec["channels"], mean=tuple(spec["mean"]),
                          std=tuple(spec["std"]))
    return build_transform(cfg, train=False)


class InferenceDataset(Dataset):
    """Items read for inference: the network input, the original size and (optionally) the mask.

    A sample is a dict with ``index`` and either ``error`` (the one-line reason the file could not
    be read) or ``image`` (FloatTensor ``(C, S, S)``), ``shape`` (the original ``(H, W)``),
    ``mask`` (bool array at the original size, or ``None``) and ``original`` (the gray ``[0, 1]``
    image, or ``None``). No randomness is used.

    Parameters
    ----------
    items:
        The items to read.
    spec:
        Input convention, see :func:`input_spec`.
    with_masks:
        Also read each item's mask (for scoring).
    keep_images:
        Also return the original gray image (for overlays).
    """

    def __init__(self, items: Sequence[Item], spec: dict, with_masks: bool = False,
                 keep_images: bool = False) -> None:
        self.items = list(items)
        self.transform = _eval_transform(spec)
        self.with_masks = with_masks
        self.keep_images = keep_images

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict:
        item = self.items[index]
        try:
            image = item.load_image()
            mask = item.load_mask(image.shape) if self.with_masks else None
        except (ValueError, OSError) as exc:  # ImageReadError is a ValueError
            return {"index": index, "error": " ".join(str(exc).split())}
        tensor, _ = self.transform(image, None)
        return {"index": index, "image": tensor, "shape": image.shape, "mask": mask,
                "original": image if self.keep_images else None}


def _keep_list(samples: list[dict]) -> list[dict]:
    return samples


@torch.no_grad()
def predict_probabilities(model: nn.Module, images: torch.Tensor,
                          device: torch.device | str = "cpu") -> np.ndarray:
    """Sigmoid probabilities ``(B, S, S)`` float32 of a batch of network inputs.

    Parameters
    ----------
    model:
        A segmentation network giving one logit per pixel (``(B, 1, S, S)``); put in eval mode
        by the caller.
    images:
        Normalised inputs ``(B, C, S, S)``.
    device:
        Where to run the network.
    """
    logits = model(images.to(device, non_blocking=True))
    return torch.sigmoid(logits.float())[:, 0].cpu().numpy()


@dataclass
class Prediction:
    """One image's result at its own resolution.

    Attributes
    ----------
    item:
        The input item.
    prob:
        Vessel probability ``(H, W)`` float, or ``None`` when the file failed.
    mask:
        The item's reference mask (when asked for), else ``None``.
    image:
        The original gray image (when asked for), else ``None``.
    error:
        One line saying why the file failed, else ``None``.
    """

    item: Item
    prob: np.ndarray | None = None
    mask: np.ndarray | None = None
    image: np.ndarray | None = None
    error: str | None = None


def iter_predictions(
    model: nn.Module,
    items: Sequence[Item],
    spec: dict,
    batch_size: int = 8,
    device: torch.device | str = "cpu",
    workers: int = 0,
    with_masks: bool = False,
    keep_images: bool = False,
    progress: bool = False,
    desc: str = "predict",
) -> Iterator[Prediction]:
    """Run ``model`` over ``items`` in batches; yield one :class:`Prediction` per item, in order.

    The network runs once per batch; each probability map is then resized back to its image's
    own size (bilinear, :func:`~vasomim.metrics.resize_to`).

    Parameters
    ----------
    model:
        The segmentation network (switched to eval mode here).
    items:
        Inputs.
    spec:
        Input convention of the network, see :func:`input_spec`.
    batch_size:
        Images per forward pass.
    device:
        Where to run the network.
    workers:
        DataLoader worker processes that read and resize the images.
    with_masks:
        Read every item's mask too (a missing or unreadable mask makes the item fail).
    keep_images:
        Return the original gray images (for overlays).
    progress:
        Show a tqdm bar on stderr.
    desc:
        Label of the progress bar.
    """
    from tqdm import tqdm

    model.eval()
    dataset = InferenceDataset(items, spec, with_masks=with_masks, keep_images=keep_images)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers,
                        collate_fn=_keep_list)
    with tqdm(total=len(dataset), desc=desc, unit="img", disable=not progress, file=sys.stderr,
              leave=False) as bar:
        for samples in loader:
            good = [s for s in samples if "error" not in s]
            probs = (predict_probabilities(model, torch.stack([s["image"] for s in good]), device)
                     if good else [])
            by_index = {s["index"]: (s, p) for s, p in zip(good, probs)}
            for s in samples:
                item = dataset.items[s["index"]]
                if "error" in s:
                    yield Prediction(item, error=s["error"])
                else:
                    sample, prob = by_index[s["index"]]
                    yield Prediction(item, prob=resize_to(prob, sample["shape"]), mask=sample["mask"],
                                     image=sample["original"])
            bar.update(len(samples))


# ------------------------------------------------------------------------------ vasomim predict


def _output_stem(ref: str, keep_suffix: bool = False) -> str:
    """Relative output path without ``.png``: ``a/b.jpg -> a/b``, ``a/run.dcm#f012 -> a/run_f012``.

    With ``keep_suffix`` the input's suffix stays (``a/b.jpg``, ``a/run.dcm_f012``), which keeps
    ``a.jpg`` and ``a.png`` apart.
    """
    base, frame = split_frame_id(ref)
    stem = base if keep_suffix else os.path.splitext(base)[0]
    return stem if frame is None else f"{stem}_f{frame:03d}"


def _expand(path: Path, rel: str, failures: list[str]) -> list[tuple[str, Item]]:
    """``(relative reference, item)`` pairs of one file: a DICOM cine gives one per frame."""
    if not is_dicom_file(path):
        return [(rel, Item(rel, str(path)))]
    try:
        n = dicom_frame_count(path)
    except ImageReadError as exc:
        failures.append(str(exc))
        return []
    if n == 1:
        return [(rel, Item(rel, str(path)))]
    return [(f"{rel}#f{k:03d}", Item(f"{rel}#f{k:03d}", str(path), frame=k)) for k in range(n)]


def collect_inputs(paths: Sequence[str | os.PathLike]) -> tuple[list[Item], list[str]]:
    """List the images to segment: files as given, folders recursively, DICOM cines frame by frame.

    Folders contribute their image files (png/jpg/bmp/tif) and DICOM files (``.dcm``/``.dicom``
    or suffix-less with a DICM preamble); other files in them are ignored. A file named on the
    command line is always tried (and fails later, named, if it is no image).

    Parameters
    ----------
    paths:
        Files and folders.

    Returns
    -------
    ``(items, failures)``: each item's ``id`` is its output name relative to the output folder
    (``.png`` suffix; the input folder's name is prepended when several folders are given); a
    failure is one line naming a path that does not exist or a DICOM whose header is unreadable.
    """
    failures: list[str] = []
    named: list[tuple[str, Item]] = []
    dirs = [Path(p) for p in paths if Path(p).is_dir()]
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            prefix = f"{path.resolve().name}/" if len(dirs) > 1 else ""
            for rel in scan_files(path):
                if rel.lower().endswith(IMAGE_SUFFIXES) or is_dicom_file(path / rel):
                    named += [(prefix + ref, item) for ref, item in _expand(path / rel, rel, failures)]
        elif path.is_file():
            named += _expand(path, path.name, failures)
        else:
            failures.append(f"{path}: no such file or directory")
    stems = [_output_stem(ref) for ref, _ in named]
    counts = Counter(stems)
    items, used = [], set()
    for (ref, item), stem in zip(named, stems):
        out = _output_stem(ref, keep_suffix=True) if counts[stem] > 1 else stem
        name, k = out, 2
        while name in used:  # the same relative name from two folders of the same name
            name, k = f"{out}_{k}", k + 1
        used.add(name)
        items.append(Item(f"{name}.png", item.image_path, frame=item.frame))
    return items, failures


@dataclass
class PredictSummary:
    """What :func:`predict_paths` did.

    Attributes
    ----------
    written:
        Output names (relative to ``OUT/masks``) of the masks written.
    failures:
        One line per input that failed (file named, reason given).
    """

    written: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)


def predict_paths(
    checkpoint: str | os.PathLike,
    inputs: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    threshold: float = 0.5,
    prob: bool = False,
    prob_bits: int = 8,
    overlay: bool = False,
    batch_size: int = 8,
    device: str = "auto",
    workers: int = 0,
    progress: bool = True,
) -> PredictSummary:
    """Segment files, folders and DICOM cines with a fine-tuned checkpoint (``vasomim predict``).

    Writes ``OUT/masks/<name>.png`` (0/255, at the input's own resolution) for every readable
    input, and on request ``OUT/prob/<name>.png`` (the probability as 8-bit ``round(255 p)`` or
    16-bit ``round(65535 p)``) and ``OUT/overlay/<name>.png`` (the mask in orange on the image).
    Files are written atomically.

    Parameters
    ----------
    checkpoint:
        A segmentation checkpoint written by ``vasomim finetune`` (``best.pth``/``last.pth``).
    inputs:
        Image files, folders (searched recursively) and DICOM files.
    out:
        Output folder.
    threshold:
        Probability at or above which a pixel is vessel.
    prob:
        Also write probability maps.
    prob_bits:
        8 or 16: bit depth of the probability PNGs.
    overlay:
        Also write overlay pictures.
    batch_size:
        Images per forward pass.
    device:
        ``auto``, ``cpu``, ``cuda``, ...
    workers:
        DataLoader worker processes for reading.
    progress:
        Show a progress bar.

    Returns
    -------
    :class:`PredictSummary`.
    """
    from vasomim.analysis.overlays import overlay as draw_overlay
    from vasomim.engines.finetune import build_model_from_checkpoint

    if prob_bits not in (8, 16):
        raise ValueError(f"prob_bits must be 8 or 16, got {prob_bits}")
    dev = resolve_device(device)
    model, config = build_model_from_checkpoint(checkpoint)
    model.to(dev)
    items, failures = collect_inputs(inputs)
    summary = PredictSummary(failures=list(failures))
    out = Path(out)
    scale, dtype = (255.0, np.uint8) if prob_bits == 8 else (65535.0, np.uint16)
    for pred in iter_predictions(model, items, config["input"], batch_size, dev, workers,
                                 keep_images=overlay, progress=progress):
        if pred.error is not None:
            summary.failures.append(pred.error)
            continue
        name = pred.item.id
        mask = binarize(pred.prob, threshold)
        write_png_atomic(out / "masks" / name, mask)
        if prob:
            write_png_atomic(out / "prob" / name,
                             np.rint(np.clip(pred.prob, 0.0, 1.0) * scale).astype(dtype))
        if overlay:
            write_png_atomic(out / "overlay" / name, draw_overlay(pred.image, mask))
        summary.written.append(name)
    return summary
