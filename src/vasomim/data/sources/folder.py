"""Images in a folder, with masks matched by relative path and stem."""

from __future__ import annotations

import os
from pathlib import Path

from vasomim.data.errors import IMAGE_SUFFIXES
from vasomim.data.sources.base import Item, Source, scan_files, summary


def _strip_suffix(rel: str) -> str:
    return os.path.splitext(rel)[0]


class FolderSource(Source):
    """Images in a folder (recursively), with masks matched by relative path and stem.

    Args:
        images_dir: Folder of png/jpg/bmp/tif images.
        masks_dir: Folder of masks (``None``: unlabelled).  May equal ``images_dir`` when masks
            carry a ``mask_suffix`` (``x.png`` + ``x_gt.png``), or lie inside it (that sub-folder is
            then not listed as images).
        mask_suffix: Text after the image stem in mask names, e.g. ``"_gt"`` for ``x_gt.png``.
        recursive: List sub-folders too.
        name: See :class:`Source`.
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
            problems.append(summary(f"images without a mask in {self.masks_dir}", unmatched))
        orphans = [m for m in masks.values() if m not in used]
        if orphans:
            problems.append(summary(f"masks without an image in {self.images_dir}", sorted(orphans)))
        if duplicates:
            problems.append(summary("masks ignored because another file has the same stem", duplicates))
        return items, problems
