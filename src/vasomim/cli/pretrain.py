"""``vasomim pretrain``: VasoMIM (or MAE) pre-training of a ViT on unlabelled angiograms."""

from __future__ import annotations

import argparse
import json
import os
import sys


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "pretrain",
        help="pre-train a ViT with anatomy-guided masking and the consistency loss (VasoMIM)",
        description=(
            "Pre-train an MAE with anatomy-guided masking and the anatomical consistency loss. Settings come "
            "from a YAML config (a path, or a shipped name such as pretrain/tiny_cpu), then the --images/--anatomy/--out shortcuts, then "
            "key=value overrides. Multi-GPU: torchrun --nproc_per_node=N --no-python vasomim pretrain ..."
        ),
        epilog=(
            "example: vasomim pretrain --config pretrain/vasomim_vit_b16 --images frames/ "
            "--anatomy anatomy/ --out runs/vasomim consistency.segmentor=runs/seg/segmentor.pth"
        ),
    )
    p.add_argument("overrides", nargs="*", help="config overrides key.sub=value (e.g. epochs=100 masking.beta_E=1)")
    p.add_argument("--config", help="YAML config (keys of PretrainConfig), e.g. pretrain/tiny_cpu")
    p.add_argument("--images", help="images root that `vasomim anatomy` read (data.images)")
    p.add_argument("--anatomy", help="anatomy folder holding manifest.jsonl (data.anatomy)")
    p.add_argument("--out", help="run folder (out)")
    p.add_argument("--resume", action="store_true",
                   help="continue from OUT/checkpoint-last.pth (a changed model or image size is refused; other "
                   "changes are logged in log.jsonl with the epoch they apply from)")
    p.add_argument("--overwrite", action="store_true", help="delete the run already in OUT and start anew")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from vasomim.config import build_config
    from vasomim.engines.pretrain import PretrainConfig, pretrain

    data = {k: v for k, v in dict(images=args.images, anatomy=args.anatomy).items() if v is not None}
    values = {**({"data": data} if data else {}), **({"out": args.out} if args.out else {})}
    try:
        cfg = build_config(PretrainConfig, args.config, args.overrides, **values)
        summary = pretrain(cfg, resume=args.resume, progress=not args.quiet, overwrite=args.overwrite)
    except (ValidationError, ValueError, FileNotFoundError) as exc:
        print(f"error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    if os.environ.get("RANK", "0") == "0":
        print(json.dumps(summary, indent=2))
    return 0
