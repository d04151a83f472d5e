"""Data pipeline throughput: the pre-training input pipeline with 0, 1 and 2 DataLoader workers.

The pipeline is exactly what pre-training runs: :class:`~vasomim.data.datasets.PretrainDataset`
over 512x512 8-bit PNG images and their 0/255 anatomy masks, each sample read from disk, cropped
jointly (RandomResizedCrop to 224, bicubic image / nearest mask), flipped, normalised and made into
tensors, then batched by the DataLoader.  Images come from :mod:`vasomim.data.synthetic` and are
written into a temporary folder (read back through the OS page cache, as a training epoch would
after the first).

Prints, per worker count: steady-state images/s (the first batch, which includes starting the
workers, is timed separately), the ratio to ``num_workers=0``, and images/s per core (a loader with
``k`` workers keeps ``k`` cores busy; ``num_workers=0`` uses the main process's one).  The target:
at least 60 img/s per core, which feeds a ViT-B/16 at 500 img/s per GPU from 8 of a node's 16 cores.
A per-stage breakdown in one process shows where the time goes.

    python benchmarks/bench_data.py                  # 96 images, 6 epochs' worth of samples
    python benchmarks/bench_data.py --images 64 --samples 1024 --batch-size 64
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from vasomim.data.datasets import PretrainDataset
from vasomim.data.sources import FolderSource
from vasomim.data.synthetic import write_dataset
from vasomim.data.transforms import TransformConfig, build_transform

TARGET_PER_CORE = 60.0


def loader_rate(dataset: PretrainDataset, workers: int, batch_size: int) -> tuple[float, float]:
    """(steady-state images/s excluding the first batch, seconds to the first batch)."""
    torch.manual_seed(0)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=workers, drop_last=True)
    t0 = time.perf_counter()
    it = iter(loader)
    next(it)
    t_first = time.perf_counter()
    n = 0
    for batch in it:
        n += batch["image"].shape[0]
    elapsed = time.perf_counter() - t_first
    return n / elapsed, t_first - t0


def stage_times(items, transform, repeats: int) -> dict[str, float]:
    """Milliseconds per sample of each stage, in this process."""
    rng = np.random.default_rng(0)
    sel = [items[i % len(items)] for i in range(repeats)]
    out = {}
    t = time.perf_counter()
    images = [it.load_image() for it in sel]
    out["read image (PNG -> float32)"] = time.perf_counter() - t
    t = time.perf_counter()
    masks = [it.load_mask(im.shape) for it, im in zip(sel, images)]
    out["read mask (PNG -> bool)"] = time.perf_counter() - t
    t = time.perf_counter()
    for im, m in zip(images, masks):
        transform(im, m, rng)
    out["crop 224 + flip + normalise + tensors"] = time.perf_counter() - t
    return {k: 1000 * v / repeats for k, v in out.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=96, help="distinct 512x512 images written")
    ap.add_argument("--samples", type=int, default=576, help="samples per measured epoch (images are cycled)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    args = ap.parse_args()
    torch.set_num_threads(1)
    load = os.getloadavg()[0]
    print(f"{os.cpu_count()} CPU cores, load average {load:.2f} at start (other processes share these cores)")

    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        write_dataset(tmp, args.images, size=512, seed=0, progress=False)
        print(f"wrote {args.images} synthetic 512x512 PNG pairs in {time.perf_counter() - t:.1f} s")
        src = FolderSource(Path(tmp) / "images", Path(tmp) / "masks")
        items = [src[i % len(src)] for i in range(args.samples)]
        transform = build_transform(TransformConfig(size=224), train=True)
        dataset = PretrainDataset(items, transform)

        print("\nper-stage cost in one process (ms/sample):")
        stages = stage_times(src.items, transform, repeats=min(args.samples, 128))
        for name, ms in stages.items():
            print(f"  {name:40s} {ms:6.2f}")
        print(f"  {'total':40s} {sum(stages.values()):6.2f}  (= {1000 / sum(stages.values()):.0f} img/s/core)")

        print(f"\nDataLoader, batch {args.batch_size}, {args.samples} samples per epoch, steady state:")
        print(f"  {'workers':>7s} {'img/s':>8s} {'vs 0':>6s} {'cores':>5s} {'img/s/core':>10s} {'first batch':>11s}")
        base = None
        for w in args.workers:
            rate, first = loader_rate(dataset, w, args.batch_size)
            base = base or rate
            cores = max(w, 1)
            flag = "ok" if rate / cores >= TARGET_PER_CORE else f"below {TARGET_PER_CORE:.0f}"
            print(f"  {w:7d} {rate:8.1f} {rate / base:6.2f} {cores:5d} {rate / cores:10.1f} {first:10.2f}s  {flag}")


if __name__ == "__main__":
    main()
