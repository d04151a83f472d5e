"""Models that ship inside the package: where they are, what their cards say, how they are made.

Each shipped model is a folder ``vasomim/weights/<name>/`` with a ``card.json`` (what it is, how it
was trained, its scores, the command that reproduces it), ``MODEL_CARD.md`` (the same, for people)
and its weights in half precision:

* ``kind: segmentation``: ``model/`` (``model.safetensors`` + ``config.json``), what
  :func:`vasomim.load_model` reads (``vasomim predict``'s default model is ``vasomim-cimat``);
* ``kind: encoder``: ``encoder.safetensors`` (+ ``encoder.json``, timm's ``pretrained_cfg``), what
  ``vasomim finetune --init NAME`` starts from.

Weights are never edited by hand: :func:`ship` writes a folder from a checkpoint that the
project's own commands produced (``vasomim ship``), and nothing is downloaded at run time.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Mapping

import torch

from vasomim import __version__
from vasomim.models.checkpoints import load_checkpoint, model_from_checkpoint, read_state_dict
from vasomim.models.export import encoder_pretrained_cfg, export_encoder, export_model_folder
from vasomim.models.timm_names import TIMM_SIZES
from vasomim.models.unet_mim import export_unet_encoder, unet_shipped_encoder

__all__ = ["ShippedModel", "WEIGHTS_DIR", "find", "list_shipped", "resolve_init", "ship", "render_card"]

#: Where shipped models live (inside the installed package).
WEIGHTS_DIR = Path(str(resources.files("vasomim") / "weights"))
KINDS = ("segmentation", "encoder")


@dataclass(frozen=True)
class ShippedModel:
    """One shipped model: its folder and its card."""

    name: str
    path: Path
    card: dict

    @property
    def kind(self) -> str:
        return self.card["kind"]

    @property
    def weights(self) -> Path:
        """The model folder (segmentation) or the encoder file (encoder)."""
        return self.path / "model" if self.kind == "segmentation" else self.path / "encoder.safetensors"

    @property
    def size_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.path.rglob("*") if p.is_file())


def list_shipped(root: str | os.PathLike | None = None) -> list[ShippedModel]:
    """Every shipped model (folders with a readable ``card.json``), sorted by name."""
    root = Path(root) if root is not None else WEIGHTS_DIR
    found = []
    if root.is_dir():
        for folder in sorted(p for p in root.iterdir() if (p / "card.json").is_file()):
            try:
                card = json.loads((folder / "card.json").read_text(encoding="utf-8"))
            except ValueError:
                continue
            if isinstance(card, dict) and card.get("kind") in KINDS:
                found.append(ShippedModel(folder.name, folder, card))
    return found


def find(name: str, kind: str | None = None, root: str | os.PathLike | None = None) -> ShippedModel | None:
    """The shipped model called ``name`` (of ``kind`` when given), or ``None``."""
    for model in list_shipped(root):
        if model.name == name and (kind is None or model.kind == kind):
            return model
    return None


def resolve_init(init: str, root: str | os.PathLike | None = None) -> str:
    """``finetune --init``: a shipped encoder's name becomes its file, and so does a folder written by
    ``vasomim export CKPT --to DIR`` (its ``encoder.safetensors``); anything else is returned as is.

    Raises:
        ValueError: one line naming the folder, when ``init`` is a folder without ``encoder.safetensors``.
    """
    if Path(init).is_dir():
        encoder = Path(init) / "encoder.safetensors"
        if not encoder.is_file():
            raise ValueError(f"{init}: a folder to start from holds encoder.safetensors (vasomim export CKPT "
                             f"--to {init}); this one has none")
        return str(encoder)
    if init == "scratch" or Path(init).exists():
        return init
    model = find(init, "encoder", root)
    return str(model.weights) if model is not None else init


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
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    root = Path(root) if root is not None else WEIGHTS_DIR
    final, tmp = root / name, root / f".{name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    info: dict[str, Any] = {"name": name, "kind": kind, "dtype": "float16", "vasomim_version": __version__}
    if kind == "segmentation":
        model, config = model_from_checkpoint(checkpoint)
        export_model_folder(model, config, tmp / "model", dtype=torch.float16)
        info["architecture"] = config["network"]["arch"]
        state = model.state_dict()
    elif unet_shipped_encoder(checkpoint):  # a U-Net's encoder (down blocks) and its encoder.json
        state, info["architecture"] = export_unet_encoder(checkpoint, tmp / "encoder.safetensors", torch.float16)
    else:
        out = export_encoder(checkpoint, tmp / "encoder.safetensors", in_chans=None, dtype=torch.float16)
        state, _ = read_state_dict(out)
        ckpt = load_checkpoint(checkpoint)
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
