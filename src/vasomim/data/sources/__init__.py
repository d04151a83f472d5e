"""Dataset sources: every way users bring angiograms, listed as one kind of :class:`Item`.

A source lists its files once, on first use, without decoding any image; :func:`load_source` builds
one from a directory (its layout is detected) or a YAML data spec. The source types, their layouts,
item ids and the data spec are described in ``docs/data.md`` ("Sources").
"""

from __future__ import annotations

from vasomim.data.sources.anatomy import AnatomySource
from vasomim.data.sources.arcade import ArcadeSource
from vasomim.data.sources.base import ConcatSource, Item, Source, scan_files
from vasomim.data.sources.coco import decode_rle, rasterize_polygons, rle_counts_from_string
from vasomim.data.sources.dicom import DicomSource
from vasomim.data.sources.folder import FolderSource
from vasomim.data.sources.nnunet import NnUNetSource
from vasomim.data.sources.spec import load_source, source_from_spec

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
    "source_from_spec",
]
