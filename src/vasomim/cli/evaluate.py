"""``vasomim evaluate``: per-image DSC and clDice of predicted masks or of a fine-tuned checkpoint."""

from __future__ import annotations

import argparse
import sys


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate",
        help="score segmentations (DSC, clDice) against reference masks",
        description=(
            "Score predicted masks against reference masks at the original resolution: either a folder of "
            "predictions (--pred; any 0/255 or 0/1 masks, e.g. the anatomy masks of `vasomim anatomy` for the "
            "Frangi baseline) matched to --gt by relative path and stem, or a fine-tuned --checkpoint run on a "
            "labelled --data source. Prints mean ± std over images; with --out writes per_image.csv and "
            "summary.json. --compare A B pairs two such per_image.csv (or the folders holding them) image by "
            "image: A minus B, mean ± std, share of images A wins, Wilcoxon signed-rank p (with --out: "
            "compare.json). Exit status 1 if any image could not be scored (missing prediction, unreadable "
            "file, size mismatch), 2 on a usage error."
        ),
        epilog=(
            "examples: vasomim evaluate --pred anatomy/ --gt data/masks --out eval/frangi\n"
            "          vasomim evaluate --checkpoint runs/ft/seed0/fold0/best.pth --data data/ --out eval/ft\n"
            "          vasomim evaluate --compare eval/ft eval/frangi"
        ),
    )
    p.add_argument("--pred", help="folder of predicted masks")
    p.add_argument("--gt", help="folder of reference masks (with --pred)")
    p.add_argument("--checkpoint", help="fine-tuned checkpoint (best.pth) to run on --data")
    p.add_argument("--data", help="labelled data folder or YAML spec (with --checkpoint)")
    p.add_argument("--compare", nargs=2, metavar=("A", "B"),
                   help="paired per-image differences A minus B of two per_image.csv files or their folders")
    p.add_argument("--out", help="write per_image.csv and summary.json here (with --compare: compare.json)")
    p.add_argument("--threshold", type=float, default=0.5, help="probability threshold (with --checkpoint)")
    p.add_argument("--batch-size", type=int, default=8, help="images per forward pass (with --checkpoint)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, ... (with --checkpoint)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from vasomim.engines.evaluate import evaluate_checkpoint, evaluate_folders, format_table, summarize_rows, write_report

    folders, ckpt = args.pred is not None or args.gt is not None, args.checkpoint is not None or args.data is not None
    if args.compare is not None:
        if folders or ckpt:
            print("error: --compare takes two score tables and no --pred/--gt/--checkpoint/--data", file=sys.stderr)
            return 2
        return _compare(args)
    if folders == ckpt or (folders and not (args.pred and args.gt)) or (ckpt and not (args.checkpoint and args.data)):
        print("error: give either --pred DIR --gt DIR, or --checkpoint CKPT --data DIR_OR_SPEC, or --compare A B",
              file=sys.stderr)
        return 2
    try:
        if folders:
            result = evaluate_folders(args.pred, args.gt)
            extra = {"pred": args.pred, "gt": args.gt}
        else:
            result = evaluate_checkpoint(args.checkpoint, args.data, args.batch_size, args.device,
                                         threshold=args.threshold, progress=not args.quiet)
            extra = {"checkpoint": args.checkpoint, "data": args.data, "threshold": args.threshold}
    except (ValueError, FileNotFoundError, NotADirectoryError) as exc:
        print(f"error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    for failure in result.failures:
        print(f"failed: {failure}", file=sys.stderr)
    if result.rows:
        print(format_table(summarize_rows(result.rows), n_label=f"{len(result.rows)} images"))
    else:
        print("no image could be scored")
    if args.out:
        write_report(result, args.out, extra)
        print(f"reports: {args.out}/per_image.csv, {args.out}/summary.json")
    if result.failures:
        print(f"{len(result.failures)} image(s) not scored", file=sys.stderr)
        return 1
    return 0


def _compare(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from vasomim.data.io import write_text_atomic
    from vasomim.engines.evaluate import compare_per_image, format_comparison

    try:
        result = compare_per_image(*args.compare)
    except ValueError as exc:
        print(f"error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    print(format_comparison(result))
    if args.out:
        out = Path(args.out) / "compare.json"
        write_text_atomic(out, json.dumps(result, indent=2) + "\n")
        print(f"report: {out}")
    return 0
