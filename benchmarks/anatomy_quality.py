"""Anatomy quality: every recipe scored against the ground truth of the 40 labelled CIMAT frames.

For each recipe (``fov``, ``paper``, ``official``) the masks of ``vasomim.anatomy.extract_anatomy``
are scored with DSC and clDice (``vasomim.metrics``) against the hand-traced masks: mean ± std, min,
and the number of frames below 10 and below 40 DSC; also the suspect count and the time per frame.
Then the ``official`` recipe is compared with a transcription of the original ``frangi_filter.py``
(scikit-image ``sato`` on the uint8 image, the map truncated to uint8, border, percentile, Python
stack flood fill) on every real frame of ``../shared/data``: Dice per frame, min and mean.

    python benchmarks/anatomy_quality.py                 # CIMAT border 12 (300 px frames), real frames border 20
    python benchmarks/anatomy_quality.py --json out.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from bench_anatomy import reference_flood_fill
from vasomim.anatomy import RECIPES, anatomy_details, extract_anatomy
from vasomim.data.io import IMAGE_SUFFIXES, read_image, read_mask
from vasomim.metrics import cldice, dice

SHARED = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"


def original_code_mask(img255: np.ndarray, alpha: float = 92.0, border: int = 20) -> np.ndarray:
    """The authors' frangi_filter.py, step by step (uint8 image, uint8 map, stack flood fill)."""
    from skimage.filters import sato

    v = sato(img255.astype(np.uint8), sigmas=[1, 2, 3, 4], black_ridges=True, mode="reflect", cval=0).astype(np.uint8)
    v[:border], v[-border:], v[:, :border], v[:, -border:] = 0, 0, 0, 0
    kept = np.where(v >= np.percentile(v, alpha), v, 0)
    if not kept.any():
        return np.zeros(v.shape, dtype=bool)
    seed = np.unravel_index(np.argmax(kept), kept.shape)
    return reference_flood_fill(kept > 0, (int(seed[0]), int(seed[1])))


def score_recipes(root: Path, border: int) -> dict:
    pairs = []
    for p in sorted((root / "images").iterdir()):
        if p.suffix.lower() in IMAGE_SUFFIXES:
            pairs.append((p.name, np.round(read_image(p) * 255.0), read_mask(root / "masks" / p.name)))
    out = {}
    for name in RECIPES:
        d, c, suspect, t = [], [], 0, 0.0
        for _, img, gt in pairs:
            t0 = time.perf_counter()
            res = anatomy_details(img, recipe=name, border=border)
            t += time.perf_counter() - t0
            d.append(100 * dice(res.mask, gt))
            c.append(100 * cldice(res.mask, gt))
            suspect += res.suspect is not None
        d, c = np.array(d), np.array(c)
        out[name] = {"dice_mean": d.mean(), "dice_std": d.std(), "dice_min": d.min(), "cldice_mean": c.mean(),
                     "cldice_std": c.std(), "cldice_min": c.min(), "below_10": int((d < 10).sum()),
                     "below_40": int((d < 40).sum()), "suspect": suspect, "ms_per_frame": 1000 * t / len(pairs),
                     "n": len(pairs), "per_image": dict(zip([n for n, _, _ in pairs], d.round(2).tolist()))}
    return out


def official_agreement(border_for) -> dict:
    files = sorted(p for p in SHARED.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and "masks" not in p.parts)
    scores = {}
    for p in files:
        img = np.round(read_image(p) * 255.0)
        b = border_for(img)
        scores[str(p.relative_to(SHARED))] = dice(extract_anatomy(img, recipe="official", border=b), original_code_mask(img, border=b))
    return scores


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--border", type=int, default=12, help="border for the 300 px CIMAT frames")
    ap.add_argument("--json", help="write every figure (and per-frame DSC) here")
    args = ap.parse_args()
    root = SHARED / "cimat-coronary"
    if not root.is_dir():
        raise SystemExit(f"{root} not found: the labelled CIMAT frames are needed")
    res = score_recipes(root, args.border)
    print(f"recipes on the {res['fov']['n']} labelled CIMAT frames (border {args.border}):\n")
    print("| recipe | DSC (%) | DSC min | < 10 DSC | < 40 DSC | clDice (%) | clDice min | suspect | ms/frame |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, r in res.items():
        print(f"| {name} | {r['dice_mean']:.2f} ± {r['dice_std']:.2f} | {r['dice_min']:.2f} | {r['below_10']} | "
              f"{r['below_40']} | {r['cldice_mean']:.2f} ± {r['cldice_std']:.2f} | {r['cldice_min']:.2f} | "
              f"{r['suspect']} | {r['ms_per_frame']:.1f} |")
    agree = official_agreement(lambda img: 12 if min(img.shape) < 400 else 20)
    vals = np.array(list(agree.values()))
    print(f"\nofficial recipe vs the original code's pipeline on {len(vals)} real frames: "
          f"Dice min {vals.min():.4f}, mean {vals.mean():.4f}, frames below 0.99: {(vals < 0.99).sum()}")
    if args.json:
        Path(args.json).write_text(json.dumps({"recipes": res, "official_vs_original": agree}, indent=1))


if __name__ == "__main__":
    main()
