"""Per-image metric cost: vasomim's Dice/clDice vs a set-of-coordinates clDice, in one run.

The reference writes the clDice formula of Shit et al. (2021) with Python sets of pixel
coordinates (what ``tests/test_metrics.py`` checks against). Predictions are the ground-truth masks
of ``../shared/data/cimat-coronary`` dilated once and shifted by two pixels, so that the scores are
neither 0 nor 1. Prints per-image milliseconds, the speed-up ratio and the largest difference
between the two clDice values.

    python benchmarks/bench_metrics.py
    python benchmarks/bench_metrics.py --repeat 5
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from scipy import ndimage
from skimage.morphology import skeletonize

from vasomim.data.io import read_mask
from vasomim.metrics import cldice, dice

MASKS = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "cimat-coronary" / "masks"


def reference_cldice(pred: np.ndarray, gt: np.ndarray) -> float:
    """clDice from sets of coordinates (non-empty masks)."""
    p, g = set(map(tuple, np.argwhere(pred))), set(map(tuple, np.argwhere(gt)))
    sp = set(map(tuple, np.argwhere(skeletonize(pred))))
    sg = set(map(tuple, np.argwhere(skeletonize(gt))))
    tprec, tsens = len(sp & g) / len(sp), len(sg & p) / len(sg)
    return 0.0 if tprec + tsens == 0 else 2 * tprec * tsens / (tprec + tsens)


def _per_image_ms(fn, pairs, repeat: int) -> tuple[float, list[float]]:
    start = time.perf_counter()
    for _ in range(repeat):
        values = [fn(p, g) for p, g in pairs]
    return 1000 * (time.perf_counter() - start) / (repeat * len(pairs)), values


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--masks", type=Path, default=MASKS, help="folder of ground-truth masks")
    parser.add_argument("--repeat", type=int, default=3, help="passes over the masks to time")
    args = parser.parse_args()

    gts = [read_mask(p) for p in sorted(args.masks.glob("*.png"))]
    if not gts:
        raise SystemExit(f"{args.masks}: no .png masks found")
    preds = [np.roll(ndimage.binary_dilation(g), 2, axis=1) for g in gts]
    pairs = list(zip(preds, gts))

    t_dice, _ = _per_image_ms(dice, pairs, args.repeat)
    t_ours, ours = _per_image_ms(cldice, pairs, args.repeat)
    t_ref, ref = _per_image_ms(reference_cldice, pairs, args.repeat)
    print(f"{len(pairs)} masks of {gts[0].shape[0]}x{gts[0].shape[1]}, {args.repeat} passes")
    print(f"dice            {t_dice:8.3f} ms/image")
    print(f"cldice (ours)   {t_ours:8.3f} ms/image  ({t_ours / t_dice:.1f}x dice)")
    print(f"cldice (sets)   {t_ref:8.3f} ms/image  ours is {t_ref / t_ours:.1f}x faster")
    print(f"max |ours - sets| = {max(abs(a - b) for a, b in zip(ours, ref)):.2e}, "
          f"mean clDice {np.mean(ours):.4f}")


if __name__ == "__main__":
    main()
