"""Fine-tuning for vessel segmentation (VasoMIM stage 4): k-fold cross-validation over seeds.

Every arm of the comparison is a configuration (:mod:`.finetune_config`); one (seed, fold) run is
:func:`.finetune_run.train_run`. The protocol, the recipe and the output folder are in
``docs/finetune.md``. On CPU with ``workers: 0`` a resumed run ends with the same weights as an
uninterrupted one.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any, Collection, Sequence

import numpy as np

from vasomim.config import config_to_dict
from vasomim.data.check import pair_size_problems
from vasomim.data.io import looked_for, write_text_atomic
from vasomim.data.sources import Item, load_source
from vasomim.engines.common import FolderInUse, claim
from vasomim.engines.evaluate import METRICS, csv_text, format_table, summarize_rows
from vasomim.engines.finetune_config import AugmentConfig, FinetuneConfig, network_config
from vasomim.engines.finetune_run import RESULT_NAME, RunPlan, RunResult, initialize, load_result, train_run
from vasomim.inference import build_network
from vasomim.losses import dice_bce_loss
from vasomim.metrics import summarize

logger = logging.getLogger(__name__)

# the engine's public names, wherever they are defined
__all__ = [
    "AugmentConfig",
    "FinetuneConfig",
    "RunResult",
    "build_network",
    "dice_bce_loss",
    "finetune",
    "format_results",
    "initialize",
    "kfold_splits",
    "labelled_items",
    "network_config",
    "subsample",
]


# ----------------------------------------------------------------------------- protocol


def kfold_splits(n: int, folds: int, seed: int = 0,
                 val_fraction: float = 0.2) -> list[tuple[list[int], list[int]]]:
    """Deterministic train/validation index splits of ``n`` items.

    Args:
        n: Number of items.
        folds: ``k >= 2``: a seeded permutation cut into ``k`` near-equal parts; split ``i``
            validates on part ``i`` (every item is validated exactly once). ``1``: one split holding
            out ``round(val_fraction * n)`` items (at least one when ``val_fraction > 0`` and ``n >
            1``).
        seed: Seed of the permutation.
        val_fraction: Held-out share for ``folds == 1``.

    Returns:
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

    Args:
        indices: The training part of a split.
        fraction: Share kept (1.0 keeps all).
        seed: Seed (or seed sequence) of the permutation; a smaller fraction with the same seed
            keeps a subset.
    """
    if fraction >= 1.0:
        return list(indices)
    keep = max(1, int(round(fraction * len(indices))))
    perm = np.random.default_rng(seed).permutation(len(indices))[:keep]
    return sorted(indices[i] for i in perm)


# ----------------------------------------------------------------------------- all runs


def labelled_items(data: Any) -> list[Item]:
    """The items of a labelled source, sorted by id; one-line errors when masks are missing."""
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
             stop_after: int | None = None, runs: Collection[tuple[int, int]] | None = None) -> dict | None:
    """Train every (seed, fold) run of ``cfg``, score the best checkpoints, write the reports.

    Args:
        cfg: The configuration.
        resume: Continue each run from its ``last.pth`` (finished runs are only re-scored); without
            it a run folder that already holds a ``last.pth`` is an error.
        progress: Progress bars and notes on stderr.
        stop_after: Stop after this many epochs of training in this invocation, counted over all
            runs (for time-limited jobs), leaving ``last.pth``; continue later with ``resume=True``.
            Returns ``None`` when it stopped before every run was finished.
        runs: Only these ``(seed, fold)`` runs (a study split across sessions); ``None``: every run
            of ``cfg.seeds`` x the folds (``cfg.only_folds``). A run that finished earlier into
            ``out`` (its record ``result.json``, made under the same config) and is not trained now,
            because it is not chosen or its ``last.pth`` is gone, counts with its recorded scores.

    Returns:
        The summary (also in ``out/summary.json``): per run the held-out means, and ``metrics``
        ``{"dice"|"cldice"|"tprec"|"tsens": {"mean", "std"}}`` over the runs. A run that another
        live job is training (:func:`~vasomim.engines.common.claim`) is skipped with a warning and
        tried once more at the end; if it is still held, the summary lists it under ``busy`` and
        leaves it out of the scores.
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
    write_text_atomic(out / "config.json", json.dumps(config_to_dict(cfg), indent=2) + "\n")
    t0 = time.perf_counter()
    results: list[RunResult] = []
    plans: list[RunPlan] = []
    recorded: list[RunResult] = []  # finished runs this invocation does not train: from their records
    remaining = stop_after
    for seed in cfg.seeds:
        for fold, (train_idx, val_idx) in enumerate(splits):
            if cfg.only_folds is not None and fold not in cfg.only_folds:
                continue
            run_dir = out / f"seed{seed}" / f"fold{fold}"
            chosen = runs is None or (seed, fold) in runs
            # a run finished under this config counts from its record: not trained (or re-scored)
            # again on --resume, which would rewrite its record (its wall time) for the same scores
            if not chosen or resume or not (run_dir / "last.pth").exists():
                earlier = load_result(run_dir, cfg)  # finished before; its weights here, elsewhere or gone
                if earlier is not None:
                    earlier.wall_s = 0.0
                    recorded.append(earlier)
                    if progress:
                        logger.info(f"[finetune] seed {seed} fold {fold}: finished earlier; its scores "
                                    f"from its record ({run_dir / RESULT_NAME})")
                    continue
            if not chosen:
                continue
            train_idx = subsample(train_idx, cfg.label_fraction, [cfg.split_seed, fold])
            plan = RunPlan(seed, fold, [items[i] for i in train_idx], [held_out[i] for i in val_idx], run_dir)
            plans.append(plan)
    busy: list[RunPlan] = []
    for attempt in range(2):  # runs another job holds are skipped, then tried once more at the end
        for plan in plans if attempt == 0 else list(busy):
            try:
                with claim(plan.run_dir):
                    res = train_run(cfg, plan, resume, progress, remaining)
            except FolderInUse as e:
                if attempt == 0:
                    busy.append(plan)
                    logger.warning(f"[finetune] seed {plan.seed} fold {plan.fold}: skipped, {e}")
                continue
            if attempt == 1:
                busy.remove(plan)
            if res is None:
                return None
            if remaining is not None:
                remaining -= res.trained_epochs
            results.append(res)
    results += recorded
    summary = _summary(cfg, sorted(results, key=lambda r: (r.seed, r.fold)), time.perf_counter() - t0)
    if busy:
        summary["busy"] = [f"seed {p.seed} / fold {p.fold}" for p in busy]
    for name, text in _report_texts(summary, results).items():
        write_text_atomic(out / name, text)
    return summary


def _report_texts(summary: dict, results: list[RunResult]) -> dict[str, str]:
    """The contents of a fine-tuning folder's ``per_image.csv`` (a row per run and held-out image)
    and ``summary.json``."""
    rows = [{"seed": r.seed, "fold": r.fold, **row}
            for r in sorted(results, key=lambda r: (r.seed, r.fold)) for row in r.rows]
    return {"per_image.csv": csv_text(rows, ("seed", "fold", "image", *METRICS)),
            "summary.json": json.dumps(summary, indent=2) + "\n"}


def recorded_runs(out: str | Path) -> set[tuple[int, int]]:
    """The ``(seed, fold)`` runs of a fine-tuning folder that left a finished-run record."""
    return {(int(p.parent.parent.name[4:]), int(p.parent.name[4:]))
            for p in Path(out).glob(f"seed*/fold*/{RESULT_NAME}")}


def summary_from_records(out: str | Path, write: bool = True) -> dict:
    """Rebuild a fine-tuning folder's summary and per-image table from its runs' records alone.

    The records (``seed*/fold*/result.json``, :func:`~vasomim.engines.finetune_run.save_result`)
    hold every score the reports need, so the reports of runs trained apart (another machine,
    another session: an archive that gathers them) are those of one invocation that counted them
    all. Runs recorded under another config than the folder's ``config.json`` are left out with a
    warning (:func:`~vasomim.engines.finetune_run.load_result`). ``wall_s`` is the sum of the runs'
    recorded times.

    Args:
        out: the folder (``config.json`` and the run records).
        write: also write ``summary.json`` and ``per_image.csv`` there, each only when its content
            changed (through a temporary file).

    Returns:
        The summary, as :func:`finetune` returns it.

    Raises:
        ValueError: one line naming the folder when it has no readable ``config.json``.
    """
    out = Path(out)
    try:
        cfg = FinetuneConfig.model_validate(json.loads((out / "config.json").read_text()))
    except (OSError, ValueError) as e:
        raise ValueError(f"{out / 'config.json'}: no readable fine-tuning config ({type(e).__name__}: {e})") from None
    results = [r for s, f in sorted(recorded_runs(out))
               if (r := load_result(out / f"seed{s}" / f"fold{f}", cfg)) is not None]
    summary = _summary(cfg, results, sum(r.wall_s for r in results))
    if write:
        for name, text in _report_texts(summary, results).items():
            target = out / name
            if not (target.is_file() and target.read_text() == text):
                write_text_atomic(target, text)
    return summary
