"""``vasomim data check SPEC_OR_DIR``: what a data source holds, and every file that will fail."""

from __future__ import annotations

import argparse
import json
import sys


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="inspect data sources (data check)", description="Inspect data sources.")
    data_sub = p.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    c = data_sub.add_parser(
        "check",
        help="read every image and mask of a source; report counts, sizes, modes, mask coverage and failures",
        description=(
            "Read every item of SPEC_OR_DIR exactly as training will and report the item count, image sizes, "
            "file formats and modes, mask coverage, listing warnings (images without masks, ...) and every file "
            "that fails, with its reason. SPEC_OR_DIR is a folder (nnU-Net, ARCADE, images/ + masks/, or a plain "
            "folder of images or DICOM files) or a YAML data spec. Exit status 1 if any file fails, 2 if the "
            "source itself cannot be listed."
        ),
        epilog="example: vasomim data check data/cimat-coronary --json report.json",
    )
    c.add_argument("spec", metavar="SPEC_OR_DIR", help="data folder or YAML data spec")
    c.add_argument("--workers", type=int, help="reader threads (default: up to 8, one per core)")
    c.add_argument("--json", dest="json_path", metavar="FILE", help="also write the report as JSON to FILE")
    c.add_argument("--quiet", action="store_true", help="no progress bar")
    c.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from vasomim.data.check import check_source
    from vasomim.data.io import ImageReadError, looked_for
    from vasomim.data.sources import load_source

    try:
        source = load_source(args.spec)
        if not source.items:  # listed now, so that listing errors are reported here
            raise ValueError(f"{args.spec}: no images found ({source.describe()}; {looked_for()})")
    except (FileNotFoundError, NotADirectoryError, ValueError, ImageReadError) as exc:
        print(f"error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    report = check_source(source, workers=args.workers, progress=not args.quiet and sys.stderr.isatty())
    print(report.format())
    if args.json_path:
        with open(args.json_path, "w", encoding="utf-8") as fh:
            json.dump(report.summary(), fh, indent=2)
    return 0 if report.ok else 1
