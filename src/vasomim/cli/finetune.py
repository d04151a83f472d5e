"""``vasomim finetune``: vessel segmentation from a pre-trained (or random) encoder, k-fold CV."""

from __future__ import annotations

import argparse
import sys


def _seeds(text: str) -> list[int]:
    try:
        return [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"seeds must be comma-separated integers, got {text!r}") from None


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "finetune",
        help="fine-tune a segmentation network (ViT U-Net or CNN U-Net) with k-fold cross-validation",
        description=(
            "Train a vessel segmentation network on labelled angiograms (Dice + BCE, AdamW, cosine schedule, "
            "joint augmentation), validate every K epochs at the original image resolution (DSC, clDice), keep "
            "the best checkpoint per run, and report mean ± std over folds and seeds. --init takes 'scratch' or "
            "any checkpoint: vasomim/MAE/VasoMIM pre-training, timm .pth/.safetensors, or a vasomim segmentation "
            "checkpoint (whole network, for SPT). Writes OUT/seed*/fold*/{best,last}.pth + log.jsonl, "
            "OUT/per_image.csv and OUT/summary.json."
        ),
        epilog=(
            "example: vasomim finetune --config finetune/vit_tiny_cpu --data data/cimat-coronary "
            "--init runs/pretrain/checkpoint.pth --folds 5 --seeds 0,1,2 epochs=50"
        ),
    )
    p.add_argument("overrides", nargs="*", help="config overrides key=value (e.g. epochs=50 augment.hflip=0)")
    p.add_argument("--config", help="YAML config (keys of FinetuneConfig), e.g. finetune/vit_tiny_cpu")
    p.add_argument("--data", help="labelled data: a folder (images/ + masks/, nnU-Net, ARCADE) or a YAML data spec")
    p.add_argument("--out", help="output folder")
    p.add_argument("--init", help="'scratch' or a checkpoint path")
    p.add_argument("--seeds", type=_seeds, help="training seeds, e.g. 0,1,2")
    p.add_argument("--folds", type=int, help="k-fold cross-validation (1 = one val_fraction split)")
    p.add_argument("--label-fraction", type=float, help="share of each fold's training images used, e.g. 0.25")
    p.add_argument("--device", help="auto, cpu, cuda, cuda:1, ...")
    p.add_argument("--resume", action="store_true", help="continue every run from its last.pth")
    p.add_argument("--stop-after", type=int, metavar="N",
                   help="stop after N epochs of this invocation (time-limited jobs); continue with --resume")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from vasomim.config import build_config, validation_summary
    from vasomim.engines.finetune import FinetuneConfig, finetune, format_results

    values = {k: v for k, v in dict(
        data=args.data, out=args.out, init=args.init, seeds=args.seeds, folds=args.folds,
        label_fraction=args.label_fraction, device=args.device,
    ).items() if v is not None}
    try:
        cfg = build_config(FinetuneConfig, args.config, args.overrides, **values)
        summary = finetune(cfg, resume=args.resume, progress=not args.quiet, stop_after=args.stop_after)
    except ValidationError as exc:
        problems = validation_summary(exc)
        print(f"error: invalid finetune config: {problems}"
              + (" (give --data DIR or data: in the config)" if "data: Field required" in problems else ""),
              file=sys.stderr)
        return 2
    except (ValueError, FileNotFoundError, NotADirectoryError) as exc:
        print(f"error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    if summary is None:
        print(f"finetune: stopped after {args.stop_after} epoch(s); continue with --resume", file=sys.stderr)
        return 0
    print(format_results(summary))
    print(f"reports: {cfg.out}/summary.json, {cfg.out}/per_image.csv")
    return 0
