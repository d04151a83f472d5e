"""Fine-tuning for vessel segmentation (VasoMIM stage 4), with k-fold cross-validation over seeds.

One engine for every arm of the comparison, each a configuration:

* ``arch: vit_unet`` (:class:`~vasomim.models.segmentation.ViTUNet`) with ``init: scratch``, or
  ``init: <checkpoint>`` of any flavour :func:`~vasomim.models.checkpoints.load_encoder_weights`
  reads (vasomim or original MAE/VasoMIM pre-training, timm ``.pth``/``.safetensors``);
* SPT (segmentor-based pre-training): fine-tune the same network on anatomy pseudo-labels first
  (``data: {type: anatomy, images: ..., anatomy: ...}``), then fine-tune again with
  ``init: <that run's best.pth>``: a vasomim segmentation checkpoint of the same architecture
  loads the *whole* network, decoder included;
* ``arch: unet``: the plain convolutional U-Net baseline (``init`` scratch or a U-Net checkpoint).

Training (the paper's fine-tuning recipe): Dice + BCE loss, AdamW (lr 1e-4, wd 0.05 except norms,
biases and tokens), linear warm-up then half-cycle cosine per iteration, optional layer-wise lr
decay, joint augmentation (RandomResizedCrop, flip, photometric jitter) from
:mod:`vasomim.data.transforms`. Every ``val_every`` epochs (and before training, epoch 0, and at
the last epoch) the held-out images are predicted as ``vasomim predict`` does
(:func:`vasomim.inference.predict_images`: aspect ratio kept, at the fixed scale ``img_size /``
the median side of the training images, in windows of ``img_size``), thresholded at 0.5 at each
image's original resolution, and scored with DSC and clDice (:mod:`vasomim.metrics`); the
best-by-DSC weights are kept in ``best.pth``.

Which weights are scored on the held-out images (``select``): ``best`` (``best.pth``, the epoch
with the highest held-out DSC, as papers usually report; optimistic, since the held-out images
pick the epoch) or ``last`` (the final epoch's weights, ``last.pth``; the held-out images choose
nothing, an unbiased estimate).

Cross-validation: the labelled items (sorted by id) are permuted with ``split_seed`` and cut
into ``folds`` near-equal parts; fold ``k`` validates on part ``k`` and trains on the rest. With
``folds: 1`` a ``val_fraction`` of the items is held out instead. ``label_fraction`` keeps a
prefix of a seeded permutation of each fold's training part (so smaller fractions are subsets of
larger ones). Splits and subsets depend on ``split_seed`` only, never on the training seed, so
the spread over ``seeds`` is training noise.

Outputs under ``out``:

``seed{s}/fold{k}/``
    ``best.pth`` (``model``, ``config`` with ``network`` and ``input`` to rebuild it, ``epoch``,
    ``best_metric``), ``last.pth`` (adds optimizer, step, RNG and loader states for
    ``--resume``), ``log.jsonl`` (one line per epoch, epoch 0 = the untrained model);
``per_image.csv``
    every held-out image of every run scored with that run's selected checkpoint;
``summary.json``
    per run and overall: mean ± sample std over the (seed, fold) runs of the per-run mean DSC and
    clDice.

On CPU with ``workers: 0`` a run is deterministic: a resumed run ends with the same weights as
an uninterrupted one.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field, field_validator, model_validator
from torch import nn

from vasomim.config import StrictModel, config_to_dict
from vasomim.data.sources import Item
from vasomim.engines.evaluate import (METRICS, csv_text, format_table, score_items, summarize_rows,
                                      write_atomic)
from vasomim.inference import (build_network, input_spec, model_from_checkpoint, reference_scale,
                               resolve_device, strip_wrappers)
from vasomim.metrics import summarize
from vasomim.shipped import resolve_init

logger = logging.getLogger(__name__)

__all__ = [
    "AugmentConfig",
    "FinetuneConfig",
    "RunResult",
    "build_model_from_checkpoint",
    "build_network",
    "dice_bce_loss",
    "finetune",
    "format_results",
    "initialize",
    "kfold_splits",
    "network_spec",
    "subsample",
]

CHECKPOINT_KIND = "vasomim_segmentation"

#: Config keys that may change between an interrupted run and its resume.
RESUMABLE_CHANGES = ("out", "device", "workers", "seeds", "val_every", "save_every", "epochs", "select",
                     "only_folds", "init_decoder")  # init_decoder: read at the start only (and older runs lack it)


class AugmentConfig(StrictModel):
    """Training augmentation (see :class:`~vasomim.data.transforms.TransformConfig`)."""

    scale: tuple[float, float] = Field((0.3, 1.0), description="RandomResizedCrop area range")
    zoom: tuple[float, float] | None = Field(
        None, description="crop at the inference scale instead, zoomed by a factor in this range "
        "(e.g. [0.8, 1.25]); with input_scale 1 these are native-resolution crops")
    ratio: tuple[float, float] = Field((3 / 4, 4 / 3), description="crop aspect-ratio range")
    hflip: float = Field(0.5, ge=0, le=1, description="horizontal flip probability")
    photometric: bool = Field(True, description="gamma, contrast, brightness and noise jitter")
    brightness: float = Field(0.1, ge=0)
    contrast: float = Field(0.2, ge=0)
    gamma: tuple[float, float] = (0.8, 1.25)
    noise: float = Field(0.02, ge=0)


class FinetuneConfig(StrictModel):
    """Parameters of ``vasomim finetune`` (flat keys; ``augment`` is a section)."""

    data: str | dict | list = Field(..., description="labelled data: folder, YAML spec or spec mapping(s)")
    val_data: str | dict | list | None = Field(
        None, description="held-out labelled images scored instead of a split of data (e.g. ARCADE's "
        "labelled/val); every image of data then trains (folds must be 1)")
    out: str = Field("runs/finetune", description="output folder")
    # network
    arch: Literal["vit_unet", "unet"] = "vit_unet"
    size: Literal["tiny", "small", "base", "large"] = Field("tiny", description="ViT size")
    embed_dim: int | None = Field(None, ge=16, description="custom ViT width")
    depth: int | None = Field(None, ge=1, description="custom ViT depth")
    num_heads: int | None = Field(None, ge=1, description="custom ViT heads")
    taps: tuple[int, int, int, int] | None = Field(None, description="encoder blocks feeding the decoder")
    stem_levels: int = Field(3, ge=0, le=3, description="conv-stem skips: none (0), 1/1 (+1/2, +1/4)")
    decoder_channels: tuple[int, int, int, int, int] = (256, 128, 64, 32, 16)
    drop_path_rate: float = Field(0.0, ge=0, lt=1)
    base_channels: int = Field(16, ge=1, description="unet: channels of the first level")
    levels: int = Field(4, ge=1, description="unet: down-sampling steps")
    norm: Literal["batch", "group", "instance"] = "batch"
    img_size: int = Field(224, ge=16, description="square training window (and sliding-window size)")
    input_scale: float | None = Field(
        None, gt=0, description="network pixels per image pixel at training (zoom crops) and inference; "
        "None: img_size / the training images' median side (a whole image fits one window); 1: native")
    in_chans: Literal[1, 3] = 1
    init: str = Field("scratch", description="'scratch', a checkpoint path or a shipped encoder (vasomim models)")
    init_decoder: bool = Field(False, description="unet: also load the decoder of a U-Net pre-training checkpoint")
    # optimisation
    epochs: int = Field(100, ge=1)
    batch_size: int = Field(8, ge=1)
    lr: float = Field(1e-4, gt=0, description="peak AdamW learning rate")
    min_lr: float = Field(0.0, ge=0, description="final learning rate of the cosine")
    weight_decay: float = Field(0.05, ge=0)
    warmup_epochs: float = Field(0.0, ge=0)
    layer_decay: float = Field(1.0, gt=0, le=1, description="layer-wise lr decay (1.0 = off)")
    bce_weight: float = Field(1.0, ge=0)
    dice_weight: float = Field(1.0, ge=0)
    augment: AugmentConfig = AugmentConfig()
    amp: bool = Field(True, description="bfloat16 autocast on CUDA (ignored on CPU)")
    # validation and protocol
    val_every: int = Field(5, ge=1, description="validate every K epochs (and at the last)")
    seeds: list[int] = Field([0], min_length=1, description="training seeds")
    folds: int = Field(1, ge=1, description="k-fold cross-validation; 1 = one val_fraction split")
    val_fraction: float = Field(0.2, ge=0, lt=1, description="held-out share when folds = 1")
    split_seed: int = Field(0, description="seed of the fold assignment and label subsets")
    label_fraction: float = Field(1.0, gt=0, le=1, description="share of each training part used")
    only_folds: list[int] | None = Field(
        None, description="run these folds only (0-based), e.g. to probe a recipe on one fold or to "
        "share a cross-validation between machines; the report covers the folds run")
    tta: bool = Field(False, description="validation and scoring average with the flipped image")
    select: Literal["best", "last"] = Field(
        "best", description="weights scored on the held-out images: best (highest held-out DSC; "
        "optimistic) or last (final epoch; unbiased)")
    # running
    eval_batch_size: int = Field(8, ge=1)
    save_every: int = Field(1, ge=1, description="write last.pth every K epochs (and at the end)")
    device: str = Field("auto", description="auto, cpu, cuda, cuda:1, ...")
    workers: int = Field(0, ge=0, description="DataLoader worker processes")
    tensorboard: bool = Field(False, description="also log to <run>/tensorboard (the tensorboard extra)")

    @field_validator("seeds")
    @classmethod
    def _unique_seeds(cls, v: list[int]) -> list[int]:
        if len(set(v)) != len(v):
            raise ValueError(f"seeds must be distinct, got {v}")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> "FinetuneConfig":
        if self.arch == "vit_unet" and self.img_size % 16:
            raise ValueError(f"img_size {self.img_size} must be divisible by the patch size 16")
        if self.val_data is not None and self.folds != 1:
            raise ValueError(f"val_data gives the held-out images: folds must be 1, got {self.folds}")
        if self.only_folds is not None and any(not 0 <= f < self.folds for f in self.only_folds):
            raise ValueError(f"only_folds {self.only_folds} must be fold numbers in 0..{self.folds - 1}")
        if self.init_decoder and self.arch != "unet":
            raise ValueError("init_decoder applies to arch unet (a vit_unet loads a segmentation checkpoint's decoder "
                             "by itself)")
        if self.arch == "unet" and self.img_size % 2**self.levels:
            raise ValueError(f"img_size {self.img_size} must be divisible by 2**levels = {2**self.levels}")
        return self


# ----------------------------------------------------------------------------- network & init


def network_spec(cfg: FinetuneConfig) -> dict:
    """Keyword arguments of :func:`~vasomim.models.segmentation.build_segmentation_model` (plain data)."""
    if cfg.arch == "unet":
        return {"arch": "unet", "in_chans": cfg.in_chans, "base_channels": cfg.base_channels,
                "levels": cfg.levels, "norm": cfg.norm}
    spec = {"arch": "vit_unet", "size": cfg.size, "img_size": cfg.img_size, "in_chans": cfg.in_chans,
            "stem_levels": cfg.stem_levels, "decoder_channels": list(cfg.decoder_channels),
            "norm": cfg.norm, "drop_path_rate": cfg.drop_path_rate}
    for key in ("embed_dim", "depth", "num_heads", "taps"):
        value = getattr(cfg, key)
        if value is not None:
            spec[key] = list(value) if isinstance(value, tuple) else value
    return spec


def initialize(model: nn.Module, init: str, arch: str, init_decoder: bool = False) -> list[str]:
    """Fill ``model`` from ``init``; return one line per thing done (for the log).

    * ``"scratch"``: nothing.
    * a shipped encoder's name (``vasomim models``): its weights, as below.
    * ``vit_unet``: the encoder from any checkpoint flavour
      (:func:`~vasomim.models.checkpoints.load_encoder_weights`, position embeddings and channels
      adapted); when the checkpoint is a segmentation checkpoint (``encoder.*`` keys) whose
      decoder has exactly the model's decoder names and shapes, the decoder too, so the whole
      network starts from it (SPT). A decoder that differs is left random and named.
    * ``unet``: a U-Net state dict of the same shape, loaded strictly; or a U-Net pre-training
      checkpoint or shipped U-Net encoder: its encoder, plus its decoder with ``init_decoder``
      (:func:`~vasomim.models.unet_mim.load_pretrained_unet`).

    Parameters
    ----------
    model:
        The freshly built network.
    init:
        ``"scratch"`` or a checkpoint path.
    arch:
        ``"vit_unet"`` or ``"unet"``.
    init_decoder:
        ``unet``: also load a pre-training checkpoint's decoder.

    Raises
    ------
    FileNotFoundError, ValueError:
        one line naming the checkpoint, when it cannot be read or does not fit.
    """
    from vasomim.models.checkpoints import load_encoder_weights, read_state_dict
    from vasomim.models.unet_mim import is_unet_state, load_pretrained_unet

    if init == "scratch":
        return ["init: scratch (random weights)"]
    init = resolve_init(init)  # a shipped encoder's name (vasomim-tiny) -> its file
    state, source = read_state_dict(init)
    state = strip_wrappers(state)
    if arch == "unet" and "head.weight" not in state and is_unet_state(state):  # pre-trained, not fine-tuned
        return load_pretrained_unet(model, state, source, init_decoder)
    if arch == "unet":
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            reason = str(exc).splitlines()[0] if str(exc) else "state dict mismatch"
            raise ValueError(f"{source}: not a U-Net checkpoint of this shape (a unet arm starts from "
                             f"'scratch' or a unet checkpoint): {reason}") from None
        return [f"init: whole U-Net from {source} ({len(state)} tensors)"]
    report = load_encoder_weights(model, init)
    notes = [f"init: encoder from {source}: {len(report.loaded)} tensors loaded"
             + (f", adapted {'; '.join(report.adapted)}" if report.adapted else "")]
    if any(k.startswith("encoder.") for k in state):
        ckpt_dec = {k: v for k, v in state.items() if not k.startswith("encoder.")}
        own_dec = {k: v for k, v in model.state_dict().items() if not k.startswith("encoder.")}
        differ = sorted(set(ckpt_dec) ^ set(own_dec)) + sorted(
            k for k in set(ckpt_dec) & set(own_dec) if ckpt_dec[k].shape != own_dec[k].shape)
        if differ:
            notes.append(f"init: decoder of {source} not loaded (differs from this network at "
                         f"{len(differ)} keys, e.g. {differ[0]}); decoder starts random")
        else:
            model.load_state_dict(ckpt_dec, strict=False)
            notes.append(f"init: decoder from {source}: {len(ckpt_dec)} tensors loaded (whole network)")
    return notes


#: The checkpoint loader lives in :mod:`vasomim.inference`; this name is kept for callers.
build_model_from_checkpoint = model_from_checkpoint


# ----------------------------------------------------------------------------- protocol


def kfold_splits(n: int, folds: int, seed: int = 0,
                 val_fraction: float = 0.2) -> list[tuple[list[int], list[int]]]:
    """Deterministic train/validation index splits of ``n`` items.

    Parameters
    ----------
    n:
        Number of items.
    folds:
        ``k >= 2``: a seeded permutation cut into ``k`` near-equal parts; split ``i`` validates on
        part ``i`` (every item is validated exactly once). ``1``: one split holding out
        ``round(val_fraction * n)`` items (at least one when ``val_fraction > 0`` and ``n > 1``).
    seed:
        Seed of the permutation.
    val_fraction:
        Held-out share for ``folds == 1``.

    Returns
    -------
    ``[(train_indices, val_indices), ...]``, each sorted.
    """
    if folds > 1 and n < folds:
        raise ValueError(f"{folds}-fold cross-validation needs at least {folds} labelled images, got {n}")
    perm = np.random.default_rng(seed).permutation(n)
    if folds == 1:
        n_val = int(round(val_fraction * n))
        if val_fraction > 0 and n > 1:
            n_val = max(1, n_val)
        parts = [perm[:n_val]]
    else:
        parts = np.array_split(perm, folds)
    return [(sorted(set(range(n)) - set(p.tolist())), sorted(p.tolist())) for p in parts]


def subsample(indices: Sequence[int], fraction: float, seed: int | Sequence[int]) -> list[int]:
    """Keep ``max(1, round(fraction * len))`` of ``indices``: a prefix of a seeded permutation.

    Parameters
    ----------
    indices:
        The training part of a split.
    fraction:
        Share kept (1.0 keeps all).
    seed:
        Seed (or seed sequence) of the permutation; a smaller fraction with the same seed keeps a
        subset.
    """
    if fraction >= 1.0:
        return list(indices)
    keep = max(1, int(round(fraction * len(indices))))
    perm = np.random.default_rng(seed).permutation(len(indices))[:keep]
    return sorted(indices[i] for i in perm)


def dice_bce_loss(logits: torch.Tensor, target: torch.Tensor, bce_weight: float = 1.0,
                  dice_weight: float = 1.0, eps: float = 1.0) -> torch.Tensor:
    """``bce_weight * BCE-with-logits + dice_weight * (1 - soft Dice)``.

    The soft Dice ``(2 Σ p t + eps) / (Σ p + Σ t + eps)`` is computed per image, then averaged;
    ``eps = 1`` keeps an image without vessels from dominating.

    Parameters
    ----------
    logits:
        ``(B, 1, H, W)`` network output.
    target:
        ``(B, 1, H, W)`` 0/1 masks.
    bce_weight, dice_weight:
        Weights of the two terms.
    eps:
        Smoothing of the soft Dice.
    """
    logits = logits.float()
    bce = F.binary_cross_entropy_with_logits(logits, target)
    prob = torch.sigmoid(logits).flatten(1)
    t = target.flatten(1)
    dice = (2 * (prob * t).sum(1) + eps) / (prob.sum(1) + t.sum(1) + eps)
    return bce_weight * bce + dice_weight * (1 - dice.mean())


# ----------------------------------------------------------------------------- one run


@dataclass
class RunResult:
    """One (seed, fold) run.

    Attributes
    ----------
    seed, fold:
        Which run.
    n_train, n_val:
        Images trained on and held out.
    best_epoch:
        Epoch of ``best.pth`` (the last epoch when nothing is held out).
    best_val_dice:
        Its held-out DSC (``None`` without validation).
    last_val_dice:
        Held-out DSC of the final epoch (``None`` without validation).
    checkpoint:
        Path of the selected checkpoint: ``best.pth``, or ``last.pth`` with ``select: last``.
    selected_epoch:
        Its epoch.
    rows:
        Per-image scores of the selected checkpoint on the held-out images.
    wall_s:
        Training time of this invocation in seconds.
    """

    seed: int
    fold: int
    n_train: int
    n_val: int
    best_epoch: int
    best_val_dice: float | None
    last_val_dice: float | None
    checkpoint: str
    selected_epoch: int = 0
    rows: list[dict] = field(default_factory=list)
    wall_s: float = 0.0

    def means(self) -> dict[str, float]:
        """Mean of each metric over this run's held-out images (empty without them)."""
        if not self.rows:
            return {}
        return {m: float(np.mean([r[m] for r in self.rows])) for m in METRICS}


def _transform_config(cfg: FinetuneConfig, base_scale: float = 1.0):
    from vasomim.data.transforms import TransformConfig

    a = cfg.augment
    return TransformConfig(size=cfg.img_size, channels=cfg.in_chans, scale=a.scale, zoom=a.zoom,
                           base_scale=base_scale, ratio=a.ratio,
                           hflip=a.hflip, photometric=a.photometric, brightness=a.brightness,
                           contrast=a.contrast, gamma=a.gamma, noise=a.noise)


def _checkpoint_config(cfg: FinetuneConfig, scale: float | None) -> dict:
    return {**config_to_dict(cfg), "network": network_spec(cfg),
            "input": input_spec(cfg.img_size, cfg.in_chans, scale)}


def _inference_scale(items: list[Item], img_size: int) -> float:
    """:func:`~vasomim.inference.reference_scale` of the training images (sizes from their headers)."""
    from vasomim.data.io import image_info

    infos = [image_info(it.image_path) for it in items]
    return reference_scale([(i.height, i.width) for i in infos], img_size)


def _check_resumable(saved: dict, cfg: FinetuneConfig, where: Path) -> None:
    now = config_to_dict(cfg)
    differ = sorted(k for k in now if k not in RESUMABLE_CHANGES and saved.get(k) != now[k])
    if differ:
        raise ValueError(f"{where}: cannot resume, the config differs in {', '.join(differ)} "
                         f"(saved {', '.join(f'{k}={saved.get(k)!r}' for k in differ)})")
    if saved.get("epochs") != cfg.epochs:
        logger.info(f"[finetune] {where}: epochs {saved.get('epochs')} -> {cfg.epochs}: the cosine "
                    "schedule is stretched from here on")


def _validate(model, items, cfg, device, spec: dict) -> dict[str, float]:
    res = score_items(model, items, spec, cfg.eval_batch_size, device, tta=cfg.tta)
    if res.failures:
        raise ValueError(f"validation images failed: {res.failures[0]}")
    m = summarize_rows(res.rows, ("dice", "cldice"))
    return {"val_dice": m["dice"]["mean"], "val_cldice": m["cldice"]["mean"]}


def _train_run(cfg: FinetuneConfig, seed: int, fold: int, train_items: list[Item],
               val_items: list[Item], run_dir: Path, resume: bool, progress: bool,
               max_epochs: int | None) -> tuple[RunResult | None, int]:
    """Train one (seed, fold) for at most ``max_epochs`` more epochs (``None``: no limit).

    Returns the result (``None`` when the run stopped unfinished) and the epochs trained here.
    """
    from torch.utils.data import DataLoader
    from tqdm import tqdm

    from vasomim.data.datasets import SegmentationDataset
    from vasomim.data.transforms import build_transform
    from vasomim.engines.common import (JsonlLogger, atomic_torch_save, cosine_lr, rng_state,
                                        seed_everything, set_rng_state, tensorboard_writer, write_scalars)
    from vasomim.models.segmentation import param_groups_lrd

    device = resolve_device(cfg.device)
    last_path, best_path = run_dir / "last.pth", run_dir / "best.pth"
    if last_path.exists() and not resume:
        raise ValueError(f"{run_dir}: holds a previous run (last.pth); pass --resume to continue it "
                         "or choose another out")
    resuming = resume and last_path.exists()
    seed_everything(seed)
    model = build_network(network_spec(cfg))
    notes = [] if resuming else initialize(model, cfg.init, cfg.arch, cfg.init_decoder)
    # channels-last convolutions: 11% (ViT U-Net) to 17% (CNN U-Net) faster steps on a 2-core CPU
    model.to(device, memory_format=torch.channels_last)
    opt = torch.optim.AdamW(param_groups_lrd(model, cfg.lr, cfg.weight_decay, cfg.layer_decay),
                            lr=cfg.lr, betas=(0.9, 0.999))
    scale = cfg.input_scale or _inference_scale(train_items, cfg.img_size)
    dataset = SegmentationDataset(train_items, build_transform(_transform_config(cfg, scale), train=True),
                                  require_masks=True)
    gen = torch.Generator().manual_seed(seed)
    loader = DataLoader(dataset, batch_size=min(cfg.batch_size, len(dataset)), shuffle=True,
                        drop_last=len(dataset) > cfg.batch_size, num_workers=cfg.workers,
                        generator=gen, pin_memory=device.type == "cuda")
    steps_per_epoch = len(loader)
    total, warmup = cfg.epochs * steps_per_epoch, int(round(cfg.warmup_epochs * steps_per_epoch))
    use_amp = cfg.amp and device.type == "cuda"
    ck_config = _checkpoint_config(cfg, scale)

    start_epoch, step, best, best_epoch, last_val = 0, 0, None, 0, None
    if resuming:
        ck = torch.load(last_path, map_location="cpu", weights_only=True)
        _check_resumable(ck["config"], cfg, run_dir)
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        gen.set_state(ck["loader_generator"])
        set_rng_state(ck["rng"])
        start_epoch, step = ck["epoch"], ck["step"]
        best, best_epoch, last_val = ck["best_metric"], ck["best_epoch"], ck["last_val_dice"]
        notes = [f"resumed from {last_path} at epoch {start_epoch}"]
    if max_epochs == 0 and start_epoch < cfg.epochs:
        return None, 0

    t0 = time.perf_counter()
    with JsonlLogger(run_dir / "log.jsonl") as log, \
            tensorboard_writer(cfg.tensorboard, run_dir / "tensorboard", "finetune") as writer:
        for note in notes:
            log.log({"event": note})
            if progress:
                logger.info(f"[finetune] seed {seed} fold {fold}: {note}")
        if start_epoch == 0 and val_items:
            rec = _validate(model, val_items, cfg, device, ck_config["input"])
            log.log({"epoch": 0, **rec})
            last_val = rec["val_dice"]
        bar = tqdm(range(start_epoch, cfg.epochs), desc=f"seed {seed} fold {fold}", unit="epoch",
                   initial=start_epoch, total=cfg.epochs, disable=not progress, file=sys.stderr)
        for epoch in bar:
            model.train()
            losses = []
            t_epoch = time.perf_counter()
            for batch in loader:
                lr = cosine_lr(step, total, warmup, cfg.lr, cfg.min_lr)
                for group in opt.param_groups:
                    group["lr"] = lr * group["lr_scale"]
                x = batch["image"].to(device, non_blocking=True, memory_format=torch.channels_last)
                y = batch["mask"].to(device, non_blocking=True)
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
                    logits = model(x)
                loss = dice_bce_loss(logits, y, cfg.bce_weight, cfg.dice_weight)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                losses.append(loss.item())
                step += 1
            done = epoch + 1
            rec = {"epoch": done, "step": step, "lr": lr, "loss": float(np.mean(losses)),
                   "epoch_s": round(time.perf_counter() - t_epoch, 3)}
            if val_items and (done % cfg.val_every == 0 or done == cfg.epochs):
                rec.update(_validate(model, val_items, cfg, device, ck_config["input"]))
                last_val = rec["val_dice"]
                if best is None or rec["val_dice"] > best:
                    best, best_epoch = rec["val_dice"], done
                    rec["best"] = True
                    atomic_torch_save({"model": model.state_dict(), "config": ck_config,
                                       "epoch": done, "best_metric": best, "kind": CHECKPOINT_KIND},
                                      best_path)
            if not val_items and done == cfg.epochs:
                best_epoch = done
                atomic_torch_save({"model": model.state_dict(), "config": ck_config, "epoch": done,
                                   "best_metric": None, "kind": CHECKPOINT_KIND}, best_path)
            log.log(rec)
            write_scalars(writer, "finetune", rec, done)
            bar.set_postfix(loss=f"{rec['loss']:.3f}",
                            **({"dice": f"{rec['val_dice']:.3f}"} if "val_dice" in rec else {}),
                            **({"best": f"{best:.3f}"} if best is not None else {}))
            stopping = max_epochs is not None and done - start_epoch >= max_epochs
            if done % cfg.save_every == 0 or done == cfg.epochs or stopping:
                atomic_torch_save({"model": model.state_dict(), "optimizer": opt.state_dict(),
                                   "epoch": done, "step": step, "rng": rng_state(),
                                   "loader_generator": gen.get_state(), "best_metric": best,
                                   "best_epoch": best_epoch, "last_val_dice": last_val,
                                   "config": ck_config, "kind": CHECKPOINT_KIND}, last_path)
            if stopping and done < cfg.epochs:
                bar.close()
                return None, done - start_epoch
        bar.close()
    wall = time.perf_counter() - t0

    take_last = cfg.select == "last" and bool(val_items)
    result = RunResult(seed, fold, len(train_items), len(val_items), best_epoch, best, last_val,
                       str(last_path if take_last else best_path),
                       selected_epoch=cfg.epochs if take_last else best_epoch, wall_s=round(wall, 1))
    if val_items:
        selected, selected_config = model_from_checkpoint(result.checkpoint)
        scored = score_items(selected.to(device), val_items, selected_config["input"],
                             cfg.eval_batch_size, device, tta=cfg.tta)
        result.rows = scored.rows
    return result, cfg.epochs - start_epoch


# ----------------------------------------------------------------------------- all runs


def labelled_items(data: Any) -> list[Item]:
    """The items of a labelled source, sorted by id; one-line errors when masks are missing."""
    from vasomim.data.check import pair_size_problems
    from vasomim.data.io import looked_for
    from vasomim.data.sources import load_source

    source = load_source(data)
    items = sorted(source.items, key=lambda it: it.id)
    for problem in source.problems:
        logger.warning(f"[finetune] data: {problem}")
    unlabelled = [it.id for it in items if not it.has_mask]
    if unlabelled:
        raise ValueError(f"{data}: {len(unlabelled)} of {len(items)} images have no mask "
                         f"(first: {unlabelled[0]}); fine-tuning needs labelled data")
    if not items:
        raise ValueError(f"{data}: no images found ({source.describe()}; {looked_for()})")
    if len(items) < 2:
        raise ValueError(f"{data}: need at least 2 labelled images, found {len(items)}")
    mismatches = pair_size_problems(items)  # before training: a bad pair would only fail when its batch loads
    if mismatches:
        raise ValueError(f"{data}: {len(mismatches)} image/mask pair(s) cannot be used: {'; '.join(mismatches)}")
    return items


def _summary(cfg: FinetuneConfig, results: list[RunResult], wall: float) -> dict:
    runs = [{"seed": r.seed, "fold": r.fold, "n_train": r.n_train, "n_val": r.n_val,
             "best_epoch": r.best_epoch, "best_val_dice": r.best_val_dice,
             "last_val_dice": r.last_val_dice, "selected_epoch": r.selected_epoch,
             "checkpoint": r.checkpoint, "wall_s": r.wall_s,
             **r.means()} for r in results]
    scored = [r for r in results if r.rows]
    summary: dict[str, Any] = {
        "init": cfg.init, "arch": cfg.arch, "folds": cfg.folds, "seeds": cfg.seeds,
        "label_fraction": cfg.label_fraction, "epochs": cfg.epochs, "img_size": cfg.img_size,
        "select": cfg.select,
        "n_runs": len(results), "std_over": "runs (folds x seeds) of per-run mean scores",
        "metrics": summarize_rows([r.means() for r in scored]) if scored else {},
        "wall_s": round(wall, 1), "runs": runs,
    }
    last = [r.last_val_dice for r in results if r.last_val_dice is not None]
    if last:
        mean, std = summarize(last)
        summary["last_epoch_dice"] = {"mean": mean, "std": std}
    return summary


def format_results(summary: dict) -> str:
    """The printed report of :func:`finetune`: one line per run, then mean ± std over runs."""
    select = summary.get("select", "best")
    lines = [f"scored: the {'best-DSC' if select == 'best' else 'final'} epoch of each run (select: {select})",
             f"{'seed':>4} {'fold':>4} {'train':>5} {'val':>4} {'epoch':>5} {'DSC %':>7} {'clDice %':>8}"]
    for r in summary["runs"]:
        dice = f"{100 * r['dice']:7.2f}" if "dice" in r else f"{'-':>7}"
        cl = f"{100 * r['cldice']:8.2f}" if "cldice" in r else f"{'-':>8}"
        lines.append(f"{r['seed']:>4} {r['fold']:>4} {r['n_train']:>5} {r['n_val']:>4} "
                     f"{r.get('selected_epoch', r['best_epoch']):>5} {dice} {cl}")
    if summary["metrics"]:
        lines.append(format_table({m: summary["metrics"][m] for m in ("dice", "cldice")},
                                  n_label=f"{summary['n_runs']} runs (folds x seeds)"))
    else:
        lines.append("no held-out images: nothing scored")
    return "\n".join(lines)


def finetune(cfg: FinetuneConfig, resume: bool = False, progress: bool = True,
             stop_after: int | None = None) -> dict | None:
    """Train every (seed, fold) run of ``cfg``, score the best checkpoints, write the reports.

    Parameters
    ----------
    cfg:
        The configuration.
    resume:
        Continue each run from its ``last.pth`` (finished runs are only re-scored); without it a
        run folder that already holds a ``last.pth`` is an error.
    progress:
        Progress bars and notes on stderr.
    stop_after:
        Stop after this many epochs of training in this invocation, counted over all runs (for
        time-limited jobs), leaving ``last.pth``; continue later with ``resume=True``. Returns
        ``None`` when it stopped before every run was finished.

    Returns
    -------
    The summary (also in ``out/summary.json``): per run the held-out means, and ``metrics``
    ``{"dice"|"cldice"|"tprec"|"tsens": {"mean", "std"}}`` over the runs.
    """
    out = Path(cfg.out)
    items = labelled_items(cfg.data)
    if cfg.val_data is None:
        splits = kfold_splits(len(items), cfg.folds, cfg.split_seed, cfg.val_fraction)
        held_out = items
    else:  # a fixed held-out set: every image of data trains
        held_out = labelled_items(cfg.val_data)
        splits = [(list(range(len(items))), list(range(len(held_out))))]
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / "config.json", json.dumps(config_to_dict(cfg), indent=2) + "\n")
    t0 = time.perf_counter()
    results: list[RunResult] = []
    remaining = stop_after
    for seed in cfg.seeds:
        for fold, (train_idx, val_idx) in enumerate(splits):
            if cfg.only_folds is not None and fold not in cfg.only_folds:
                continue
            train_idx = subsample(train_idx, cfg.label_fraction, [cfg.split_seed, fold])
            res, trained = _train_run(cfg, seed, fold, [items[i] for i in train_idx],
                             [held_out[i] for i in val_idx], out / f"seed{seed}" / f"fold{fold}",
                             resume, progress, remaining)
            if res is None:
                return None
            if remaining is not None:
                remaining -= trained
            results.append(res)
    summary = _summary(cfg, results, time.perf_counter() - t0)
    rows = [{"seed": r.seed, "fold": r.fold, **row} for r in results for row in r.rows]
    write_atomic(out / "per_image.csv", csv_text(rows, ("seed", "fold", "image", *METRICS)))
    write_atomic(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    return summary
