"""``vasomim demo``: the end-to-end study on embedded synthetic angiograms (no download), with a report."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="run the end-to-end demo study on embedded synthetic angiograms and write a report",
        description=(
            "Synthesize angiograms, extract their anatomy, train the consistency segmentor, pre-train a tiny "
            "VasoMIM and a tiny MAE, fine-tune from scratch / MAE / VasoMIM (and a CNN U-Net), score the "
            "Frangi baseline, and write report/index.html. About 7.5 minutes on 2 CPU cores; cached on re-run."
        ),
    )
    p.add_argument("--out", default="vasomim-demo", help="output folder (default: ./vasomim-demo)")
    p.add_argument("--data", help="run the same study on your labelled folder (images/ + masks/) instead")
    p.add_argument("--count", type=int, default=24, help="synthetic labelled images (default 24)")
    p.add_argument("--unlabelled", type=int, default=48, help="synthetic unlabelled images (default 48)")
    p.add_argument("--size", type=int, default=128, help="image size, a multiple of 32 (default 128)")
    p.add_argument("--pretrain-epochs", type=int, default=60,
                   help="epochs of each pre-training arm, VasoMIM and MAE (default 60)")
    p.add_argument("--finetune-epochs", type=int, default=30,
                   help="epochs of each fine-tuning run, per fold and arm (default 30)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the synthetic images, the pre-training and the fine-tuning runs (default 0)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from vasomim.engines.demo import DemoConfig, run_demo

    try:
        cfg = DemoConfig(out=args.out, data=args.data, count=args.count, unlabelled=args.unlabelled, size=args.size,
                         seed=args.seed, pretrain_epochs=args.pretrain_epochs, finetune_epochs=args.finetune_epochs)
        report = run_demo(cfg)
    except (ValidationError, ValueError, FileNotFoundError) as exc:
        print(f"error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    table = results_table(report)
    if table:
        print(table)
    print(f"report: {report.with_name('index.html')} (and {report.name})")
    return 0


def results_table(report_md: Path) -> str:
    """The results table of a study's ``report.md`` (its "Vessel segmentation" section), as markdown."""
    lines = report_md.read_text(encoding="utf-8").splitlines()
    if "### Vessel segmentation" not in lines:
        return ""
    table: list[str] = []
    for line in lines[lines.index("### Vessel segmentation") + 1:]:
        if line.startswith("|"):
            table.append(line)
        elif table:
            break
    return "\n".join(table)
