"""A study: the paper's experiment on anyone's angiograms, from one YAML file, cached stage by stage.

Stages (see :mod:`vasomim.engines.stages` for the caching rule)::

    corpus ──> anatomy ──> segmentor ──> pretrain/<arm> ──> finetune/<arm>@<fraction>
       (unlabelled images)      └──────> spt ─────────────────────┘
    frangi (the anatomy of the labelled images, scored directly)

* ``corpus``: a folder of symbolic links to every unlabelled image (and, by default, to the
  labelled images without their labels), so that one anatomy run and one image root serve all.
* ``anatomy``: ``vasomim anatomy`` on the corpus.
* ``segmentor``: UNeXt-S trained on the anatomy (or a given checkpoint).
* ``pretrain/<arm>``: one pre-training per arm (VasoMIM, MAE, ablations, sweeps: config overrides).
* ``spt``: the segmentation network trained on the pseudo-labels (segmentor-based pre-training).
* ``finetune/<arm>@<fraction>``: k-fold x seeds fine-tuning on the labelled set, initialised from
  ``scratch``, ``pretrain:<arm>`` or ``spt``; ``arch: unet`` gives the plain CNN U-Net arm.
* ``frangi``: the anatomy masks of the labelled images scored against their labels.

Then the report (always rebuilt, cheap): results table in the paper's format, label-efficiency
curve, best/worst overlays per arm, Fig. 3a, Fig. 3b, reconstructions, Table 4 clustering, the
setup and the commands to reproduce.
"""

from __future__ import annotations

import json
import logging
import os
import statistics
import time
from functools import partial
from pathlib import Path
from typing import Any, Callable, Literal

from pydantic import Field, field_validator, model_validator

from vasomim.anatomy import DEFAULT_RECIPE
from vasomim.config import StrictModel, deep_merge
from vasomim.data.io import write_text_atomic
from vasomim.engines.anatomy import AnatomyConfig, frangi_prediction, list_images, run_anatomy
from vasomim.engines.evaluate import csv_text, summarize_rows
from vasomim.engines.finetune import FinetuneConfig, finetune, labelled_items, recorded_runs, summary_from_records
from vasomim.engines.pretrain import PretrainConfig, pretrain
from vasomim.engines.segmentor import SegmentorConfig, train_segmentor
from vasomim.engines.stages import RunReport, Stage, archive_records, copy_if_changed, epoch_seconds, run_stages
from vasomim.engines.study_report import graph_stages, write_study_report
from vasomim.metrics import evaluate_pair

logger = logging.getLogger(__name__)


def _default_pretrain_arms() -> dict[str, dict]:
    return {
        "vasomim": {},
        "mae": {"masking": {"beta_0": 0.0, "beta_E": 0.0}, "consistency": {"weight": 0.0}},
    }


def _default_finetune_arms() -> dict[str, dict]:
    return {
        "scratch": {"init": "scratch"},
        "mae": {"init": "pretrain:mae"},
        "vasomim": {"init": "pretrain:vasomim"},
    }


class StudyPart(StrictModel):
    """The part of a study's fine-tuning to run now (``StudyConfig.only``); ``None``: all."""

    arms: list[str] | None = None
    fractions: list[float] | None = None
    seeds: list[int] | None = None
    folds: list[int] | None = None


class Sweep(StrictModel):
    """A figure over fine-tune arms (``StudyConfig.sweeps``): score against a swept value."""

    points: dict[str, float | str] = Field(description="fine-tune arm -> its x value")
    fraction: float | None = Field(None, gt=0, le=1, description="the label fraction read; default "
                                   "the study's largest")


class StudyConfig(StrictModel):
    """A study file (``vasomim study STUDY.yaml``).  Sections hold overrides of the engines' configs.

    Attributes:
        name: the study's name (report title).
        out: the study folder (stages, report).
        labelled: labelled images: a folder (images/ + masks/, nnU-Net, ARCADE...) or a data spec.
        held_out: labelled images kept for scoring (e.g. ARCADE's labelled/val): every fine-tune arm
            trains on ``labelled`` (at each label fraction) and is scored on these, and the Frangi
            rows score these; without it, ``labelled`` is cross-validated.
        unlabelled: folders of unlabelled angiograms for pre-training.
        pretrain_on_labelled_images: add the labelled images, without their labels, to the corpus.
        synthetic: synthetic frames added to every pre-training arm's corpus, generated on the fly
            with exact vessel masks: ``{count: 3000, size: 256, seed: 0, share: 0.5}`` (``share``:
            their share of every epoch, the real frames oversampled to fill the rest; without it
            each frame is read once; ``preset``/``config`` as for the ``synthetic`` source).  An
            arm overrides it, e.g. ``synthetic: {count: 0}`` for the real-only ablation.
        anatomy: :class:`~vasomim.engines.anatomy.AnatomyConfig` keys.
        segmentor: :class:`~vasomim.engines.segmentor.SegmentorConfig` keys, or ``checkpoint: PATH``.
        pretrain: :class:`~vasomim.engines.pretrain.PretrainConfig` keys shared by every arm.
        pretrain_arms: arm name -> overrides (MAE baseline, ablations, masking-ratio sweep ...).
        finetune: :class:`~vasomim.engines.finetune.FinetuneConfig` keys shared by every arm.
        finetune_arms: arm name -> overrides; ``init`` is ``scratch``, ``pretrain:<arm>``, ``spt``
            or a checkpoint path; ``arch: unet`` is the CNN U-Net baseline; ``label_fractions``
            runs an arm (an ablation, say) at only some of the study's fractions.
        spt: overrides of the SPT stage (the fine-tune config trained on the pseudo-labels).
        frangi: score the anatomy masks of the labelled images (the Frangi/Sato baseline): the paper's
            recipe, and the study's anatomy recipe (``fov`` by default) as a second row.
        label_fractions: fine-tune every arm at each share of the training labels (Table 6).
        fraction_schedule: how a fraction below 1 trains: ``epochs`` keeps the fine-tuning epochs
            (fewer optimizer steps on fewer frames); ``steps`` divides the epochs and the warm-up
            epochs by the fraction, so that every fraction trains for the optimizer steps of the
            full-label runs (25% labels: 4x the epochs). The full-label stages are the same either way.
        analyses: build the figures (Fig. 3a/3b, reconstructions, Table 4) in the report.
        analysis_images: images used by the reconstruction and clustering analyses.
        paired_with: the fine-tune arms the paired per-image table compares every other arm with, in
            this order (a pair of them once); default the VasoMIM arms the study has (``vasomim``,
            ``unet_vasomim``). A study without them names its own, e.g. the current recipe in a
            selection study: ``paired_with: [unet_s0.5]``.
        sweeps: figures over fine-tune arms, e.g. the masking-ratio sweep (Fig. 5):
            ``{"masking ratio": {"r25": 0.25, "r50": 0.5, "r75": 0.75}}`` maps a sweep's x-axis label
            to ``{fine-tune arm: x value}`` (x values may be text, e.g. "0→0.5" for Table 5), read at
            the study's largest label fraction; ``{points: {arm: x}, fraction: 0.1}`` reads another.
        pretrain_launcher: run each pre-training arm through this launcher, e.g.
            ``torchrun --nproc_per_node=8 --no-python`` (the rest of the study stays in this process).
        only: run part of the fine-tuning this time, to split a long study across sessions or
            machines: ``{arms: [scratch, vasomim], fractions: [1.0], seeds: [0], folds: [0]}`` (each
            key optional). Stage keys ignore it, so the runs done count towards the whole study; a
            fine-tune stage with runs missing is reported as partial and continued by the next run.
    """

    name: str = "vasomim study"
    out: str = "runs/study"
    labelled: str | dict | list
    held_out: str | dict | list | None = None
    unlabelled: list[str] = Field(default_factory=list)
    pretrain_on_labelled_images: bool = True
    synthetic: dict | None = None
    anatomy: dict = Field(default_factory=dict)
    segmentor: dict = Field(default_factory=dict)
    pretrain: dict = Field(default_factory=dict)
    pretrain_arms: dict[str, dict] = Field(default_factory=_default_pretrain_arms)
    finetune: dict = Field(default_factory=dict)
    finetune_arms: dict[str, dict] = Field(default_factory=_default_finetune_arms)
    spt: dict = Field(default_factory=dict)
    frangi: bool = True
    label_fractions: list[float] = Field(default_factory=lambda: [1.0])
    fraction_schedule: Literal["epochs", "steps"] = "epochs"
    analyses: bool = True
    analysis_images: int = Field(4, ge=1)
    paired_with: list[str] | None = None
    sweeps: dict[str, Sweep] = Field(default_factory=dict)
    pretrain_launcher: str | None = None
    only: StudyPart | None = None

    @field_validator("sweeps", mode="before")
    @classmethod
    def _sweep_points(cls, v: Any) -> Any:
        """A sweep given as ``{arm: x}`` alone reads the largest label fraction."""
        if not isinstance(v, dict):
            return v
        whole = (lambda s: isinstance(s, Sweep) or (isinstance(s, dict) and "points" in s))
        return {label: s if whole(s) else {"points": s} for label, s in v.items()}

    @model_validator(mode="after")
    def _paired_arms_exist(self) -> "StudyConfig":
        unknown = [a for a in self.paired_with or [] if a not in self.finetune_arms]
        if unknown:
            raise ValueError(f"paired_with names {', '.join(unknown)}: not a fine-tune arm of this study "
                             f"(its arms: {', '.join(self.finetune_arms)})")
        return self


def _say(line: str) -> None:
    logger.info(f"[study] {line}")


# --------------------------------------------------------------------------------------- stages


def _corpus_listing(cfg: StudyConfig) -> list[tuple[str, str]]:
    """(link name, target) for every corpus image: unlabelled folders, then the labelled images."""
    entries: list[tuple[str, str]] = []
    for k, folder in enumerate(cfg.unlabelled):
        root = Path(folder).resolve()
        if not root.is_dir():
            raise FileNotFoundError(f"{folder}: unlabelled folder not found")
        entries += [(f"u{k}_{root.name}/{rel}", str(root / rel)) for rel in list_images(root)]
    if cfg.pretrain_on_labelled_images:
        for it in labelled_items(cfg.labelled):
            if it.frame is None:
                entries.append((f"labelled/{Path(it.id).as_posix()}", str(Path(it.image_path).resolve())))
    if not entries:
        raise ValueError("the pre-training corpus is empty: give `unlabelled` folders or keep pretrain_on_labelled_images")
    return entries


def _run_corpus(d: Path, config: dict, deps: dict) -> dict:
    corpus = d / "images"
    for name, target in config["entries"]:
        link = corpus / name
        link.parent.mkdir(parents=True, exist_ok=True)
        if not link.is_symlink():
            os.symlink(target, link)
    return {"images": str(corpus), "count": len(config["entries"])}


def _run_anatomy(d: Path, config: dict, deps: dict) -> dict:
    images = deps["corpus/corpus"]["images"]
    summary = run_anatomy(images, d / "masks", AnatomyConfig(**config), progress=True)
    if summary.failures or summary.previous_failures:
        for _, reason in summary.failures + summary.previous_failures:
            _say(f"anatomy skipped: {reason}")
    return {"images": images, "anatomy": str(d / "masks"), "processed": summary.total - len(summary.failures)}


def _run_segmentor(d: Path, config: dict, deps: dict) -> dict:
    a = deps["anatomy/anatomy"]
    cfg = SegmentorConfig(**deep_merge(config, {"images": a["images"], "anatomy": a["anatomy"], "out": str(d)}))
    summary = train_segmentor(cfg, resume=True)
    return {"checkpoint": summary["checkpoint"], "val_dice": summary["val_dice_vs_pseudo_labels"]}


def _run_pretrain(d: Path, config: dict, deps: dict, launcher: str | None = None) -> dict:
    """One pre-training arm, in this process or, with ``launcher``, as ``<launcher> vasomim pretrain``.

    The launcher (e.g. ``torchrun --nproc_per_node=8 --no-python``) runs the arm on several GPUs; its
    config is written to ``<stage>/pretrain.yaml`` and the run resumes if it was interrupted.
    """
    import shlex
    import subprocess

    import yaml

    config = dict(config)
    a = deps["anatomy/anatomy"]
    spec = _synthetic_spec(d, a, config.pop("synthetic", None))
    data = {"spec": str(spec)} if spec else {"images": a["images"], "anatomy": a["anatomy"]}
    values = deep_merge(config, {"data": data, "out": str(d)})
    if "segmentor/segmentor" in deps:
        values = deep_merge(values, {"consistency": {"segmentor": deps["segmentor/segmentor"]["checkpoint"]}})
    cfg = PretrainConfig.model_validate(values)
    if launcher:
        config_file = d / "pretrain.yaml"
        config_file.write_text(yaml.safe_dump(json.loads(cfg.model_dump_json()), sort_keys=False))
        argv = [*shlex.split(launcher), "vasomim", "pretrain", "--config", str(config_file), "--resume", "--quiet"]
        _say("launching " + " ".join(shlex.quote(x) for x in argv))
        subprocess.run(argv, check=True)
        log = d / "log.jsonl"
        lines = log.read_text().strip().splitlines() if log.is_file() else []
        last = json.loads(lines[-1]) if lines else None
        return {"checkpoint": str(d / "checkpoint-final.pth"), "run_dir": str(d), "last": last}
    result = pretrain(cfg, resume=True)
    return {"checkpoint": result["checkpoint"], "run_dir": result["run_dir"], "last": result["last"],
            "wall_time_s": result["wall_time_s"]}


_SYNTHETIC_KEYS = ("count", "size", "seed", "share", "preset", "config")


def _synthetic_spec(d: Path, anatomy: dict, synthetic: dict | None) -> Path | None:
    """Write ``<stage>/corpus.yaml``, the real anatomy corpus plus synthetic frames; None without any."""
    import yaml

    synthetic = dict(synthetic or {})
    unknown = sorted(set(synthetic) - set(_SYNTHETIC_KEYS))
    if unknown:
        raise ValueError(f"synthetic: unknown key(s) {', '.join(unknown)} (expected {', '.join(_SYNTHETIC_KEYS)})")
    if int(synthetic.get("count", 0)) <= 0:
        return None
    share = synthetic.pop("share", None)
    real = {"type": "anatomy", "images": str(Path(anatomy["images"]).resolve()),
            "anatomy": str(Path(anatomy["anatomy"]).resolve()), "name": "real"}
    synth = {"type": "synthetic", "name": "synthetic", **synthetic}
    if share is not None:
        synth["share"] = float(share)
    d.mkdir(parents=True, exist_ok=True)
    spec = d / "corpus.yaml"
    spec.write_text(yaml.safe_dump({"sources": [real, synth]}, sort_keys=False))
    return spec


def _resolve_init(init: str, deps: dict) -> str:
    if init.startswith("pretrain:"):
        return deps[f"pretrain/{init.split(':', 1)[1]}"]["checkpoint"]
    if init == "spt":
        return deps["spt/spt"]["checkpoint"]
    return init


def _run_spt(d: Path, config: dict, deps: dict) -> dict:
    a = deps["anatomy/anatomy"]
    values = deep_merge(config, {"data": {"type": "anatomy", "images": a["images"], "anatomy": a["anatomy"]},
                                 "out": str(d), "folds": 1, "seeds": [config.get("seeds", [0])[0]]})
    summary = finetune(FinetuneConfig.model_validate(values), resume=any(d.glob("seed*/fold*/last.pth")))
    return {"checkpoint": summary["runs"][0]["checkpoint"], "val_dice_vs_pseudo_labels": summary["runs"][0]["best_val_dice"]}


def _run_finetune(d: Path, config: dict, deps: dict, only: StudyPart | None = None) -> dict:
    """The (seed, fold) runs of one arm at one fraction; with ``only``, those it names plus any
    started before, and the finished ones counted from their records (a partial stage:
    ``partial: True`` while runs are missing)."""
    values = dict(config)
    values["init"] = _resolve_init(values.get("init", "scratch"), deps)
    values["out"] = str(d)
    cfg = FinetuneConfig.model_validate(values)
    started = {(int(p.parent.parent.name[4:]), int(p.parent.name[4:])) for p in d.glob("seed*/fold*/last.pth")}
    every = _planned_runs(cfg.seeds, cfg.folds, cfg.only_folds)
    runs = _chosen_runs(every, only) | (started & every)
    summary = finetune(cfg, resume=bool(started), runs=None if runs == every else runs)
    out = {"metrics": summary["metrics"], "runs": summary["runs"], "per_image": str(d / "per_image.csv"),
           "wall_s": summary["wall_s"]}
    if summary.get("busy"):  # runs another job was training: they are left to it
        out["busy"] = summary["busy"]
    done = {(r["seed"], r["fold"]) for r in summary["runs"]}  # trained now or finished earlier (records)
    if not every <= done or summary.get("busy"):
        out.update(partial=True, n_runs_planned=len(every))
    return out


def _run_frangi(d: Path, config: dict, deps: dict) -> dict:
    rows = []
    for it in labelled_items(config["labelled"]):
        image = it.load_image()
        rows.append({"image": it.id, **evaluate_pair(frangi_prediction(image, config), it.load_mask(image.shape))})
    write_text_atomic(d / "per_image.csv", csv_text(rows, ("image", "dice", "cldice", "tprec", "tsens")))
    return {"metrics": summarize_rows(rows), "per_image": str(d / "per_image.csv"), "n": len(rows)}


def _pretrain_uses_segmentor(values: dict) -> bool:
    cons = values.get("consistency", {})
    guidance = values.get("masking", {}).get("guidance", "anatomy")
    return float(cons.get("weight", 1.0)) > 0 or guidance in ("segmentor", "mix")


#: CPU seconds per image and epoch at one thread on the reference 2-core machine (BENCHMARKS.md),
#: at a reference size; other sizes scale with the pixel count, other ViT sizes with their FLOPs.
#: The pre-training figures are the study stages' own wall times at one thread beside one other
#: 1-thread job (the way docs/study.md runs a study on 2 cores): ViT-Tiny VasoMIM 59 min for 40
#: epochs of 2,568 frames on ARCADE, MAE 55 min for 40 of 2,423 on CIMAT (0.034-0.035 s); the 16 x 4
#: masked U-Net 33-35 min for 16 epochs of 2,568 (0.049-0.052 s). The fine-tuning figures are the
#: CIMAT ones (ARCADE's whole 256-px frames ran faster): a study with finished runs
#: of its own estimates from their times instead (:func:`measured_seconds_per_image`).
_SECONDS_PER_IMAGE = {"finetune_vit": (0.50, 256), "finetune_unet": (0.23, 256),
                      "pretrain_vit": (0.034, 128), "pretrain_unet": (0.05, 128), "segmentor": (0.012, 128),
                      "synthetic": (0.06, 256)}  # generating one realistic synthetic frame
_VIT_FLOPS = {"tiny": 1.0, "small": 3.5, "base": 13.5, "large": 47.0}


#: fewest training epochs a run's log needs before its times count (the first epochs are noisy)
_MIN_TIMED_EPOCHS = 20


def measured_seconds_per_image(root: str | os.PathLike) -> dict[str, tuple[float, int]]:
    """The fine-tuning cost this study has measured itself, for ``--dry-run`` in place of the table.

    Every finished run (``result.json``) under ``root/finetune`` whose ``log.jsonl`` times at least
    :data:`_MIN_TIMED_EPOCHS` training epochs gives its mean seconds per training image and epoch,
    brought to the table's reference (256 px, ViT-Tiny) by the pixel count and the ViT size's FLOPs.
    Validation passes are not counted. Unreadable files are skipped.

    Returns:
        ``{"finetune_vit" | "finetune_unet": (median seconds per image-epoch at the reference, runs)}``
        for each kind with at least one timed run.
    """
    found: dict[str, list[float]] = {}
    for result in sorted(Path(root).glob("finetune/*/seed*/fold*/result.json")):
        try:
            record = json.loads(result.read_text())
            cfg, n_train = record["config"], int(record["n_train"])
            lines = (result.parent / "log.jsonl").read_text().splitlines()
        except (OSError, ValueError, KeyError, TypeError):
            continue  # a record or log that cannot be read: no timing from it
        times = epoch_seconds(lines)
        if len(times) < _MIN_TIMED_EPOCHS or n_train < 1 or not isinstance(cfg, dict):
            continue
        kind = _finetune_kind(cfg)
        scale = _relative_cost(kind, int(cfg.get("img_size", 224)), str(cfg.get("size", "base")))
        found.setdefault(kind, []).append(sum(times) / len(times) / n_train / scale)
    return {kind: (statistics.median(v), len(v)) for kind, v in found.items()}


def _finetune_kind(v: dict) -> str:
    """The cost-table entry of a fine-tune config: the CNN U-Net's or the ViT U-Net's."""
    return "finetune_unet" if v.get("arch") == "unet" else "finetune_vit"


def _relative_cost(kind: str, img_size: int, size: str = "tiny") -> float:
    """Cost of one image at ``img_size`` (and ViT ``size``) relative to the table's reference."""
    ref = _SECONDS_PER_IMAGE[kind][1]
    return (img_size / ref) ** 2 * (_VIT_FLOPS.get(size, 13.5) if kind.endswith("vit") else 1.0)


def _cpu_minutes(kind: str, images: float, epochs: int, img_size: int, size: str = "tiny",
                 table: dict[str, tuple[float, int]] | None = None) -> float:
    """A stage's cost for ``--dry-run``: images x epochs x the measured per-image time, in CPU-minutes
    (``table``: per-kind ``(seconds, reference size)`` replacing :data:`_SECONDS_PER_IMAGE`'s)."""
    seconds = (table or {}).get(kind, _SECONDS_PER_IMAGE[kind])[0]
    return images * epochs * seconds * _relative_cost(kind, img_size, size) / 60.0


def _pretrain_minutes(v: dict, n_corpus: int) -> float:
    """Pre-training cost: the steps over real and synthetic frames, plus generating the synthetic ones."""
    synth = v.get("synthetic") or {}
    count, share = int(synth.get("count", 0)), synth.get("share")
    if count <= 0:
        per_epoch, generated = n_corpus, 0
    elif share is None:
        per_epoch, generated = n_corpus + count, count
    else:  # mix_counts: the epoch is long enough for both groups at their shares
        per_epoch = max(n_corpus / (1.0 - float(share)), count / float(share))
        generated = float(share) * per_epoch
    epochs = int(v.get("epochs", 800))
    kind = "pretrain_unet" if v.get("model", {}).get("arch") == "unet" else "pretrain_vit"
    steps = _cpu_minutes(kind, per_epoch, epochs, v.get("data", {}).get("img_size", 224),
                         v.get("model", {}).get("size", "base"))
    return steps + _cpu_minutes("synthetic", generated, epochs, int(synth.get("size", 256)))


def _finetune_minutes(v: dict, n_labelled: int, table: dict[str, tuple[float, int]] | None = None) -> float:
    folds = int(v.get("folds", 1))
    train = n_labelled * ((folds - 1) / folds if folds > 1 else 1.0 - float(v.get("val_fraction", 0.2)))
    if v.get("val_data") is not None:
        train = n_labelled
    runs = len(_planned_runs(v.get("seeds", [0]), folds, v.get("only_folds")))
    return runs * _cpu_minutes(_finetune_kind(v), max(1.0, train * float(v.get("label_fraction", 1.0))), int(v.get("epochs", 100)),
                               int(v.get("img_size", 224)), v.get("size", "base"), table)


def _planned_runs(seeds: list[int], folds: int, only_folds: list[int] | None) -> set[tuple[int, int]]:
    """The (seed, fold) runs of a fine-tune config: its seeds x its folds (``only_folds`` when set)."""
    return {(s, f) for s in seeds for f in range(folds) if only_folds is None or f in only_folds}


def _chosen_runs(runs: set[tuple[int, int]], only: StudyPart | None) -> set[tuple[int, int]]:
    """The runs ``only`` selects for this session (all without it)."""
    if only is None:
        return set(runs)
    return {(s, f) for s, f in runs
            if (only.seeds is None or s in only.seeds) and (only.folds is None or f in only.folds)}


def _epochs_logged(log: Path) -> int:
    """The last epoch a run's ``log.jsonl`` records (0 when there is none yet)."""
    last = 0
    if log.is_file():
        for line in log.read_text().splitlines():
            try:
                last = max(last, int(json.loads(line).get("epoch", 0)))
            except (ValueError, TypeError, AttributeError):
                continue  # a line cut by a crash
    return last


def _pretrain_remaining(cost: float, epochs: int) -> Callable[[Path], float]:
    """What a started pre-training stage still costs: the share of its epochs not logged yet."""
    return lambda d: cost * max(0.0, 1.0 - _epochs_logged(d / "log.jsonl") / max(1, epochs))


def _finetune_remaining(v: dict, n_labelled: int, only: StudyPart | None,
                        table: dict[str, tuple[float, int]] | None = None) -> Callable[[Path], float]:
    """What a started fine-tune stage still costs: per run it would train now (those ``only``
    picks, and any started before), the share of its epochs not logged yet."""
    every = _planned_runs(v.get("seeds", [0]), int(v.get("folds", 1)), v.get("only_folds"))
    per_run, epochs = _finetune_minutes(v, n_labelled, table) / len(every), max(1, int(v.get("epochs", 100)))

    def remaining(d: Path) -> float:
        started = {(s, f) for s, f in every if (d / f"seed{s}" / f"fold{f}" / "last.pth").is_file()}
        runs = _chosen_runs(every, only) | started
        return sum(per_run * max(0.0, 1.0 - _epochs_logged(d / f"seed{s}" / f"fold{f}" / "log.jsonl") / epochs)
                   for s, f in runs)

    return remaining


def _steps_schedule(v: dict, fraction: float) -> dict:
    """Epochs and warm-up of a fine-tune at ``fraction`` of the labels with the full-label runs' steps."""
    fields = FinetuneConfig.model_fields
    epochs = int(v.get("epochs", fields["epochs"].default))
    warmup = float(v.get("warmup_epochs", fields["warmup_epochs"].default))
    return {"epochs": max(1, round(epochs / fraction)), "warmup_epochs": warmup / fraction}


def _share(v: dict, only: StudyPart | None) -> float:
    """The share of a fine-tune stage's runs that ``only`` selects (for the cost estimate)."""
    every = _planned_runs(v.get("seeds", [0]), int(v.get("folds", 1)), v.get("only_folds"))
    return len(_chosen_runs(every, only)) / len(every)


def build_stages(cfg: StudyConfig, timing: dict[str, tuple[float, int]] | None = None) -> dict[str, Any]:
    """The stage graph of a study: ``{"finetune": {(arm, fraction): Stage}, "pretrain": {...}, ...}``.

    ``timing``: fine-tuning seconds per image-epoch measured by this study
    (:func:`measured_seconds_per_image`), used for the cost estimates in place of the table's.
    """
    table = {kind: (seconds, _SECONDS_PER_IMAGE[kind][1]) for kind, (seconds, _) in (timing or {}).items()}
    entries = _corpus_listing(cfg)
    n_corpus, n_labelled = len(entries), len(labelled_items(cfg.labelled))
    corpus = Stage("corpus", "corpus", {"entries": entries}, _run_corpus, cost=0.0)
    anatomy = Stage("anatomy", "anatomy", dict(cfg.anatomy), _run_anatomy, deps=[corpus], cost=n_corpus * 0.02 / 60)
    seg_ckpt = cfg.segmentor.get("checkpoint")
    segmentor = None
    if not seg_ckpt:
        seg_values = {k: v for k, v in cfg.segmentor.items() if k != "checkpoint"}
        segmentor = Stage("segmentor", "segmentor", seg_values, _run_segmentor, deps=[anatomy],
                          cost=_cpu_minutes("segmentor", n_corpus, cfg.segmentor.get("epochs", 200),
                                            cfg.segmentor.get("img_size", 256)))
    pretrain: dict[str, Stage] = {}
    for arm, over in cfg.pretrain_arms.items():
        base = deep_merge(cfg.pretrain, {"synthetic": cfg.synthetic}) if cfg.synthetic else cfg.pretrain
        values = deep_merge(deep_merge(base, over), {"name": arm})
        if int((values.get("synthetic") or {}).get("count", 0)) <= 0:
            values.pop("synthetic", None)  # no synthetic frames: the same stage as a study without them
        deps = [anatomy]
        if _pretrain_uses_segmentor(values):
            if seg_ckpt:
                values = deep_merge(values, {"consistency": {"segmentor": str(seg_ckpt)}})
            else:
                deps.append(segmentor)
        cost = _pretrain_minutes(values, n_corpus)
        pretrain[arm] = Stage("pretrain", arm, values, partial(_run_pretrain, launcher=cfg.pretrain_launcher), deps=deps,
                              cost=cost, remaining=_pretrain_remaining(cost, int(values.get("epochs", 800))))
    for label, sweep in cfg.sweeps.items():
        unknown = sorted(set(sweep.points) - set(cfg.finetune_arms))
        if unknown:
            raise ValueError(f"sweep {label!r}: {', '.join(unknown)} are not fine-tune arms ({', '.join(cfg.finetune_arms)})")
        if sweep.fraction is not None and sweep.fraction not in cfg.label_fractions:
            raise ValueError(f"sweep {label!r}: fraction {sweep.fraction:g} is not one of the study's label "
                             f"fractions ({', '.join(f'{f:g}' for f in cfg.label_fractions)})")
    spt = None
    finetune: dict[tuple[str, float], Stage] = {}
    for arm, over in cfg.finetune_arms.items():
        over = dict(over)
        fractions = over.pop("label_fractions", cfg.label_fractions)  # an ablation arm may run at fewer
        values = deep_merge(deep_merge(cfg.finetune, over), {"data": cfg.labelled})
        if cfg.held_out is not None:
            values = deep_merge(values, {"val_data": cfg.held_out, "folds": 1})
        init = str(values.get("init", "scratch"))
        deps = []
        if init.startswith("pretrain:"):
            src = init.split(":", 1)[1]
            if src not in pretrain:
                raise ValueError(f"finetune arm {arm!r}: init {init!r} names no pre-training arm ({', '.join(pretrain)})")
            deps.append(pretrain[src])
        elif init == "spt":
            if spt is None:
                spt = Stage("spt", "spt", deep_merge(deep_merge(cfg.finetune, cfg.spt), {"init": "scratch"}),
                            _run_spt, deps=[anatomy], cost=_finetune_minutes(
                                {**cfg.finetune, **cfg.spt, "folds": 1, "val_fraction": 0.0,
                                 "seeds": cfg.finetune.get("seeds", [0])[:1]}, n_corpus, table))
            deps.append(spt)
        for frac in fractions:
            v = deep_merge(values, {"label_fraction": float(frac)})
            if cfg.fraction_schedule == "steps" and frac < 1:
                v = deep_merge(v, _steps_schedule(v, float(frac)))
            finetune[(arm, float(frac))] = Stage("finetune", f"{arm}@{frac:g}", v,
                                                 partial(_run_finetune, only=cfg.only), deps=deps,
                                                 cost=_finetune_minutes(v, n_labelled, table) * _share(v, cfg.only),
                                                 remaining=_finetune_remaining(v, n_labelled, cfg.only, table),
                                                 shared=True)  # jobs for other seeds may train in it too
    frangi: list[Stage] = []
    if cfg.frangi:
        # the paper's baseline row (its recipe), then the study's own anatomy recipe when it differs
        scored = cfg.held_out if cfg.held_out is not None else cfg.labelled
        base = {"labelled": scored, "alpha": cfg.anatomy.get("alpha", 92.0), "border": cfg.anatomy.get("border")}
        for recipe in dict.fromkeys(["paper", cfg.anatomy.get("recipe", DEFAULT_RECIPE)]):
            name = "frangi" if recipe == "paper" else f"frangi-{recipe}"
            frangi.append(Stage("frangi", name, {**base, "recipe": recipe}, _run_frangi, cost=0.2))
    return {"corpus": corpus, "anatomy": anatomy, "segmentor": segmentor, "pretrain": pretrain, "spt": spt,
            "finetune": finetune, "frangi": frangi}


def run_study(cfg: StudyConfig, dry_run: bool = False, command: str | None = None) -> Path | None:
    """Run every missing stage of the study, then write its report; returns ``report.md``."""
    root = Path(cfg.out)
    timing = measured_seconds_per_image(root)
    for kind, (seconds, runs) in sorted(timing.items()):
        table_s, ref = _SECONDS_PER_IMAGE[kind]
        _say(f"{kind.replace('_', ' ')} estimates from this study's {runs} finished run(s): {seconds:.3f} s an "
             f"image-epoch at {ref} px (table: {table_s:.3f})")
    graph = build_stages(cfg, timing)
    only = cfg.only or StudyPart()
    wanted = [s for (arm, frac), s in graph["finetune"].items()
              if (only.arms is None or arm in only.arms) and (only.fractions is None or frac in only.fractions)]
    if only.arms is None:  # else only the pre-training arms those fine-tunes start from
        wanted += list(graph["pretrain"].values())
    wanted += graph["frangi"]
    t0 = time.perf_counter()
    report = run_stages(wanted, root, dry_run=dry_run, log=_say)
    if dry_run:
        return None
    root.mkdir(parents=True, exist_ok=True)
    (root / "study.json").write_text(json.dumps(cfg.model_dump(), indent=2, default=str))
    return write_study_report(cfg, graph, root, report, time.perf_counter() - t0, command)


def _merge_archived_runs(stage: Stage, src: Path, target: Path) -> list[Path]:
    """A fine-tune stage whose archive holds finished runs the study folder lacks (trained on another
    machine, whose study folder is gone): its ``summary.json``, ``per_image.csv`` and stage record in
    the archive are rebuilt from the union of the runs' records, rather than left as the study
    folder's, which knows only its own runs. The stage record is ``stage.json`` once the runs cover
    every planned one (its ``partial.json`` goes), ``partial.json`` until then.

    It runs when the archive's run records are more than the runs the study folder's stage record
    counts: runs finished elsewhere, or records copied back into the study folder after its stage
    last ran. A stage record that counts runs with no record (older archives) is left alone."""
    if stage.kind != "finetune":
        return []
    own = next((src / n for n in ("stage.json", "partial.json") if (src / n).is_file()), None)
    record = json.loads(own.read_text()) if own else {"kind": stage.kind, "name": stage.name, "key": stage.key,
                                                      "outputs": {}}
    counted = {(r["seed"], r["fold"]) for r in record["outputs"].get("runs", [])}
    if not recorded_runs(target) > counted:
        return []
    summary = summary_from_records(target)
    done = {(r["seed"], r["fold"]) for r in summary["runs"]}
    every = _planned_runs(summary["seeds"], summary["folds"],
                          json.loads((target / "config.json").read_text()).get("only_folds"))
    record["outputs"] = {"metrics": summary["metrics"], "runs": summary["runs"],
                         "per_image": record["outputs"].get("per_image", str(src / "per_image.csv")),
                         "wall_s": summary["wall_s"]}
    finished = every <= done
    if not finished:
        record["outputs"].update(partial=True, n_runs_planned=len(every))
    path = target / ("stage.json" if finished else "partial.json")
    text = json.dumps(record, indent=2, default=str)
    if not (path.is_file() and path.read_text() == text):
        write_text_atomic(path, text)
    if finished:
        (target / "partial.json").unlink(missing_ok=True)
    return [path, target / "summary.json", target / "per_image.csv"]


def report_from_archive(cfg: StudyConfig, archive: str | os.PathLike, command: str | None = None) -> Path:
    """Write a report of the study from its archive (:func:`archive_study`) alone, in
    ``<archive>/report-records/``: the results table, the paired per-image differences and the
    label-efficiency and sweep figures, from the archived records of every stage of ``cfg`` found
    there (no overlays or analyses: they need the weights). Runs nothing; returns ``report.md``.
    The stages are keyed from ``cfg`` as a run would key them, so its data folders must be there."""
    root = Path(archive)
    if not root.is_dir():
        raise ValueError(f"{root}: no such archive folder")
    graph = build_stages(cfg)
    if not any(s.results(root) is not None for s in graph["finetune"].values()):
        raise ValueError(f"{root}: holds no fine-tuning record of this study (was it archived from {cfg.out}?)")
    graph = {**graph, "frangi": [s for s in graph["frangi"] if s.outputs(root) is not None]}
    return write_study_report(cfg, graph, root, RunReport(), 0.0, command, rep_dir=root / "report-records",
                              records_only=True)


def archive_study(cfg: StudyConfig, dest: str | os.PathLike) -> list[Path]:
    """Copy the text records of the study's finished and partial stages, and its report, to ``dest``.

    Runs nothing. The archive holds every stage's configs, logs, summaries and per-image scores in
    the study's own layout (``finetune/<arm>@<fraction>-<key>/per_image.csv``, ...), small enough
    to keep beside the figures they back (see :func:`vasomim.engines.stages.archive_records`).

    Runs the archive holds and the study folder does not (a study folder on a new machine) stay,
    and the fine-tune stages' summaries there count them too (:func:`_merge_archived_runs`). The
    study's report replaces the archive's only when the study folder holds every stage record the
    archive does; otherwise the archive keeps its own, with a warning.
    """
    root = Path(cfg.out)
    if not root.is_dir():
        raise ValueError(f"{root}: no such study folder (nothing has run yet, or `out` points elsewhere)")
    stages = graph_stages(build_stages(cfg))
    lacking = [f"{s.kind}/{s.name}" for s in stages if s.results(Path(dest)) is not None and s.results(root) is None]
    merged: list[str] = []

    def merge(stage: Stage, src: Path, target: Path) -> list[Path]:
        written = _merge_archived_runs(stage, src, target)
        merged.extend([f"{stage.kind}/{stage.name}"] if written else [])
        return written

    kept = archive_records(stages, root, dest, merge=merge)
    report = root / "report" / "report.md"
    if report.is_file() and not lacking and not merged:
        kept.append(copy_if_changed(report, Path(dest) / "report" / "report.md"))
    elif report.is_file():
        logger.warning(f"{dest}: its report kept, not replaced by {report}: the study folder lacks records the "
                       f"archive holds ({', '.join(lacking + merged)[:300]})")
    return kept
