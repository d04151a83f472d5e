"""True geometry on the 40 labelled CIMAT frames: a frame placed inside a larger, non-square canvas
must get the same mask, inside its own region, as the frame alone.

For every frame, two canvases with median-grey margins: 300x480 (the frame 120 px from the left)
and 420x300 (the frame 77 px from the top): offsets on neither the 16-px patch grid nor the
window grid. The model segments the frame alone and each canvas with ``vasomim.segment``; the
script prints the Dice agreement of the masks inside the frame's region (mean, min, frames below
0.98) and, for reference, each mask's Dice against the hand-traced label.

    python benchmarks/geometry.py                          # the shipped vasomim-cimat model
    python benchmarks/geometry.py --model runs/ft/seed0/fold0/last.pth --tta
    python benchmarks/geometry.py --model runs/ft/seed0/fold0/last.pth --fold 0   # its held-out frames
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

import vasomim
from vasomim.data.io import read_image, read_mask
from vasomim.engines.finetune import kfold_splits, labelled_items
from vasomim.metrics import dice

SHARED = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "cimat-coronary"
CANVASES = {"300x480 (+120 px left)": ((300, 480), (0, 120)), "420x300 (+77 px top)": ((420, 300), (77, 0))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="vasomim-cimat", help="checkpoint, model folder or shipped name")
    ap.add_argument("--data", default=str(SHARED), help="labelled folder (images/ + masks/)")
    ap.add_argument("--tta", action="store_true", help="flip TTA")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--fold", type=int, default=None,
                    help="only the frames this fold of `vasomim finetune` holds out (with --folds, --split-seed)")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--split-seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    root = Path(args.data)
    if not (root / "images").is_dir():
        raise SystemExit(f"{root}: no images/ folder (the shared CIMAT set is not here)")
    model = vasomim.load_model(args.model, device="cpu")
    items = labelled_items(root)
    if args.fold is not None:
        items = [items[i] for i in kfold_splits(len(items), args.folds, args.split_seed)[args.fold][1]]
    agree: dict[str, list[float]] = {k: [] for k in CANVASES}
    truth_alone, truth_canvas = [], {k: [] for k in CANVASES}
    t0 = time.perf_counter()
    for item in items:
        image = read_image(item.image_path)
        label = read_mask(item.mask_path)
        h, w = image.shape
        _, alone = vasomim.segment(model, image, tta=args.tta)
        truth_alone.append(dice(alone, label))
        for key, ((H, W), (top, left)) in CANVASES.items():
            canvas = np.full((H, W), np.median(image), np.float32)
            canvas[top:top + h, left:left + w] = image
            _, mask = vasomim.segment(model, canvas, tta=args.tta)
            inside = mask[top:top + h, left:left + w]
            agree[key].append(dice(inside, alone))
            truth_canvas[key].append(dice(inside, label))
    print(f"model {args.model}, {len(items)} frames, tta={args.tta}, {time.perf_counter() - t0:.0f} s")
    print(f"{'canvas':<24} {'agreement mean':>14} {'min':>7} {'< 0.98':>7} {'DSC vs label':>13}")
    print(f"{'the frame alone':<24} {'':>14} {'':>7} {'':>7} {100 * np.mean(truth_alone):>12.2f}%")
    for key in CANVASES:
        a = np.array(agree[key])
        print(f"{key:<24} {a.mean():>14.4f} {a.min():>7.4f} {(a < 0.98).sum():>7d} "
              f"{100 * np.mean(truth_canvas[key]):>12.2f}%")


if __name__ == "__main__":
    main()
