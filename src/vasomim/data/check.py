"""Check a data source before training on it: what it holds, and every file that will fail.

:func:`check_source` reads every item exactly as training will (image, then mask against the image
size), in a thread pool, and never stops at a bad file: it collects one ``path: reason`` line per
failure.  The :class:`CheckReport` summarises counts, sizes, file formats and modes, mask coverage
(fraction of vessel pixels), and warns about images that look wrongly scaled.
"""

from __future__ import annotations

import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from vasomim.data.io import ImageReadError, image_info
from vasomim.data.sources import Item, Source

__all__ = ["CheckReport", "ItemCheck", "check_item", "check_source", "pair_size_problems"]

# An image whose brightest pixel stays below this is probably 12-bit (or less) data stored in a
# 16-bit container: the reading rule divides by 65535, so it reads nearly black.
DARK_LIMIT = 1 / 16


@dataclass(frozen=True)
class ItemCheck:
    """The outcome of reading one item.

    Attributes:
        id: The item id.
        error: ``"path: reason"`` when reading failed, else ``None``.
        size: ``"WxH"``, when the header could be read.
        mode: ``"<format> <mode>"`` such as ``"PNG L"`` or ``"DICOM MONOCHROME1 12-bit"``.
        coverage: Fraction of mask pixels that are vessel, or ``None`` without a mask.
        max_intensity: Brightest pixel of the image in ``[0, 1]``.
    """

    id: str
    error: str | None = None
    size: str | None = None
    mode: str | None = None
    coverage: float | None = None
    max_intensity: float | None = None


def _pair_problem(item: Item) -> str | None:
    """One line when the item's mask and image differ in size (file headers only) or cannot be read."""
    try:
        height, width = item.image_shape()
        if item.mask_path is not None:
            info = image_info(item.mask_path)
            mask_size, where = (info.height, info.width), item.mask_path
        elif item.mask_size is not None:
            mask_size, where = tuple(item.mask_size), item.annotation_path or item.id
        else:
            return None
    except ImageReadError as exc:
        return str(exc)
    if mask_size != (height, width):
        return (f"{where}: mask size {mask_size[1]}x{mask_size[0]} differs from its image {item.image_ref} "
                f"({width}x{height})")
    return None


def pair_size_problems(items: list[Item], workers: int | None = None) -> list[str]:
    """Every image/mask pair whose sizes differ, from the file headers alone (no pixel is decoded).

    Returns one line per bad pair, naming the mask, both sizes and the image, in the items' order;
    an unreadable header is a problem too.
    """
    workers = workers or min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return [p for p in pool.map(_pair_problem, items) if p is not None]


def check_item(item: Item) -> ItemCheck:
    """Read one item the way a dataset does and report what was found; never raises for bad files."""
    size = mode = None
    try:
        info = image_info(item.image_ref)
        size, mode = f"{info.width}x{info.height}", f"{info.format} {info.mode}"
        image = item.load_image()
        coverage = float(item.load_mask(image.shape).mean()) if item.has_mask else None
    except ImageReadError as exc:
        return ItemCheck(item.id, str(exc), size, mode)
    except Exception as exc:  # an unexpected failure still names the file, and the check goes on
        text = " ".join(str(exc).split()) or type(exc).__name__
        return ItemCheck(item.id, f"{item.image_ref}: unexpected {type(exc).__name__} ({text})", size, mode)
    return ItemCheck(item.id, None, size, mode, coverage, float(image.max()))


@dataclass
class CheckReport:
    """Everything :func:`check_source` found.

    Attributes:
        source: One-line description of the source.
        results: One :class:`ItemCheck` per item, in source order.
        problems: Listing-time warnings of the source (unpaired files, missing files).
    """

    source: str
    results: list[ItemCheck] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def failures(self) -> list[str]:
        """One ``path: reason`` line per item that failed."""
        return [r.error for r in self.results if r.error is not None]

    @property
    def ok(self) -> bool:
        """True when no item failed."""
        return not self.failures

    def summary(self) -> dict:
        """Counts and statistics as plain JSON-able data."""
        good = [r for r in self.results if r.error is None]
        cov = np.array([r.coverage for r in good if r.coverage is not None], dtype=np.float64)
        return {
            "source": self.source,
            "items": len(self.results),
            "ok": len(good),
            "failed": len(self.results) - len(good),
            "sizes": dict(Counter(r.size for r in good).most_common()),
            "modes": dict(Counter(r.mode for r in good).most_common()),
            "masks": {
                "with_mask": int(cov.size),
                "coverage_mean": float(cov.mean()) if cov.size else None,
                "coverage_min": float(cov.min()) if cov.size else None,
                "coverage_max": float(cov.max()) if cov.size else None,
                "empty": int((cov == 0).sum()),
            },
            "dark_images": [r.id for r in good if r.max_intensity is not None and r.max_intensity < DARK_LIMIT],
            "problems": list(self.problems),
            "failures": self.failures,
        }

    def format(self, max_listed: int = 20) -> str:
        """A human-readable report; every failure is listed.

        Args:
            max_listed: How many distinct sizes/modes and dark images to name before summarising the
                rest.
        """
        s = self.summary()

        def counts(d: dict) -> str:
            parts = [f"{k} ({v})" for k, v in list(d.items())[:max_listed]]
            if len(d) > max_listed:
                parts.append(f"... {len(d) - max_listed} more")
            return ", ".join(parts) or "-"

        m = s["masks"]
        lines = [
            f"source: {s['source']}",
            f"items: {s['items']} ({s['ok']} ok, {s['failed']} failed)",
            f"sizes: {counts(s['sizes'])}",
            f"modes: {counts(s['modes'])}",
        ]
        if m["with_mask"]:
            lines.append(
                f"masks: {m['with_mask']} of {s['ok']} readable items; vessel coverage mean {100 * m['coverage_mean']:.2f}%, "
                f"min {100 * m['coverage_min']:.2f}%, max {100 * m['coverage_max']:.2f}%; {m['empty']} empty"
            )
        else:
            lines.append("masks: none")
        warnings = list(s["problems"])
        if s["dark_images"]:
            dark = s["dark_images"]
            named = ", ".join(dark[:max_listed]) + (f", ... (+{len(dark) - max_listed})" if len(dark) > max_listed else "")
            warnings.append(
                f"{len(dark)} images read almost black (max < {DARK_LIMIT:.4f}; 12-bit data in a 16-bit file?): {named}"
            )
        if m["empty"]:
            warnings.append(f"{m['empty']} masks are empty (no vessel pixel)")
        if warnings:
            lines.append("warnings:")
            lines.extend(f"  {w}" for w in warnings)
        if s["failures"]:
            lines.append(f"failed files ({len(s['failures'])}):")
            lines.extend(f"  {f}" for f in s["failures"])
        return "\n".join(lines)


def check_source(source: Source, workers: int | None = None, progress: bool = False) -> CheckReport:
    """Read every item of ``source`` and collect what is there and what fails.

    Args:
        source: Any :class:`~vasomim.data.sources.Source`.
        workers: Reader threads (decoding releases the GIL); ``None``: up to 8, bounded by the CPU
            count.
        progress: Show a tqdm progress bar on stderr.
    """
    items = source.items
    workers = workers or min(8, os.cpu_count() or 1)
    report = CheckReport(source.describe(), problems=source.problems)
    if workers <= 1:
        results = map(check_item, items)
        report.results = _with_progress(results, len(items), progress)
    else:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            report.results = _with_progress(pool.map(check_item, items), len(items), progress)
    return report


def _with_progress(results, total: int, progress: bool) -> list[ItemCheck]:
    if not progress:
        return list(results)
    from tqdm import tqdm

    return list(tqdm(results, total=total, desc="checking", unit="file"))
