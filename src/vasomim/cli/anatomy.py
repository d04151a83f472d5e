"""``vasomim anatomy IN_DIR OUT_DIR``: vessel masks for a tree of angiograms (VasoMIM stage 1)."""

from __future__ import annotations

import argparse
import sys


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "anatomy",
        help="extract vascular anatomy masks (Sato vesselness, field of view, threshold, components) for a folder tree",
        description=(
            "Write a 0/255 PNG vessel mask per image of IN_DIR (png/jpg/bmp/tif, any mode) into a mirrored "
            "tree under OUT_DIR, plus manifest.jsonl. Re-running skips what is done; --shard i/n splits a "
            "corpus between independent jobs. Exit status 1 if any file failed."
        ),
        epilog="example: vasomim anatomy frames/ anatomy/ --alpha 92 --border 20 --workers 8 --shard 0/4",
    )
    p.add_argument("in_dir", help="folder of angiograms (searched recursively)")
    p.add_argument("out_dir", help="output folder for masks and manifest.jsonl")
    p.add_argument("--config", help="YAML file with anatomy parameters (keys of AnatomyConfig)")
    p.add_argument("--recipe", choices=("fov", "paper", "official"),
                   help="fov: field-of-view aware (default); paper: the paper's pipeline; official: the authors' code")
    p.add_argument("--alpha", type=float, help="percentile threshold of the vesselness map (default 92)")
    p.add_argument("--border", type=int, help="pixels zeroed at the map border (default 20, for 512x512)")
    p.add_argument("--sigmas", type=lambda s: tuple(float(x) for x in s.split(",")), help="scales, e.g. 1,2,3,4")
    p.add_argument("--workers", type=int, help="CPU worker processes (default: one per core)")
    p.add_argument("--device", help="cpu (default) or cuda[:k] for batched GPU extraction")
    p.add_argument("--batch-size", type=int, help="images per GPU batch (default 16)")
    p.add_argument("--shard", help="i/n: only shard i of n (deterministic by file path)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from vasomim.config import build_config, validation_summary
    from vasomim.engines.anatomy import AnatomyConfig, run_anatomy

    values = {
        k: v
        for k, v in dict(
            recipe=args.recipe, alpha=args.alpha, border=args.border, sigmas=args.sigmas, workers=args.workers,
            device=args.device, batch_size=args.batch_size, shard=args.shard,
        ).items()
        if v is not None
    }
    try:
        cfg = build_config(AnatomyConfig, args.config, **values)
        summary = run_anatomy(args.in_dir, args.out_dir, cfg, progress=not args.quiet)
    except ValidationError as exc:
        print(f"error: invalid anatomy config: {validation_summary(exc)}", file=sys.stderr)
        return 2
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}".splitlines()[0], file=sys.stderr)
        return 2
    print(
        f"anatomy: {summary.total} images, {summary.processed} written, {summary.skipped} already done, "
        f"{len(summary.failures)} failed, {len(summary.suspect)} suspect" + (f", {len(summary.previous_failures)} failed before (unchanged)" if summary.previous_failures else "")
    )
    for _, reason in summary.suspect:
        print(f"  suspect: {reason}", file=sys.stderr)
    for _, reason in summary.failures + summary.previous_failures:
        print(f"  failed: {reason}", file=sys.stderr)
    return 0 if summary.ok else 1
