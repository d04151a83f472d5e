"""``vasomim demo``: the end-to-end study on the embedded synthetic angiograms (no download)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="run the end-to-end demo on embedded synthetic angiograms and write a report",
        description="Synthesize angiograms, extract their anatomy and report how it compares with the ground truth.",
    )
    p.add_argument("--out", default="vasomim-demo", help="output folder (default: ./vasomim-demo)")
    p.add_argument("--count", type=int, default=24, help="number of synthetic images (default 24)")
    p.add_argument("--size", type=int, default=256, help="image size in pixels (default 256)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from vasomim.engines.demo import DemoConfig, run_demo

    cfg = DemoConfig(out=args.out, count=args.count, size=args.size, seed=args.seed)
    report = run_demo(cfg, progress=not args.quiet)
    print(f"report: {report}")
    return 0
