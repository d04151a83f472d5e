"""Models that ship inside the package: where they are, what their cards say, how they are made.

Each shipped model is a folder ``vasomim/weights/<name>/`` with a ``card.json`` (what it is, how it
was trained, its scores, the command that reproduces it), ``MODEL_CARD.md`` (the same, for people)
and its weights in half precision:

* ``kind: segmentation``: ``model/`` (``model.safetensors`` + ``config.json``), what
  :func:`vasomim.load_model` reads (``vasomim predict``'s default model is ``vasomim-cimat``);
* ``kind: encoder``: ``encoder.safetensors`` (+ ``encoder.json``, timm's ``pretrained_cfg``), what
  ``vasomim finetune --init NAME`` starts from.

Weights are never edited by hand: :func:`vasomim.models.ship.ship` writes a folder from a
checkpoint that the project's own commands produced (``vasomim ship``), and nothing is downloaded
at run time. This module only finds and reads them, without torch, so that listing is instant.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

__all__ = ["ShippedModel", "WEIGHTS_DIR", "KINDS", "find", "list_shipped", "resolve_init"]

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
