"""``vasomim predict [MODEL] INPUT... --out DIR``: vessel masks for new angiograms."""

from __future__ import annotations

import argparse
import sys


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "predict",
        help="segment images, folders or DICOM cines (the shipped vasomim-cimat model, or your checkpoint)",
        description=(
            "Segment every input with a model: a checkpoint written by `vasomim finetune`, an exported model folder, "
            "or a shipped model's name (`vasomim models`; default vasomim-cimat when no model is given). Inputs: "
            "image files, folders (searched "
            "recursively) and DICOM files (every frame of a cine is an image; run.dcm frame 12 -> run_f012.png). "
            "Each image keeps its aspect ratio: it is resized by the checkpoint's fixed scale, run in overlapping "
            "windows of the training size (blended), and the masks are written at each input's own "
            "resolution as 0/255 PNGs under OUT/masks, optionally with probability maps (OUT/prob) and overlays "
            "(OUT/overlay). Unreadable files are named and skipped; exit status 1 at the end if any failed."
        ),
        epilog="examples: vasomim predict frames/ --out seg/\n"
               "          vasomim predict runs/ft/seed0/fold0/best.pth frames/ cine.dcm --out seg/ --prob --overlay",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("inputs", nargs="+", metavar="[MODEL] INPUT",
                   help="optionally first a model (.pth/.pt/.safetensors checkpoint, exported model folder or shipped "
                        "name), then image files, folders or DICOM files")
    p.add_argument("--model", help="the model, instead of giving it first (default: vasomim-cimat)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--threshold", type=float, default=0.5, help="probability threshold of the masks (default 0.5)")
    p.add_argument("--prob", action="store_true", help="also write probability maps (OUT/prob)")
    p.add_argument("--prob-bits", type=int, choices=(8, 16), default=8, help="bit depth of the probability PNGs")
    p.add_argument("--overlay", action="store_true", help="also write overlays of the mask on the image (OUT/overlay)")
    p.add_argument("--mode", choices=("native", "resize"), default="native",
                   help="native: keep the aspect ratio, windows of the training size (default); "
                        "resize: squash every image to the training square (the older behaviour)")
    p.add_argument("--tta", action="store_true", help="average with the horizontally flipped image")
    p.add_argument("--batch-size", type=int, default=8, help="images read per step")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, ...")
    p.add_argument("--workers", type=int, default=0, help="reader processes")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


DEFAULT_MODEL = "vasomim-cimat"


def _is_model(arg: str) -> bool:
    """A checkpoint file, an exported model folder, or a model name (registered or shipped)."""
    from pathlib import Path

    path = Path(arg)
    if path.is_file():
        return path.suffix.lower() in (".pth", ".pt", ".safetensors")
    if path.is_dir():
        return (path / "config.json").is_file() and (path / "model.safetensors").is_file()
    from vasomim.inference import MODEL_REGISTRY
    from vasomim.shipped import find

    return arg in MODEL_REGISTRY or find(arg, "segmentation") is not None or arg.startswith("vasomim-")


def split_model(inputs: list[str], model: str | None) -> tuple[str, list[str]]:
    """(model, inputs): ``--model``, else a first argument that names a model, else the default."""
    if model is not None:
        return model, inputs
    if _is_model(inputs[0]):
        if len(inputs) == 1:
            raise ValueError(f"{inputs[0]} is a model: give the images to segment after it")
        return inputs[0], inputs[1:]
    return DEFAULT_MODEL, inputs


def run(args: argparse.Namespace) -> int:
    from vasomim.engines.predict import predict_paths

    try:
        model, inputs = split_model(args.inputs, args.model)
        summary = predict_paths(model, inputs, args.out, threshold=args.threshold, prob=args.prob,
                                prob_bits=args.prob_bits, overlay=args.overlay, batch_size=args.batch_size,
                                device=args.device, workers=args.workers, progress=not args.quiet,
                                mode=args.mode, tta=args.tta)
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    for failure in summary.failures:
        print(f"failed: {failure}", file=sys.stderr)
    print(f"predict: {len(summary.written)} mask(s) written to {args.out}/masks, {len(summary.failures)} failed")
    return 1 if summary.failures else 0
