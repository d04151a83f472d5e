"""Sources from data specs: a directory (layout detected), a YAML file, or spec mappings."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from vasomim.data.dicom import DICOM_SUFFIXES, is_dicom_file
from vasomim.data.errors import IMAGE_SUFFIXES
from vasomim.data.sources.anatomy import AnatomySource
from vasomim.data.sources.arcade import ArcadeSource
from vasomim.data.sources.base import ConcatSource, Source, scan_files
from vasomim.data.sources.dicom import DicomSource
from vasomim.data.sources.folder import FolderSource
from vasomim.data.sources.nnunet import NnUNetSource


# type -> (class, required keys, {yaml key: (constructor parameter, is a path)})
_SPEC_KEYS: dict[str, tuple[type[Source], tuple[str, ...], dict[str, tuple[str, bool]]]] = {
    "folder": (FolderSource, ("images",), {"images": ("images_dir", True), "masks": ("masks_dir", True),
                                           "mask_suffix": ("mask_suffix", False), "recursive": ("recursive", False)}),
    "arcade": (ArcadeSource, ("json", "images"), {"json": ("json_path", True), "images": ("images_dir", True),
                                                  "categories": ("categories", False)}),
    "nnunet": (NnUNetSource, ("root",), {"root": ("root", True), "labels": ("labels", False), "split": ("split", False)}),
    "dicom": (DicomSource, ("root",), {"root": ("root", True)}),
    "anatomy": (AnatomySource, ("images", "anatomy"), {"images": ("images_dir", True), "anatomy": ("anatomy_dir", True)}),
    # generated on the fly (vasomim.data.sources.synthetic, imported when used: the generator needs scipy)
    "synthetic": ("SyntheticSource", ("count",), {"count": ("count", False), "size": ("size", False),
                                                  "seed": ("seed", False), "preset": ("preset", False),
                                                  "config": ("config", False)}),
}


def source_from_spec(entry: dict, base_dir: str | os.PathLike = ".", where: str = "data spec") -> Source:
    """Build one source from a spec mapping such as ``{type: folder, images: x, masks: y}``.

    Args:
        entry: ``type`` (folder, arcade, nnunet, dicom, anatomy), an optional ``name`` and the
            type's keys.
        base_dir: Relative paths are taken relative to this folder (the YAML file's folder).
        where: Named in error messages.
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
        from vasomim.data.sources.synthetic import SyntheticSource

        cls = SyntheticSource
    source = cls(**kwargs)
    source.share = entry.get("share")  # a share of every epoch: see vasomim.data.sources.synthetic.MixSource
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

    Args:
        spec:
            * a directory; its layout is detected, first match wins: nnU-Net (``dataset.json`` +
              ``imagesTr``), ARCADE (``images/`` + ``annotations/<one>.json``), ``images/`` +
              ``masks/`` (or ``labels/``), ``images/`` alone, then a plain folder of images and/or
              DICOM files;
            * a ``.yaml``/``.yml`` file holding ``sources: [ {type: ..., ...}, ... ]`` (or one
              mapping with a ``type``); paths are relative to the file;
            * a mapping or a list of mappings in the same form (paths relative to the working
              folder).

    Returns:
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
        from vasomim.data.sources.synthetic import MixSource  # (scipy, see above)

        return MixSource(sources, shares)
    return sources[0] if len(sources) == 1 else ConcatSource(sources)
