"""A tree of DICOM files: every frame of every file is an item."""

from __future__ import annotations

import os
from pathlib import Path

from vasomim.data.dicom import dicom_frame_count, frame_id, is_dicom_file
from vasomim.data.errors import ImageReadError
from vasomim.data.sources.base import Item, Source, scan_files, summary


class DicomSource(Source):
    """A tree of DICOM files; every frame of every file is an item (``rel/run.dcm#f012``).

    Listing reads each file's header (not its pixels) to count frames; needs pydicom.

    Args:
        root: Folder to search recursively.
        name: See :class:`Source`.
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
        return items, [summary("DICOM files skipped", bad)] if bad else []
