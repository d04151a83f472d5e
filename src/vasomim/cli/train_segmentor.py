"""``vasomim train-segmentor``: UNeXt-S on the anatomy pseudo-labels (the consistency segmentor)."""

from __future__ import annotations

import argparse
import json
import sys


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train-segmentor",
        help="train the UNeXt-S consistency segmentor on anatomy masks",
        description=(
            "Train UNeXt-S on the masks written by `vasomim anatomy` (0.5 BCE + 0.5 (1 - Dice), Adam, poly decay), "
            "save segmentor.pth and report Dice against the pseudo-labels of a held-out part."
        ),
        epilog="example: vasomim train-segmentor --images frames/ --anatomy anatomy/ --out runs/seg epochs=50",
    )
    p.add_argument("overrides", nargs="*", help="config overrides key=value (e.g. epochs=50 img_size=224)")
    p.add_argument("--config", help="YAML config (keys of SegmentorConfig), e.g. segmentor/default")
    p.add_argument("--images", help="images root that `vasomim anatomy` read")
    p.add_argument("--anatomy", help="anatomy folder (holds manifest.jsonl)")
    p.add_argument("--out", help="output folder")
    p.add_argument("--resume", action="store_true", help="continue from OUT/last.pth")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from vasomim.config import build_config
    from vasomim.engines.segmentor import SegmentorConfig, train_segmentor

    values = {k: v for k, v in dict(images=args.images, anatomy=args.anatomy, out=args.out).items() if v is not None}
    try:
        cfg = build_config(SegmentorConfig, args.config, args.overrides, **values)
        summary = train_segmentor(cfg, resume=args.resume, progress=not args.quiet)
    except (ValidationError, ValueError, FileNotFoundError) as exc:
        print(f"error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=2))
    return 0
