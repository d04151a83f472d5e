"""``vasomim export CHECKPOINT --to encoder.safetensors``: the ViT encoder in timm naming."""

from __future__ import annotations

import argparse
import math
import sys

#: embed_dim -> (timm model name, depth, heads) of the timm ViT-*/16 sizes.
TIMM_SIZES = {192: ("vit_tiny_patch16_224", 12, 3), 384: ("vit_small_patch16_224", 12, 6),
              768: ("vit_base_patch16_224", 12, 12), 1024: ("vit_large_patch16_224", 24, 16)}
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

    Parameters
    ----------
    state:
        The exported tensors (timm names).
    path:
        Where they were written.
    in_chans:
        Input channels of the exported patch embedding.
    num_heads:
        Attention heads of the encoder (weights do not record them); ``None``: the timm size's
        heads for a standard width, width / 64 otherwise (the head width of every timm ViT size).

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
        help="export the ViT encoder of a checkpoint to safetensors for timm",
        description=(
            "Write the ViT encoder of any checkpoint vasomim reads (fine-tuned segmentation, vasomim or original "
            "MAE/VasoMIM pre-training, timm) in timm naming, and print the timm.create_model call that loads it. "
            "By default the patch embedding is written for 3 input channels (a gray encoder's kernel is repeated "
            "and divided by 3, so gray replicated to RGB gives the same features)."
        ),
        epilog="example: vasomim export runs/pretrain/checkpoint.pth --to encoder.safetensors",
    )
    p.add_argument("checkpoint", help="checkpoint file (.pth/.pt/.safetensors)")
    p.add_argument("--to", required=True, help="output file (.safetensors, or .pth for a torch.save state dict)")
    p.add_argument("--in-chans", type=int, choices=(1, 3), default=3,
                   help="input channels of the exported patch embedding (default 3, the timm layout)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from vasomim.models.checkpoints import export_encoder, read_state_dict

    try:
        out = export_encoder(args.checkpoint, args.to, in_chans=args.in_chans)
        state, _ = read_state_dict(out)
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    config = None
    if not args.checkpoint.endswith(".safetensors"):
        ckpt = torch.load(args.checkpoint, map_location="cpu", weights_only=True)
        config = ckpt.get("config") if isinstance(ckpt, dict) else None
    heads = heads_from_config(config, state["patch_embed.proj.weight"].shape[0])
    print(f"export: {len(state)} encoder tensors written to {out}")
    if heads is None:
        print("note: the checkpoint does not record the attention heads; assuming width / 64")
    print("load it in timm (offline) with:")
    print(f"  import timm; model = {timm_one_liner(state, str(out), args.in_chans, heads)}")
    return 0
