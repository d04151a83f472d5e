"""Segmenting angiograms with a trained network, at each image's own geometry and resolution.

Every image is read with the data module's rule (gray float in ``[0, 1]``; DICOM frames as
``file.dcm#f012``) and predicted by :func:`vasomim.inference.predict_images`: resized by the
checkpoint's fixed scale with its aspect ratio kept, run in overlapping windows of the training
size (padded where it is smaller), blended, and brought back to the image's own ``(H, W)``
(``mode="resize"``: the older square squash). The probabilities are thresholded there
(:func:`vasomim.metrics.binarize`, 0.5 by default), so masks and scores always live at the
original resolution.

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

from vasomim.analysis.overlays import overlay as draw_overlay
from vasomim.data.dicom import dicom_frame_count, is_dicom_file, split_frame_id
from vasomim.data.io import IMAGE_SUFFIXES, ImageReadError, looked_for, write_png_atomic
from vasomim.data.sources import Item, scan_files
from vasomim.inference import load_model, predict_images, resolve_device
from vasomim.metrics import binarize

__all__ = [
    "InferenceDataset",
    "Prediction",
    "PredictSummary",
    "collect_inputs",
    "iter_predictions",
    "predict_paths",
    "resolve_device",
]


class InferenceDataset(Dataset):
    """Items read for inference: the network input, the original size and (optionally) the mask.

    A sample is a dict with ``index`` and either ``error`` (the one-line reason the file could not
    be read) or ``image`` (the gray ``[0, 1]`` float32 image) and ``mask`` (bool array at the
    original size, or ``None``). No randomness is used.

    Args:
        items: The items to read.
        convention: Input convention, see :func:`~vasomim.inference.input_convention` (unused; kept
            for callers).
        with_masks: Also read each item's mask (for scoring).
        keep_images: Unused; the image is always returned (the network input is made from it).
    """

    def __init__(self, items: Sequence[Item], convention: dict | None = None, with_masks: bool = False,
                 keep_images: bool = False) -> None:
        self.items = list(items)
        self.with_masks = with_masks

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict:
        item = self.items[index]
        try:
            image = item.load_image()
            mask = item.load_mask(image.shape) if self.with_masks else None
        except (ValueError, OSError) as exc:  # ImageReadError is a ValueError
            return {"index": index, "error": " ".join(str(exc).split())}
        return {"index": index, "image": image, "mask": mask}


def _keep_list(samples: list[dict]) -> list[dict]:
    return samples


@dataclass
class Prediction:
    """One image's result at its own resolution.

    Attributes:
        item: The input item.
        prob: Vessel probability ``(H, W)`` float, or ``None`` when the file failed.
        mask: The item's reference mask (when asked for), else ``None``.
        image: The original gray image (when asked for), else ``None``.
        error: One line saying why the file failed, else ``None``.
    """

    item: Item
    prob: np.ndarray | None = None
    mask: np.ndarray | None = None
    image: np.ndarray | None = None
    error: str | None = None


def iter_predictions(
    model: nn.Module,
    items: Sequence[Item],
    convention: dict,
    batch_size: int = 8,
    device: torch.device | str = "cpu",
    workers: int = 0,
    with_masks: bool = False,
    keep_images: bool = False,
    progress: bool = False,
    desc: str = "predict",
    mode: str = "native",
    tta: bool = False,
) -> Iterator[Prediction]:
    """Run ``model`` over ``items`` in batches; yield one :class:`Prediction` per item, in order.

    Each batch of images goes through :func:`vasomim.inference.predict_images` (the images'
    windows run together), and each probability map comes back at its image's own size.

    Args:
        model: The segmentation network (switched to eval mode here).
        items: Inputs.
        convention: Input convention of the network, see :func:`vasomim.inference.input_convention`.
        batch_size: Images read per step; their windows run ``4 * batch_size`` at a time.
        device: Where to run the network (the model is moved there).
        workers: DataLoader worker processes that read the images.
        with_masks: Read every item's mask too (a missing or unreadable mask makes the item fail).
        keep_images: Return the original gray images (for overlays).
        progress: Show a tqdm bar on stderr.
        desc: Label of the progress bar.
        mode, tta: See :func:`vasomim.inference.predict_images`.
    """
    from tqdm import tqdm

    model.eval().to(device)
    dataset = InferenceDataset(items, convention, with_masks=with_masks)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers,
                        collate_fn=_keep_list)
    with tqdm(total=len(dataset), desc=desc, unit="img", disable=not progress, file=sys.stderr,
              leave=False) as bar:
        for samples in loader:
            good = [s for s in samples if "error" not in s]
            probs = predict_images(model, [s["image"] for s in good], convention, mode=mode, tta=tta,
                                   batch_size=4 * batch_size)
            by_index = {s["index"]: (s, p) for s, p in zip(good, probs)}
            for s in samples:
                item = dataset.items[s["index"]]
                if "error" in s:
                    yield Prediction(item, error=s["error"])
                else:
                    sample, prob = by_index[s["index"]]
                    yield Prediction(item, prob=prob, mask=sample["mask"],
                                     image=sample["image"] if keep_images else None)
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

    Args:
        paths: Files and folders.

    Returns:
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
    if not named and dirs:
        raise ValueError(f"{', '.join(map(str, dirs))}: no images found ({looked_for()})")
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

    Attributes:
        written: Output names (relative to ``OUT/masks``) of the masks written.
        failures: One line per input that failed (file named, reason given).
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
    mode: str = "native",
    tta: bool = False,
) -> PredictSummary:
    """Segment files, folders and DICOM cines with a fine-tuned checkpoint (``vasomim predict``).

    Writes ``OUT/masks/<name>.png`` (0/255, at the input's own resolution) for every readable
    input, and on request ``OUT/prob/<name>.png`` (the probability as 8-bit ``round(255 p)`` or
    16-bit ``round(65535 p)``) and ``OUT/overlay/<name>.png`` (the mask in orange on the image).
    Files are written atomically.

    Args:
        checkpoint: A segmentation checkpoint written by ``vasomim finetune``
            (``best.pth``/``last.pth``), an exported model folder, or a shipped model's name
            (``vasomim-cimat``).
        inputs: Image files, folders (searched recursively) and DICOM files.
        out: Output folder.
        threshold: Probability at or above which a pixel is vessel.
        prob: Also write probability maps.
        prob_bits: 8 or 16: bit depth of the probability PNGs.
        overlay: Also write overlay pictures.
        batch_size: Images per forward pass.
        device: ``auto``, ``cpu``, ``cuda``, ...
        workers: DataLoader worker processes for reading.
        progress: Show a progress bar.
        mode, tta: ``native`` (geometry kept) or ``resize`` (square squash), and flip averaging; see
            :func:`vasomim.inference.predict_images`.

    Returns:
        :class:`PredictSummary`.
    """
    if prob_bits not in (8, 16):
        raise ValueError(f"prob_bits must be 8 or 16, got {prob_bits}")
    items, failures = collect_inputs(inputs)
    dev = resolve_device(device)
    model = load_model(checkpoint, dev)  # a checkpoint, an exported folder or a shipped name
    summary = PredictSummary(failures=list(failures))
    out = Path(out)
    scale, dtype = (255.0, np.uint8) if prob_bits == 8 else (65535.0, np.uint16)
    for pred in iter_predictions(model, items, model.input_convention, batch_size, dev, workers,
                                 keep_images=overlay, progress=progress, mode=mode, tta=tta):
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
