"""Anatomy extraction: the reference pipeline vs vasomim, side by side in one run.

Reference (as the original VasoMIM code does it): ``skimage.filters.sato`` on the 0-255 image, the
border zeroed, the 92nd percentile, and a Python stack-based 4-connected flood fill from the argmax.
Ours: :func:`vasomim.anatomy.extract_anatomy` with the ``paper`` recipe on NumPy arrays (OpenCV
separable filters), in one process and in ``--workers`` processes (what ``vasomim anatomy --workers N``
does), each against the reference run the same way (like for like, per core), and the batched
torch path (CPU here; CUDA with ``--device cuda``).  Then the default ``fov`` recipe against the
``paper`` recipe, interleaved image by image.

Prints per-image times, the speed-up ratios and the mean Dice between the reference masks and ours.
The reference keeps the float map (it does not truncate to uint8) so that the masks are comparable.

    python benchmarks/bench_anatomy.py                    # real 512x512 frames + 16 synthetic 512x512
    python benchmarks/bench_anatomy.py --synthetic 32 --batch-size 16
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from vasomim.anatomy import DEFAULT_BORDER, extract_anatomy, vesselness
from vasomim.data.io import IMAGE_SUFFIXES, read_image

SHARED = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "xca-unlabeled"


def reference_flood_fill(binary: np.ndarray, seed: tuple[int, int]) -> np.ndarray:
    """The original code's region growing: an explicit Python stack over 4-neighbours."""
    h, w = binary.shape
    out = np.zeros_like(binary, dtype=bool)
    stack = [seed]
    while stack:
        r, c = stack.pop()
        if r < 0 or r >= h or c < 0 or c >= w or out[r, c] or not binary[r, c]:
            continue
        out[r, c] = True
        stack.extend(((r + 1, c), (r - 1, c), (r, c + 1), (r, c - 1)))
    return out


def reference_anatomy(img255: np.ndarray, alpha=92.0, border=DEFAULT_BORDER) -> np.ndarray:
    from skimage.filters import sato

    v = sato(img255.astype(np.float64), sigmas=[1, 2, 3, 4], black_ridges=True, mode="reflect")
    v[:border], v[-border:], v[:, :border], v[:, -border:] = 0, 0, 0, 0
    t = np.percentile(v, alpha)
    binary = (v >= t) & (v > 0)
    if v.max() <= 0:
        return np.zeros_like(binary)
    seed = np.unravel_index(np.argmax(v), v.shape)
    return reference_flood_fill(binary, (int(seed[0]), int(seed[1])))


def dice(a: np.ndarray, b: np.ndarray) -> float:
    s = a.sum() + b.sum()
    return 1.0 if s == 0 else 2.0 * np.logical_and(a, b).sum() / s


def load_images(n_synth: int, size: int) -> list[tuple[str, np.ndarray]]:
    images = []
    if SHARED.is_dir():
        for p in sorted(SHARED.iterdir()):
            if p.suffix.lower() in IMAGE_SUFFIXES:
                img = np.round(read_image(p) * 255).astype(np.float32)
                if img.shape == (size, size):
                    images.append((p.name, img))
    else:
        print(f"(real frames skipped: {SHARED} not found)")
    if n_synth:
        from vasomim.data.synthetic import synthesize

        for i in range(n_synth):
            img, _ = synthesize(seed=1000 + i, size=size)
            images.append((f"synthetic_{i:03d}", img.astype(np.float32)))
    return images


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--synthetic", type=int, default=16, help="number of synthetic 512x512 images")
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--workers", type=int, default=2, help="worker processes for the multi-process run")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: leave default)")
    args = ap.parse_args()

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    images = load_images(args.synthetic, args.size)
    if not images:
        raise SystemExit("no images to benchmark")
    names = [n for n, _ in images]
    stack = np.stack([im for _, im in images])

    # reference, one image at a time, and the same code in worker processes (like for like)
    t0 = time.perf_counter()
    ref_masks, ref_times = [], []
    for _, im in images:
        t = time.perf_counter()
        ref_masks.append(reference_anatomy(im))
        ref_times.append(time.perf_counter() - t)
    t_ref = time.perf_counter() - t0

    from concurrent.futures import ProcessPoolExecutor

    import os

    from vasomim.engines.anatomy import _worker_init

    init = {"initializer": _worker_init, "initargs": (os.getpid(), "fork")}
    with ProcessPoolExecutor(args.workers, **init) as pool:
        list(pool.map(reference_anatomy, [images[0][1]] * args.workers))  # start the workers
        t0 = time.perf_counter()
        list(pool.map(reference_anatomy, [im for _, im in images], chunksize=2))
        t_ref_pool = time.perf_counter() - t0

    # ours, the paper recipe and the fov recipe, interleaved image by image (one process), and the
    # vesselness map alone (what every recipe shares)
    np_masks, t_np, t_fov, t_map = [], 0.0, 0.0, 0.0
    for _, im in images:
        t = time.perf_counter()
        np_masks.append(extract_anatomy(im, recipe="paper"))
        t_np += time.perf_counter() - t
        t = time.perf_counter()
        extract_anatomy(im, recipe="fov")
        t_fov += time.perf_counter() - t
        t = time.perf_counter()
        vesselness(im)
        t_map += time.perf_counter() - t

    # ours in worker processes (as `vasomim anatomy --workers N`)
    with ProcessPoolExecutor(args.workers, **init) as pool:
        list(pool.map(paper_recipe, [images[0][1]] * args.workers))  # start the workers
        t0 = time.perf_counter()
        pool_masks = list(pool.map(paper_recipe, [im for _, im in images], chunksize=2))
        t_pool = time.perf_counter() - t0

    # ours, torch batched path (warm-up once on a small batch: kernel caches, allocator)
    dev = torch.device(args.device)
    extract_anatomy(torch.from_numpy(stack[:1, None]).to(dev), recipe="paper")
    if dev.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    torch_masks = []
    for i in range(0, len(stack), args.batch_size):
        batch = torch.from_numpy(stack[i : i + args.batch_size, None]).to(dev)
        torch_masks.extend(extract_anatomy(batch, recipe="paper")[:, 0].cpu().numpy())
    if dev.type == "cuda":
        torch.cuda.synchronize()
    t_torch = time.perf_counter() - t0

    n = len(images)
    w = args.workers
    print(f"{'image':<28}{'reference s':>12}{'dice(np)':>10}{'dice(torch)':>12}")
    for name, tr, rm, nm, tm in zip(names, ref_times, ref_masks, np_masks, torch_masks):
        print(f"{name:<28}{tr:>12.3f}{dice(rm, nm):>10.4f}{dice(rm, tm):>12.4f}")
    d_np = np.mean([dice(a, b) for a, b in zip(ref_masks, np_masks)])
    d_t = np.mean([dice(a, b) for a, b in zip(ref_masks, torch_masks)])
    d_p = np.mean([dice(a, b) for a, b in zip(ref_masks, pool_masks)])
    print()
    print(f"images: {n} at {args.size}x{args.size}; torch threads {torch.get_num_threads()}; device {dev}")
    print("paper recipe against the reference, like for like (same number of processes on each side):")
    print(f"  reference, 1 process:       {1000 * t_ref / n:8.1f} ms/image")
    print(f"  vasomim,   1 process:       {1000 * t_np / n:8.1f} ms/image  speed-up {t_ref / t_np:6.1f}x  mean Dice {d_np:.4f}")
    print(f"  reference, {w} processes:     {1000 * t_ref_pool / n:8.1f} ms/image")
    print(f"  vasomim,   {w} processes:     {1000 * t_pool / n:8.1f} ms/image  speed-up {t_ref_pool / t_pool:6.1f}x  mean Dice {d_p:.4f}")
    print(f"  vasomim torch batched (batch {args.batch_size}): {1000 * t_torch / n:6.1f} ms/image  speed-up {t_ref / t_torch:6.1f}x "
          f"over 1 reference process  mean Dice {d_t:.4f}")
    print(f"fov recipe (default) against the paper recipe, interleaved, 1 process: {1000 * t_fov / n:.1f} vs "
          f"{1000 * t_np / n:.1f} ms/image = {t_fov / t_np:.2f}x")
    print(f"  the vesselness map alone: {1000 * t_map / n:.1f} ms/image; threshold, field of view, components and "
          f"the suspect check: paper +{1000 * (t_np - t_map) / n:.1f}, fov +{1000 * (t_fov - t_map) / n:.1f} ms/image")


def paper_recipe(img: np.ndarray) -> np.ndarray:
    return extract_anatomy(img, recipe="paper")


if __name__ == "__main__":
    main()
