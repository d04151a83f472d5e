"""``vasomim predict CHECKPOINT INPUT... --out DIR``: vessel masks for new angiograms."""

from __future__ import annotations

import argparse
import sys


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "predict",
        help="segment images, folders or DICOM cines with a fine-tuned checkpoint",
        description=(
            "Segment every input with a checkpoint written by `vasomim finetune`: image files, folders (searched "
            "recursively) and DICOM files (every frame of a cine is an image; run.dcm frame 12 -> run_f012.png). "
            "Each image keeps its aspect ratio: it is resized by the checkpoint's fixed scale, run in overlapping "
            "windows of the training size (blended), and the masks are written at each input's own "
            "resolution as 0/255 PNGs under OUT/masks, optionally with probability maps (OUT/prob) and overlays "
            "(OUT/overlay). Unreadable files are named and skipped; exit status 1 at the end if any failed."
        ),
        epilog="example: vasomim predict runs/ft/seed0/fold0/best.pth frames/ cine.dcm --out seg/ --prob --overlay",
    )
    p.add_argument("checkpoint", help="best.pth / last.pth written by `vasomim finetune`")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, folders or DICOM files")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--threshold", type=float, default=0.5, help="probability threshold of the masks (default 0.5)")
    p.add_argument("--prob", action="store_true", help="also write probability maps (OUT/prob)")
    p.add_argument("--prob-bits", type=int, choices=(8, 16), default=8, help="bit depth of the probability PNGs")
    p.add_argument("--overlay", action="store_true", help="also write overlays of the mask on the image (OUT/overlay)")
    p.add_argument("--mode", choices=("native", "resize"), default="native",
                   help="native: keep the aspect ratio, windows of the training size (default); "
                        "resize: squash every image to the training square (the older behaviour)")
    p.add_argument("--tta", action="store_true", help="average with the horizontally flipped image")
    p.add_argument("--batch-size", type=int, default=8, help="images read per step")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, ...")
    p.add_argument("--workers", type=int, default=0, help="reader processes")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from vasomim.engines.predict import predict_paths

    try:
        summary = predict_paths(args.checkpoint, args.inputs, args.out, threshold=args.threshold, prob=args.prob,
                                prob_bits=args.prob_bits, overlay=args.overlay, batch_size=args.batch_size,
                                device=args.device, workers=args.workers, progress=not args.quiet,
                                mode=args.mode, tta=args.tta)
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    for failure in summary.failures:
        print(f"failed: {failure}", file=sys.stderr)
    print(f"predict: {len(summary.written)} mask(s) written to {args.out}/masks, {len(summary.failures)} failed")
    return 1 if summary.failures else 0
