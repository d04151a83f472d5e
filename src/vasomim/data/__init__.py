"""Reading angiograms and masks, dataset sources, joint transforms and the synthetic generator.

``from vasomim.data import ...`` gives the readers and sources directly; the names that need torch
(transforms, datasets) are imported on first use, so that importing the readers stays light.
"""

from importlib import import_module

from vasomim.data.dicom import frame_id, read_dicom_frame, read_dicom_frames, split_frame_id
from vasomim.data.io import (
    IMAGE_SUFFIXES,
    ImageInfo,
    ImageReadError,
    image_info,
    pil_to_gray_array,
    read_image,
    read_mask,
    write_png_atomic,
)
from vasomim.data.sources import (
    AnatomySource,
    ArcadeSource,
    ConcatSource,
    DicomSource,
    FolderSource,
    Item,
    NnUNetSource,
    Source,
    load_source,
    rasterize_polygons,
)

_LAZY = {
    "TransformConfig": "vasomim.data.transforms",
    "build_transform": "vasomim.data.transforms",
    "SegmentationDataset": "vasomim.data.datasets",
    "PretrainDataset": "vasomim.data.datasets",
    "check_source": "vasomim.data.check",
}

__all__ = [
    "IMAGE_SUFFIXES",
    "ImageInfo",
    "ImageReadError",
    "image_info",
    "pil_to_gray_array",
    "read_image",
    "read_mask",
    "write_png_atomic",
    "frame_id",
    "split_frame_id",
    "read_dicom_frame",
    "read_dicom_frames",
    "Item",
    "Source",
    "FolderSource",
    "ArcadeSource",
    "NnUNetSource",
    "DicomSource",
    "AnatomySource",
    "ConcatSource",
    "load_source",
    "rasterize_polygons",
    *_LAZY,
]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'vasomim.data' has no attribute {name!r}")
