"""The anatomy engine: a folder tree of angiograms in, a mirrored tree of 0/255 vessel masks out.

Thin around :mod:`vasomim.anatomy`: it lists, shards, skips what is done, fans out to worker
processes (CPU) or batches on a device (CUDA), writes each mask atomically and appends one JSON line
per image to the manifest.  Failures are recorded with their reason; the run goes on.

Manifest line (``manifest.jsonl``, or ``manifest-<i>of<n>.jsonl`` for shard ``i/n``)::

    {"file": "sub/a.png", "status": "ok", "mask": "sub/a.png", "vessel_fraction": 0.061,
     "threshold": 41.7, "height": 512, "width": 512, "size": 123456, "mtime_ns": ...}
    {"file": "bad.png", "status": "failed", "error": "bad.png: corrupt or truncated image (...)", ...}

Resume rule: a file whose last manifest line is ``ok`` and whose mask exists is skipped; a file whose
last line is ``failed`` is skipped while it is unchanged on disk (same size and mtime) and retried
once it changes.  Masks are written to a temporary file then renamed, so a mask on disk is complete.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import sys
import threading
import time
import zlib
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np
from pydantic import Field, field_validator

from vasomim.anatomy import (DEFAULT_ALPHA, DEFAULT_BORDER, DEFAULT_RECIPE, DEFAULT_SIGMAS, RECIPES, anatomy_details,
                             extract_anatomy)
from vasomim.config import StrictModel
from vasomim.data.io import IMAGE_SUFFIXES, ImageReadError, looked_for, read_image, write_png_atomic


class AnatomyConfig(StrictModel):
    """Parameters of ``vasomim anatomy`` (see :func:`vasomim.anatomy.extract_anatomy`)."""

    recipe: str = Field(DEFAULT_RECIPE, description="fov (field-of-view aware, default), paper or official")
    alpha: float = Field(DEFAULT_ALPHA, ge=0, le=100, description="percentile threshold of the vesselness map")
    border: int = Field(DEFAULT_BORDER, ge=0, description="pixels zeroed at the map's border")
    sigmas: tuple[float, ...] = Field(DEFAULT_SIGMAS, description="Hessian scales in pixels")
    workers: int = Field(0, ge=0, description="worker processes on CPU; 0 = one per core")
    device: str = Field("cpu", description="cpu, or cuda[:k] for batched extraction on a GPU")
    batch_size: int = Field(16, ge=1, description="images per batch on a GPU")
    shard: str = Field("0/1", description="i/n: process only the files of shard i out of n")

    @field_validator("recipe")
    @classmethod
    def _check_recipe(cls, v: str) -> str:
        if v not in RECIPES:
            raise ValueError(f"unknown recipe {v!r}; use one of {', '.join(RECIPES)}")
        return v

    @field_validator("shard")
    @classmethod
    def _check_shard(cls, v: str) -> str:
        parse_shard(v)
        return v


def parse_shard(shard: str) -> tuple[int, int]:
    try:
        i, n = (int(x) for x in shard.split("/"))
    except ValueError:
        raise ValueError(f"shard must look like i/n (e.g. 0/4), got {shard!r}") from None
    if n < 1 or not 0 <= i < n:
        raise ValueError(f"shard {shard!r}: need 0 <= i < n")
    return i, n


def in_shard(rel: str, shard: tuple[int, int]) -> bool:
    """Deterministic, coordination-free split: CRC32 of the relative path modulo n."""
    i, n = shard
    return n == 1 or zlib.crc32(rel.encode("utf-8")) % n == i


def list_images(root: str | os.PathLike, suffixes: Iterable[str] = IMAGE_SUFFIXES) -> list[str]:
    """All image files under ``root`` (recursive, hidden entries skipped), as sorted POSIX relative paths."""
    root = Path(root)
    suffixes = tuple(s.lower() for s in suffixes)
    found: list[str] = []
    stack = [root]
    while stack:
        d = stack.pop()
        with os.scandir(d) as it:
            for e in it:
                if e.name.startswith("."):
                    continue
                if e.is_dir(follow_symlinks=True):
                    stack.append(Path(e.path))
                elif e.name.lower().endswith(suffixes):
                    found.append(Path(e.path).relative_to(root).as_posix())
    return sorted(found)


def mask_names(files: list[str]) -> dict[str, str]:
    """Mirrored mask path per input: ``a/b.jpg -> a/b.png``; ``a/b.jpg.png`` when two inputs share a stem."""
    stems: dict[str, int] = {}
    for f in files:
        key = str(Path(f).with_suffix(""))
        stems[key] = stems.get(key, 0) + 1
    return {f: (str(Path(f).with_suffix(".png")) if stems[str(Path(f).with_suffix(""))] == 1 else f + ".png") for f in files}


def manifest_name(shard: tuple[int, int]) -> str:
    return "manifest.jsonl" if shard[1] == 1 else f"manifest-{shard[0]}of{shard[1]}.jsonl"


def read_manifest(out_dir: str | os.PathLike) -> dict[str, dict]:
    """Last record per file over every manifest in ``out_dir`` (torn last lines are ignored)."""
    records: dict[str, dict] = {}
    for path in sorted(Path(out_dir).glob("manifest*.jsonl")):
        with open(path, encoding="utf-8") as fh:
            for line in fh:
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if isinstance(record, dict) and "file" in record:
                    records[record["file"]] = record
    return records


def frangi_prediction(image, config: dict):
    """The Frangi/Sato baseline's mask of a [0, 1] image (``config``: the frangi stage's recipe, alpha and
    border; border None scales the default 20 px at 512 px to the image)."""
    border = config["border"] if config["border"] is not None else max(1, round(20 * min(image.shape) / 512))
    return extract_anatomy(image * 255.0, recipe=config.get("recipe", "paper"), alpha=config["alpha"], border=border)


@dataclass
class AnatomySummary:
    """What a run did: counts and the failures (``(file, one-line reason)``)."""

    total: int = 0
    processed: int = 0
    skipped: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)
    suspect: list[tuple[str, str]] = field(default_factory=list)
    previous_failures: list[tuple[str, str]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures and not self.previous_failures


def _stat(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_size, st.st_mtime_ns


def _record_ok(rel, mask_rel, res, shape, stat) -> dict:
    """The manifest line of a written mask: ``ok``, or ``suspect`` with the reason."""
    record = {
        "file": rel,
        "status": "suspect" if res.suspect else "ok",
        "mask": mask_rel,
        "recipe": res.recipe,
        "vessel_fraction": round(res.vessel_fraction, 6),
        "fov_fraction": round(res.fov_fraction, 6),
        "threshold": float(res.threshold),
        "height": int(shape[0]),
        "width": int(shape[1]),
        "size": stat[0],
        "mtime_ns": stat[1],
    }
    if res.suspect:
        record["reason"] = f"{rel}: {res.suspect}"
    return record


def _record_failed(rel, reason, path: Path) -> dict:
    try:
        size, mtime = _stat(path)
    except OSError:
        size, mtime = None, None
    return {"file": rel, "status": "failed", "error": reason, "size": size, "mtime_ns": mtime}


def _die_with_parent(parent_pid: int, start_method: str) -> None:
    """End this worker process when the process that started it dies, even by SIGKILL.

    Otherwise an orphaned worker would wait forever on its task queue, or write masks that no
    manifest line records. On Linux the kernel kills the worker with its parent
    (``prctl(PR_SET_PDEATHSIG)``); on every platform a daemon thread also polls the parent pid,
    which changes when the parent dies and the worker is re-parented.
    """
    if sys.platform.startswith("linux"):
        try:
            import ctypes
            import signal

            ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL))  # 1: PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass
    parent = os.getppid()
    if start_method in ("fork", "spawn") and parent != parent_pid:  # died before the prctl took effect
        os._exit(1)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, name="vasomim-parent-watch", daemon=True).start()


def _worker_init(parent_pid: int, start_method: str) -> None:
    """Die with the parent; one thread per worker process: the processes are the parallelism."""
    _die_with_parent(parent_pid, start_method)
    try:
        import cv2

        cv2.setNumThreads(1)
    except ImportError:
        pass


def process_one(args: tuple[str, str, str, str, dict]) -> dict:
    """Worker: read one image, extract its anatomy, write the mask; never raises for bad input."""
    in_root, out_root, rel, mask_rel, params = args
    src = Path(in_root) / rel
    try:
        img = read_image(src) * 255.0
        res = anatomy_details(img, **params)
        write_png_atomic(Path(out_root) / mask_rel, res.mask)
        return _record_ok(rel, mask_rel, res, img.shape, _stat(src))
    except ImageReadError as exc:
        return _record_failed(rel, str(exc), src)
    except OSError:  # the output failed (full disk, read-only): not this image's fault, stop the run
        raise
    except Exception as exc:  # a bug or an odd file must not stop a 170k-image run
        return _record_failed(rel, f"{src}: {type(exc).__name__}: {exc}", src)


def _process_batched(in_root: Path, out_root: Path, todo: list[tuple[str, str]], cfg: AnatomyConfig):
    """GPU path: read on a thread pool, group equal shapes into batches, extract on the device."""
    from concurrent.futures import ThreadPoolExecutor

    import torch

    device = torch.device(cfg.device)

    def load(item):
        rel, mask_rel = item
        try:
            return rel, mask_rel, read_image(in_root / rel) * 255.0, None
        except ImageReadError as exc:
            return rel, mask_rel, None, str(exc)

    pending: dict[tuple[int, int], list] = {}

    def flush(shape):
        group = pending.pop(shape)
        batch = torch.from_numpy(np.stack([g[2] for g in group])[:, None]).to(device)
        results = anatomy_details(batch, recipe=cfg.recipe, alpha=cfg.alpha, border=cfg.border, sigmas=cfg.sigmas)
        for (rel, mask_rel, img, _), res in zip(group, results):
            write_png_atomic(out_root / mask_rel, res.mask)
            yield _record_ok(rel, mask_rel, res, img.shape, _stat(in_root / rel))

    with ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2)) as pool:
        for rel, mask_rel, img, err in pool.map(load, todo):
            if err is not None:
                yield _record_failed(rel, err, in_root / rel)
                continue
            pending.setdefault(img.shape, []).append((rel, mask_rel, img, None))
            if len(pending[img.shape]) >= cfg.batch_size:
                yield from flush(img.shape)
        for shape in list(pending):
            yield from flush(shape)


def run_anatomy(in_dir: str | os.PathLike, out_dir: str | os.PathLike, cfg: AnatomyConfig, progress: bool = True) -> AnatomySummary:
    """Extract the anatomy of every image under ``in_dir`` into ``out_dir`` (resumable; see module doc)."""
    from tqdm import tqdm

    in_root, out_root = Path(in_dir), Path(out_dir)
    if not in_root.is_dir():
        raise FileNotFoundError(f"{in_root}: input folder not found")
    out_root.mkdir(parents=True, exist_ok=True)
    shard = parse_shard(cfg.shard)
    files = list_images(in_root)
    if not files:
        raise ValueError(f"{in_root}: no images found ({looked_for(dicom=False)})")
    files = [f for f in files if in_shard(f, shard)]
    names = mask_names(files)
    done = read_manifest(out_root)
    summary = AnatomySummary(total=len(files))
    todo: list[tuple[str, str]] = []
    for rel in files:
        record = done.get(rel)
        if record and record.get("status") in ("ok", "suspect") and record.get("recipe", "paper") == cfg.recipe \
                and (out_root / record["mask"]).is_file():
            summary.skipped += 1
            continue
        if record and record.get("status") == "failed":
            try:
                unchanged = (record.get("size"), record.get("mtime_ns")) == _stat(in_root / rel)
            except OSError:
                unchanged = record.get("size") is None
            if unchanged:
                summary.skipped += 1
                summary.previous_failures.append((rel, record.get("error", "failed")))
                continue
        todo.append((rel, names[rel]))

    params = {"recipe": cfg.recipe, "alpha": cfg.alpha, "border": cfg.border, "sigmas": tuple(cfg.sigmas)}
    manifest = out_root / manifest_name(shard)
    bar = tqdm(total=len(todo), desc="anatomy", unit="img", disable=not progress or not todo, file=sys.stderr)
    with open(manifest, "a", encoding="utf-8") as log:
        if cfg.device.startswith("cuda"):
            records: Iterable[dict] = _process_batched(in_root, out_root, todo, cfg)
            pool = None
        else:
            workers = cfg.workers or (os.cpu_count() or 1)
            jobs = [(str(in_root), str(out_root), rel, mask_rel, params) for rel, mask_rel in todo]
            if workers > 1 and len(jobs) > 1:
                # fresh processes, not forks: forking a process whose OpenCV (or BLAS) thread pool has
                # run can leave a worker blocked on a lock held by a thread that no longer exists
                context = multiprocessing.get_context("spawn")
                pool = ProcessPoolExecutor(max_workers=min(workers, len(jobs)), mp_context=context,
                                           initializer=_worker_init,
                                           initargs=(os.getpid(), context.get_start_method()))
                records = pool.map(process_one, jobs, chunksize=max(1, min(32, len(jobs) // (4 * workers))))
            else:
                pool = None
                records = map(process_one, jobs)
        try:
            for record in records:
                log.write(json.dumps(record) + "\n")
                log.flush()
                if record["status"] in ("ok", "suspect"):
                    summary.processed += 1
                    if record["status"] == "suspect":
                        summary.suspect.append((record["file"], record["reason"]))
                        bar.write(f"suspect: {record['reason']}", file=sys.stderr)
                else:
                    summary.failures.append((record["file"], record["error"]))
                    bar.write(f"failed: {record['error']}", file=sys.stderr)
                bar.update(1)
        finally:
            if pool is not None:
                pool.shutdown(cancel_futures=True)
            bar.close()
    return summary
