"""ARCADE / COCO JSON annotations: images plus polygons and RLEs united into vessel masks."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable

from vasomim.data.errors import IMAGE_SUFFIXES
from vasomim.data.sources.base import Item, Source, scan_files, summary


class ArcadeSource(Source):
    """ARCADE (COCO JSON) annotations: images plus polygons rasterised into vessel masks.

    Args:
        json_path: The split's COCO JSON (``images``, ``annotations`` with polygon ``segmentation``,
            ``categories``).
        images_dir: Folder holding the split's images (``file_name`` is relative to it).
        categories: Category names or ids whose polygons count as vessel; ``None``: all (their
            union).
        name: See :class:`Source`.
    """

    kind = "arcade"

    def __init__(
        self,
        json_path: str | os.PathLike,
        images_dir: str | os.PathLike,
        categories: Iterable[str | int] | None = None,
        name: str | None = None,
    ):
        super().__init__(name)
        self.json_path = Path(json_path)
        self.images_dir = Path(images_dir)
        self.categories = list(categories) if categories is not None else None

    def describe(self) -> str:
        cats = f", categories {self.categories}" if self.categories is not None else ""
        return f"{super().describe()}: {self.json_path}, images {self.images_dir}{cats}"

    def _selected_categories(self, coco: dict) -> set[int]:
        by_id = {int(c["id"]): str(c.get("name", c["id"])) for c in coco.get("categories", [])}
        if self.categories is None:
            return set(by_id) | {int(a["category_id"]) for a in coco.get("annotations", [])}
        by_name = {v: k for k, v in by_id.items()}
        chosen, unknown = set(), []
        for c in self.categories:
            if isinstance(c, int) and c in by_id:
                chosen.add(c)
            elif str(c) in by_name:
                chosen.add(by_name[str(c)])
            else:
                unknown.append(str(c))
        if unknown:
            avail = ", ".join(f"{k}:{v}" for k, v in sorted(by_id.items()))
            raise ValueError(f"{self.json_path}: unknown categories {', '.join(unknown)} (available {avail})")
        return chosen

    def _list(self) -> tuple[list[Item], list[str]]:
        try:
            with open(self.json_path, encoding="utf-8") as fh:
                coco = json.load(fh)
        except (OSError, json.JSONDecodeError) as exc:
            raise ValueError(f"{self.json_path}: cannot read COCO JSON ({exc})") from None
        if not isinstance(coco, dict) or "images" not in coco:
            raise ValueError(f"{self.json_path}: not a COCO JSON (no 'images' list)")
        chosen = self._selected_categories(coco)
        sizes = {int(img["id"]): (int(img["height"]), int(img["width"])) for img in coco["images"]}
        polys: dict[int, list[tuple[float, ...]]] = {}
        rles: dict[int, list[str | tuple[int, ...]]] = {}
        for ann in coco.get("annotations", []):
            if int(ann["category_id"]) not in chosen:
                continue
            seg, image_id = ann.get("segmentation"), int(ann["image_id"])
            polys.setdefault(image_id, [])
            if isinstance(seg, dict):  # RLE: compressed string or uncompressed run lengths
                rle = _rle_of(seg, sizes.get(image_id), self.json_path, ann.get("id"))
                rles.setdefault(image_id, []).append(rle)
                continue
            if not isinstance(seg, list):
                raise ValueError(f"{self.json_path}: annotation {ann.get('id')} has no polygon or RLE segmentation")
            for poly in seg:
                if len(poly) % 2:
                    raise ValueError(f"{self.json_path}: annotation {ann.get('id')} has a polygon with an odd coordinate count")
                polys[image_id].append(tuple(float(v) for v in poly))
        on_disk = set(scan_files(self.images_dir, IMAGE_SUFFIXES)) if self.images_dir.is_dir() else set()
        items, missing = [], []
        known = set()
        for img in sorted(coco["images"], key=lambda im: str(im["file_name"])):
            rel = Path(str(img["file_name"])).as_posix()
            known.add(int(img["id"]))
            if rel not in on_disk:
                missing.append(rel)
                continue
            items.append(
                Item(
                    rel,
                    str(self.images_dir / rel),
                    polygons=tuple(polys.get(int(img["id"]), ())),
                    rles=tuple(rles.get(int(img["id"]), ())),
                    mask_size=(int(img["height"]), int(img["width"])),
                    annotation_path=str(self.json_path),
                )
            )
        problems = []
        if missing:
            problems.append(summary(f"images listed in {self.json_path.name} but missing from {self.images_dir}", missing))
        stray = sorted(set(polys) - known)
        if stray:
            problems.append(summary("annotations refer to unknown image ids", [str(s) for s in stray]))
        return items, problems


def _rle_of(seg: dict, image_size: tuple[int, int] | None, json_path: Path, ann_id: Any) -> str | tuple[int, ...]:
    """The counts of a COCO RLE segmentation, checked against its image's size."""
    counts, size = seg.get("counts"), seg.get("size")
    where = f"{json_path}: annotation {ann_id}"
    if not (isinstance(size, list) and len(size) == 2) or counts is None:
        raise ValueError(f"{where}: RLE segmentation needs 'size' [height, width] and 'counts'")
    if image_size is not None and tuple(int(v) for v in size) != image_size:
        raise ValueError(f"{where}: RLE size {size[1]}x{size[0]} differs from its image's "
                         f"{image_size[1]}x{image_size[0]}")
    if isinstance(counts, str):
        return counts
    if isinstance(counts, list) and all(isinstance(v, int) for v in counts):
        return tuple(counts)
    raise ValueError(f"{where}: RLE 'counts' must be a string or a list of integers")
