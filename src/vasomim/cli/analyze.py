"""``vasomim analyze``: the paper's analyses as commands, each writing a figure and its numbers.

    vasomim analyze vessel-share RUN_DIR [RUN_DIR ...] --out DIR        (Fig. 3a)
    vasomim analyze masking-map IMAGE MASK --out DIR                     (Fig. 3b)
    vasomim analyze reconstruction CHECKPOINT --images DIR --anatomy DIR --out DIR [--segmentor S]
    vasomim analyze clustering CHECKPOINT [CHECKPOINT ...] --images DIR --anatomy DIR --out DIR
                                                                         (Table 4)
    vasomim analyze sweep RESULTS.csv --x COLUMN --out DIR               (Fig. 5, Tables 5-6)

Checkpoints are vasomim pre-training checkpoints (``model``: the MAE state dict, ``config``: plain
data). The MAE is rebuilt from the state dict's shapes (width, depth, patch, channels, grid,
decoder); what shapes cannot tell (attention heads, norm_pix) comes from the options, else the
checkpoint's ``config["model"]``, else the ViT size table. A U-Net pre-training checkpoint
(``model.arch: unet``) gives its :class:`~vasomim.models.unet_mim.MaskedUNet`, which masks,
reconstructs and embeds 16-pixel cells as the MAE does patches; its images are resized to
``--img-size``, else the pre-training's ``data.img_size``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``analyze`` and its subcommands to the ``vasomim`` parser."""
    parser = subparsers.add_parser(
        "analyze",
        help="figures and numbers of the paper's analyses (masking, reconstructions, clustering, sweeps)",
        description="Each analysis writes a PNG figure and a JSON file of its numbers into --out.",
    )
    parser.set_defaults(func=_show_help, analyze_parser=parser)
    sub = parser.add_subparsers(dest="analysis", metavar="ANALYSIS")

    p = sub.add_parser("vessel-share", help="share of vessel-containing patches among the masked ones per epoch (Fig. 3a)",
                       description="Read log.jsonl (and config.json) of pre-training runs and plot, per epoch, the share "
                                   "of vessel-containing patches among the masked patches, with the random expectation.")
    p.add_argument("run_dirs", nargs="+", type=Path, metavar="RUN_DIR", help="pre-training run folders")
    p.add_argument("--labels", nargs="+", help="one legend label per run (default: the config names)")
    _out(p)
    p.set_defaults(func=run_vessel_share)

    p = sub.add_parser("masking-map", help="per-patch masking frequency on one image, guided vs random (Fig. 3b)",
                       description="Simulate EPOCHS epochs of anatomy-guided and of random masking on one image with "
                                   "the real sampler, and map how often each patch is masked.")
    p.add_argument("image", type=Path, metavar="IMAGE", help="angiogram")
    p.add_argument("mask", type=Path, metavar="MASK", help="its anatomy (vessel) mask")
    p.add_argument("--ratio", type=float, default=0.5, help="masking ratio gamma (default: 0.5)")
    p.add_argument("--beta0", type=float, default=0.0, help="guided share at the start (default: 0)")
    p.add_argument("--betaE", type=float, default=0.5, help="guided share at the end (default: 0.5)")
    p.add_argument("--epochs", type=int, default=800, help="simulated epochs (default: 800)")
    p.add_argument("--patch", type=int, default=16, help="patch side (default: 16)")
    p.add_argument("--size", type=int, default=224, help="resize image and mask to SIZE x SIZE; 0 keeps them (default: 224)")
    p.add_argument("--seed", type=int, default=0, help="sampler seed (default: 0)")
    _out(p)
    p.set_defaults(func=run_masking_map)

    p = sub.add_parser("reconstruction", help="original, masked input, reconstruction and the segmentor on both",
                       description="Mask a few images with the anatomy-guided sampler, reconstruct them with a "
                                   "pre-trained MAE or masked U-Net and, with --segmentor, show what the "
                                   "consistency loss compares.")
    p.add_argument("checkpoint", type=Path, metavar="CHECKPOINT",
                   help="vasomim pre-training checkpoint (ViT or U-Net)")
    _data(p, default_max=4)
    p.add_argument("--segmentor", type=Path, help="UNeXt-S segmentor weights (state dict or checkpoint)")
    p.add_argument("--ratio", type=float, default=0.5, help="masking ratio gamma (default: 0.5)")
    p.add_argument("--beta", type=float, default=0.5, help="guided share of the masked patches (default: 0.5)")
    _model(p)
    _out(p)
    p.set_defaults(func=run_reconstruction)

    p = sub.add_parser("clustering", help="vessel vs background clustering of patch embeddings (Table 4)",
                       description="Embed every patch of the images with each checkpoint's encoder (a U-Net: "
                                   "each 16-px cell of its coarsest encoder level) and score how well "
                                   "vessel-containing and background-only patches cluster (silhouette, "
                                   "Calinski-Harabasz, Davies-Bouldin; also on a 2-D UMAP when umap-learn is installed).")
    p.add_argument("checkpoints", nargs="+", type=Path, metavar="CHECKPOINT",
                   help="vasomim pre-training checkpoints (ViT or U-Net)")
    _data(p, default_max=64)
    _model(p)
    _out(p)
    p.set_defaults(func=run_clustering)

    p = sub.add_parser("sweep", help="score vs a swept setting per arm, mean and std over seeds (Fig. 5, Tables 5-6)",
                       description="Aggregate a results CSV (one row per arm, seed, fold, image with dice and cldice) "
                                   "by arm and COLUMN, plot it with error bars and print the table.")
    p.add_argument("results", type=Path, metavar="RESULTS.csv", help="per-image results")
    p.add_argument("--x", required=True, metavar="COLUMN", help="column of the swept setting (e.g. mask_ratio)")
    p.add_argument("--x-label", help="axis label (default: COLUMN)")
    p.add_argument("--arm-column", default="arm", help="column naming the arm (default: arm)")
    p.add_argument("--metrics", nargs="+", default=["dice", "cldice"], help="score columns (default: dice cldice)")
    p.add_argument("--scale", type=float, default=100.0, help="multiply scores by this (default 100: fractions to percent)")
    _out(p)
    p.set_defaults(func=run_sweep)


def _show_help(args: argparse.Namespace) -> int:
    args.analyze_parser.print_help()
    return 0


def _out(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="output folder (created if needed)")


def _data(p: argparse.ArgumentParser, default_max: int) -> None:
    p.add_argument("--images", type=Path, required=True, metavar="DIR", help="folder of angiograms")
    p.add_argument("--anatomy", type=Path, required=True, metavar="DIR",
                   help="folder of their anatomy masks (same relative path and stem, e.g. from 'vasomim anatomy')")
    p.add_argument("--max-images", type=int, default=default_max, help=f"use the first N matched images (default: {default_max})")
    p.add_argument("--seed", type=int, default=0, help="seed of the sampler / subsets (default: 0)")


def _model(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model (when the checkpoint's config does not say)")
    g.add_argument("--num-heads", type=int, help="encoder attention heads")
    g.add_argument("--decoder-num-heads", type=int, help="decoder attention heads")
    g.add_argument("--img-size", type=int, help="input side when the patch grid is not square-derivable; for a "
                                                 "U-Net checkpoint the side images are resized to (default: its "
                                                 "data.img_size)")
    g.add_argument("--norm-pix", choices=["yes", "no"], help="the decoder predicts per-patch normalised pixels")
    g.add_argument("--mean", type=float, nargs="+", help="the MAE's input normalisation mean (default: the data defaults)")
    g.add_argument("--std", type=float, nargs="+", help="the MAE's input normalisation std")


def _fail(command: str, message: str) -> int:
    print(f"vasomim analyze {command}: {message}", file=sys.stderr)
    return 2


# ------------------------------------------------------------------------------ loading


def load_mae(path: Path, args: argparse.Namespace):
    """Rebuild the MAE (or masked U-Net) of a pre-training checkpoint.

    Shapes come from the state dict; heads / norm_pix / mean / std from ``args``, then the
    checkpoint's config, then defaults (ViT size table by width, MAE's 16 decoder heads, the
    data pipeline's normalisation for the channel count).

    Returns:
        ``(model, label, mean, std, size)``: ``size`` is the (H, W) the images are resized to, the
        ViT's input size, or for a U-Net ``--img-size``, else the pre-training's ``data.img_size``.

    Raises:
        ValueError: one line naming the file when it is no pre-training checkpoint, or when a
            U-Net's image size is known neither from ``--img-size`` nor from its config.
    """
    from vasomim.data.transforms import GRAY_MEAN, GRAY_STD, IMAGENET_MEAN, IMAGENET_STD
    from vasomim.models.checkpoints import model_from_checkpoint

    hints = {"num_heads": args.num_heads, "decoder_num_heads": args.decoder_num_heads, "img_size": args.img_size,
             "norm_pix_loss": (args.norm_pix == "yes") if args.norm_pix else None}
    model, config = model_from_checkpoint(path, kind="mae", hints=hints)
    data_cfg = config.get("data") if isinstance(config.get("data"), dict) else {}
    default_mean, default_std = (GRAY_MEAN, GRAY_STD) if model.in_chans == 1 else (IMAGENET_MEAN, IMAGENET_STD)
    mean = tuple(args.mean or data_cfg.get("mean") or default_mean)
    std = tuple(args.std or data_cfg.get("std") or default_std)
    label = str(config.get("name") or path.stem)
    if hasattr(model, "patch_embed"):
        return model, label, mean, std, tuple(model.patch_embed.img_size)
    side = args.img_size or data_cfg.get("img_size")
    if not side:
        raise ValueError(f"{path}: the U-Net checkpoint does not record its image size; give --img-size")
    if side % model.patch_size:
        raise ValueError(f"{path}: image size {side} is not divisible by the U-Net's cell of {model.patch_size} px")
    return model, label, mean, std, (int(side), int(side))


def load_pairs(images: Path, anatomy: Path, size: tuple[int, int], limit: int):
    """The first ``limit`` images with an anatomy mask, resized to ``size``: (B,1,H,W) images01, masks, ids."""
    import numpy as np
    import torch
    from PIL import Image

    from vasomim.data.sources import FolderSource

    items = [it for it in FolderSource(images, anatomy).items if it.has_mask][:limit]
    if not items:
        raise ValueError(f"no image in {images} has a mask in {anatomy} (same relative path and stem)")
    h, w = size
    imgs, masks = [], []
    for it in items:
        img = it.load_image()
        mask = it.load_mask(img.shape)
        imgs.append(np.asarray(Image.fromarray(img).resize((w, h), Image.BILINEAR), dtype=np.float32))
        masks.append(np.asarray(Image.fromarray(mask.astype(np.uint8)).resize((w, h), Image.NEAREST)) > 0)
    to = lambda arrays: torch.from_numpy(np.stack(arrays))[:, None]  # noqa: E731
    return to(imgs).clamp(0, 1), to(masks), [it.id for it in items]


# ------------------------------------------------------------------------------ subcommands


def run_vessel_share(args: argparse.Namespace) -> int:
    """Fig. 3a from run logs."""
    from vasomim.analysis.masking_stats import plot_vessel_share, vessel_share_curves

    if args.labels and len(args.labels) != len(args.run_dirs):
        return _fail("vessel-share", f"{len(args.labels)} labels for {len(args.run_dirs)} runs")
    runs = dict(zip(args.labels, args.run_dirs)) if args.labels else args.run_dirs
    try:
        curves = vessel_share_curves(runs)
    except (FileNotFoundError, ValueError) as exc:
        return _fail("vessel-share", str(exc))
    out = args.out / "vessel_share.png"
    result = plot_vessel_share(curves, out)
    for label, s in result["summary"].items():
        print(f"{label}: vessel-containing among masked {100 * s['mean_masked']:.1f}% on average "
              f"(last epoch {100 * s['final_masked']:.1f}%), among all {100 * s['mean_all']:.1f}%")
    print(f"figure: {out}\nnumbers: {out.with_suffix('.json')}")
    return 0


def run_masking_map(args: argparse.Namespace) -> int:
    """Fig. 3b on one image."""
    import numpy as np
    from PIL import Image

    from vasomim.analysis.masking_stats import masking_map_analysis
    from vasomim.data.io import ImageReadError, read_image, read_mask

    if args.epochs < 1 or args.patch < 1 or not 0 <= args.ratio <= 1:
        return _fail("masking-map", "need --epochs >= 1, --patch >= 1 and --ratio in [0, 1]")
    try:
        image = read_image(args.image)
        mask = read_mask(args.mask, image.shape)
    except (ImageReadError, FileNotFoundError) as exc:
        return _fail("masking-map", str(exc))
    if args.size:
        image = np.asarray(Image.fromarray(image).resize((args.size, args.size), Image.BILINEAR), dtype=np.float32)
        mask = np.asarray(Image.fromarray(mask.astype(np.uint8)).resize((args.size, args.size), Image.NEAREST)) > 0
    if image.shape[0] % args.patch or image.shape[1] % args.patch:
        return _fail("masking-map", f"image {image.shape[1]}x{image.shape[0]} is not divisible by --patch {args.patch}; use --size")
    out = args.out / "masking_map.png"
    result = masking_map_analysis(np.clip(image, 0, 1), mask, out, args.patch, args.ratio, (args.beta0, args.betaE),
                                  args.epochs, args.seed)
    for key in ("guided", "random"):
        s = result[key]["stats"]
        print(f"{key}: mean masking frequency {s['mean_vessel']:.3f} on vessel patches, "
              f"{s['mean_background']:.3f} on background patches")
    print(f"figure: {out}\nnumbers: {out.with_suffix('.json')}")
    return 0


def run_reconstruction(args: argparse.Namespace) -> int:
    """Reconstruction panel of a checkpoint, with the segmentor when given."""
    from vasomim.analysis.reconstruction import reconstruction_panel

    try:
        model, label, mean, std, size = load_mae(args.checkpoint, args)
        images01, masks, ids = load_pairs(args.images, args.anatomy, size, args.max_images)
        segmentor = _load_segmentor(args.segmentor) if args.segmentor else None
    except (FileNotFoundError, ValueError) as exc:
        return _fail("reconstruction", str(exc))
    out = args.out / "reconstruction.png"
    numbers = reconstruction_panel(model, segmentor, images01, masks, args.ratio, args.beta, args.seed, out,
                                   mean=mean, std=std, image_ids=ids)
    means = numbers["mean"]
    line = (f"{label}: masked-patch PSNR {means['masked_psnr']:.2f} dB (MSE {means['masked_mse']:.4f}) "
            f"over {len(ids)} images")
    if "consistency_bce" in means:
        line += f", consistency BCE {means['consistency_bce']:.4f}, Dice S(I') vs S(I) {means['consistency_dice']:.3f}"
    print(line)
    print(f"figure: {out}\nnumbers: {out.with_suffix('.json')}")
    return 0


def _load_segmentor(path: Path):
    from vasomim.losses import freeze
    from vasomim.models.checkpoints import model_from_checkpoint

    return freeze(model_from_checkpoint(path, kind="segmentor")[0])


def run_clustering(args: argparse.Namespace) -> int:
    """Table 4 for one or more checkpoints."""
    import torch

    from vasomim.analysis.clustering import clustering_analysis, mae_encoder_forward, patch_embeddings, scores_rows

    embeddings = {}
    try:
        for path in args.checkpoints:
            model, label, mean, std, size = load_mae(path, args)
            images01, masks, _ = load_pairs(args.images, args.anatomy, size, args.max_images)
            shape = (1, -1, 1, 1)
            x = (images01.expand(-1, model.in_chans, -1, -1) - torch.tensor(mean).reshape(shape)) / torch.tensor(std).reshape(shape)
            while label in embeddings:
                label += "'"
            embeddings[label] = patch_embeddings(mae_encoder_forward(model), x, masks, model.patch_size)
        out = args.out / "clustering.png"
        result = clustering_analysis(embeddings, out, seed=args.seed)
    except (FileNotFoundError, ValueError) as exc:
        return _fail("clustering", str(exc))
    for row in scores_rows(result):
        print("  ".join(f"{k}: {v}" for k, v in row.items()))
    if result["umap_reason"]:
        print(f"UMAP scores skipped: {result['umap_reason']}")
    print(f"figure: {out}\nnumbers: {out.with_suffix('.json')}")
    return 0


def run_sweep(args: argparse.Namespace) -> int:
    """A sweep plot and its table from a results CSV."""
    from vasomim.analysis.curves import format_table_markdown, plot_sweep, read_results_csv

    try:
        rows = read_results_csv(args.results)
        missing = [c for c in (args.x, args.arm_column, *args.metrics) if c not in rows[0]]
        if missing:
            raise ValueError(f"{args.results}: no column {missing} (columns: {list(rows[0])})")
        out = args.out / "sweep.png"
        table = plot_sweep(rows, args.x_label or args.x, out, x_key=args.x, arm_key=args.arm_column,
                           metrics=args.metrics, scale=args.scale)
    except (FileNotFoundError, ValueError) as exc:
        return _fail("sweep", str(exc))
    print(format_table_markdown(table, args.metrics, args.scale), end="")
    print(f"figure: {out}\nnumbers: {out.with_suffix('.json')}")
    return 0
