"""``vasomim export CHECKPOINT --to encoder.safetensors | DIR``: the encoder for timm, the whole network.

``--to X.safetensors`` (or ``.pth``) writes the ViT encoder in timm naming plus ``X.json``, its timm
``pretrained_cfg`` (architecture, mean, std, input_size, crop_pct 1.0). For a CNN U-Net checkpoint
(``model.arch: unet`` pre-training, or a ``unet`` fine-tuning) it writes the U-Net encoder (the
``down.*`` blocks, as :func:`~vasomim.models.unet_mim.export_unet_encoder` does for ``vasomim
ship``) plus ``X.json``, its shape and input settings; ``vasomim finetune --init X`` loads it.
``--to DIR`` writes ``DIR/encoder.safetensors`` + ``DIR/encoder.json`` and, for a fine-tuned
checkpoint, ``DIR/model/`` (``model.safetensors`` + ``config.json``, what
:func:`vasomim.load_model` reads, no pickle) and ``DIR/model.onnx`` (dynamic batch, height and
width; needs the ``onnx`` extra).
"""

from __future__ import annotations

import argparse
import math
import sys

from vasomim.models.timm_names import TIMM_SIZES
SIZE_NAMES = {"tiny": 192, "small": 384, "base": 768, "large": 1024}


def heads_from_config(config, embed_dim: int) -> int | None:
    """The encoder's attention heads as a checkpoint's config records them, if it does.

    Searches the (nested) config for ``num_heads`` values; if exactly one distinct value is set,
    that is it. Otherwise a ``size`` of ``tiny``/``small``/``base``/``large`` whose width equals
    ``embed_dim`` gives that size's heads. ``None`` when the config says nothing usable.
    """
    heads, sizes = set(), set()

    def walk(node) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "num_heads" and isinstance(value, int):
                    heads.add(value)
                elif key == "size" and isinstance(value, str) and SIZE_NAMES.get(value) == embed_dim:
                    sizes.add(value)
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(config)
    if len(heads) == 1:
        return heads.pop()
    if len(sizes) == 1:
        return TIMM_SIZES[embed_dim][2]
    return None


def timm_one_liner(state: dict, path: str, in_chans: int, num_heads: int | None = None) -> str:
    """The ``timm.create_model`` call that loads an exported encoder state dict.

    Args:
        state: The exported tensors (timm names).
        path: Where they were written.
        in_chans: Input channels of the exported patch embedding.
        num_heads: Attention heads of the encoder (weights do not record them); ``None``: the timm
            size's heads for a standard width, width / 64 otherwise (the head width of every timm
            ViT size).

    The model name follows the width (``vit_tiny_patch16_224`` for 192, ...); a depth, width,
    head count or grid that differs from that name's default is passed explicitly.
    """
    dim = state["patch_embed.proj.weight"].shape[0]
    depth = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("blocks."))
    grid = math.isqrt(state["pos_embed"].shape[1] - 1)
    name, default_depth, default_heads = TIMM_SIZES.get(dim, ("vit_base_patch16_224", 12, 12))
    heads = num_heads or (default_heads if dim in TIMM_SIZES else max(1, dim // 64))
    extra = []
    if dim not in TIMM_SIZES:
        extra.append(f"embed_dim={dim}")
    if heads != default_heads:
        extra.append(f"num_heads={heads}")
    if depth != default_depth:
        extra.append(f"depth={depth}")
    if grid * 16 != 224:
        extra.append(f"img_size={grid * 16}")
    if in_chans != 3:
        extra.append(f"in_chans={in_chans}")
    args = ", ".join([f'"{name}"', "pretrained=True", f'pretrained_cfg_overlay=dict(file="{path}")',
                      "num_classes=0", *extra])
    return f"timm.create_model({args})"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help="export the encoder of a checkpoint (ViT for timm, or U-Net) and a fine-tuned network",
        description=(
            "Write the ViT encoder of any checkpoint vasomim reads (fine-tuned segmentation, vasomim or original "
            "MAE/VasoMIM pre-training, timm) in timm naming, and print the timm.create_model call that loads it. "
            "By default the patch embedding is written for 3 input channels (a gray encoder's kernel is repeated "
            "and divided by 3, so gray replicated to RGB gives the same features). A CNN U-Net checkpoint "
            "(pre-training with model.arch unet, or a unet fine-tuning) gives its encoder (down blocks) for "
            "'vasomim finetune --init'."
        ),
        epilog="example: vasomim export runs/pretrain/checkpoint.pth --to encoder.safetensors",
    )
    p.add_argument("checkpoint", help="checkpoint file (.pth/.pt/.safetensors)")
    p.add_argument("--to", required=True,
                   help="encoder file (.safetensors, or .pth for a torch.save state dict), with its timm "
                        "pretrained_cfg as .json beside it; or a folder for encoder + model/ + model.onnx")
    p.add_argument("--no-onnx", action="store_true", help="with a folder: skip model.onnx")
    p.add_argument("--in-chans", type=int, choices=(1, 3), default=None,
                   help="input channels of the exported ViT patch embedding (default 3, the timm layout); a "
                        "U-Net encoder keeps its own")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from vasomim.models.checkpoints import load_checkpoint, read_state_dict, strip_wrappers
    from vasomim.models.export import encoder_pretrained_cfg, export_encoder
    from vasomim.models.unet_mim import is_unet_state

    to = Path(args.to)
    if to.suffix.lower() == ".onnx":
        return _fail(f"{to}: --to takes an encoder file (.safetensors, .pth) or a folder; model.onnx is written "
                     "into the folder, for a fine-tuned checkpoint")
    folder = to.suffix.lower() not in (".safetensors", ".pth", ".pt")
    enc_path = to / "encoder.safetensors" if folder else to
    try:
        ckpt = load_checkpoint(args.checkpoint)  # read once; one line naming a missing, foreign or unsafe file
        config = ckpt.get("config") if isinstance(ckpt, dict) and not args.checkpoint.endswith(".safetensors") \
            else None
        state = strip_wrappers(read_state_dict(ckpt, args.checkpoint)[0])
        if is_unet_state(state):
            return _export_unet(args, ckpt, state, config, enc_path, folder)
        in_chans = args.in_chans or 3
        out = export_encoder(ckpt, enc_path, in_chans=in_chans, source=args.checkpoint)
        state, _ = read_state_dict(out)
        grid = math.isqrt(state["pos_embed"].shape[1] - 1)
        arch = TIMM_SIZES.get(state["patch_embed.proj.weight"].shape[0], ("vit_base_patch16_224",))[0]
        cfg = encoder_pretrained_cfg(arch, config, in_chans, grid)
        cfg["file"] = out.name
        out.with_suffix(".json").write_text(json.dumps(cfg, indent=2) + "\n", encoding="utf-8")
    except (ValueError, FileNotFoundError) as exc:
        return _fail(str(exc))
    heads = heads_from_config(config, state["patch_embed.proj.weight"].shape[0])
    print(f"export: {len(state)} encoder tensors written to {out}, its timm pretrained_cfg to "
          f"{out.with_suffix('.json')}")
    if heads is None:
        print("note: the checkpoint does not record the attention heads; assuming width / 64")
    print("load it in timm (offline) with:")
    print(f"  import timm; model = {timm_one_liner(state, str(out), in_chans, heads)}")
    print("and with the training preprocessing for timm.data.resolve_data_config(model=model), pass")
    print(f"  pretrained_cfg_overlay=dict(json.load(open(\"{out.with_suffix('.json')}\")), "
          f"file=\"{out}\")")
    if folder:
        return _export_network(args, config, to, ckpt)
    return 0


def _fail(message: str) -> int:
    print(f"error: {' '.join(message.split())}", file=sys.stderr)
    return 2


def _export_unet(args: argparse.Namespace, ckpt: dict, state: dict, config, enc_path, folder: bool) -> int:
    """A U-Net checkpoint: its encoder (``down.*``, kept in the checkpoint's precision) and settings
    (:func:`~vasomim.models.unet_mim.export_unet_encoder`); with a folder also the whole network of
    a fine-tuned one."""
    from vasomim.models.unet_mim import export_unet_encoder, unet_layout

    layout = unet_layout(state, config if isinstance(config, dict) else None)
    if args.in_chans is not None and args.in_chans != layout["in_chans"]:
        return _fail(f"{args.checkpoint}: a U-Net encoder keeps its {layout['in_chans']} input channel(s); "
                     f"--in-chans {args.in_chans} applies to ViT encoders only")
    enc, arch = export_unet_encoder(ckpt, enc_path, dtype=None, source=args.checkpoint)
    print(f"export: {len(enc)} U-Net encoder tensors (down blocks; {arch}) written to {enc_path}, its settings "
          f"to {enc_path.with_suffix('.json')}")
    print("fine-tune from it with:")
    print(f"  vasomim finetune --config finetune/unet_cpu --data DATA --init {enc_path} "
          + " ".join(f"{k}={v}" for k, v in layout.items()))
    if folder:
        return _export_network(args, config, enc_path.parent, ckpt)
    return 0


def _export_network(args: argparse.Namespace, config, to, ckpt) -> int:
    """``DIR/model/`` and ``DIR/model.onnx`` of a fine-tuned checkpoint (``ckpt``: the file, as read)."""
    from vasomim.models.checkpoints import model_from_checkpoint
    from vasomim.models.export import export_model_folder, export_onnx

    if not (isinstance(config, dict) and "network" in config and "input" in config):
        print("note: not a fine-tuned segmentation checkpoint; only the encoder was exported")
        return 0
    try:
        model, config = model_from_checkpoint(args.checkpoint, loaded=ckpt)
    except (ValueError, FileNotFoundError) as exc:
        return _fail(str(exc))
    folder = export_model_folder(model, config, to / "model")
    print(f"export: the segmentation network to {folder} (vasomim.load_model(\"{folder}\"))")
    if args.no_onnx:
        return 0
    try:
        import onnx  # noqa: F401  (torch's exporter needs it)
    except ImportError:
        print("note: model.onnx skipped: install the onnx extra (pip install 'vasomim[onnx]')")
        return 0
    path = export_onnx(model, config["input"], to / "model.onnx")
    print(f"export: {path} (input 'image' normalised (B, C, H, W), H and W multiples of the grid; "
          "output 'logits')")
    return 0
