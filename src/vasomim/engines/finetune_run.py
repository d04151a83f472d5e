"""One fine-tuning run (a seed and a fold): set up, train epoch by epoch, keep the best, score.

:func:`train_run` reads top to bottom: :func:`setup` builds the network (initialised or resumed),
the optimizer and the loader; :func:`train_one_epoch` is the loop; every ``val_every`` epochs the
held-out images are scored and ``best.pth`` kept; ``last.pth`` is written for ``--resume``; at the
end the selected checkpoint is scored image by image.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from vasomim.config import config_to_dict, deep_merge
from vasomim.data.datasets import SegmentationDataset
from vasomim.data.io import image_info, write_text_atomic
from vasomim.data.sources import Item
from vasomim.data.transforms import build_transform
from vasomim.engines.common import (JsonlLogger, atomic_torch_save, cosine_lr, kept_rng_state, rng_state,
                                    seed_everything, set_rng_state, tensorboard_writer, write_scalars)
from vasomim.engines.evaluate import METRICS, score_items, summarize_rows
from vasomim.engines.finetune_config import (CHECKPOINT_KIND, RESUMABLE_CHANGES, FinetuneConfig, checkpoint_config,
                                             transform_config)
from vasomim.engines.finetune_config import network_config
from vasomim.inference import build_network, reference_scale, resolve_device, training_layout
from vasomim.losses import dice_bce_loss
from vasomim.models.checkpoints import (load_encoder_weights, model_from_checkpoint, read_state_dict,
                                        strip_wrappers)
from vasomim.models.segmentation import param_groups_lrd
from vasomim.models.unet_mim import is_unet_state, load_pretrained_unet
from vasomim.shipped import resolve_init

logger = logging.getLogger(__name__)

__all__ = ["RESULT_NAME", "Run", "RunPlan", "RunResult", "initialize", "load_result", "save_result", "setup",
           "train_one_epoch", "train_run"]

#: A finished run's record in its folder: its summary, its per-image scores and the config it ran.
RESULT_NAME = "result.json"


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

    Args:
        model: The freshly built network.
        init: ``"scratch"`` or a checkpoint path.
        arch: ``"vit_unet"`` or ``"unet"``.
        init_decoder: ``unet``: also load a pre-training checkpoint's decoder.

    Raises:
        FileNotFoundError, ValueError: one line naming the checkpoint, when it cannot be read or
            does not fit.
    """
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


@dataclass
class RunResult:
    """One (seed, fold) run.

    Attributes:
        seed, fold: Which run.
        n_train, n_val: Images trained on and held out.
        best_epoch: Epoch of ``best.pth`` (the last epoch when nothing is held out).
        best_val_dice: Its held-out DSC (``None`` without validation).
        last_val_dice: Held-out DSC of the final epoch (``None`` without validation).
        checkpoint: Path of the selected checkpoint: ``best.pth``, or ``last.pth`` with ``select:
            last``.
        selected_epoch: Its epoch.
        rows: Per-image scores of the selected checkpoint on the held-out images.
        wall_s: Training time of this invocation in seconds.
        trained_epochs: Epochs trained in this invocation.
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
    trained_epochs: int = 0

    def means(self) -> dict[str, float]:
        """Mean of each metric over this run's held-out images (empty without them)."""
        if not self.rows:
            return {}
        return {m: float(np.mean([r[m] for r in self.rows])) for m in METRICS}


@dataclass(frozen=True)
class RunPlan:
    """Which run: its seed and fold, its images, and its folder."""

    seed: int
    fold: int
    train_items: list[Item]
    val_items: list[Item]
    run_dir: Path


def inference_scale(items: list[Item], img_size: int) -> float:
    """:func:`~vasomim.inference.reference_scale` of the training images (sizes from their headers)."""
    infos = [image_info(it.image_path) for it in items]
    return reference_scale([(i.height, i.width) for i in infos], img_size)


def _unresumable_changes(saved: dict, cfg: FinetuneConfig) -> list[str]:
    """The settings outside :data:`RESUMABLE_CHANGES` in which ``cfg`` differs from ``saved`` (sorted)."""
    now = config_to_dict(cfg)
    return sorted(k for k in now if k not in RESUMABLE_CHANGES and saved.get(k) != now[k])


def check_resumable(saved: dict, cfg: FinetuneConfig, where: Path) -> None:
    """Refuse to resume when a setting outside :data:`RESUMABLE_CHANGES` differs from the checkpoint's.

    A setting the checkpoint lacks (a run from before the setting existed) counts as its default.
    """
    saved = deep_merge(config_to_dict(FinetuneConfig.model_construct()), saved)
    differ = _unresumable_changes(saved, cfg)
    if differ:
        raise ValueError(f"{where}: cannot resume, the config differs in {', '.join(differ)} "
                         f"(saved {', '.join(f'{k}={saved.get(k)!r}' for k in differ)})")
    if saved.get("epochs") != cfg.epochs:
        logger.info(f"[finetune] {where}: epochs {saved.get('epochs')} -> {cfg.epochs}: the cosine "
                    "schedule is stretched from here on")


def validate(model, items, cfg, device, convention: dict) -> dict[str, float]:
    """Held-out DSC and clDice, leaving every random stream as it found them.

    Scoring draws from the global torch generator (a DataLoader takes its base seed from it), and
    the training crops are seeded from that generator too: without the restore, ``val_every``
    would change the trained weights.
    """
    with kept_rng_state():
        res = score_items(model, items, convention, cfg.eval_batch_size, device, tta=cfg.tta)
    if res.failures:
        raise ValueError(f"validation images failed: {res.failures[0]}")
    m = summarize_rows(res.rows, ("dice", "cldice"))
    return {"val_dice": m["dice"]["mean"], "val_cldice": m["cldice"]["mean"]}


@dataclass
class Run:
    """What a run trains with, and where it stands (epoch, step, best held-out DSC)."""

    model: nn.Module
    opt: torch.optim.Optimizer
    loader: DataLoader
    gen: torch.Generator
    device: torch.device
    config: dict  # stored in every checkpoint (checkpoint_config)
    notes: list[str]
    start_epoch: int = 0
    step: int = 0
    best: float | None = None
    best_epoch: int = 0
    last_val: float | None = None

    def weights(self, epoch: int) -> dict:
        """``best.pth``: the weights and what rebuilds them."""
        return {"model": self.model.state_dict(), "config": self.config, "epoch": epoch,
                "best_metric": self.best, "kind": CHECKPOINT_KIND}

    def resumable(self, epoch: int) -> dict:
        """``last.pth``: the weights plus the optimizer, RNG and loader states of a resume."""
        return {"model": self.model.state_dict(), "optimizer": self.opt.state_dict(),
                "epoch": epoch, "step": self.step, "rng": rng_state(),
                "loader_generator": self.gen.get_state(), "best_metric": self.best,
                "best_epoch": self.best_epoch, "last_val_dice": self.last_val,
                "config": self.config, "kind": CHECKPOINT_KIND}


def setup(cfg: FinetuneConfig, plan: RunPlan, resuming: bool) -> Run:
    """The network (initialised from ``cfg.init``, or resumed from ``last.pth``), optimizer and loader."""
    device = resolve_device(cfg.device)
    seed_everything(plan.seed)
    model = build_network(network_config(cfg))
    notes = [] if resuming else initialize(model, cfg.init, cfg.arch, cfg.init_decoder)
    model.to(device, memory_format=training_layout(device, cfg.layout))
    opt = torch.optim.AdamW(param_groups_lrd(model, cfg.lr, cfg.weight_decay, cfg.layer_decay),
                            lr=cfg.lr, betas=(0.9, 0.999))
    scale = cfg.input_scale or inference_scale(plan.train_items, cfg.img_size)
    dataset = SegmentationDataset(plan.train_items, build_transform(transform_config(cfg, scale), train=True),
                                  require_masks=True)
    gen = torch.Generator().manual_seed(plan.seed)
    loader = DataLoader(dataset, batch_size=min(cfg.batch_size, len(dataset)), shuffle=True,
                        drop_last=len(dataset) > cfg.batch_size, num_workers=cfg.workers,
                        generator=gen, pin_memory=device.type == "cuda")
    run = Run(model, opt, loader, gen, device, checkpoint_config(cfg, scale), notes)
    if resuming:
        last_path = plan.run_dir / "last.pth"
        ck = torch.load(last_path, map_location="cpu", weights_only=True)
        check_resumable(ck["config"], cfg, plan.run_dir)
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        gen.set_state(ck["loader_generator"])
        set_rng_state(ck["rng"])
        run.start_epoch, run.step = ck["epoch"], ck["step"]
        run.best, run.best_epoch, run.last_val = ck["best_metric"], ck["best_epoch"], ck["last_val_dice"]
        run.notes = [f"resumed from {last_path} at epoch {run.start_epoch}"]
    return run


def train_one_epoch(run: Run, cfg: FinetuneConfig) -> tuple[float, float]:
    """One pass over the loader (lr per step: warm-up, then cosine); returns ``(mean loss, last lr)``."""
    steps_per_epoch = len(run.loader)
    total, warmup = cfg.epochs * steps_per_epoch, int(round(cfg.warmup_epochs * steps_per_epoch))
    use_amp = cfg.amp and run.device.type == "cuda"
    layout = training_layout(run.device, cfg.layout)
    run.model.train()
    losses = []
    for batch in run.loader:
        lr = cosine_lr(run.step, total, warmup, cfg.lr, cfg.min_lr)
        for group in run.opt.param_groups:
            group["lr"] = lr * group["lr_scale"]
        x = batch["image"].to(run.device, non_blocking=True, memory_format=layout)
        y = batch["mask"].to(run.device, non_blocking=True)
        with torch.autocast(run.device.type, dtype=torch.bfloat16, enabled=use_amp):
            logits = run.model(x)
        loss = dice_bce_loss(logits, y, cfg.bce_weight, cfg.dice_weight)
        run.opt.zero_grad(set_to_none=True)
        loss.backward()
        run.opt.step()
        losses.append(loss.item())
        run.step += 1
    return float(np.mean(losses)), lr


def train_run(cfg: FinetuneConfig, plan: RunPlan, resume: bool, progress: bool,
              max_epochs: int | None) -> RunResult | None:
    """Train one run for at most ``max_epochs`` more epochs (``None``: no limit), then score it.

    Returns the result, or ``None`` when the run stopped unfinished (``last.pth`` holds it).
    """
    run_dir, val_items = plan.run_dir, plan.val_items
    last_path, best_path = run_dir / "last.pth", run_dir / "best.pth"
    if last_path.exists() and not resume:
        raise ValueError(f"{run_dir}: holds a previous run (last.pth); pass --resume to continue it "
                         "or choose another out")
    run = setup(cfg, plan, resuming=resume and last_path.exists())
    if max_epochs == 0 and run.start_epoch < cfg.epochs:
        return None

    t0 = time.perf_counter()
    with JsonlLogger(run_dir / "log.jsonl") as log, \
            tensorboard_writer(cfg.tensorboard, run_dir / "tensorboard", "finetune") as writer:
        for note in run.notes:
            log.log({"event": note})
            if progress:
                logger.info(f"[finetune] seed {plan.seed} fold {plan.fold}: {note}")
        if run.start_epoch == 0 and val_items:
            record = validate(run.model, val_items, cfg, run.device, run.config["input"])
            log.log({"epoch": 0, **record})
            run.last_val = record["val_dice"]
        bar = tqdm(range(run.start_epoch, cfg.epochs), desc=f"seed {plan.seed} fold {plan.fold}", unit="epoch",
                   initial=run.start_epoch, total=cfg.epochs, disable=not progress, file=sys.stderr)
        for epoch in bar:
            t_epoch = time.perf_counter()
            loss, lr = train_one_epoch(run, cfg)
            done = epoch + 1
            record = {"epoch": done, "step": run.step, "lr": lr, "loss": loss,
                   "epoch_s": round(time.perf_counter() - t_epoch, 3)}
            if val_items and (done % cfg.val_every == 0 or done == cfg.epochs):
                record.update(validate(run.model, val_items, cfg, run.device, run.config["input"]))
                run.last_val = record["val_dice"]
                if run.best is None or record["val_dice"] > run.best:
                    run.best, run.best_epoch = record["val_dice"], done
                    record["best"] = True
                    atomic_torch_save(run.weights(done), best_path)
            if not val_items and done == cfg.epochs:  # nothing held out: the last epoch is the one kept
                run.best_epoch = done
                atomic_torch_save(run.weights(done), best_path)
            log.log(record)
            write_scalars(writer, "finetune", record, done)
            bar.set_postfix(loss=f"{record['loss']:.3f}",
                            **({"dice": f"{record['val_dice']:.3f}"} if "val_dice" in record else {}),
                            **({"best": f"{run.best:.3f}"} if run.best is not None else {}))
            stopping = max_epochs is not None and done - run.start_epoch >= max_epochs
            if done % cfg.save_every == 0 or done == cfg.epochs or stopping:
                atomic_torch_save(run.resumable(done), last_path)
            if stopping and done < cfg.epochs:
                bar.close()
                return None
        bar.close()
    wall = time.perf_counter() - t0

    take_last = cfg.select == "last" and bool(val_items)
    result = RunResult(plan.seed, plan.fold, len(plan.train_items), len(val_items), run.best_epoch, run.best,
                       run.last_val, str(last_path if take_last else best_path),
                       selected_epoch=cfg.epochs if take_last else run.best_epoch, wall_s=round(wall, 1),
                       trained_epochs=cfg.epochs - run.start_epoch)
    if val_items:
        selected, selected_config = model_from_checkpoint(result.checkpoint)
        scored = score_items(selected.to(run.device), val_items, selected_config["input"],
                             cfg.eval_batch_size, run.device, tta=cfg.tta)
        result.rows = scored.rows
    save_result(result, cfg, run_dir)
    return result


def save_result(result: RunResult, cfg: FinetuneConfig, run_dir: Path) -> Path:
    """Write a finished run's record, :data:`RESULT_NAME`, into its folder (atomically).

    It holds what the summary and the per-image table need (no weights), so that a later
    invocation that does not train this run, or a study folder refilled from its archived
    records, still counts it (:func:`load_result`).
    """
    record = {k: v for k, v in vars(result).items() if k not in ("rows", "trained_epochs")}
    record["rows"] = [{k: (v if isinstance(v, str) else float(v)) for k, v in row.items()} for row in result.rows]
    record["config"] = config_to_dict(cfg)
    path = Path(run_dir) / RESULT_NAME
    write_text_atomic(path, json.dumps(record, indent=1) + "\n")
    return path


def load_result(run_dir: Path, cfg: FinetuneConfig) -> RunResult | None:
    """The finished run recorded in ``run_dir`` by :func:`save_result`, or ``None``.

    ``None`` also when the record is unreadable or was made under another config (a setting
    outside :data:`RESUMABLE_CHANGES`, the epochs or the checkpoint selection differs): it does not
    belong to this one, and a warning says why.
    """
    path = Path(run_dir) / RESULT_NAME
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
        saved = deep_merge(config_to_dict(FinetuneConfig.model_construct()), record.pop("config"))
        rows = record.pop("rows")
        result = RunResult(**record, rows=rows)
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        logger.warning(f"[finetune] {path}: unreadable run record, ignored ({type(e).__name__}: {e})")
        return None
    differ = _unresumable_changes(saved, cfg)
    differ += [k for k in ("epochs", "select") if saved.get(k) != getattr(cfg, k)]
    if differ:
        logger.warning(f"[finetune] {path}: recorded under another config (differs in {', '.join(differ)}), ignored")
        return None
    return result
