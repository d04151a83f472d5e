"""Images paired with the anatomy masks that ``vasomim anatomy`` wrote, read through its manifests."""

from __future__ import annotations

import json
import os
from pathlib import Path

from vasomim.data.dicom import split_frame_id
from vasomim.data.sources.base import Item, Source, summary


class AnatomySource(Source):
    """Images paired with the anatomy masks written by ``vasomim anatomy`` (its ``manifest.jsonl``).

    Args:
        images_dir: The images root the anatomy run read (manifest ``file`` entries are relative to
            it).
        anatomy_dir: The anatomy output folder holding ``manifest*.jsonl`` (``mask`` entries are
            relative to it).
        name: See :class:`Source`.
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
                        record = json.loads(line)
                        entries[str(record["file"])] = record
                    except (json.JSONDecodeError, KeyError, TypeError):
                        bad_lines.append(f"{manifest.name}:{lineno}")
        items, failed = [], []
        for file in sorted(entries):
            record = entries[file]
            # a suspect mask (too small, or along the collimator's edge) is still a mask: its image
            # stays in the corpus, and the manifest and the run summary have already said why
            if record.get("status") not in ("ok", "suspect") or not record.get("mask"):
                failed.append(str(record.get("error") or file))
                continue
            base, frame = split_frame_id(file)
            meta = {k: record[k] for k in ("vessel_fraction", "threshold", "recipe", "fov_fraction") if k in record}
            items.append(
                Item(file, str(self.images_dir / base), str(self.anatomy_dir / record["mask"]), frame=frame, meta=meta)
            )
        problems = []
        if bad_lines:
            problems.append(summary("unreadable manifest lines (torn by an interrupted run?)", bad_lines))
        if failed:
            problems.append(summary("images whose anatomy extraction failed", failed))
        return items, problems
