"""The report of a study: tables, overlays and the paper's figures, from the cached stage outputs.

Kept apart from :mod:`vasomim.engines.study` so that the stage graph reads on its own.  Every
analysis runs on what the stages left on disk (checkpoints, logs, per-image CSVs) and writes its
figure and numbers under ``<study>/report/``.
"""

from __future__ import annotations

import csv
import json
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from vasomim.analysis.clustering import clustering_analysis, mae_encoder_forward, patch_embeddings, scores_rows
from vasomim.analysis.curves import format_score, plot_learning_curves, plot_sweep
from vasomim.analysis.masking_stats import masking_map_analysis, plot_vessel_share, vessel_share_curves
from vasomim.analysis.paired import paired_difference, per_image_means, per_run_means, shared_runs
from vasomim.analysis.reconstruction import reconstruction_panel
from vasomim.analysis.report import Report
from vasomim.data.sources import AnatomySource
from vasomim.engines.anatomy import frangi_prediction
from vasomim.engines.finetune import kfold_splits, labelled_items
from vasomim.engines.predict import iter_predictions
from vasomim.engines.pretrain import PretrainConfig
from vasomim.engines.segmentor import load_segmentor
from vasomim.engines.stages import Stage, stage_seconds, topological
from vasomim.metrics import binarize, dice
from vasomim.models.checkpoints import model_from_checkpoint

logger = logging.getLogger(__name__)


def _say(line: str) -> None:
    logger.info(f"[study] {line}")


def _fmt(metric: dict, n: int | None = None) -> str:
    return format_score(metric["mean"], metric["std"], n if n is not None else 2)


def results_rows(graph: dict, root: Path, fraction: float = 1.0) -> list[dict]:
    """One row per arm: Frangi first, then the fine-tune arms in study order (paper format, %)."""
    rows = []
    for stage in graph["frangi"]:
        out = stage.outputs(root)
        m = out["metrics"]
        recipe = stage.config.get("recipe", "paper")
        rows.append({"method": f"Frangi/Sato anatomy, {recipe} recipe (no training)", "DSC (%)": _fmt(m["dice"], out["n"]),
                     "clDice (%)": _fmt(m["cldice"], out["n"]), "std over": f"{out['n']} images"})
    for (arm, frac), stage in graph["finetune"].items():
        if frac != fraction:
            continue
        out = stage.results(root)
        m = out["metrics"]
        n = len(out["runs"])
        runs = f"{n} runs (folds x seeds)" if not out.get("partial") else \
            f"{n} of {out['n_runs_planned']} runs (partial)"
        init = stage.config.get("init", "scratch")
        what = "CNN U-Net" if stage.config.get("arch") == "unet" else f"ViT-{stage.config.get('size', 'tiny')} U-Net"
        rows.append({"method": f"{arm} ({what}, init {init})", "DSC (%)": _fmt(m["dice"], n),
                     "clDice (%)": _fmt(m["cldice"], n), "std over": runs})
    return rows


def per_image_table(stage, root: Path) -> Path:
    """A fine-tune or Frangi stage's ``per_image.csv``: the one in its folder under ``root`` (a study
    folder or its archive), else the path its record gives."""
    own = stage.dir(root) / "per_image.csv"
    return own if own.is_file() else Path(stage.results(root)["per_image"])


REFERENCES = ("vasomim", "unet_vasomim")  # the arms the paired tables compare everything else with


def paired_rows(graph: dict, root: Path, references: tuple[str, ...] = REFERENCES) -> list[dict]:
    """Per label fraction, each reference arm minus every other fine-tune arm, paired per image (in %).

    Each arm's score of an image is its mean over the runs that held the image out, among the runs
    (seeds) both arms have (:func:`~vasomim.analysis.paired.shared_runs`); the table gives the
    mean ± sample std of the per-image differences over the images, the standard error, the share
    of images where the reference is better and the Wilcoxon signed-rank p-value; then the same
    difference of the runs' means (one per fold and seed: the per-fold differences),
    mean ± std over the runs. The references are the VasoMIM arms (the ViT's ``vasomim``, the CNN's
    ``unet_vasomim``) that the study has; a pair of references is compared once, in the order
    given. Empty without a reference arm.
    """
    read: dict[str, list[dict]] = {}  # each stage's per_image.csv, read once

    def table(stage):
        if stage.name not in read:
            with open(per_image_table(stage, root), newline="") as fh:
                read[stage.name] = list(csv.DictReader(fh))
        return read[stage.name]

    rows = []
    fractions = sorted({frac for _, frac in graph["finetune"]})
    for frac in fractions:
        done: list[str] = []
        for reference in references:
            ref = graph["finetune"].get((reference, frac))
            if ref is None:
                continue
            for (arm, f), stage in graph["finetune"].items():
                if f != frac or arm == reference or arm in done:
                    continue
                row = {"labels": f"{frac:g}", "comparison": f"{reference} - {arm}"}
                rows_ref, rows_arm, _ = shared_runs(table(ref), table(stage))  # the runs (seeds) both have
                for metric, name in (("dice", "DSC"), ("cldice", "clDice")):
                    d = paired_difference(per_image_means(rows_ref, metric), per_image_means(rows_arm, metric))
                    row[f"Δ{name} (points)"] = f"{100 * d['mean']:+.2f} ± {100 * d['std']:.2f}"
                    row[f"{name} s.e."] = f"{100 * d['sem']:.2f}"
                    row[f"{name} better on"] = f"{100 * d['better']:.0f}% of {d['n']}"
                    row[f"{name} p"] = "-" if math.isnan(d["p"]) else f"{d['p']:.2g}"
                    runs = paired_difference(per_run_means(rows_ref, metric), per_run_means(rows_arm, metric))
                    row[f"Δ{name} per fold"] = f"{100 * runs['mean']:+.2f} ± {100 * runs['std']:.2f} (n={runs['n']})"
                rows.append(row)
            done.append(reference)
    return rows


def _fold0_cases(stage, root: Path, limit: int = 64) -> list[tuple]:
    """(arm, id, image01, pred, gt, dice) for the held-out images of the first run of a fine-tune arm
    that still has its weights (a run counted from its record alone, its weights gone, has none)."""
    out = stage.results(root)
    run = next((r for r in out["runs"] if r.get("checkpoint") and Path(r["checkpoint"]).is_file()), None)
    if run is None:
        raise FileNotFoundError(f"none of its {len(out['runs'])} run(s) has its weights (scores from records only)")
    cfg = stage.config
    if cfg.get("val_data") is not None:  # a fixed held-out set
        val = labelled_items(cfg["val_data"])[:limit]
    else:
        items = labelled_items(cfg["data"])
        splits = kfold_splits(len(items), cfg.get("folds", 1), cfg.get("split_seed", 0), cfg.get("val_fraction", 0.2))
        val = [items[i] for i in splits[run["fold"]][1]][:limit]
    model, mcfg = model_from_checkpoint(run["checkpoint"])
    cases = []
    for p in iter_predictions(model, val, mcfg["input"], with_masks=True, keep_images=True):
        if p.error is None:
            pred = binarize(p.prob)
            cases.append((stage.name.split("@")[0], p.item.id, p.image, pred, p.mask, dice(pred, p.mask)))
    return cases


def _frangi_cases(cfg, stage, root: Path) -> list[tuple]:
    """Best and worst labelled image of the Frangi/Sato baseline, recomputed for the overlays."""
    with open(per_image_table(stage, root), newline="") as fh:
        rows = sorted(csv.DictReader(fh), key=lambda r: float(r["dice"]))
    if not rows:
        return []
    picks = {rows[0]["image"], rows[-1]["image"]}
    cases = []
    for it in labelled_items(stage.config["labelled"]):
        if it.id in picks:
            image = it.load_image()
            gt = it.load_mask(image.shape)
            pred = frangi_prediction(image, stage.config)
            score = next(float(r["dice"]) for r in rows if r["image"] == it.id)
            cases.append((f"Frangi/Sato {stage.config.get('recipe', 'paper')}", it.id, image, pred, gt, score))
    return cases


def _label_efficiency(cfg, graph: dict, root: Path, fig_dir: Path):
    rows = []
    for (arm, frac), stage in graph["finetune"].items():
        for run in stage.results(root)["runs"]:
            if "dice" in run:
                rows.append({"arm": arm, "x": frac, "seed": f"{run['seed']}-{run['fold']}", "dice": run["dice"],
                             "cldice": run["cldice"]})
    return plot_sweep(rows, "share of the training labels", fig_dir / "label_efficiency.png",
                      title="Label efficiency (Table 6)")


def validation_rows(stage, root: Path) -> list[dict]:
    """The held-out scores a fine-tune stage's finished runs logged during training: one row per run
    and validation, ``{"arm", "x": epoch, "seed": "S-F", "dice", "cldice"}`` (a resumed run's repeated
    epoch counts once, its last line)."""
    rows = []
    arm = stage.name.split("@")[0]
    for run in stage.results(root)["runs"]:
        log = stage.dir(root) / f"seed{run['seed']}" / f"fold{run['fold']}" / "log.jsonl"
        if not log.is_file():
            continue
        by_epoch = {}
        for line in log.read_text().splitlines():
            try:
                r = json.loads(line)
                by_epoch[int(r["epoch"])] = (float(r["val_dice"]), float(r["val_cldice"]))
            except (ValueError, KeyError, TypeError):
                continue  # a training-only line, or one cut by a crash
        rows += [{"arm": arm, "x": e, "seed": f"{run['seed']}-{run['fold']}", "dice": d, "cldice": c}
                 for e, (d, c) in sorted(by_epoch.items())]
    return rows


def _learning_curves(cfg, graph: dict, root: Path, rep, fig_dir: Path) -> None:
    """Per label fraction, the held-out DSC and clDice of every arm at each validation during
    fine-tuning (mean ± std over its runs): how much of a pre-trained arm's lead is a faster start."""
    for frac in sorted({f for _, f in graph["finetune"]}):
        rows = [r for (arm, f), stage in graph["finetune"].items() if f == frac for r in validation_rows(stage, root)]
        if not rows:
            continue
        png = fig_dir / f"curves_{frac:g}.png"
        plot_learning_curves(rows, png, title=f"Held-out scores during fine-tuning, {frac:g} of the labels")
        rep.add_figure(png, f"Held-out DSC and clDice at each validation during fine-tuning, {frac:g} of the "
                       "labels: mean over each arm's runs, band ± std (the validation before training left out; "
                       "the last point is the final checkpoint's score).")


def _sweeps(cfg, graph: dict, root: Path, rep, fig_dir: Path) -> None:
    """One figure per configured sweep (Fig. 5, Table 5): score vs x over the sweep's arms, at the
    sweep's label fraction (the study's largest by default); arms with no finished run yet are left
    out, and a sweep with none is skipped."""
    for k, (label, sweep) in enumerate(cfg.sweeps.items()):
        frac = sweep.fraction if sweep.fraction is not None else max(cfg.label_fractions)
        rows = []
        for arm, x in sweep.points.items():
            if (arm, frac) not in graph["finetune"]:
                continue
            for run in graph["finetune"][(arm, frac)].results(root)["runs"]:
                if "dice" in run:
                    rows.append({"arm": label, "x": x, "seed": f"{run['seed']}-{run['fold']}",
                                 "dice": run["dice"], "cldice": run["cldice"]})
        if not rows:
            continue
        png = fig_dir / f"sweep_{k}.png"
        at = "" if frac == max(cfg.label_fractions) else f" at {frac:g} of the labels"
        plot_sweep(rows, label, png, title=f"Sweep: {label}{at}")
        rep.add_figure(png, f"DSC and clDice vs {label}{at} (mean ± std over folds x seeds).")


def _load_mae(stage, root: Path):
    model, config = model_from_checkpoint(stage.outputs(root)["checkpoint"], kind="mae")
    return model, PretrainConfig.model_validate(config)


def _resized_pairs(items, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (bilinear, clamped to [0, 1]) and their masks (nearest) at ``size`` x ``size``."""
    imgs, masks = [], []
    for it in items:
        image = it.load_image()
        imgs.append(F.interpolate(torch.from_numpy(image)[None, None], size=(size, size), mode="bilinear",
                                  align_corners=False))
        m = torch.from_numpy(it.load_mask(image.shape).astype(np.float32))[None, None]
        masks.append(F.interpolate(m, size=(size, size), mode="nearest"))
    return torch.cat(imgs).clamp(0, 1), torch.cat(masks) > 0.5


def _analysis_batch(graph: dict, root: Path, pcfg, n: int):
    """A few corpus images with their anatomy masks at the pre-training size: (images01, masks)."""
    a = graph["anatomy"].outputs(root)
    items = [it for it in AnatomySource(a["images"], a["anatomy"]).items if it.has_mask]
    step = max(1, len(items) // n)
    return _resized_pairs(items[::step][:n], pcfg.data.img_size)


def _normalise(images01: torch.Tensor, pcfg) -> torch.Tensor:
    mean, std = pcfg.data.transform_config().stats()
    x = images01.repeat(1, pcfg.data.in_chans, 1, 1)
    return (x - torch.tensor(mean).view(1, -1, 1, 1)) / torch.tensor(std).view(1, -1, 1, 1)


def _labelled_batch(cfg, size: int, n: int):
    """Labelled images and their reference masks at ``size`` (for the clustering of patch embeddings)."""
    return _resized_pairs(labelled_items(cfg.labelled)[: 4 * n], size)


def _figures(cfg, graph: dict, root: Path, rep, fig_dir: Path) -> None:
    pre = {a: s for a, s in graph["pretrain"].items() if s.outputs(root) is not None}  # `only` may skip some
    if not pre:
        return
    curves = vessel_share_curves({arm: s.outputs(root)["run_dir"] for arm, s in pre.items()})
    plot_vessel_share(curves, fig_dir / "vessel_share.png", title="Vessel-containing patches among masked ones (Fig. 3a)")
    rep.add_figure(fig_dir / "vessel_share.png", "Share of vessel-containing patches among the masked patches per "
                   "epoch (Fig. 3a). Guided masking raises it as beta grows; random masking stays at the share of "
                   "vessel patches in the images (dashed).")

    # ViT and CNN U-Net arms alike (a U-Net embeds one vector per 16-px cell of its coarsest level)
    guided = next((a for a, s in pre.items() if s.config.get("masking", {}).get("beta_E", 0.5) > 0), None)
    ref_arm = guided or next(iter(pre))
    model, pcfg = _load_mae(pre[ref_arm], root)
    images01, anat = _analysis_batch(graph, root, pcfg, cfg.analysis_images)
    m = pcfg.masking
    masking_map_analysis(images01[0, 0].numpy(), anat[0, 0].numpy(), fig_dir / "masking_map.png",
                         patch=pcfg.model.patch_size, mask_ratio=m.mask_ratio,
                         beta_schedule=(m.beta_0, m.beta_E), epochs=pcfg.epochs, seed=0)
    rep.add_figure(fig_dir / "masking_map.png", f"How often each patch was masked over {pcfg.epochs} epochs, "
                   f"anatomy-guided (beta {m.beta_0:g} -> {m.beta_E:g}) vs random (Fig. 3b).")

    seg_path = pcfg.consistency.segmentor
    segmentor = load_segmentor(seg_path) if seg_path else None
    mean, std = pcfg.data.transform_config().stats()
    reconstruction_panel(model, segmentor, images01, anat, m.mask_ratio, m.beta_E, 0, fig_dir / "reconstructions.png",
                         mean=mean, std=std, norm_pix=pcfg.model.norm_pix_loss)
    rep.add_figure(fig_dir / "reconstructions.png", f"Reconstructions of the {ref_arm} model: original, masked input, "
                   "reconstruction with visible patches pasted back, full decoder output I', and the frozen "
                   "segmentor on I and on I' (what the consistency loss compares).")

    lab_imgs, lab_masks = _labelled_batch(cfg, pcfg.data.img_size, cfg.analysis_images)
    embeddings = {}
    for arm, stage in pre.items():
        mdl, pc = _load_mae(stage, root)
        embeddings[arm] = patch_embeddings(mae_encoder_forward(mdl), _normalise(lab_imgs, pc), lab_masks,
                                           pc.model.patch_size)
    result = clustering_analysis(embeddings, fig_dir / "clustering.png")
    rep.add_table("Clustering of patch embeddings, vessel vs background (Table 4)", scores_rows(result),
                  caption="Patch tokens of the labelled images, grouped by whether the patch holds reference vessel "
                          "pixels. Higher silhouette (SS, x1e-2) and Calinski-Harabasz (CHI), lower Davies-Bouldin "
                          "(DBI) mean better separated vessel representations.")
    rep.add_figure(fig_dir / "clustering.png", "Patch embeddings projected to 2-D, vessel vs background.")


def graph_stages(graph: dict) -> list[Stage]:
    """Every stage of a study's stage graph (:func:`vasomim.engines.study.build_stages`), each once,
    dependencies first: the fine-tunes, pre-trainings, SPT and Frangi stages and what they read."""
    leaves = [*graph["finetune"].values(), *graph["pretrain"].values(), *graph["frangi"]]
    if graph["spt"] is not None:
        leaves.append(graph["spt"])
    return topological(leaves)


def _span(values) -> str:
    """``"a"`` when every value is ``a``, else ``"min-max"`` (numbers as written, e.g. ``192-256``)."""
    distinct = sorted(set(values))
    if not distinct:
        return ""
    return f"{distinct[0]:g}" if len(distinct) == 1 else f"{distinct[0]:g}-{distinct[-1]:g}"


def write_study_report(cfg, graph: dict, root: Path, run_report, seconds: float, command: str | None,
                       rep_dir: Path | None = None, records_only: bool = False) -> Path:
    """Write ``<root>/report/report.md`` and ``index.html`` (or in ``rep_dir``); returns the Markdown path.

    ``records_only``: from the stages' text records alone (an archive of the study): the tables, the
    paired differences and the label-efficiency and sweep figures, without the overlays and the
    analyses, which need the weights and caches.
    """
    rep_dir = rep_dir or root / "report"
    fig_dir = rep_dir / "figures"
    fig_dir.mkdir(parents=True, exist_ok=True)
    rep = Report(cfg.name, rep_dir)
    # the fine-tune stages with results (a study run with `only` may have left some for later)
    graph = {**graph, "finetune": {k: s for k, s in graph["finetune"].items() if s.results(root) is not None}}

    # every stage of this study that has recorded a time, also those this invocation left out (`only`);
    # a fine-tune counts all its runs, whichever invocation trained them
    stage_times = {f"{s.kind}/{s.name}": stage_seconds(s, root) for s in graph_stages(graph)}
    ft_stages = list(graph["finetune"].values())
    pre = next(iter(graph["pretrain"].values()), None)
    setup: dict[str, Any] = {"labelled data": str(cfg.labelled)}
    if pre is not None or graph["spt"] is not None:
        n_corpus = len(graph["corpus"].config["entries"])
        setup["pre-training corpus"] = (f"{n_corpus} images ({', '.join(cfg.unlabelled) or 'no extra folders'}"
                                        f"{' + the labelled images without labels' if cfg.pretrain_on_labelled_images else ''})")
    if pre is not None:
        pc = pre.config
        setup["pre-training"] = (f"ViT-{pc.get('model', {}).get('size', 'base')}/16 at {pc.get('data', {}).get('img_size', 224)} px, "
                                 f"{pc.get('epochs')} epochs, batch {pc.get('batch_size')}, arms: {', '.join(graph['pretrain'])}")
    if ft_stages:
        fc = ft_stages[0].config
        epochs = _span(s.config.get("epochs") for s in ft_stages)
        sizes = _span(s.config.get("img_size", 224) for s in ft_stages)
        scales = _span(s.config.get("input_scale") for s in ft_stages if s.config.get("input_scale") is not None)
        setup["fine-tuning"] = (f"{epochs} epochs at {sizes} px{f', input scale {scales}' if scales else ''}, "
                                f"{fc.get('folds', 1)} folds x seeds {fc.get('seeds', [0])}, "
                                f"label fractions {cfg.label_fractions}")
    setup["stage wall times"] = ", ".join(f"{k} {v:.0f} s" for k, v in stage_times.items() if v is not None)
    # compute time of every stage (also those cached from earlier runs) + this run's overhead
    ran_now = sum(run_report.seconds.values())
    setup["wall_time_s"] = sum(v for v in stage_times.values() if v) + max(0.0, seconds - ran_now)
    if records_only:  # the runs were made wherever the study ran, not on the machine writing this
        setup["hardware"] = "wherever each stage ran (this report was made from the records alone)"
    rep.add_setup(setup, detect_hardware=not records_only)

    rows = results_rows(graph, root, 1.0 if 1.0 in cfg.label_fractions else max(cfg.label_fractions))
    selects = {stage.config.get("select", "best") for stage in graph["finetune"].values()}
    which = {frozenset({"best"}): "the best-by-validation checkpoint (selected on the same held-out images, "
                                  "as papers usually report: optimistic)",
             frozenset({"last"}): "the final-epoch checkpoint (no selection on the held-out images)"}.get(
        frozenset(selects), "each arm's selected checkpoint (its `select`)")
    rep.add_table("Vessel segmentation", rows, caption=f"Mean ± standard deviation, in %. Fine-tuned arms: scores of "
                  f"{which} on the held-out images of each fold, at the original image resolution, averaged per "
                  "run; std over runs (folds x seeds). Frangi: std over images.")
    references = tuple(cfg.paired_with) if cfg.paired_with else REFERENCES
    paired = paired_rows(graph, root, references)
    if paired:
        who = (f"Each reference arm ({', '.join(references)})" if cfg.paired_with else
               "Each VasoMIM arm (vasomim: the ViT; unet_vasomim: the CNN U-Net)")
        rep.add_table("Paired per-image differences", paired, caption=f"{who} minus each other arm, image by image "
                      "(each image's score averaged over the seeds that held it out), in DSC/clDice points: mean ± "
                      "std over images, standard error, share of images where the reference arm is better, two-sided "
                      "Wilcoxon signed-rank p-value; then the difference of the run means, one per fold and seed.")
    if len(cfg.label_fractions) > 1:
        _label_efficiency(cfg, graph, root, fig_dir)
        rep.add_figure(fig_dir / "label_efficiency.png", "DSC and clDice vs the share of training labels (Table 6).")

    _learning_curves(cfg, graph, root, rep, fig_dir)
    if cfg.sweeps:
        _sweeps(cfg, graph, root, rep, fig_dir)
    cases = []
    for stage in graph["frangi"] if not records_only else ():
        cases += _frangi_cases(cfg, stage, root)
    for (arm, frac), stage in graph["finetune"].items() if not records_only else ():
        if frac == max(cfg.label_fractions):
            try:
                cases += _fold0_cases(stage, root)
            except Exception as exc:  # a figure must not sink the report
                _say(f"overlays of {arm} skipped: {type(exc).__name__}: {exc}")
    if cases:
        rep.add_cases(cases)
    if records_only:
        rep.add_text("Made from the study's archived records alone (`vasomim study --report-from`): no "
                     "overlays or analyses, which need the weights.")
    elif cfg.analyses:
        try:
            _figures(cfg, graph, root, rep, fig_dir)
        except Exception as exc:
            _say(f"analyses skipped: {type(exc).__name__}: {exc}")
            rep.add_text(f"Analyses could not be produced: {type(exc).__name__}: {exc}")
    rep.add_code([command or f"vasomim study {root / 'study.json'}"])
    md, html = rep.write()
    _say(f"report: {md} and {html}")
    return md
