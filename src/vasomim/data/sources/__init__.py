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
    Angiograms generated on the fly with their exact vessel masks (:mod:`.synthetic`); a
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
