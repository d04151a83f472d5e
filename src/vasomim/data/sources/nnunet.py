"""An nnU-Net raw dataset folder (``dataset.json``, ``imagesTr``, ``labelsTr``) of 2-D images."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable

from vasomim.data.errors import IMAGE_SUFFIXES
from vasomim.data.sources.base import Item, Source, scan_files, summary


def _nnunet_labels(raw: dict) -> dict[str, int]:
    """``dataset.json`` labels as name -> value for v2 (``{"vessel": 1}``) and v1 (``{"1": "vessel"}``)."""
    out: dict[str, int] = {}
    for k, v in raw.items():
        if isinstance(v, int):
            out[str(k)] = v
        elif isinstance(v, str) and str(k).lstrip("-").isdigit():
            out[v] = int(k)
    return out


class NnUNetSource(Source):
    """An nnU-Net raw dataset folder (2-D images, PNG/TIF/...).

    Args:
        root: Folder holding ``dataset.json``, ``imagesTr``, ``labelsTr`` (and maybe ``imagesTs``).
        labels: Label names or values that are "vessel"; ``None``: every label except background
            (0).
        split: ``"train"`` (``imagesTr``/``labelsTr``) or ``"test"`` (``imagesTs``/``labelsTs`` if
            present).
        name: See :class:`Source`.
    """

    kind = "nnunet"

    def __init__(
        self,
        root: str | os.PathLike,
        labels: Iterable[str | int] | None = None,
        split: str = "train",
        name: str | None = None,
    ):
        super().__init__(name)
        if split not in ("train", "test"):
            raise ValueError(f"nnU-Net split must be 'train' or 'test', got {split!r}")
        self.root = Path(root)
        self.labels = list(labels) if labels is not None else None
        self.split = split

    def describe(self) -> str:
        return f"{super().describe()}: {self.root} ({self.split})"

    def _list(self) -> tuple[list[Item], list[str]]:
        meta_path = self.root / "dataset.json"
        try:
            with open(meta_path, encoding="utf-8") as fh:
                meta = json.load(fh)
        except FileNotFoundError:
            raise ValueError(f"{meta_path}: missing; an nnU-Net dataset needs its dataset.json") from None
        except (OSError, json.JSONDecodeError) as exc:
            raise ValueError(f"{meta_path}: cannot read ({exc})") from None
        names = _nnunet_labels(meta.get("labels", {}))
        if self.labels is None:
            fg = tuple(sorted(v for v in names.values() if v != 0)) or (1,)
        else:
            fg_list = []
            for lab in self.labels:
                if isinstance(lab, int):
                    fg_list.append(lab)
                elif str(lab) in names:
                    fg_list.append(names[str(lab)])
                else:
                    raise ValueError(f"{meta_path}: unknown label {lab!r} (available {names})")
            fg = tuple(sorted(set(fg_list)))
        tag = "Tr" if self.split == "train" else "Ts"
        images_dir, labels_dir = self.root / f"images{tag}", self.root / f"labels{tag}"
        ending = meta.get("file_ending")
        files = scan_files(images_dir, None, recursive=False)
        if ending is None:  # nnU-Net v1 has no file_ending: infer it from the channel-0 files
            endings = {f[f.index("_0000.") + 5:] for f in files if "_0000." in f}
            ending = endings.pop() if len(endings) == 1 else ".nii.gz"
        if ending.lower() in (".nii", ".nii.gz"):
            raise ValueError(f"{meta_path}: NIfTI ({ending}) is not supported; convert the 2-D images to PNG")
        if ending.lower() not in IMAGE_SUFFIXES:
            raise ValueError(f"{meta_path}: unsupported file_ending {ending!r} (supported {', '.join(IMAGE_SUFFIXES)})")
        problems = []
        channels = meta.get("channel_names", meta.get("modality", {"0": None}))
        if len(channels) > 1:
            problems.append(f"{meta_path}: {len(channels)} channels declared; only channel 0 (_0000) is used")
        chan0 = f"_0000{ending}"
        cases = [f[: -len(chan0)] for f in files if f.endswith(chan0)]
        label_files = set(scan_files(labels_dir, None, recursive=False)) if labels_dir.is_dir() else set()
        items, unlabelled = [], []
        for case in cases:
            lab = f"{case}{ending}"
            if lab in label_files:
                items.append(Item(case, str(images_dir / f"{case}{chan0}"), str(labels_dir / lab), mask_labels=fg))
            else:
                unlabelled.append(case)
                items.append(Item(case, str(images_dir / f"{case}{chan0}")))
        if unlabelled and (self.split == "train" or label_files):
            problems.append(summary(f"cases without a label in {labels_dir}", unlabelled))
        declared = meta.get("numTraining")
        if self.split == "train" and declared is not None and int(declared) != len(cases):
            problems.append(f"{meta_path}: numTraining is {declared} but {images_dir} holds {len(cases)} cases")
        return items, problems
