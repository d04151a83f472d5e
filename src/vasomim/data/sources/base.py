"""The item every source lists, the base :class:`Source`, several sources as one, and file listing."""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Iterable, Iterator, Sequence

import numpy as np

from vasomim.data.dicom import frame_id
from vasomim.data.errors import ImageReadError
from vasomim.data.io import image_info, read_image, read_mask
from vasomim.data.sources.coco import decode_rle, rasterize_polygons


@dataclass(frozen=True, slots=True)
class Item:
    """One image (or one frame of a cine) and where its mask comes from.

    Attributes:
        id: Unique name within its source (relative path, ``path#f012`` for a frame, nnU-Net case).
        image_path: The file holding the image.
        mask_path: The mask file, or ``None``.
        frame: Frame index inside a multi-frame file, or ``None``.
        mask_labels: When set, ``mask_path`` is an integer label map and these labels are "vessel"
            (nnU-Net).
        polygons: When set, the mask is rasterised from these COCO polygons (ARCADE) at
            ``mask_size``.
        rles: COCO RLE masks (compressed strings or run-length tuples) united with the polygons.
        mask_size: ``(height, width)`` recorded with the polygons and RLEs.
        annotation_path: The JSON the polygons come from (named in errors).
        meta: Extra per-item facts (``vessel_fraction`` and ``threshold`` for anatomy items); not
            part of equality.
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

        Args:
            expected_shape: ``(height, width)`` of the already-loaded image; ``None`` reads it from
                the image header.

        Raises:
            ImageReadError: Unreadable or colour mask, or a size different from the image's.
            ValueError: The item has no mask.
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

    Args:
        root: Directory to list.
        suffixes: Keep files whose lower-cased suffix is one of these (``None``: every file).
        recursive: Descend into sub-folders (symlinked folders are followed once; loops are cut).

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


def summary(what: str, names: Sequence[str], shown: int = 5) -> str:
    more = f", ... (+{len(names) - shown})" if len(names) > shown else ""
    return f"{len(names)} {what}: {', '.join(names[:shown])}{more}"


class Source:
    """Base of every source: a lazily listed, named list of :class:`Item`.

    Subclasses implement :meth:`_list`.  ``items`` and ``problems`` are computed on first access.

    Args:
        name: Optional name; when given, item ids become ``<name>/<id>``.
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


class ConcatSource(Source):
    """Several sources as one, in order.  Ids must be unique across them.

    Args:
        sources: The sources; give them names when their ids could collide.
        name: See :class:`Source`.
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
            raise ValueError(summary("item ids occur in more than one source (give each source a name)", dup))
        return items, problems
