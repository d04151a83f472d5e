"""Dataset sources: every way users bring angiograms, listed as one kind of :class:`Item`.

A source lists its files once, on first use, without decoding any image (``os.scandir``, sorted
relative paths), so listing a corpus of 170k files takes seconds.  Pixels are read only by
:meth:`Item.load_image` / :meth:`Item.load_mask`, which open and close the file on every call:
items are small, picklable and safe to use from DataLoader worker processes.

Sources
-------
``FolderSource(images_dir, masks_dir=None, mask_suffix="")``
    Images (png/jpg/bmp/tif, recursively) plus masks matched by relative path and stem: image
    ``a/b.jpg`` pairs with mask ``a/b<mask_suffix>.<any image suffix>`` under ``masks_dir``.
``ArcadeSource(json_path, images_dir, categories=None)``
    ARCADE / COCO: polygons of the chosen categories (default: all, their union is "vessel") are
    rasterised into the mask (see :func:`rasterize_polygons` for the pixel-centre rule); COCO
    RLE segmentations (compressed strings or run-length lists) are decoded (:func:`decode_rle`)
    and united with them.
``NnUNetSource(root, labels=None, split="train")``
    ``dataset.json`` + ``imagesTr/<case>_0000<ending>`` + ``labelsTr/<case><ending>`` (v1 or v2
    ``dataset.json``); the mask is the union of the chosen labels (default: every non-background
    label).  Only channel 0 is used.  NIfTI files are refused (convert 2-D data to PNG).
``DicomSource(root)``
    A tree of DICOM files (``.dcm``/``.dicom`` or suffix-less files with a DICM preamble); every
    frame of a cine is an item with the id ``rel/path.dcm#f012``.
``SyntheticSource(count, size=256, seed=0, preset="realistic", config=None)``
    Angiograms generated on the fly with their exact vessel masks (:mod:`.synthetic_source`); a
    ``share`` on sources of a spec mixes them at those shares of every epoch (``MixSource``).
``AnatomySource(images_dir, anatomy_dir)``
    Images paired with the masks that ``vasomim anatomy`` wrote, read through
    ``anatomy_dir/manifest.jsonl`` (and the per-shard ``manifest-<i>of<n>.jsonl``): one JSON object
    per line, ``file`` relative to ``images_dir``, ``status`` ``ok``/``failed``, ``mask`` relative
    to ``anatomy_dir``, ``vessel_fraction``, ``threshold``; the last line for a file wins.  Only
    ``ok`` entries become items.
``ConcatSource(sources)``
    Several sources as one; ids must stay unique (give sources a ``name`` to prefix their ids).

Item ids are the file's path relative to the source root (POSIX separators), ``<case>`` for
nnU-Net, and ``<name>/<id>`` when the source has a name.  Files and folders whose names start with
``.`` (``.DS_Store``, macOS ``._x.png`` forks) are ignored.  What looks wrong at listing time (an
image without its mask, a mask without its image, a file listed in a JSON but missing) is kept in
``source.problems`` and printed by ``vasomim data check``; files that fail to decode are found by
the check itself.

:func:`load_source` builds a source from a directory (its layout is detected) or from a YAML
data spec listing several sources::

    sources:
      - {type: folder, images: cimat/images, masks: cimat/masks, name: cimat}
      - {type: arcade, json: arcade/train/annotations/train.json, images: arcade/train/images}
      - {type: nnunet, root: nnUNet_raw/Dataset501_XCA, labels: [vessel]}
      - {type: dicom, root: cines}
      - {type: anatomy, images: corpus, anatomy: runs/anatomy}

Relative paths in a YAML spec are relative to the YAML file.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np

from vasomim.data.dicom import DICOM_SUFFIXES, dicom_frame_count, frame_id, is_dicom_file, split_frame_id
from vasomim.data.io import IMAGE_SUFFIXES, ImageReadError, image_info, read_image, read_mask

__all__ = [
    "Item",
    "Source",
    "FolderSource",
    "ArcadeSource",
    "NnUNetSource",
    "DicomSource",
    "AnatomySource",
    "ConcatSource",
    "load_source",
    "decode_rle",
    "rasterize_polygons",
    "rle_counts_from_string",
    "scan_files",
]


# ----------------------------------------------------------------------------------------- items


def rasterize_polygons(polygons: Iterable[Sequence[float]], shape: tuple[int, int]) -> np.ndarray:
    """Fill COCO polygons into a bool mask.

    Coordinates follow COCO: ``x`` to the right, ``y`` down, pixel ``(row i, column j)`` covers
    ``[j, j+1) x [i, i+1)`` and has its centre at ``(j + 0.5, i + 0.5)``.  A pixel is in the mask
    when its centre lies inside the polygon or on its boundary.  So the rectangle with corners
    ``(2, 1)`` and ``(6, 4)`` fills columns 2..5 of rows 1..3: 12 pixels, its area.

    Parameters
    ----------
    polygons:
        Flat vertex lists ``[x1, y1, x2, y2, ...]``; several polygons are united.  Lists with fewer
        than three vertices have no area and draw nothing.
    shape:
        ``(height, width)`` of the mask; parts outside are clipped.
    """
    from skimage.draw import polygon as fill_polygon

    mask = np.zeros(shape, dtype=bool)
    for poly in polygons:
        xy = np.asarray(poly, dtype=np.float64).reshape(-1, 2)
        if len(xy) < 3:
            continue
        rr, cc = fill_polygon(xy[:, 1] - 0.5, xy[:, 0] - 0.5, shape=shape)
        mask[rr, cc] = True
    return mask


def rle_counts_from_string(counts: str) -> np.ndarray:
    """Run lengths of a COCO compressed RLE string (the ``counts`` that pycocotools writes).

    The format (pycocotools' ``rleToString``): each count is written in 5-bit groups, least
    significant first, each group as one character ``48 + group`` with bit 0x20 set when another
    group follows; the last group's bit 0x10 is the sign. From the fourth count on, the string
    holds the difference to the count two places before. Decoded here without a per-character
    Python loop.
    """
    c = np.frombuffer(counts.encode("ascii"), dtype=np.uint8).astype(np.int64) - 48
    if c.size == 0:
        return np.zeros(0, dtype=np.int64)
    if c.min() < 0 or c.max() > 63:
        raise ValueError("not a COCO compressed RLE string (characters outside '0'..'o')")
    last = (c & 0x20) == 0  # the last character of each value
    if not last[-1]:
        raise ValueError("truncated COCO compressed RLE string")
    ends = np.flatnonzero(last)
    starts = np.concatenate(([0], ends[:-1] + 1))
    group = np.repeat(np.arange(len(ends)), ends - starts + 1)
    shift = 5 * (np.arange(c.size) - starts[group])
    values = np.add.reduceat((c & 0x1F) << shift, starts)
    negative = (c[ends] & 0x10) != 0
    values = values - (negative.astype(np.int64) << (5 * (ends - starts + 1)))
    # undo the deltas: counts[m] = values[m] + counts[m - 2] for m > 2
    out = values.copy()
    out[3::2] = np.cumsum(values[1::2])[1:]
    out[4::2] = np.cumsum(values[2::2])[1:]
    return out


def decode_rle(counts: str | Sequence[int], size: Sequence[int]) -> np.ndarray:
    """A COCO RLE mask as a bool ``(height, width)`` array.

    Parameters
    ----------
    counts:
        Compressed string (``"43V10O..."``) or the uncompressed list of run lengths. Runs
        alternate background and foreground, starting with background, over the pixels in
        column-major order (COCO's convention).
    size:
        ``[height, width]``.

    Raises
    ------
    ValueError
        Malformed string, negative runs, or runs that do not add up to height x width.
    """
    h, w = (int(v) for v in size)
    runs = rle_counts_from_string(counts) if isinstance(counts, str) else np.asarray(counts, dtype=np.int64)
    if runs.ndim != 1 or (runs.size and runs.min() < 0):
        raise ValueError("RLE counts must be non-negative run lengths")
    if int(runs.sum()) != h * w:
        raise ValueError(f"RLE runs cover {int(runs.sum())} pixels, the mask {h}x{w} has {h * w}")
    flat = np.repeat((np.arange(runs.size) % 2).astype(bool), runs)
    return flat.reshape(w, h).T


@dataclass(frozen=True, slots=True)
class Item:
    """One image (or one frame of a cine) and where its mask comes from.

    Attributes
    ----------
    id:
        Unique name within its source (relative path, ``path#f012`` for a frame, nnU-Net case).
    image_path:
        The file holding the image.
    mask_path:
        The mask file, or ``None``.
    frame:
        Frame index inside a multi-frame file, or ``None``.
    mask_labels:
        When set, ``mask_path`` is an integer label map and these labels are "vessel" (nnU-Net).
    polygons:
        When set, the mask is rasterised from these COCO polygons (ARCADE) at ``mask_size``.
    rles:
        COCO RLE masks (compressed strings or run-length tuples) united with the polygons.
    mask_size:
        ``(height, width)`` recorded with the polygons and RLEs.
    annotation_path:
        The JSON the polygons come from (named in errors).
    meta:
        Extra per-item facts (``vessel_fraction`` and ``threshold`` for anatomy items); not part of
        equality.
    """

    id: str
    image_path: str
    mask_path: str | None = None
    frame: int | None = None
    mask_labels: tuple[int, ...] | None = None
    polygons: tuple[tuple[float, ...], ...] | None = None
    rles: tuple[str | tuple[int, ...], ...] = ()
    mask_size: tuple[int, int] | None = None
    annotation_path: str | None = None
    meta: dict = field(default_factory=dict, compare=False)

    @property
    def image_ref(self) -> str:
        """What :func:`~vasomim.data.io.read_image` takes: the path, or ``path#f012`` for a frame."""
        return self.image_path if self.frame is None else frame_id(self.image_path, self.frame)

    @property
    def has_mask(self) -> bool:
        """True when the item carries a mask (a file or polygons)."""
        return self.mask_path is not None or self.polygons is not None

    def load_image(self) -> np.ndarray:
        """The image as 2-D float32 gray in ``[0, 1]`` (raises :class:`ImageReadError`)."""
        return read_image(self.image_ref)

    def image_shape(self) -> tuple[int, int]:
        """``(height, width)`` from the image header, without decoding pixels."""
        info = image_info(self.image_ref)
        return info.height, info.width

    def load_mask(self, expected_shape: tuple[int, int] | None = None) -> np.ndarray:
        """The mask as a 2-D bool array, checked against the image size.

        Parameters
        ----------
        expected_shape:
            ``(height, width)`` of the already-loaded image; ``None`` reads it from the image header.

        Raises
        ------
        ImageReadError
            Unreadable or colour mask, or a size different from the image's.
        ValueError
            The item has no mask.
        """
        if expected_shape is None:
            expected_shape = self.image_shape()
        if self.polygons is not None:
            size = self.mask_size or expected_shape
            if tuple(size) != tuple(expected_shape):
                raise ImageReadError(
                    self.annotation_path or self.id,
                    f"annotation size {size[1]}x{size[0]} for {self.image_path} differs from the image "
                    f"{expected_shape[1]}x{expected_shape[0]}",
                )
            mask = rasterize_polygons(self.polygons, tuple(size))
            for counts in self.rles:
                try:
                    mask |= decode_rle(counts, size)
                except ValueError as exc:
                    raise ImageReadError(self.annotation_path or self.id,
                                         f"RLE mask of {self.image_path}: {exc}") from None
            return mask
        if self.mask_path is None:
            raise ValueError(f"{self.id}: item has no mask")
        return read_mask(self.mask_path, expected_shape, labels=self.mask_labels)


# ------------------------------------------------------------------------------------- listing


def scan_files(root: str | os.PathLike, suffixes: Iterable[str] | None = None, recursive: bool = True) -> list[str]:
    """Relative POSIX paths of the files under ``root``, sorted, without opening any file.

    Parameters
    ----------
    root:
        Directory to list.
    suffixes:
        Keep files whose lower-cased suffix is one of these (``None``: every file).
    recursive:
        Descend into sub-folders (symlinked folders are followed once; loops are cut).

    Names starting with ``.`` are skipped.  Uses ``os.scandir``, whose entries carry the file type,
    so no per-file ``stat`` is needed.
    """
    root = os.fspath(root)
    if not os.path.isdir(root):
        raise NotADirectoryError(f"{root}: not a directory")
    keep = tuple(s.lower() for s in suffixes) if suffixes is not None else None
    out: list[str] = []
    seen_dirs: set[tuple[int, int]] = set()
    stack = [("", root)]
    while stack:
        rel, path = stack.pop()
        st = os.stat(path)
        if (st.st_dev, st.st_ino) in seen_dirs:
            continue
        seen_dirs.add((st.st_dev, st.st_ino))
        with os.scandir(path) as it:
            for entry in it:
                name = entry.name
                if name.startswith("."):
                    continue
                if entry.is_dir():
                    if recursive:
                        stack.append((f"{rel}{name}/", entry.path))
                elif keep is None or name.lower().endswith(keep):
                    out.append(rel + name)
    out.sort()
    return out


def _summary(what: str, names: Sequence[str], shown: int = 5) -> str:
    more = f", ... (+{len(names) - shown})" if len(names) > shown else ""
    return f"{len(names)} {what}: {', '.join(names[:shown])}{more}"


def _strip_suffix(rel: str) -> str:
    return os.path.splitext(rel)[0]


class Source:
    """Base of every source: a lazily listed, named list of :class:`Item`.

    Subclasses implement :meth:`_list`.  ``items`` and ``problems`` are computed on first access.

    Parameters
    ----------
    name:
        Optional name; when given, item ids become ``<name>/<id>``.
    """

    kind = "source"

    def __init__(self, name: str | None = None):
        self.name = name
        self._items: list[Item] | None = None
        self._problems: list[str] = []

    def _list(self) -> tuple[list[Item], list[str]]:
        raise NotImplementedError

    def _ensure(self) -> list[Item]:
        if self._items is None:
            items, problems = self._list()
            if self.name:
                items = [replace(it, id=f"{self.name}/{it.id}") for it in items]
            self._items, self._problems = items, problems
        return self._items

    @property
    def items(self) -> list[Item]:
        """The items, sorted by id within the source."""
        return self._ensure()

    @property
    def problems(self) -> list[str]:
        """Listing-time warnings (unpaired images or masks, missing files), one line each."""
        self._ensure()
        return list(self._problems)

    def describe(self) -> str:
        """One line saying what this source is."""
        return f"{self.kind}" + (f" {self.name!r}" if self.name else "")

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> Item:
        return self.items[index]

    def __iter__(self) -> Iterator[Item]:
        return iter(self.items)


class FolderSource(Source):
    """Images in a folder (recursively), with masks matched by relative path and stem.

    Parameters
    ----------
    images_dir:
        Folder of png/jpg/bmp/tif images.
    masks_dir:
        Folder of masks (``None``: unlabelled).  May equal ``images_dir`` when masks carry a
        ``mask_suffix`` (``x.png`` + ``x_gt.png``), or lie inside it (that sub-folder is then not
        listed as images).
    mask_suffix:
        Text after the image stem in mask names, e.g. ``"_gt"`` for ``x_gt.png``.
    recursive:
        List sub-folders too.
    name:
        See :class:`Source`.
    """

    kind = "folder"

    def __init__(
        self,
        images_dir: str | os.PathLike,
        masks_dir: str | os.PathLike | None = None,
        mask_suffix: str = "",
        recursive: bool = True,
        name: str | None = None,
    ):
        super().__init__(name)
        self.images_dir = Path(images_dir)
        self.masks_dir = Path(masks_dir) if masks_dir is not None else None
        self.mask_suffix = mask_suffix
        self.recursive = recursive
        if self.masks_dir is not None and self._same_dir() and not mask_suffix:
            raise ValueError(f"{self.images_dir}: images and masks share a folder, so a mask_suffix (e.g. '_gt') is needed")

    def _same_dir(self) -> bool:
        return self.masks_dir is not None and os.path.realpath(self.masks_dir) == os.path.realpath(self.images_dir)

    def describe(self) -> str:
        masks = f", masks {self.masks_dir}" if self.masks_dir else ""
        return f"{super().describe()}: images {self.images_dir}{masks}"

    def _list(self) -> tuple[list[Item], list[str]]:
        images = scan_files(self.images_dir, IMAGE_SUFFIXES, self.recursive)
        problems: list[str] = []
        if self.masks_dir is None:
            return [Item(rel, str(self.images_dir / rel)) for rel in images], problems
        sfx = self.mask_suffix
        if self._same_dir():
            images = [r for r in images if not _strip_suffix(r).endswith(sfx)]
        else:
            inner = os.path.relpath(os.path.realpath(self.masks_dir), os.path.realpath(self.images_dir))
            if not inner.startswith(".."):
                prefix = Path(inner).as_posix() + "/"
                images = [r for r in images if not r.startswith(prefix)]
        masks: dict[str, str] = {}
        duplicates: list[str] = []
        for rel in scan_files(self.masks_dir, IMAGE_SUFFIXES, self.recursive):
            stem = _strip_suffix(rel)
            if sfx:
                if not stem.endswith(sfx):
                    continue
                stem = stem[: -len(sfx)]
            if stem in masks:
                duplicates.append(rel)
            else:
                masks[stem] = rel
        items, unmatched = [], []
        used: set[str] = set()
        for rel in images:
            mask_rel = masks.get(_strip_suffix(rel))
            if mask_rel is None:
                unmatched.append(rel)
            else:
                used.add(mask_rel)
            items.append(Item(rel, str(self.images_dir / rel), str(self.masks_dir / mask_rel) if mask_rel else None))
        if unmatched:
            problems.append(_summary(f"images without a mask in {self.masks_dir}", unmatched))
        orphans = [m for m in masks.values() if m not in used]
        if orphans:
            problems.append(_summary(f"masks without an image in {self.images_dir}", sorted(orphans)))
        if duplicates:
            problems.append(_summary("masks ignored because another file has the same stem", duplicates))
        return items, problems


class ArcadeSource(Source):
    """ARCADE (COCO JSON) annotations: images plus polygons rasterised into vessel masks.

    Parameters
    ----------
    json_path:
        The split's COCO JSON (``images``, ``annotations`` with polygon ``segmentation``,
        ``categories``).
    images_dir:
        Folder holding the split's images (``file_name`` is relative to it).
    categories:
        Category names or ids whose polygons count as vessel; ``None``: all (their union).
    name:
        See :class:`Source`.
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
            problems.append(_summary(f"images listed in {self.json_path.name} but missing from {self.images_dir}", missing))
        stray = sorted(set(polys) - known)
        if stray:
            problems.append(_summary("annotations refer to unknown image ids", [str(s) for s in stray]))
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

    Parameters
    ----------
    root:
        Folder holding ``dataset.json``, ``imagesTr``, ``labelsTr`` (and maybe ``imagesTs``).
    labels:
        Label names or values that are "vessel"; ``None``: every label except background (0).
    split:
        ``"train"`` (``imagesTr``/``labelsTr``) or ``"test"`` (``imagesTs``/``labelsTs`` if present).
    name:
        See :class:`Source`.
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
            problems.append(_summary(f"cases without a label in {labels_dir}", unlabelled))
        declared = meta.get("numTraining")
        if self.split == "train" and declared is not None and int(declared) != len(cases):
            problems.append(f"{meta_path}: numTraining is {declared} but {images_dir} holds {len(cases)} cases")
        return items, problems


class DicomSource(Source):
    """A tree of DICOM files; every frame of every file is an item (``rel/run.dcm#f012``).

    Listing reads each file's header (not its pixels) to count frames; needs pydicom.

    Parameters
    ----------
    root:
        Folder to search recursively.
    name:
        See :class:`Source`.
    """

    kind = "dicom"

    def __init__(self, root: str | os.PathLike, name: str | None = None):
        super().__init__(name)
        self.root = Path(root)

    def describe(self) -> str:
        return f"{super().describe()}: {self.root}"

    def _list(self) -> tuple[list[Item], list[str]]:
        try:
            import pydicom  # noqa: F401  (fail once, clearly, instead of once per file)
        except ImportError:
            raise ImageReadError(self.root, "reading DICOM needs pydicom: pip install 'vasomim[dicom]'") from None
        items, bad = [], []
        for rel in scan_files(self.root):
            path = self.root / rel
            if not is_dicom_file(path):
                continue
            try:
                n = dicom_frame_count(path)
            except ImageReadError as exc:
                bad.append(f"{rel} ({exc.reason})")
                continue
            items.extend(Item(frame_id(rel, k), str(path), frame=k) for k in range(n))
        return items, [_summary("DICOM files skipped", bad)] if bad else []


class AnatomySource(Source):
    """Images paired with the anatomy masks written by ``vasomim anatomy`` (its ``manifest.jsonl``).

    Parameters
    ----------
    images_dir:
        The images root the anatomy run read (manifest ``file`` entries are relative to it).
    anatomy_dir:
        The anatomy output folder holding ``manifest*.jsonl`` (``mask`` entries are relative to it).
    name:
        See :class:`Source`.
    """

    kind = "anatomy"

    def __init__(self, images_dir: str | os.PathLike, anatomy_dir: str | os.PathLike, name: str | None = None):
        super().__init__(name)
        self.images_dir = Path(images_dir)
        self.anatomy_dir = Path(anatomy_dir)

    def describe(self) -> str:
        return f"{super().describe()}: images {self.images_dir}, anatomy {self.anatomy_dir}"

    def _list(self) -> tuple[list[Item], list[str]]:
        manifests = sorted(self.anatomy_dir.glob("manifest*.jsonl"))
        if not manifests:
            raise ValueError(f"{self.anatomy_dir}: no manifest.jsonl; run `vasomim anatomy` on {self.images_dir} first")
        entries: dict[str, dict] = {}
        bad_lines = []
        for manifest in manifests:
            with open(manifest, encoding="utf-8") as fh:
                for lineno, line in enumerate(fh, 1):
                    if not line.strip():
                        continue
                    try:
                        rec = json.loads(line)
                        entries[str(rec["file"])] = rec
                    except (json.JSONDecodeError, KeyError, TypeError):
                        bad_lines.append(f"{manifest.name}:{lineno}")
        items, failed = [], []
        for file in sorted(entries):
            rec = entries[file]
            # a suspect mask (too small, or along the collimator's edge) is still a mask: its image
            # stays in the corpus, and the manifest and the run summary have already said why
            if rec.get("status") not in ("ok", "suspect") or not rec.get("mask"):
                failed.append(str(rec.get("error") or file))
                continue
            base, frame = split_frame_id(file)
            meta = {k: rec[k] for k in ("vessel_fraction", "threshold", "recipe", "fov_fraction") if k in rec}
            items.append(
                Item(file, str(self.images_dir / base), str(self.anatomy_dir / rec["mask"]), frame=frame, meta=meta)
            )
        problems = []
        if bad_lines:
            problems.append(_summary("unreadable manifest lines (torn by an interrupted run?)", bad_lines))
        if failed:
            problems.append(_summary("images whose anatomy extraction failed", failed))
        return items, problems


class ConcatSource(Source):
    """Several sources as one, in order.  Ids must be unique across them.

    Parameters
    ----------
    sources:
        The sources; give them names when their ids could collide.
    name:
        See :class:`Source`.
    """

    kind = "concat"

    def __init__(self, sources: Sequence[Source], name: str | None = None):
        super().__init__(name)
        self.sources = list(sources)

    def describe(self) -> str:
        return "; ".join(s.describe() for s in self.sources)

    def _list(self) -> tuple[list[Item], list[str]]:
        items = [it for s in self.sources for it in s.items]
        problems = [p for s in self.sources for p in s.problems]
        dup = sorted(k for k, n in Counter(it.id for it in items).items() if n > 1)
        if dup:
            raise ValueError(_summary("item ids occur in more than one source (give each source a name)", dup))
        return items, problems


# --------------------------------------------------------------------------------------- specs

# type -> (class, required keys, {yaml key: (constructor parameter, is a path)})
_SPEC_KEYS: dict[str, tuple[type[Source], tuple[str, ...], dict[str, tuple[str, bool]]]] = {
    "folder": (FolderSource, ("images",), {"images": ("images_dir", True), "masks": ("masks_dir", True),
                                           "mask_suffix": ("mask_suffix", False), "recursive": ("recursive", False)}),
    "arcade": (ArcadeSource, ("json", "images"), {"json": ("json_path", True), "images": ("images_dir", True),
                                                  "categories": ("categories", False)}),
    "nnunet": (NnUNetSource, ("root",), {"root": ("root", True), "labels": ("labels", False), "split": ("split", False)}),
    "dicom": (DicomSource, ("root",), {"root": ("root", True)}),
    "anatomy": (AnatomySource, ("images", "anatomy"), {"images": ("images_dir", True), "anatomy": ("anatomy_dir", True)}),
    # generated on the fly (vasomim.data.synthetic_source, imported when used)
    "synthetic": ("SyntheticSource", ("count",), {"count": ("count", False), "size": ("size", False),
                                                  "seed": ("seed", False), "preset": ("preset", False),
                                                  "config": ("config", False)}),
}


def source_from_spec(entry: dict, base_dir: str | os.PathLike = ".", where: str = "data spec") -> Source:
    """Build one source from a spec mapping such as ``{type: folder, images: x, masks: y}``.

    Parameters
    ----------
    entry:
        ``type`` (folder, arcade, nnunet, dicom, anatomy), an optional ``name`` and the type's keys.
    base_dir:
        Relative paths are taken relative to this folder (the YAML file's folder).
    where:
        Named in error messages.
    """
    if not isinstance(entry, dict) or "type" not in entry:
        raise ValueError(f"{where}: each source needs a 'type' ({', '.join(_SPEC_KEYS)})")
    kind = str(entry["type"])
    if kind not in _SPEC_KEYS:
        raise ValueError(f"{where}: unknown source type {kind!r} (known: {', '.join(_SPEC_KEYS)})")
    cls, required, keys = _SPEC_KEYS[kind]
    unknown = sorted(set(entry) - set(keys) - {"type", "name", "share"})
    if unknown:
        raise ValueError(f"{where}: {kind} source: unknown key(s) {', '.join(unknown)} (expected {', '.join(keys)}, name, share)")
    missing = [k for k in required if entry.get(k) is None]
    if missing:
        raise ValueError(f"{where}: {kind} source needs key(s) {', '.join(missing)}")
    kwargs: dict[str, Any] = {"name": entry.get("name")}
    for key, (param, is_path) in keys.items():
        if entry.get(key) is not None:
            kwargs[param] = Path(base_dir) / str(entry[key]) if is_path else entry[key]
    if isinstance(cls, str):
        from vasomim.data import synthetic_source

        cls = getattr(synthetic_source, cls)
    source = cls(**kwargs)
    source.share = entry.get("share")  # a share of every epoch: see vasomim.data.synthetic_source.MixSource
    return source


def _detect(root: Path) -> Source:
    """Guess the layout of a directory (see :func:`load_source`)."""
    if (root / "dataset.json").is_file() and (root / "imagesTr").is_dir():
        return NnUNetSource(root)
    images = root / "images"
    if images.is_dir():
        ann_dir = root / "annotations"
        jsons = sorted(ann_dir.glob("*.json")) if ann_dir.is_dir() else []
        if len(jsons) == 1:
            return ArcadeSource(jsons[0], images)
        for masks_name in ("masks", "labels"):
            if (root / masks_name).is_dir():
                return FolderSource(images, root / masks_name)
        return FolderSource(images)
    files = scan_files(root)
    has_raster = any(f.lower().endswith(IMAGE_SUFFIXES) for f in files)
    has_dicom = any(f.lower().endswith(DICOM_SUFFIXES) for f in files) or any(
        "." not in f.rsplit("/", 1)[-1] and is_dicom_file(root / f) for f in files
    )
    if has_raster and has_dicom:
        return ConcatSource([FolderSource(root), DicomSource(root)])
    if has_dicom:
        return DicomSource(root)
    if has_raster:
        return FolderSource(root)
    raise ValueError(f"{root}: no images found (looked for {', '.join(IMAGE_SUFFIXES + DICOM_SUFFIXES)})")


def load_source(spec: str | os.PathLike | dict | list) -> Source:
    """Build a source from a directory, a YAML data spec, or spec mappings.

    Parameters
    ----------
    spec:
        * a directory; its layout is detected, first match wins: nnU-Net (``dataset.json`` +
          ``imagesTr``), ARCADE (``images/`` + ``annotations/<one>.json``), ``images/`` +
          ``masks/`` (or ``labels/``), ``images/`` alone, then a plain folder of images and/or
          DICOM files;
        * a ``.yaml``/``.yml`` file holding ``sources: [ {type: ..., ...}, ... ]`` (or one mapping
          with a ``type``); paths are relative to the file;
        * a mapping or a list of mappings in the same form (paths relative to the working folder).

    Returns
    -------
    The source; several sources come back as one :class:`ConcatSource`.
    """
    if isinstance(spec, dict):
        return source_from_spec(spec)
    if isinstance(spec, list):
        return _combine([source_from_spec(e, where=f"source {i}") for i, e in enumerate(spec)])
    path = Path(spec)
    if path.is_dir():
        return _detect(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file or directory")
    if path.suffix.lower() not in (".yaml", ".yml"):
        raise ValueError(f"{path}: a data spec is a directory or a .yaml file")
    import yaml

    with open(path, encoding="utf-8") as fh:
        try:
            doc = yaml.safe_load(fh)
        except yaml.YAMLError as exc:
            raise ValueError(f"{path}: invalid YAML ({' '.join(str(exc).split())})") from None
    if isinstance(doc, dict) and "type" in doc:
        return source_from_spec(doc, path.parent, str(path))
    if not isinstance(doc, dict) or not isinstance(doc.get("sources"), list) or not doc["sources"]:
        raise ValueError(f"{path}: a data spec holds 'sources:', a non-empty list of {{type: ..., ...}} mappings")
    extra = sorted(set(doc) - {"sources"})
    if extra:
        raise ValueError(f"{path}: unknown top-level key(s) {', '.join(extra)} (expected sources)")
    return _combine([source_from_spec(e, path.parent, f"{path}: source {i}") for i, e in enumerate(doc["sources"])])


def _combine(sources: list[Source]) -> Source:
    shares = [getattr(s, "share", None) for s in sources]
    if any(share is not None for share in shares):
        from vasomim.data.synthetic_source import MixSource

        return MixSource(sources, shares)
    return sources[0] if len(sources) == 1 else ConcatSource(sources)
