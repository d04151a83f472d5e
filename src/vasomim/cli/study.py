"""``vasomim study STUDY.yaml``: the paper's experiment on your data, cached stage by stage."""

from __future__ import annotations

import argparse
import sys


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "study",
        help="run a whole study (anatomy, segmentor, pre-training arms, fine-tuning arms, baselines) and its report",
        description=(
            "Run every stage of a study file once and cache it: a re-run, or a run after adding an arm, only does "
            "what is missing (stages are keyed by a hash of their config and inputs). Ends with report/index.html "
            "and report/report.md."
        ),
        epilog="examples: vasomim study examples/study_cimat.yaml --dry-run\n"
               "          vasomim study examples/study_cimat.yaml finetune.epochs=50\n"
               "          vasomim study examples/study_arcade.yaml --archive benchmarks/results/study_arcade",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("study", help="study YAML file (see examples/)")
    p.add_argument("overrides", nargs="*", help="overrides key=value, e.g. finetune.epochs=50 out=runs/x")
    p.add_argument("--dry-run", action="store_true", help="print the plan and its estimated cost, run nothing")
    p.add_argument("--archive", metavar="DIR",
                   help="run nothing: copy the text records of the finished stages (configs, logs, summaries, "
                        "per-image scores; no weights) and the report to DIR, in the study's layout")
    p.add_argument("--report-from", metavar="DIR",
                   help="run nothing: write DIR/report-records/ from an archive's records alone (tables, paired "
                        "differences, label-efficiency and sweep figures; no overlays or analyses)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from vasomim.config import build_config
    from vasomim.engines.study import StudyConfig, archive_study, report_from_archive, run_study

    try:
        cfg = build_config(StudyConfig, args.study, args.overrides)
        if args.archive:
            kept = archive_study(cfg, args.archive)
            print(f"archived {len(kept)} records of {cfg.out} in {args.archive}")
            return 0
        if args.report_from:
            report = report_from_archive(cfg, args.report_from, command=" ".join(
                ["vasomim", "study", args.study, *args.overrides, "--report-from", args.report_from]))
            print(f"report: {report} (and index.html)")
            return 0
        report = run_study(cfg, dry_run=args.dry_run, command=" ".join(["vasomim", "study", args.study, *args.overrides]))
    except (ValidationError, ValueError, FileNotFoundError) as exc:
        print(f"error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    if report is not None:
        print(f"report: {report.with_name('index.html')}")
    return 0
