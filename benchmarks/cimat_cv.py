"""Vessel segmentation on the 40 labelled CIMAT angiograms: every arm, k-fold CV, one table.

Rows (each a configuration of the same code, scored the same way: per-image DSC and clDice at
the original 300x300 resolution, averaged per held-out fold, then mean ± sample std over the
folds x seeds runs):

* ``frangi``  the Sato/Frangi anatomy masks themselves (``vasomim anatomy``, alpha 92, border
  scaled to the image size: 12 px at 300 px), no training; its spread is over the same folds;
* ``unet``    the plain CNN U-Net (``finetune/unet_cpu``: 16 base channels, 4 levels);
* ``scratch`` the ViT U-Net from random weights (``finetune/vit_tiny_cpu``);
* ``spt``     (``--spt``) the ViT U-Net first trained on the anatomy pseudo-labels of the
  unlabelled pool (the 15 ``xca-unlabeled`` frames + the 40 CIMAT images without their labels),
  then fine-tuned: segmentor-based pre-training;
* ``mae``     (``--mae CKPT``) the ViT U-Net with an MAE-pretrained encoder;
* ``vasomim`` (``--vasomim CKPT``) the ViT U-Net with a VasoMIM-pretrained encoder.

Rows whose checkpoint is not given are skipped with a note. Every fine-tuning arm uses the same
folds (``split_seed`` 0), epochs, input size, augmentation and optimiser settings; the best
checkpoint is chosen by validation DSC on the held-out fold, which is also where it is scored, so
the "last epoch" column (no selection) is printed next to it. Runs resume: re-running the same
command continues where it stopped and re-uses finished runs.

Writes ``OUT/table.md`` and ``OUT/table.json`` (settings, pre-training checkpoints' configs,
per-arm wall time) and prints the table.

    python benchmarks/cimat_cv.py --folds 2 --epochs 2 --img-size 64 --threads 1   # smoke test, ~30 s
    python benchmarks/cimat_cv.py --threads 1 --spt \\
        --mae runs/pretrain/mae/checkpoint-final.pth \\
        --vasomim runs/pretrain/vasomim/checkpoint-final.pth                       # the real table

Budget (defaults: 5 folds, 1 seed, 50 epochs at 128 px, batch 4; measured on a 2-core machine
shared with other jobs, 1 thread): an epoch over 32 images takes ~3.0 s for the ViT-Tiny U-Net and
~1.9 s for the CNN U-Net, a validation ~2 s, so an arm takes ~14 min (ViT) / ~10 min (CNN), the
SPT pseudo-label stage ~4 min more, and the whole table with every row ~75 min. On a machine of
its own, ``--threads 2`` (or more) is faster; on a shared one, oversubscribed threads are much
slower than 1.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from vasomim.config import build_config
from vasomim.data.io import write_text_atomic
from vasomim.engines.anatomy import AnatomyConfig, run_anatomy
from vasomim.engines.evaluate import evaluate_folders
from vasomim.engines.finetune import FinetuneConfig, finetune, kfold_splits
from vasomim.metrics import summarize

REPO = Path(__file__).resolve().parents[1]
SHARED = (REPO / ".." / "shared" / "data").resolve()
CONFIGS = REPO / "src" / "vasomim" / "configs" / "finetune"
LABELS = {
    "frangi": "Frangi/Sato anatomy masks (no training)",
    "unet": "CNN U-Net, scratch",
    "scratch": "ViT U-Net, scratch",
    "spt": "ViT U-Net, SPT (pseudo-label pre-training)",
    "mae": "ViT U-Net, MAE-pretrained",
    "vasomim": "ViT U-Net, VasoMIM-pretrained",
}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(SHARED / "cimat-coronary"), help="labelled set (images/ + masks/)")
    p.add_argument("--unlabelled", default=str(SHARED / "xca-unlabeled"), help="extra unlabelled frames (SPT)")
    p.add_argument("--out", default="runs/cimat_cv", help="output folder")
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--seeds", default="0", help="training seeds, e.g. 0,1,2")
    p.add_argument("--epochs", type=int, default=50)
    p.add_argument("--img-size", type=int, default=128, help="training/inference size (pre-training used 128)")
    p.add_argument("--size", default="tiny", help="ViT size of the ViT arms")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--lr", type=float, help="peak lr of every arm (default: the configs' 1e-3)")
    p.add_argument("--layer-decay", type=float, help="layer-wise lr decay of the ViT arms (default 1.0 = off)")
    p.add_argument("--val-every", type=int, default=5)
    p.add_argument("--border", type=int, default=12, help="anatomy border in px for the 300x300 images")
    p.add_argument("--mae", help="MAE pre-training checkpoint (row skipped without it)")
    p.add_argument("--vasomim", help="VasoMIM pre-training checkpoint (row skipped without it)")
    p.add_argument("--spt", action="store_true", help="add the SPT row (pseudo-label training first)")
    p.add_argument("--spt-epochs", type=int, help="epochs of the pseudo-label stage (default: --epochs)")
    p.add_argument("--arms", default="frangi,unet,scratch,spt,mae,vasomim", help="rows to run, in order")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, help="torch CPU threads (1 is fastest on a machine shared with other jobs)")
    p.add_argument("--quiet", action="store_true")
    return p.parse_args(argv)


def frangi_row(args, out: Path, ids: list[str], splits) -> dict:
    """Anatomy masks of the labelled images, scored per fold like the trained arms."""
    images, masks = Path(args.data) / "images", Path(args.data) / "masks"
    summary = run_anatomy(images, out / "anatomy_labelled", AnatomyConfig(border=args.border, workers=1),
                          progress=not args.quiet)
    if summary.failures:
        raise SystemExit(f"anatomy failed on {len(summary.failures)} images: {summary.failures[0][1]}")
    result = evaluate_folders(out / "anatomy_labelled", masks)
    if result.failures:
        raise SystemExit(f"frangi: {result.failures[0]}")
    by_id = {r["image"]: r for r in result.rows}
    fold_means = {m: [float(np.mean([by_id[ids[i]][m] for i in val])) for _, val in splits]
                  for m in ("dice", "cldice")}
    return {m: dict(zip(("mean", "std"), summarize(v))) for m, v in fold_means.items()}


def spt_checkpoint(args, out: Path, base_overrides: list[str]) -> str:
    """Train the ViT U-Net on anatomy pseudo-labels of the unlabelled pool; return its best.pth."""
    runs = out / "spt_pretrain"
    sources = [{"type": "anatomy", "images": str(Path(args.data) / "images"),
                "anatomy": str(out / "anatomy_labelled"), "name": "cimat"}]
    if Path(args.unlabelled).is_dir():
        unl = run_anatomy(args.unlabelled, out / "anatomy_unlabelled", AnatomyConfig(workers=1),
                          progress=not args.quiet)  # 512-px frames: the reference border of 20 px
        if unl.failures:
            print(f"note: anatomy failed on {len(unl.failures)} unlabelled frames", file=sys.stderr)
        sources.append({"type": "anatomy", "images": args.unlabelled,
                        "anatomy": str(out / "anatomy_unlabelled"), "name": "xca"})
    cfg = build_config(FinetuneConfig, CONFIGS / "vit_tiny_cpu.yaml",
                       base_overrides + [f"epochs={args.spt_epochs or args.epochs}"],
                       data=sources, out=str(runs), folds=1, val_fraction=0.0, seeds=[0], init="scratch")
    finetune(cfg, resume=True, progress=not args.quiet)
    return str(runs / "seed0" / "fold0" / "best.pth")


def pretrain_facts(path: str) -> dict:
    """What a pre-training checkpoint says about itself (epochs, masking, consistency)."""
    ck = torch.load(path, map_location="cpu", weights_only=True)
    cfg = ck.get("config", {}) if isinstance(ck, dict) else {}
    keys = ("name", "epochs", "masking", "consistency", "model", "data")
    return {"checkpoint": path, "epoch": ck.get("epoch") if isinstance(ck, dict) else None,
            **{k: cfg[k] for k in keys if k in cfg}}


def fmt(v: dict | None) -> str:
    return "-" if not v else f"{100 * v['mean']:.1f} ± {100 * v['std']:.1f}"


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    seeds = [int(s) for s in args.seeds.split(",")]
    arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    unknown = sorted(set(arms) - set(LABELS))
    if unknown:
        raise SystemExit(f"unknown arms {unknown}; choose from {list(LABELS)}")
    from vasomim.data.sources import load_source

    ids = sorted(it.id for it in load_source(args.data).items)
    splits = kfold_splits(len(ids), args.folds, 0)
    common = [f"epochs={args.epochs}", f"img_size={args.img_size}", f"batch_size={args.batch_size}",
              f"val_every={args.val_every}", f"device={args.device}"]
    if args.lr is not None:
        common.append(f"lr={args.lr}")
    vit = common + [f"size={args.size}"] + ([f"layer_decay={args.layer_decay}"] if args.layer_decay else [])

    rows, notes, pretraining = [], [], {}
    t_all = time.perf_counter()
    for arm in arms:
        t0 = time.perf_counter()
        if arm == "frangi":
            metrics = frangi_row(args, out, ids, splits)
            rows.append({"arm": arm, "label": LABELS[arm], "dice": metrics["dice"], "cldice": metrics["cldice"],
                         "last_epoch_dice": None, "n_runs": args.folds, "wall_s": round(time.perf_counter() - t0, 1)})
            print(f"{LABELS[arm]}: DSC {fmt(metrics['dice'])}", file=sys.stderr)
            continue
        init = "scratch"
        if arm == "spt":
            if not args.spt:
                notes.append("spt: skipped (pass --spt)")
                continue
            init = spt_checkpoint(args, out, vit)
            pretraining[arm] = {"checkpoint": init, "epochs": args.spt_epochs or args.epochs,
                                "data": "anatomy pseudo-labels of xca-unlabeled (15) + the 40 images"}
        elif arm in ("mae", "vasomim"):
            init = getattr(args, arm)
            if not init:
                notes.append(f"{arm}: skipped (no --{arm} checkpoint given)")
                continue
            pretraining[arm] = pretrain_facts(init)
        config = CONFIGS / ("unet_cpu.yaml" if arm == "unet" else "vit_tiny_cpu.yaml")
        cfg = build_config(FinetuneConfig, config, common if arm == "unet" else vit, data=args.data,
                           out=str(out / arm), folds=args.folds, seeds=seeds, init=init)
        summary = finetune(cfg, resume=True, progress=not args.quiet)
        m = summary["metrics"]
        rows.append({"arm": arm, "label": LABELS[arm], "dice": m["dice"], "cldice": m["cldice"],
                     "last_epoch_dice": summary.get("last_epoch_dice"), "n_runs": summary["n_runs"],
                     "wall_s": round(time.perf_counter() - t0, 1)})
        print(f"{LABELS[arm]}: DSC {fmt(m['dice'])}", file=sys.stderr)
    wall = time.perf_counter() - t_all

    command = "python benchmarks/cimat_cv.py " + " ".join(sys.argv[1:] if argv is None else argv)
    lines = [
        f"CIMAT coronary, 40 labelled images, {args.folds}-fold CV x seeds {seeds}; {args.epochs} epochs at "
        f"{args.img_size} px, ViT-{args.size}; DSC and clDice (%) at 300x300, mean ± std over folds x seeds.",
        "",
        "| arm | DSC | clDice | DSC, last epoch | runs | wall (s) |",
        "|---|---|---|---|---|---|",
    ]
    lines += [f"| {r['label']} | {fmt(r['dice'])} | {fmt(r['cldice'])} | {fmt(r['last_epoch_dice'])} | "
              f"{r['n_runs']} | {r['wall_s']:.0f} |" for r in rows]
    lines += ["", f"command: `{command}`", f"wall time: {wall:.0f} s ({wall / 60:.1f} min)"]
    lines += [f"note: {n}" for n in notes]
    table = "\n".join(lines) + "\n"
    write_text_atomic(out / "table.md", table)
    write_text_atomic(out / "table.json", json.dumps(
        {"command": command, "settings": vars(args), "rows": rows, "notes": notes,
         "pretraining": pretraining, "wall_s": round(wall, 1)}, indent=2) + "\n")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
