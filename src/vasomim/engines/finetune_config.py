"""The fine-tuning configuration (``vasomim finetune``) and what a checkpoint records of it."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from vasomim.config import StrictModel, config_to_dict
from vasomim.data.transforms import TransformConfig
from vasomim.inference import input_convention

__all__ = ["AugmentConfig", "CHECKPOINT_KIND", "FinetuneConfig", "RESUMABLE_CHANGES", "checkpoint_config",
           "network_config", "transform_config"]

CHECKPOINT_KIND = "vasomim_segmentation"

#: Config keys that may change between an interrupted run and its resume (``init_decoder`` is read
#: at the start only, and older runs lack it; ``layout`` changes the speed only).
RESUMABLE_CHANGES = ("out", "device", "workers", "seeds", "val_every", "save_every", "epochs", "select",
                     "only_folds", "init_decoder", "layout")


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
    margin: float = Field(0.0, ge=0, le=1, description=(
        "probability of a flat grey band along one side of a training crop (mask background there): "
        "teaches the network that letterbox or canvas margins are not anatomy"))
    margin_width: tuple[float, float] = Field((0.05, 0.4), description="band width range, fraction of the side")


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
    layer_decay: float = Field(1.0, gt=0, le=1, description="layer-wise lr decay over the encoder (ViT blocks or U-Net conv blocks; 1.0 = off)")
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
    layout: Literal["auto", "channels_last", "contiguous"] = Field(
        "auto", description="memory layout of the network and its batches while training: auto "
        "(channels-last on CUDA and AVX512 CPUs, the default layout elsewhere) or one forced; speed only")
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


def network_config(cfg: FinetuneConfig) -> dict:
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


def transform_config(cfg: FinetuneConfig, base_scale: float = 1.0) -> TransformConfig:
    """The training transform of ``cfg`` (its ``augment`` section) at inference scale ``base_scale``."""
    a = cfg.augment
    return TransformConfig(size=cfg.img_size, channels=cfg.in_chans, scale=a.scale, zoom=a.zoom,
                           base_scale=base_scale, ratio=a.ratio,
                           hflip=a.hflip, photometric=a.photometric, brightness=a.brightness,
                           contrast=a.contrast, gamma=a.gamma, noise=a.noise,
                           margin=a.margin, margin_width=a.margin_width)


def checkpoint_config(cfg: FinetuneConfig, scale: float | None) -> dict:
    """What a checkpoint stores: the config, plus ``network`` and ``input`` to rebuild and feed the network."""
    return {**config_to_dict(cfg), "network": network_config(cfg),
            "input": input_convention(cfg.img_size, cfg.in_chans, scale)}
