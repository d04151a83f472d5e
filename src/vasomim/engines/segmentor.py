"""Training the consistency segmentor: UNeXt-S on the anatomy pseudo-labels (VasoMIM stage 2).

The segmentor ``S`` of the anatomical consistency loss must be differentiable, so the (non-
differentiable) Sato/Frangi anatomy is distilled into a small UNeXt-S first: trained on the masks
that ``vasomim anatomy`` wrote, with ``0.5 * BCE + 0.5 * (1 - Dice)`` and Adam with polynomial decay,
then frozen during pre-training.  Its input convention (gray replicated to 3 channels, ImageNet
mean/std) stays with it: :func:`vasomim.models.unext.to_segmentor_input`.

Outputs in ``out``: ``segmentor.pth`` (final weights), ``last.pth`` (for ``--resume``), ``log.jsonl``
(one line per epoch) and ``summary.json`` (held-out Dice against the pseudo-labels).
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from torch.utils.data import DataLoader
from tqdm import tqdm

from vasomim.config import StrictModel, config_to_dict
from vasomim.data.datasets import SegmentationDataset
from vasomim.data.io import write_text_atomic
from vasomim.data.sources import AnatomySource
from vasomim.data.transforms import TransformConfig, build_transform
from vasomim.engines.common import (JsonlLogger, atomic_torch_save, kept_rng_state, rng_state, seed_everything,
                                    set_rng_state, tensorboard_writer, write_scalars)
from vasomim.inference import resolve_device
from vasomim.metrics import dice
from vasomim.models.checkpoints import model_from_checkpoint
from vasomim.models.unext import UNeXt, to_segmentor_input

logger = logging.getLogger(__name__)


class SegmentorConfig(StrictModel):
    """Parameters of ``vasomim train-segmentor``."""

    images: str = Field(..., description="images root that `vasomim anatomy` read")
    anatomy: str = Field(..., description="anatomy folder written by `vasomim anatomy`")
    out: str = Field("runs/segmentor", description="output folder")
    img_size: int = Field(256, ge=32, description="training resolution (square)")
    epochs: int = Field(200, ge=1)
    batch_size: int = Field(8, ge=1)
    lr: float = Field(1e-3, gt=0, description="Adam learning rate")
    weight_decay: float = Field(1e-4, ge=0)
    poly_power: float = Field(0.9, gt=0, description="lr = lr0 * (1 - it/total) ** power")
    val_fraction: float = Field(0.1, ge=0, lt=1, description="held-out share of the images")
    crop_scale: tuple[float, float] = Field((0.5, 1.0), description="RandomResizedCrop area range")
    workers: int = Field(0, ge=0, description="DataLoader workers")
    seed: int = 0
    device: str = Field("auto", description="auto, cpu or cuda")
    tensorboard: bool = Field(False, description="also log to OUT/tensorboard (the tensorboard extra)")


def seg_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """``0.5 * BCE-with-logits + 0.5 * (1 - soft Dice)``, the Dice computed per image then averaged."""
    bce = F.binary_cross_entropy_with_logits(logits, target)
    prob = torch.sigmoid(logits).flatten(1)
    t = target.flatten(1)
    dice = (2 * (prob * t).sum(1) + eps) / (prob.sum(1) + t.sum(1) + eps)
    return 0.5 * bce + 0.5 * (1 - dice.mean())


def poly_lr(base_lr: float, step: int, total: int, power: float) -> float:
    return base_lr * (1 - min(step, total) / total) ** power


def split_items(items: list, val_fraction: float, seed: int) -> tuple[list, list]:
    """Deterministic train/held-out split (a seeded permutation; at least one held-out item if asked)."""
    order = np.random.default_rng(seed).permutation(len(items))
    n_val = int(round(val_fraction * len(items)))
    if val_fraction > 0 and len(items) > 1:
        n_val = max(1, n_val)
    val = sorted(order[:n_val].tolist())
    train = sorted(order[n_val:].tolist())
    return [items[i] for i in train], [items[i] for i in val]


def load_segmentor(path: str | Path, device: str | torch.device = "cpu"):
    """A UNeXt-S (eval mode) from a plain state dict (the published checkpoint) or a vasomim segmentor checkpoint."""
    return model_from_checkpoint(path, kind="segmentor")[0].to(device)


@torch.no_grad()
def evaluate_dice(model, loader, device) -> float:
    """Mean per-image hard Dice (threshold 0.5) of the model against the loader's masks.

    Leaves every random stream as it found them: iterating a DataLoader draws its base seed from the
    global torch generator, which also drives the training crops, so scoring would otherwise move
    the training run that calls it.
    """
    model.eval()
    scores = []
    with kept_rng_state():
        for batch in loader:
            logits = model(to_segmentor_input(batch["image"].to(device)))
            pred = (logits > 0).cpu().numpy()[:, 0]
            gt = batch["mask"].numpy()[:, 0] > 0.5
            scores.extend(dice(p, g) for p, g in zip(pred, gt))
    return float(np.mean(scores)) if scores else float("nan")


def train_segmentor(cfg: SegmentorConfig, resume: bool = False, progress: bool = True) -> dict:
    """Train UNeXt-S on the pseudo-labels; returns the summary (also written to ``summary.json``)."""
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    device = resolve_device(cfg.device)
    seed_everything(cfg.seed)

    items = AnatomySource(cfg.images, cfg.anatomy).items
    if len(items) < 2:
        raise ValueError(f"{cfg.anatomy}: need at least 2 images with anatomy masks, found {len(items)}")
    train_items, val_items = split_items(items, cfg.val_fraction, cfg.seed)
    # the datasets give gray in [0, 1]; the segmentor's own convention is applied in the loop
    tcfg = TransformConfig(size=cfg.img_size, scale=cfg.crop_scale, channels=1, mean=(0.0,), std=(1.0,))
    train_ds = SegmentationDataset(train_items, build_transform(tcfg, train=True), require_masks=True)
    val_ds = SegmentationDataset(val_items, build_transform(tcfg, train=False), require_masks=True)
    g = torch.Generator().manual_seed(cfg.seed)
    train_dl = DataLoader(train_ds, batch_size=cfg.batch_size, shuffle=True, drop_last=len(train_ds) > cfg.batch_size,
                          num_workers=cfg.workers, generator=g, persistent_workers=cfg.workers > 0)
    val_dl = DataLoader(val_ds, batch_size=cfg.batch_size, num_workers=0)

    model = UNeXt().to(device)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    total = cfg.epochs * len(train_dl)
    start_epoch, step = 0, 0
    if resume and (out / "last.pth").is_file():
        ck = torch.load(out / "last.pth", map_location="cpu", weights_only=True)
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        start_epoch, step = ck["epoch"], ck["step"]
        g.set_state(ck["loader_generator"])
        set_rng_state(ck["rng"])
        logger.info(f"[train-segmentor] resumed from epoch {start_epoch}")

    t0 = time.perf_counter()
    with JsonlLogger(out / "log.jsonl") as log, \
            tensorboard_writer(cfg.tensorboard, out / "tensorboard", "train-segmentor") as writer:
        bar = tqdm(range(start_epoch, cfg.epochs), desc="segmentor", unit="epoch", disable=not progress, file=sys.stderr,
                   initial=start_epoch, total=cfg.epochs)
        for epoch in bar:
            model.train()
            losses = []
            for batch in train_dl:
                for group in opt.param_groups:
                    group["lr"] = poly_lr(cfg.lr, step, total, cfg.poly_power)
                x = to_segmentor_input(batch["image"].to(device))
                loss = seg_loss(model(x), batch["mask"].to(device))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                losses.append(loss.item())
                step += 1
            record = {"epoch": epoch + 1, "step": step, "lr": opt.param_groups[0]["lr"], "loss": float(np.mean(losses))}
            if val_items and ((epoch + 1) % max(1, cfg.epochs // 10) == 0 or epoch + 1 == cfg.epochs):
                record["val_dice"] = evaluate_dice(model, val_dl, device)
            log.log(record)
            write_scalars(writer, "segmentor", record, epoch + 1)
            bar.set_postfix(loss=f"{record['loss']:.3f}", **({"val_dice": f"{record['val_dice']:.3f}"} if "val_dice" in record else {}))
            atomic_torch_save(
                {"model": model.state_dict(), "optimizer": opt.state_dict(), "epoch": epoch + 1, "step": step,
                 "config": config_to_dict(cfg), "rng": rng_state(), "loader_generator": g.get_state()},
                out / "last.pth",
            )
    val_dice = evaluate_dice(model, val_dl, device) if val_items else None
    atomic_torch_save({"model": model.state_dict(), "config": config_to_dict(cfg), "kind": "unext_segmentor",
                       "val_dice": val_dice}, out / "segmentor.pth")
    summary = {"train_images": len(train_items), "val_images": len(val_items), "val_dice_vs_pseudo_labels": val_dice,
               "epochs": cfg.epochs, "wall_time_s": round(time.perf_counter() - t0, 1), "checkpoint": str(out / "segmentor.pth")}
    write_text_atomic(out / "summary.json", json.dumps(summary, indent=2))
    return summary
