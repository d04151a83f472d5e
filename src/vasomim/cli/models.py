"""``vasomim models`` (what ships) and ``vasomim ship`` (make a shipped model from a checkpoint)."""

from __future__ import annotations

import argparse
import sys


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "models",
        help="list the models that ship with vasomim (name, kind, size, scores)",
        description="List the shipped models: segmentation models (`vasomim predict` uses vasomim-cimat by "
                    "default; `vasomim.load_model(NAME)`) and pre-trained encoders (`vasomim finetune --init NAME`).",
    )
    p.add_argument("--json", action="store_true", help="print the model cards as JSON")
    p.set_defaults(func=run_models)

    s = sub.add_parser(
        "ship",
        help="make a shipped model (fp16 weights + model card) from a checkpoint",
        description="Write vasomim/weights/NAME/ from a checkpoint the project's own commands produced: the weights "
                    "in half precision, card.json and MODEL_CARD.md. Maintainers run it; the folder is package data.",
        epilog="example: vasomim ship runs/cimat_all/seed0/fold0/last.pth vasomim-cimat --kind segmentation "
               "--card card.yaml --scores runs/cimat_cv/summary.json",
    )
    s.add_argument("checkpoint", help="a finetune checkpoint (segmentation) or any checkpoint with a ViT encoder")
    s.add_argument("name", help="the model's name, e.g. vasomim-cimat")
    s.add_argument("--kind", choices=("segmentation", "encoder"), required=True)
    s.add_argument("--card", required=True,
                   help="YAML with the card's text fields: summary, data, licence, recipe, commands, scores_protocol")
    s.add_argument("--scores", help="a `vasomim finetune` summary.json whose DSC/clDice means go in the card")
    s.add_argument("--root", help="weights folder (default: the installed package's vasomim/weights)")
    s.set_defaults(func=run_ship)


def _fmt_size(n: int) -> str:
    return f"{n / 2**20:.1f} MB"


def run_models(args: argparse.Namespace) -> int:
    import json

    from vasomim.shipped import list_shipped

    models = list_shipped()
    if args.json:
        print(json.dumps([m.card for m in models], indent=2))
        return 0
    if not models:
        print("no shipped models in this install")
        return 0
    print(f"{'name':<18}{'kind':<14}{'size':>9}  scores")
    for m in models:
        scores = ", ".join(f"{k} {v}" for k, v in (m.card.get("scores") or {}).items()) or "-"
        print(f"{m.name:<18}{m.kind:<14}{_fmt_size(m.size_bytes):>9}  {scores}")
    return 0


def scores_from_summary(path: str) -> dict:
    """DSC and clDice (mean ± std over runs, %; the bare score of a single run) of a ``vasomim finetune`` summary.json."""
    import json

    from vasomim.analysis.curves import format_score

    summary = json.loads(open(path, encoding="utf-8").read())
    metrics = summary["metrics"]
    n = int(summary.get("n_runs", len(summary.get("runs", []))))
    out = {f"{name} (%)": format_score(metrics[key]["mean"], metrics[key]["std"], n)
           for key, name in (("dice", "DSC"), ("cldice", "clDice")) if key in metrics}
    out["runs"] = str(n)
    return out


def run_ship(args: argparse.Namespace) -> int:
    from vasomim.config import load_yaml
    from vasomim.models.ship import ship

    try:
        card = load_yaml(args.card)
        if args.scores:
            card["scores"] = {**(card.get("scores") or {}), **scores_from_summary(args.scores)}
        folder = ship(args.checkpoint, args.name, args.kind, card, root=args.root)
    except (ValueError, FileNotFoundError, KeyError) as exc:
        print(f"error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    print(f"ship: {args.name} written to {folder}")
    return 0
