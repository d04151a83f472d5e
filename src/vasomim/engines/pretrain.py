"""VasoMIM pre-training (stage 3): an MAE with anatomy-guided masking and the consistency loss.

:func:`pretrain` reads like MAE's ``main_pretrain.py``: :func:`setup` (data, model, frozen
segmentor, optimizer), the resume, then one :func:`train_one_epoch` per epoch (lr and beta
schedules, masks, loss, accumulation) as MAE's ``engine_pretrain.py``, with logging and checkpoints.
The MAE baseline and every ablation are the same code with other settings (``configs/pretrain/``).

The run folder (``config.json``, ``log.jsonl``, ``checkpoint-last.pth``, ``checkpoint-final.pth``)
is described in ``docs/pretrain.md``; claiming, resuming and trimming it is :mod:`.runs`.

Every random choice of a step (sample order, crop and flip, masks) is a function of the seed and of
where the step is in the run, never of the process that makes it, so a resumed run continues
exactly and a W-process run follows the single-process one (``docs/pretrain.md``, "Reproducibility").
"""

from __future__ import annotations

import json
import logging
import math
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from pydantic import Field, model_validator
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from tqdm import tqdm

from vasomim.config import StrictModel, config_to_dict
from vasomim.data.datasets import PretrainDataset
from vasomim.data.io import write_text_atomic
from vasomim.data.sources import AnatomySource, load_source
from vasomim.data.transforms import TransformConfig, build_transform
from vasomim.engines.common import (JsonlLogger, atomic_torch_save, cleanup_distributed, cosine_lr, init_distributed,
                                    param_groups_weight_decay, reduce_mean, rng_state, seed_everything,
                                    set_rng_state, tensorboard_writer, write_scalars)
from vasomim.engines.runs import claim_run_dir, resume_changes, truncate_log
from vasomim.engines.segmentor import load_segmentor
from vasomim.losses import segmentor_probs, to_unit_range, vasomim_loss
from vasomim.masking import beta_at, epoch_beta, guided_mask, masked_vessel_share, patch_distribution
from vasomim.models.mae import mae_vit
from vasomim.models.unet_mim import MaskedUNet
from vasomim.models.unext import frozen_for_inference

logger = logging.getLogger(__name__)

SEGMENTOR_MULTIPLE = 32  # UNeXt-S downsamples five times
# per-micro-batch values averaged into the epoch's log record
LOSS_TERMS = ("loss", "rec", "cons", "vessel_share_masked", "vessel_share_all")
# settings that fix the shapes of the weights: a resumed run cannot change them
class DataConfig(StrictModel):
    """Unlabelled angiograms and their anatomy masks (written by ``vasomim anatomy``)."""

    images: str | None = Field(None, description="images root that `vasomim anatomy` read")
    anatomy: str | None = Field(None, description="anatomy folder holding manifest.jsonl")
    spec: str | None = Field(None, description="YAML data spec of anatomy sources (instead of images/anatomy)")
    img_size: int = Field(224, ge=16, description="training resolution (square)")
    crop_scale: tuple[float, float] = Field((0.2, 1.0), description="RandomResizedCrop area range")
    hflip: float = Field(0.5, ge=0, le=1, description="horizontal flip probability")
    in_chans: Literal[1, 3] = Field(1, description="1: gray; 3: gray replicated")
    mean: tuple[float, ...] | None = Field(None, description="input normalisation; None: gray/ImageNet defaults")
    std: tuple[float, ...] | None = None

    def transform_config(self) -> TransformConfig:
        """The joint image/anatomy transform settings of these data."""
        return TransformConfig(size=self.img_size, scale=self.crop_scale, hflip=self.hflip,
                               channels=self.in_chans, mean=self.mean, std=self.std)


class ModelConfig(StrictModel):
    """The MAE (``vasomim.models.mae.mae_vit``) or the masked U-Net (``vasomim.models.unet_mim``)."""

    arch: Literal["vit", "unet"] = Field("vit", description="vit: MAE ViT; unet: masked CNN U-Net (SparK-style)")
    base_channels: int = Field(16, ge=1, description="unet: channels of the first level")
    levels: int = Field(4, ge=1, description="unet: down-sampling steps; patch_size must be 2**levels")
    norm: Literal["batch", "group", "instance"] = Field("batch", description="unet: norm (made sparse)")
    size: Literal["tiny", "small", "base", "large"] = "base"
    embed_dim: int | None = Field(None, description="replaces the size's encoder width")
    depth: int | None = Field(None, description="replaces the size's encoder depth")
    num_heads: int | None = Field(None, description="replaces the size's encoder heads")
    patch_size: int = Field(16, ge=1)
    decoder_embed_dim: int = 512
    decoder_depth: int = 8
    decoder_num_heads: int = 16
    norm_pix_loss: bool = Field(
        False,
        description="per-patch normalised targets; off by default: the consistency loss then sees a "
        "reconstruction un-normalised with the original patches' own statistics",
    )


class MaskingConfig(StrictModel):
    """Anatomy-guided masking (Eqs. 2-3)."""

    mask_ratio: float = Field(0.5, gt=0, lt=1, description="gamma, share of masked patches")
    beta_0: float = Field(0.0, ge=0, le=1, description="guided share of the masked patches at the start")
    beta_E: float = Field(0.5, ge=0, le=1, description="guided share at the end")
    schedule: Literal["epoch", "iteration"] = Field(
        "epoch", description="beta progress (e+1)/E per epoch, e from 0 (the paper), or per iteration")
    guidance: Literal["anatomy", "segmentor", "mix"] = Field(
        "anatomy", description="patch weights f from the anatomy masks, from sigmoid(S(I)), or from their per-pixel mean")


class ConsistencyConfig(StrictModel):
    """Anatomical consistency loss (Eq. 4) through the frozen segmentor S."""

    weight: float = Field(1.0, ge=0, description="lambda; 0 turns the loss off (and S is not run)")
    segmentor: str | None = Field(
        None, description="UNeXt-S checkpoint: the published state dict or `vasomim train-segmentor` output")


class OptimConfig(StrictModel):
    """AdamW with linear warm-up and a half-cycle cosine, per iteration."""

    blr: float = Field(1.5e-4, gt=0, description="base lr; lr = blr * effective batch / 256")
    lr: float | None = Field(None, gt=0, description="absolute lr, replaces the blr rule")
    weight_decay: float = Field(0.05, ge=0)
    betas: tuple[float, float] = (0.9, 0.95)
    warmup_epochs: float = Field(40, ge=0)
    min_lr: float = Field(0.0, ge=0)
    accum_iter: int = Field(1, ge=1, description="micro-batches per optimizer step")


class PretrainConfig(StrictModel):
    """Parameters of ``vasomim pretrain`` (YAML files in ``configs/pretrain/``)."""

    name: str = Field("vasomim", description="run name (config.json; default run folder)")
    out: str | None = Field(None, description="run folder; None: runs/pretrain/<name>")
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    masking: MaskingConfig = MaskingConfig()
    consistency: ConsistencyConfig = ConsistencyConfig()
    optim: OptimConfig = OptimConfig()
    epochs: int = Field(800, ge=1)
    batch_size: int = Field(256, ge=1, description="images per process per micro-batch")
    workers: int = Field(8, ge=0, description="DataLoader workers per process")
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    amp: Literal["bf16", "none"] = Field("bf16", description="bf16 autocast on CUDA (on CPU with cpu_amp); none: fp32")
    cpu_amp: bool = Field(False, description="amp bf16 applies on CPU too: pays with AMX only; on an AVX512-BF16 "
                          "CPU without it bf16 steps are 0.7x fp32 (BENCHMARKS.md)")
    compile: bool = Field(False, description="torch.compile the MAE and the segmentor: faster steps after a "
                          "compile of minutes on a small CPU (BENCHMARKS.md)")
    save_every: int = Field(20, ge=1, description="epochs between checkpoint-last.pth writes")
    tensorboard: bool = False

    @model_validator(mode="after")
    def _check_sizes(self) -> "PretrainConfig":
        size, patch = self.data.img_size, self.model.patch_size
        if size % patch:
            raise ValueError(f"data.img_size {size} is not divisible by model.patch_size {patch}")
        if self.model.arch == "unet" and patch != 2**self.model.levels:
            raise ValueError(f"model.patch_size {patch} must be 2**model.levels = {2**self.model.levels} for arch unet "
                             "(the mask grid is the U-Net's coarsest grid)")
        if self.needs_segmentor and size % SEGMENTOR_MULTIPLE:
            raise ValueError(
                f"data.img_size {size} must be divisible by {SEGMENTOR_MULTIPLE} for the UNeXt-S segmentor "
                "(consistency loss or segmentor guidance); use e.g. 128, 224 or 256")
        self.data.transform_config()  # mean/std against in_chans
        return self

    @property
    def needs_segmentor(self) -> bool:
        """S is run: for the consistency loss or for segmentor/mix guidance."""
        return self.consistency.weight > 0 or self.masking.guidance != "anatomy"

    @property
    def run_dir(self) -> Path:
        """The run folder."""
        return Path(self.out) if self.out else Path("runs") / "pretrain" / self.name


def mix_seed(*parts: int) -> int:
    """A 63-bit seed from integers (NumPy's SeedSequence hashing): distinct tuples, unrelated streams."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1, np.uint64)[0] >> np.uint64(1))


class EpochSeededDataset(Dataset):
    """Sample ``i`` of epoch ``e`` is read with torch's generator seeded from ``(seed, e, i)``.

    ``PretrainDataset`` draws each sample's augmentation from torch's generator of the process
    that reads it; seeding it here makes crop and flip a function of ``(seed, epoch, index)``
    alone (the generator is restored afterwards). Set the epoch before iterating the DataLoader;
    workers must not be persistent, so that they see it.

    Args:
        dataset: the map-style dataset to wrap.
        seed: run seed.
    """

    def __init__(self, dataset: Dataset, seed: int) -> None:
        self.dataset = dataset
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Use the streams of `epoch` from now on."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(mix_seed(self.seed, self.epoch, index))
            return self.dataset[index]


def guidance_weights(
    guidance: str, f_anatomy: torch.Tensor, anatomy: torch.Tensor, probs: torch.Tensor | None, patch: int
) -> torch.Tensor:
    """Patch weights f that guide the masking.

    Args:
        guidance: ``anatomy`` (Eq. 2 on the anatomy masks), ``segmentor`` (the same on the soft
            map sigmoid(S(I))) or ``mix``: Eq. 2 on the per-pixel mix
            ``0.5 * anatomy + 0.5 * sigmoid(S(I))``, as the original code forms it.
        f_anatomy: (B, N) ``patch_distribution`` of the anatomy masks (returned as is for
            ``anatomy``).
        anatomy: (B, 1, H, W) anatomy masks.
        probs: (B, 1, H, W) sigmoid(S(I)); needed unless ``guidance == "anatomy"``.
        patch: patch side.

    Returns:
        (B, N) weights (rows sum to 1, or 0 for an image without vessels).
    """
    if guidance == "anatomy":
        return f_anatomy
    if guidance == "segmentor":
        return patch_distribution(probs, patch)
    return patch_distribution(0.5 * anatomy.to(probs.dtype) + 0.5 * probs, patch)


def draw_masks(
    f: torch.Tensor, mask_ratio: float, beta: float, generator: torch.Generator, rank: int = 0, world_size: int = 1
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Masks for this rank's part of the global micro-batch, drawn as for the whole global batch.

    A DistributedSampler deals samples round-robin, so local sample j of rank r is row
    ``j * world_size + r`` of the global micro-batch. ``guided_mask`` treats rows independently
    (row k's draw depends on f's row k and the generator's state only), so each rank draws for a
    (world_size * B, N) weight matrix that holds its own rows and keeps them: a sample gets the
    same mask whatever the number of processes. The generator must be in the same state on
    every rank.

    Args:
        f: (B, N) this rank's patch weights.
        mask_ratio: gamma.
        beta: share of guided patches.
        generator: the epoch's masking generator, on f's device.
        rank: this process's rank.
        world_size: number of processes.

    Returns:
        ids_keep (B, K), ids_restore (B, N), mask (B, N) for this rank's samples.
    """
    b, n = f.shape
    rows = torch.arange(b, device=f.device) * world_size + rank
    f_global = f.new_zeros(b * world_size, n).index_copy_(0, rows, f)
    ids_keep, _, ids_restore, mask = guided_mask(f_global, mask_ratio, beta, generator)
    return ids_keep[rows], ids_restore[rows], mask[rows]


def mask_and_forward(
    model: nn.Module,
    segmentor: nn.Module | None,
    imgs: torch.Tensor,
    anatomy: torch.Tensor,
    cfg: PretrainConfig,
    beta: float,
    generator: torch.Generator,
    rank: int = 0,
    world_size: int = 1,
) -> dict[str, torch.Tensor]:
    """One micro-batch: draw the masks (guidance weights, guided sampler), run the MAE, the VasoMIM loss.

    Args:
        model: the MAE (or its DDP wrapper).
        segmentor: frozen S, or None when ``cfg.needs_segmentor`` is false.
        imgs: (B, C, H, W) normalised images.
        anatomy: (B, 1, H, W) anatomy masks.
        cfg: the run configuration (patch, masking, loss and normalisation settings).
        beta: current share of guided patches.
        generator: the masking generator (see :func:`draw_masks`).
        rank: this process's rank.
        world_size: number of processes.

    Returns:
        ``loss``, ``rec``, ``cons`` (scalar tensors, ``loss`` with a graph) and the detached
        per-batch means ``vessel_share_masked`` and ``vessel_share_all`` (measured on the anatomy).
    """
    patch = cfg.model.patch_size
    mean, std = cfg.data.transform_config().stats()
    probs = None
    if cfg.masking.guidance != "anatomy":
        probs = segmentor_probs(segmentor, to_unit_range(imgs, mean, std))
    f_anatomy = patch_distribution(anatomy, patch)
    f = guidance_weights(cfg.masking.guidance, f_anatomy, anatomy, probs, patch)
    ids_keep, ids_restore, mask = draw_masks(f, cfg.masking.mask_ratio, beta, generator, rank, world_size)
    pred = model(imgs, ids_keep, ids_restore)
    out = vasomim_loss(
        pred, imgs, mask, patch, norm_pix=cfg.model.norm_pix_loss,
        segmentor=segmentor if cfg.consistency.weight > 0 else None,
        input_mean=mean, input_std=std, cons_weight=cfg.consistency.weight, image_probs=probs,
    )
    out["vessel_share_masked"] = masked_vessel_share(f_anatomy, mask).mean()
    out["vessel_share_all"] = (f_anatomy > 0).float().mean()
    return out


# AdamW(fused=True) runs on CPU from torch 2.4: one vectorised pass per parameter group instead of a
# dozen small ops per tensor (1.1-1.5x faster ViT-Tiny steps at 128 px on a 2-core CPU, BENCHMARKS.md)
CPU_FUSED_ADAMW = bool(torch.__version__ >= (2, 4))


def autocast_enabled(cfg: PretrainConfig, device: torch.device) -> bool:
    """bf16 autocast: with ``amp: bf16`` on CUDA, and on CPU only with ``cpu_amp`` too.

    Off on CPU by default: without AMX, oneDNN's bf16 matmuls run slower than MKL's fp32 ones
    (ViT-Tiny steps at 0.7x on this project's AVX512-BF16 CPU). The losses stay float32 either way.
    """
    return cfg.amp == "bf16" and (device.type == "cuda" or cfg.cpu_amp)


def layout(cfg: PretrainConfig) -> torch.memory_format:
    """The memory layout of the model and its input batches.

    Channels-last for the CNN U-Net: oneDNN's and cuDNN's convolutions run fastest in it (1.4x per
    CPU step at the study's settings, ``benchmarks/bench_pretrain.py --sections unet``). The ViT has
    one convolution (the patch embedding) and keeps the default layout.
    """
    return torch.channels_last if cfg.model.arch == "unet" else torch.contiguous_format


def build_optimizer(model: nn.Module, cfg: PretrainConfig, lr: float, device: torch.device) -> torch.optim.AdamW:
    """AdamW with no weight decay on biases, norms, position embeddings and tokens; fused on CPU."""
    return torch.optim.AdamW(param_groups_weight_decay(model, cfg.optim.weight_decay), lr=lr, betas=cfg.optim.betas,
                             fused=CPU_FUSED_ADAMW if device.type == "cpu" else None)


def build_model(cfg: PretrainConfig) -> nn.Module:
    """The MAE of ``cfg.model`` for ``cfg.data``'s size and channels (or the masked U-Net)."""
    m = cfg.model
    if m.arch == "unet":
        return MaskedUNet(cfg.data.in_chans, m.base_channels, m.levels, m.norm, m.norm_pix_loss)
    overrides = {k: v for k, v in dict(embed_dim=m.embed_dim, depth=m.depth, num_heads=m.num_heads).items()
                 if v is not None}
    return mae_vit(m.size, img_size=cfg.data.img_size, in_chans=cfg.data.in_chans, patch_size=m.patch_size,
                   decoder_embed_dim=m.decoder_embed_dim, decoder_depth=m.decoder_depth,
                   decoder_num_heads=m.decoder_num_heads, norm_pix_loss=m.norm_pix_loss, **overrides)


def load_frozen_segmentor(cfg: PretrainConfig, device: torch.device) -> nn.Module | None:
    """The frozen UNeXt-S of ``cfg.consistency.segmentor``, or None when no part of the run needs it."""
    if not cfg.needs_segmentor:
        return None
    path = cfg.consistency.segmentor
    if path is None:
        raise ValueError(
            "consistency.segmentor: a UNeXt-S checkpoint is required when consistency.weight > 0 or "
            "masking.guidance is segmentor/mix (train one with `vasomim train-segmentor`)")
    if not Path(path).is_file():
        raise FileNotFoundError(f"consistency.segmentor: {path}: no such file")
    return frozen_for_inference(load_segmentor(path, device))


def pretrain_items(cfg: DataConfig) -> list:
    """The items (image + anatomy mask) of ``cfg``: ``images`` + ``anatomy``, or ``spec``."""
    if cfg.spec is not None:
        if cfg.images or cfg.anatomy:
            raise ValueError("data: give either data.spec or data.images + data.anatomy, not both")
        source = load_source(cfg.spec)
    elif cfg.images and cfg.anatomy:
        source = AnatomySource(cfg.images, cfg.anatomy)
    else:
        raise ValueError("data: give data.images and data.anatomy (the folders `vasomim anatomy` read and "
                         "wrote), or data.spec")
    for problem in source.problems:
        logger.warning(f"[pretrain] warning: {problem}")
    if not source.items:
        raise ValueError(f"data: no usable images in {source.describe()}")
    return source.items


@dataclass
class Trainer:
    """What the epochs train with: built once by :func:`setup`."""

    model: nn.Module  # holds the weights (saved, loaded)
    ddp_model: nn.Module  # the DDP wrapper (or the model): train mode, no_sync
    run_model: nn.Module  # what the steps call (compiled or not)
    run_segmentor: nn.Module | None
    segmentor: nn.Module | None
    optimizer: torch.optim.Optimizer
    dataset: EpochSeededDataset
    sampler: DistributedSampler
    loader: DataLoader
    autocast: torch.autocast
    lr: float  # peak learning rate
    eff_batch: int
    steps_per_epoch: int


def setup(cfg: PretrainConfig, dist) -> Trainer:
    """Frozen segmentor, data (every rank its round-robin share of the same global batches), model, optimizer."""
    device, rank, world = dist.device, dist.rank, dist.world_size
    segmentor = load_frozen_segmentor(cfg, device)  # first: fail fast on a missing checkpoint
    dataset = EpochSeededDataset(
        PretrainDataset(pretrain_items(cfg.data), build_transform(cfg.data.transform_config(), train=True)),
        cfg.seed)
    sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=True, seed=cfg.seed,
                                 drop_last=True)
    # Workers are started anew every epoch (they must see the epoch); forking them from a process
    # that already runs the process group's threads can deadlock, so distributed runs start
    # them from a clean fork server instead.
    context = "forkserver" if (cfg.workers > 0 and world > 1) else None
    loader = DataLoader(dataset, batch_size=cfg.batch_size, sampler=sampler, num_workers=cfg.workers,
                        pin_memory=device.type == "cuda", drop_last=True, multiprocessing_context=context)
    accum = cfg.optim.accum_iter
    steps_per_epoch = len(loader) // accum
    if steps_per_epoch == 0:
        raise ValueError(
            f"data: {len(dataset)} images give no optimizer step per epoch at batch_size {cfg.batch_size} x "
            f"{world} process(es) x accum_iter {accum}; lower batch_size or accum_iter")

    seed_everything(cfg.seed)  # the same initial weights on every rank and for every arm
    model = build_model(cfg).to(device, memory_format=layout(cfg))
    eff_batch = cfg.batch_size * accum * world
    lr = cfg.optim.lr if cfg.optim.lr is not None else cfg.optim.blr * eff_batch / 256
    optimizer = build_optimizer(model, cfg, lr, device)
    ddp_model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None) \
        if dist.distributed else model
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast_enabled(cfg, device))
    run_model, run_segmentor = ddp_model, segmentor  # what the steps call; the weights stay in model
    if cfg.compile:
        run_model = torch.compile(ddp_model)
        run_segmentor = torch.compile(segmentor) if segmentor is not None else None
    return Trainer(model, ddp_model, run_model, run_segmentor, segmentor, optimizer, dataset, sampler, loader,
                   autocast, lr, eff_batch, steps_per_epoch)


def train_one_epoch(t: Trainer, cfg: PretrainConfig, epoch: int, step: int, dist,
                    progress: bool) -> tuple[dict, int]:
    """One epoch: per iteration the lr and beta schedules, masks, loss and (every ``accum_iter``) a step.

    Returns the epoch's log record (means over the iterations, reduced over the processes) and the
    optimizer steps done so far.
    """
    device, accum = dist.device, cfg.optim.accum_iter
    iters_per_epoch = t.steps_per_epoch * accum  # a last incomplete accumulation is skipped
    t_epoch = time.perf_counter()
    t.sampler.set_epoch(epoch)
    t.dataset.set_epoch(epoch)
    mask_gen = torch.Generator().manual_seed(mix_seed(cfg.seed, epoch))  # CPU: the same masks on any device
    t.ddp_model.train()
    sums = torch.zeros(len(LOSS_TERMS), dtype=torch.float64, device=device)  # summed on device, no sync
    lr_sum = beta_sum = 0.0
    bar = tqdm(islice(t.loader, iters_per_epoch), total=iters_per_epoch, desc=f"epoch {epoch + 1}/{cfg.epochs}",
               unit="it", disable=not (progress and dist.is_main), file=sys.stderr)
    for it, batch in enumerate(bar):
        fractional_epoch = epoch + it / iters_per_epoch  # schedules per iteration, as MAE
        if it % accum == 0:
            lr_now = cosine_lr(fractional_epoch, cfg.epochs, cfg.optim.warmup_epochs, t.lr, cfg.optim.min_lr)
            for group in t.optimizer.param_groups:
                group["lr"] = lr_now
        if cfg.masking.schedule == "epoch":  # (e + 1) / E: the last epoch reaches beta_E
            beta = epoch_beta(epoch, cfg.epochs, cfg.masking.beta_0, cfg.masking.beta_E)
        else:
            beta = beta_at(fractional_epoch / cfg.epochs, cfg.masking.beta_0, cfg.masking.beta_E)

        imgs = batch["image"].to(device, non_blocking=True, memory_format=layout(cfg))
        anatomy = batch["anatomy"].to(device, non_blocking=True)
        update = (it + 1) % accum == 0
        # gradients are all-reduced on the last micro-batch of an accumulation only
        sync = nullcontext() if update or not dist.distributed else t.ddp_model.no_sync()
        with sync:
            with t.autocast:
                out = mask_and_forward(t.run_model, t.run_segmentor, imgs, anatomy, cfg, beta, mask_gen,
                                     dist.rank, dist.world_size)
            (out["loss"] / accum).backward()
        if update:
            t.optimizer.step()
            t.optimizer.zero_grad(set_to_none=True)
            step += 1

        loss_value = out["loss"].item()
        if not math.isfinite(loss_value):
            raise FloatingPointError(f"loss is {loss_value} at epoch {epoch + 1}, iteration {it}; stopping")
        sums += torch.stack([out[k].detach().double() for k in LOSS_TERMS])
        lr_sum += lr_now
        beta_sum += beta
        bar.set_postfix(loss=f"{loss_value:.4f}", lr=f"{lr_now:.2e}", beta=f"{beta:.3f}")

    means = dict(zip(LOSS_TERMS, (reduce_mean(sums) / iters_per_epoch).tolist()))
    record = {"epoch": epoch + 1, "step": step, "lr": lr_sum / iters_per_epoch,
              "beta": beta_sum / iters_per_epoch, "loss": means["loss"], "rec": means["rec"],
              "cons": means["cons"] if cfg.consistency.weight > 0 else None,
              "vessel_share_masked": means["vessel_share_masked"],
              "vessel_share_all": means["vessel_share_all"],
              "time": round(time.perf_counter() - t_epoch, 3)}
    return record, step


def pretrain(cfg: PretrainConfig, resume: bool = False, progress: bool = True, overwrite: bool = False) -> dict:
    """Pre-train a VasoMIM (or MAE) model; see the module doc for outputs and reproducibility.

    Under torchrun every process calls this; rank 0 logs and writes files.

    Args:
        cfg: the run configuration.
        resume: continue from ``<run_dir>/checkpoint-last.pth`` when it exists (model, optimizer,
            epoch, RNG; the schedules, sample order, augmentations and masks follow).
        progress: show a tqdm bar per epoch (rank 0).
        overwrite: delete the run in ``run_dir`` and start anew (without it or ``resume``, a folder
            that holds a run is an error).

    Returns:
        ``run_dir``, ``checkpoint`` (final), ``epochs``, ``start_epoch``, ``steps``, ``world_size``,
        ``effective_batch_size``, ``lr``, ``last`` (the last epoch's log record, None if no epoch
        ran) and ``wall_time_s``.
    """
    t_start = time.perf_counter()
    dist = init_distributed(None if cfg.device == "auto" else cfg.device)
    writer = log = None
    try:
        run_dir = cfg.run_dir
        claim_run_dir(run_dir, resume, overwrite, dist.is_main)
        if dist.device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        t = setup(cfg, dist)
        model, optimizer = t.model, t.optimizer

        # -- resume
        plain_cfg = config_to_dict(cfg)
        ckpt_cfg = plain_cfg  # the config of the last finished epoch: what checkpoints record
        start_epoch, step, changes = 0, 0, {}
        last_path = run_dir / "checkpoint-last.pth"
        if resume and last_path.is_file():
            ck = torch.load(last_path, map_location="cpu", weights_only=True)
            ckpt_cfg = ck["config"]
            changes = resume_changes(ckpt_cfg, plain_cfg, last_path)
            model.load_state_dict(ck["model"])
            optimizer.load_state_dict(ck["optimizer"])
            start_epoch, step = ck["epoch"], ck["step"]
            set_rng_state(ck["rng"])
            if dist.is_main:
                if changes:
                    logger.info(f"[pretrain] note: settings changed since the checkpoint apply from epoch "
                                f"{start_epoch + 1}: {', '.join(changes)} (logged in log.jsonl)")
                logger.info(f"[pretrain] resumed from {last_path} at epoch {start_epoch}")
        elif resume and dist.is_main:
            logger.info(f"[pretrain] no {last_path}; starting from scratch")

        if dist.is_main:
            n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
            kind = f"U-Net ({cfg.model.base_channels}x{cfg.model.levels})" if cfg.model.arch == "unet" \
                else f"ViT-{cfg.model.size}"
            logger.info(f"[pretrain] {cfg.name}: {kind} MAE ({n_params / 1e6:.1f}M trainable parameters), "
                        f"{len(t.dataset)} images, {dist.world_size} process(es) on {dist.device.type}, effective "
                        f"batch {t.eff_batch}, lr {t.lr:.3g}, {t.steps_per_epoch} steps/epoch, "
                        f"segmentor {'on' if t.segmentor else 'off'}")
            run_dir.mkdir(parents=True, exist_ok=True)
            if start_epoch == 0:  # a resumed run keeps the config its first epochs ran with
                write_text_atomic(run_dir / "config.json", json.dumps(plain_cfg, indent=2))
            truncate_log(run_dir / "log.jsonl", start_epoch)
            log = JsonlLogger(run_dir / "log.jsonl")
            if changes and start_epoch < cfg.epochs:
                log.log({"event": "config_changed", "from_epoch": start_epoch + 1, "changes": changes})
            # the writer (None without tensorboard) is closed in the finally below
            writer = tensorboard_writer(cfg.tensorboard, run_dir / "tensorboard", "pretrain").__enter__()

        # -- training
        record = None
        for epoch in range(start_epoch, cfg.epochs):
            ckpt_cfg = plain_cfg
            record, step = train_one_epoch(t, cfg, epoch, step, dist, progress)
            if dist.is_main:
                log.log(record)  # before the checkpoint: a crash in between redoes (and re-logs) this epoch
                write_scalars(writer, "pretrain", record, epoch + 1)
                if (epoch + 1) % cfg.save_every == 0 or epoch + 1 == cfg.epochs:
                    atomic_torch_save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                                       "epoch": epoch + 1, "step": step, "config": ckpt_cfg, "rng": rng_state()},
                                      last_path)

        final_path = run_dir / "checkpoint-final.pth"
        if dist.is_main:
            atomic_torch_save({"model": model.state_dict(), "config": ckpt_cfg, "epoch": cfg.epochs, "step": step},
                              final_path)
        return {"run_dir": str(run_dir), "checkpoint": str(final_path), "epochs": cfg.epochs,
                "start_epoch": start_epoch, "steps": step, "world_size": dist.world_size,
                "effective_batch_size": t.eff_batch, "lr": t.lr, "last": record,
                "wall_time_s": round(time.perf_counter() - t_start, 1)}
    finally:
        if log is not None:
            log.close()
        if writer is not None:
            writer.close()
        cleanup_distributed()
