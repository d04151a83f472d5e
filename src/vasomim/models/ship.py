"""Making a shipped model: a checkpoint the project's own commands produced -> ``vasomim/weights/<name>/``.

The folder layout and how models are found are in :mod:`vasomim.shipped`; ``vasomim ship`` is the
command line.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path
from typing import Any, Mapping

import torch

from vasomim import __version__, shipped
from vasomim.models.checkpoints import load_checkpoint, model_from_checkpoint, read_state_dict
from vasomim.models.export import encoder_pretrained_cfg, export_encoder, export_model_folder
from vasomim.models.timm_names import TIMM_SIZES
from vasomim.models.unet_mim import export_unet_encoder, unet_shipped_encoder

__all__ = ["render_card", "ship"]


def render_card(card: Mapping[str, Any]) -> str:
    """``MODEL_CARD.md`` from ``card.json``: every field a reader needs, in a fixed order."""
    lines = [f"# {card['name']}", "", card.get("summary", ""), ""]
    facts = [("kind", card["kind"]), ("architecture", card.get("architecture")),
             ("parameters", f"{card['parameters']:,}" if "parameters" in card else None),
             ("weights", card.get("dtype")), ("vasomim version", card.get("vasomim_version"))]
    lines += [f"- **{k}**: {v}" for k, v in facts if v is not None]
    lines += ["", "## Training data", "", card.get("data", "(not stated)"), ""]
    if card.get("licence"):
        lines += [f"Licence of the data: {card['licence']}", ""]
    lines += ["## Recipe", "", "```yaml", json.dumps(card.get("recipe", {}), indent=2), "```", ""]
    lines += ["## Reproduce", "", "```bash", *card.get("commands", []), "```", ""]
    scores = card.get("scores") or {}
    if scores:
        lines += ["## Scores", "", card.get("scores_protocol", ""), "", "| metric | value |", "|---|---:|"]
        lines += [f"| {k} | {v} |" for k, v in scores.items()]
        lines.append("")
    return "\n".join(lines)


def ship(checkpoint: str | os.PathLike, name: str, kind: str, card: Mapping[str, Any],
         root: str | os.PathLike | None = None) -> Path:
    """Write ``<root>/<name>/`` from a checkpoint: fp16 weights, ``card.json``, ``MODEL_CARD.md``.

    Args:
        checkpoint: ``segmentation``: a ``vasomim finetune`` checkpoint; ``encoder``: any checkpoint
            with a ViT encoder (a ``vasomim pretrain`` checkpoint, a fine-tuned one), or with a
            U-Net's (``model.arch: unet`` pre-training; its ``down`` blocks are shipped).
        name: The model's name (``vasomim-cimat``, ``vasomim-tiny``).
        kind: ``segmentation`` or ``encoder``.
        card: Card fields: ``summary``, ``data``, ``licence``, ``recipe``, ``commands``, ``scores``,
            ``scores_protocol``. ``name``, ``kind``, ``architecture``, ``parameters``, ``dtype`` and
            ``vasomim_version`` are filled in here.

    Returns:
        The folder written (a folder of the same name is replaced whole, never left half-written).
    """
    if kind not in shipped.KINDS:
        raise ValueError(f"kind must be one of {', '.join(shipped.KINDS)}, got {kind!r}")
    root = Path(root) if root is not None else shipped.WEIGHTS_DIR
    final, tmp = root / name, root / f".{name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    info: dict[str, Any] = {"name": name, "kind": kind, "dtype": "float16", "vasomim_version": __version__}
    if kind == "segmentation":
        model, config = model_from_checkpoint(checkpoint)
        export_model_folder(model, config, tmp / "model", dtype=torch.float16)
        info["architecture"] = config["network"]["arch"]
        state = model.state_dict()
    elif unet_shipped_encoder(ckpt := load_checkpoint(checkpoint)):  # a U-Net's encoder and its encoder.json
        state, info["architecture"] = export_unet_encoder(ckpt, tmp / "encoder.safetensors", torch.float16,
                                                          source=str(checkpoint))
    else:
        out = export_encoder(ckpt, tmp / "encoder.safetensors", in_chans=None, dtype=torch.float16,
                             source=str(checkpoint))
        state, _ = read_state_dict(out)
        config = ckpt.get("config") if isinstance(ckpt, dict) else None
        channels = state["patch_embed.proj.weight"].shape[1]
        grid = math.isqrt(state["pos_embed"].shape[1] - 1)
        width = state["patch_embed.proj.weight"].shape[0]
        arch = TIMM_SIZES.get(width, ("vit_base_patch16_224",))[0]
        pcfg = encoder_pretrained_cfg(arch, config, channels, grid)
        (tmp / "encoder.json").write_text(json.dumps(pcfg, indent=2) + "\n")
        info["architecture"] = f"ViT/16 encoder ({arch} layout), width {width}, {channels} channel(s)"
    info["parameters"] = int(sum(v.numel() for v in state.values() if v.is_floating_point()))
    full = {**dict(card), **info}
    (tmp / "card.json").write_text(json.dumps(full, indent=2) + "\n")
    (tmp / "MODEL_CARD.md").write_text(render_card(full))
    for item in tmp.rglob("*"):  # package data: readable by every user of an installation
        item.chmod(0o755 if item.is_dir() else 0o644)
    if final.exists():
        old = root / f".{name}.old"
        shutil.rmtree(old, ignore_errors=True)
        final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(final)
    return final
