"""A pre-training run's folder: claiming it, resuming it with changed settings, trimming its log.

``docs/pretrain.md`` describes the folder (``config.json``, ``log.jsonl``, the checkpoints).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from vasomim.data.io import write_text_atomic

__all__ = ["RUN_FILES", "SHAPE_KEYS", "UNET_SHAPE_KEYS", "claim_run_dir", "config_changes", "resume_changes",
           "truncate_log"]

SHAPE_KEYS = ("data.img_size", "data.in_chans", "model.size", "model.embed_dim", "model.depth",
              "model.num_heads", "model.patch_size", "model.decoder_embed_dim", "model.decoder_depth",
              "model.decoder_num_heads")
# the same for a U-Net run (model.arch: unet; the U-Net takes any image size)
UNET_SHAPE_KEYS = ("data.in_chans", "model.arch", "model.base_channels", "model.levels", "model.norm")
RUN_FILES = ("checkpoint-last.pth", "checkpoint-final.pth", "log.jsonl", "config.json")


def config_changes(old: dict, new: dict, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two plain configs."""
    keys = sorted(set(old) | set(new))
    changes = []
    for k in keys:
        a, b = old.get(k), new.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            changes += config_changes(a, b, f"{prefix}{k}.")
        elif a != b:
            changes.append(f"{prefix}{k}")
    return changes


def _dotted(config: dict, key: str):
    for part in key.split("."):
        config = config.get(part) if isinstance(config, dict) else None
    return config


def resume_changes(old: dict, new: dict, source: Path) -> dict[str, list]:
    """``{key: [old, new]}`` for the settings that differ between a checkpoint's config and this run's.

    Raises:
        ValueError: one line naming the first key of :data:`SHAPE_KEYS` that differs (the
            checkpoint's weights would not fit the new model).
    """
    changes = {k: [_dotted(old, k), _dotted(new, k)] for k in config_changes(old, new)}
    unet = "unet" in (_dotted(old, "model.arch"), _dotted(new, "model.arch"))
    for key in UNET_SHAPE_KEYS if unet else SHAPE_KEYS:
        if key in changes:
            before, now = changes[key]
            raise ValueError(f"{source}: cannot resume with {key}={now}: the run was trained with {key}={before} "
                             "and the weights' shapes depend on it (keep it, or start a new run with another "
                             "out or --overwrite)")
    return changes


def claim_run_dir(run_dir: Path, resume: bool, overwrite: bool, is_main: bool) -> None:
    """Refuse a folder that holds a run unless resuming or overwriting; overwriting deletes its files."""
    held = [name for name in RUN_FILES if (run_dir / name).exists()]
    if resume and overwrite:
        raise ValueError("give either --resume or --overwrite, not both")
    if not held or resume:
        return
    if not overwrite:
        raise ValueError(f"{run_dir}: holds a previous run ({', '.join(held)}); pass --resume to continue it, "
                         "--overwrite to replace it, or choose another out")
    if is_main:
        for name in held:
            (run_dir / name).unlink()
        shutil.rmtree(run_dir / "tensorboard", ignore_errors=True)


def truncate_log(path: Path, epochs_done: int) -> None:
    """Keep the log lines of epochs up to `epochs_done` (a resumed run redoes the later ones).

    An event line is kept when it applies from an epoch up to `epochs_done`."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
            if record.get("from_epoch", record.get("epoch", 0)) <= epochs_done:
                kept.append(line)
        except json.JSONDecodeError:  # a line torn by the interruption
            continue
    write_text_atomic(path, "".join(f"{line}\n" for line in kept))
