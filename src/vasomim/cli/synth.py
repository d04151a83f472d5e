"""``vasomim synth``: write synthetic angiograms and their exact vessel masks as PNG files."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``synth`` subcommand to the ``vasomim`` parser."""
    parser = subparsers.add_parser(
        "synth",
        help="write synthetic angiograms with exact vessel masks",
        description=(
            "Write COUNT procedural angiogram-like images to OUT_DIR/images/synth_NNNN.png and their "
            "vessel masks (0/255) to OUT_DIR/masks/synth_NNNN.png. Image i uses seed SEED + i, so the "
            "set is reproducible; pairs already present are kept (an interrupted run resumes). "
            "The catheter and the collimator are drawn but never labelled as vessel."
        ),
    )
    parser.add_argument("out_dir", type=Path, metavar="OUT_DIR", help="dataset folder (created if needed)")
    parser.add_argument("--count", type=int, default=100, help="number of image/mask pairs (default: 100)")
    parser.add_argument("--size", type=int, default=256, help="image side in pixels, at least 32 (default: 256)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the first image (default: 0)")
    parser.add_argument("--preset", choices=("classic", "realistic"), default="classic",
                        help="classic: the original generator (default); realistic: chest anatomy, contrast "
                             "wash-in, motion blur, tuned against real frames (see BENCHMARKS.md)")
    parser.add_argument("--no-catheter", action="store_true", help="do not draw a catheter")
    parser.add_argument("--no-collimator", action="store_true", help="do not draw a collimator edge")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Write the dataset; return 0, or 2 with a one-line message for invalid arguments."""
    from vasomim.data.synthetic import MIN_SIZE, SynthConfig, write_dataset

    if args.count < 0:
        print(f"vasomim synth: --count must be >= 0, got {args.count}", file=sys.stderr)
        return 2
    if args.size < MIN_SIZE:
        print(f"vasomim synth: --size must be at least {MIN_SIZE}, got {args.size}", file=sys.stderr)
        return 2
    if args.seed < 0:
        print(f"vasomim synth: --seed must be >= 0, got {args.seed}", file=sys.stderr)
        return 2
    options = dict(size=args.size, catheter=not args.no_catheter, collimator=not args.no_collimator)
    config = SynthConfig.realistic(**options) if args.preset == "realistic" else SynthConfig(**options)
    images = write_dataset(args.out_dir, args.count, seed=args.seed, config=config)
    print(f"{len(images)} synthetic image/mask pairs of {args.size}x{args.size} in {args.out_dir}")
    return 0
