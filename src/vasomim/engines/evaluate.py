"""Scoring segmentations: per-image DSC and clDice at the original resolution, CSV, JSON, table.

Two ways in, one report out:

* :func:`evaluate_folders` scores a folder of predicted masks (any tool's 0/255 or 0/1 PNGs, the
  anatomy masks of ``vasomim anatomy`` for the Frangi/Sato baseline) against a folder of reference
  masks. Files are matched by relative path and stem (``a/x.png`` with ``a/x.<any image
  suffix>``). A reference without a prediction, an unreadable file or a size mismatch is a named
  failure; the other images are scored.
* :func:`evaluate_checkpoint` predicts a labelled data source with a fine-tuned checkpoint
  (:mod:`vasomim.engines.predict`) and scores it.

Both give a list of per-image rows (``image, dice, cldice, tprec, tsens``) and failures;
:func:`write_report` writes ``per_image.csv`` and ``summary.json`` (mean and sample std over the
images, :func:`vasomim.metrics.summarize`) and :func:`format_table` prints them.

:func:`compare_per_image` pairs two such tables image by image (``vasomim evaluate --compare``):
two checkpoints, two fine-tuning runs or two study arms scored on the same images, A minus B, with
:func:`vasomim.analysis.paired.paired_difference` (mean ± std, share better, Wilcoxon p).
"""

from __future__ import annotations

import csv
import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

from vasomim.analysis.paired import paired_difference, per_image_means, run_order, shared_runs
from vasomim.data.io import IMAGE_SUFFIXES, ImageReadError, read_mask, write_text_atomic
from vasomim.data.sources import Item, load_source, scan_files
from vasomim.engines.predict import iter_predictions
from vasomim.inference import resolve_device
from vasomim.metrics import binarize, evaluate_pair, summarize
from vasomim.models.checkpoints import model_from_checkpoint

__all__ = [
    "METRICS",
    "EvalResult",
    "csv_text",
    "compare_per_image",
    "evaluate_checkpoint",
    "evaluate_folders",
    "format_comparison",
    "format_table",
    "read_per_image",
    "score_items",
    "summarize_rows",
    "write_report",
]

#: Per-image score columns, in CSV order.
METRICS = ("dice", "cldice", "tprec", "tsens")
LABELS = {"dice": "DSC", "cldice": "clDice", "tprec": "Tprec", "tsens": "Tsens"}


@dataclass
class EvalResult:
    """Per-image scores and the failures of one evaluation.

    Attributes:
        rows: One dict per scored image: ``image`` (relative name or item id) and the
            :data:`METRICS`.
        failures: One line per image that could not be scored, naming the file and the reason.
    """

    rows: list[dict] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)


def _stem_index(root: Path) -> dict[str, str]:
    """Relative stem -> relative file name of the image files under ``root`` (first by name wins)."""
    index: dict[str, str] = {}
    for rel in scan_files(root, IMAGE_SUFFIXES):
        index.setdefault(os.path.splitext(rel)[0], rel)
    return index


def evaluate_folders(pred_dir: str | os.PathLike, gt_dir: str | os.PathLike) -> EvalResult:
    """Score every reference mask under ``gt_dir`` against its prediction under ``pred_dir``.

    Args:
        pred_dir: Folder of predicted binary masks (searched recursively; files that match no
            reference, such as a ``manifest.jsonl``, are ignored).
        gt_dir: Folder of reference masks (searched recursively).

    Returns:
        :class:`EvalResult`, rows in the order of the reference files. Masks are read with
        :func:`vasomim.data.io.read_mask` (0/255 at ``>= 128``, 0/1, 1-bit).
    """
    pred_dir, gt_dir = Path(pred_dir), Path(gt_dir)
    for d in (pred_dir, gt_dir):
        if not d.is_dir():
            raise NotADirectoryError(f"{d}: not a directory")
    preds = _stem_index(pred_dir)
    result = EvalResult()
    gts = scan_files(gt_dir, IMAGE_SUFFIXES)
    if not gts:
        raise ValueError(f"{gt_dir}: no reference masks found ({', '.join(IMAGE_SUFFIXES)})")
    if not preds:
        raise ValueError(f"{pred_dir}: no predicted masks found ({', '.join(IMAGE_SUFFIXES)})")
    for rel in gts:
        stem = os.path.splitext(rel)[0]
        if stem not in preds:
            result.failures.append(f"{pred_dir / stem}.*: no prediction for reference {gt_dir / rel}")
            continue
        try:
            gt = read_mask(gt_dir / rel)
            pred = read_mask(pred_dir / preds[stem])
        except ImageReadError as exc:
            result.failures.append(str(exc))
            continue
        if pred.shape != gt.shape:
            result.failures.append(
                f"{pred_dir / preds[stem]}: prediction size {pred.shape[1]}x{pred.shape[0]} differs "
                f"from reference {gt_dir / rel} {gt.shape[1]}x{gt.shape[0]}"
            )
            continue
        result.rows.append({"image": rel, **evaluate_pair(pred, gt)})
    return result


def score_items(model, items: Sequence[Item], convention: dict, batch_size: int = 8,
                device="cpu", workers: int = 0, threshold: float = 0.5, progress: bool = False,
                desc: str = "evaluate", mode: str = "native", tta: bool = False) -> EvalResult:
    """Predict labelled items with ``model`` and score each at its original resolution.

    Args:
        model: Segmentation network (one logit per pixel).
        items: Items with masks.
        convention: The network's input convention, :func:`vasomim.inference.input_convention`.
        batch_size, device, workers, progress, desc, mode, tta: See
            :func:`vasomim.engines.predict.iter_predictions`.
        threshold: Probability at or above which a pixel is vessel.
    """
    result = EvalResult()
    for pred in iter_predictions(model, items, convention, batch_size, device, workers, with_masks=True,
                                 progress=progress, desc=desc, mode=mode, tta=tta):
        if pred.error is not None:
            result.failures.append(pred.error)
        else:
            result.rows.append({"image": pred.item.id,
                                **evaluate_pair(binarize(pred.prob, threshold), pred.mask)})
    return result


def evaluate_checkpoint(checkpoint: str | os.PathLike, data, batch_size: int = 8,
                        device: str = "auto", workers: int = 0, threshold: float = 0.5,
                        progress: bool = True, mode: str = "native", tta: bool = False) -> EvalResult:
    """Predict a labelled data source with a fine-tuned checkpoint and score every image.

    Args:
        checkpoint: ``best.pth`` / ``last.pth`` written by ``vasomim finetune``.
        data: A data folder or YAML spec (anything :func:`vasomim.data.sources.load_source` takes);
            its items need masks.
        batch_size, device, workers, threshold, progress, mode, tta: See :func:`score_items`;
            ``device="auto"`` picks CUDA when available.
    """
    dev = resolve_device(device)
    model, config = model_from_checkpoint(checkpoint)
    source = load_source(data)
    labelled = [it for it in source.items if it.has_mask]
    if not labelled:
        raise ValueError(f"{data}: no images with masks to evaluate against")
    result = score_items(model.to(dev), labelled, config["input"], batch_size, dev, workers,
                         threshold, progress, mode=mode, tta=tta)
    result.failures += [f"{it.image_ref}: no reference mask" for it in source.items
                        if not it.has_mask]
    return result


def summarize_rows(rows: Iterable[dict], metrics: Sequence[str] = METRICS) -> dict[str, dict]:
    """``{metric: {"mean", "std"}}`` over rows (sample std, :func:`vasomim.metrics.summarize`)."""
    rows = list(rows)
    out = {}
    for m in metrics:
        mean, std = summarize([r[m] for r in rows])
        out[m] = {"mean": mean, "std": std}
    return out


def csv_text(rows: Sequence[dict], columns: Sequence[str]) -> str:
    """CSV text of ``rows`` with ``columns`` (floats with 6 decimals), header first."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({c: (f"{r[c]:.6f}" if isinstance(r[c], float) else r[c]) for c in columns})
    return buf.getvalue()


def write_report(result: EvalResult, out: str | os.PathLike, extra: dict | None = None) -> dict:
    """Write ``per_image.csv`` and ``summary.json`` into ``out``; return the summary.

    Args:
        result: What :func:`evaluate_folders` / :func:`evaluate_checkpoint` returned.
        out: Output folder (created).
        extra: More plain data for ``summary.json`` (e.g. which folders or checkpoint were scored).

    Returns:
        ``{"n_images", "n_failed", "failures", "metrics": {m: {"mean", "std"}}, ...extra}``; the
        spread is over images. ``metrics`` is empty when no image was scored.
    """
    out = Path(out)
    summary = {"n_images": len(result.rows), "n_failed": len(result.failures),
               "failures": list(result.failures),
               "metrics": summarize_rows(result.rows) if result.rows else {},
               "std_over": "images", **(extra or {})}
    write_text_atomic(out / "per_image.csv", csv_text(result.rows, ("image", *METRICS)))
    write_text_atomic(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    return summary


def format_table(metrics: dict[str, dict], title: str = "", n_label: str = "") -> str:
    """A plain-text table of ``{metric: {"mean", "std"}}`` in percent, ``mean ± std`` per row.

    Args:
        metrics: As in ``summary["metrics"]``.
        title: First line (omitted when empty).
        n_label: What the spread is over, e.g. ``"40 images"``, shown in the header.
    """
    lines = [title] if title else []
    lines.append(f"{'metric':<8} {'mean ± std (%)':>16}" + (f"   over {n_label}" if n_label else ""))
    for m, v in metrics.items():
        lines.append(f"{LABELS.get(m, m):<8} {100 * v['mean']:>7.2f} ± {100 * v['std']:<6.2f}")
    return "\n".join(lines)


def read_per_image(path: str | os.PathLike, metrics: Sequence[str] = ("dice", "cldice")) -> list[dict]:
    """The rows of a ``per_image.csv``: the file itself, or a folder that holds one.

    ``vasomim evaluate --out``, ``vasomim finetune --out`` and every study fine-tune stage write
    one (a fine-tune's has a row per seed and fold that held the image out).

    Returns:
        ``[{"image": str, metric: float, ...}]`` with every column of the file, the ``metrics``
        as floats.

    Raises:
        ValueError: one line naming the file when it is missing, empty, lacks the ``image`` or a
            ``metrics`` column, or holds a value that is not a number.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "per_image.csv"
    if not path.is_file():
        raise ValueError(f"{path}: no such per-image score table (give a per_image.csv, or the folder of "
                         "`vasomim evaluate --out` or of a fine-tuning run)")
    try:
        with open(path, newline="") as fh:
            reader = csv.DictReader(fh)
            header = reader.fieldnames or []
            missing = [c for c in ("image", *metrics) if c not in header]
            if missing:
                raise ValueError(f"{path}: not a per-image score table (no {', '.join(missing)} column"
                                 f"{'s' if len(missing) > 1 else ''}; it has {', '.join(header) or 'no header'})")
            rows = []
            for line, row in enumerate(reader, start=2):
                for m in metrics:
                    try:
                        row[m] = float(row[m])
                    except (TypeError, ValueError):
                        raise ValueError(f"{path} line {line}: {m} {row[m]!r} is not a number") from None
                rows.append(row)
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not a text CSV file") from None
    if not rows:
        raise ValueError(f"{path}: holds no scored image")
    return rows


def compare_per_image(a: str | os.PathLike, b: str | os.PathLike,
                      metrics: Sequence[str] = ("dice", "cldice")) -> dict:
    """Paired per-image differences of two score tables, A minus B.

    Each table's score of an image is its mean over the table's rows for that image (the seeds
    and folds that held it out), then the images both tables scored are paired. Two fine-tuning
    tables are first cut to the runs (seed, fold) they share (:func:`~vasomim.analysis.paired.shared_runs`),
    so that a stage with more seeds is not averaged over runs the other lacks; with more than one
    shared seed, each seed is also paired on its own (``per_seed``), to show the seed-to-seed spread.

    Args:
        a, b: ``per_image.csv`` files, or folders holding one (:func:`read_per_image`).
        metrics: the columns to compare.

    Returns:
        ``{"a", "b", "n_a", "n_b", "n_shared", "runs", "metrics": {metric: {"mean_a", "mean_b", "n",
        "mean", "std", "sem", "better", "p"}}, "per_seed": {seed: {metric: {...}}}}``: the means of
        A and B over the shared images, then :func:`~vasomim.analysis.paired.paired_difference` of
        A minus B (``p`` None when fewer than two images differ). ``runs`` is ``{"a": [...], "b":
        [...], "shared": [...]}`` of ``"seed S / fold F"`` names, or None for tables without runs;
        ``per_seed`` is empty unless the tables share two seeds or more.

    Raises:
        ValueError: one line naming the files when a table cannot be read or the two share no image.
    """
    all_a, all_b = read_per_image(a, metrics), read_per_image(b, metrics)
    rows_a, rows_b, runs = shared_runs(all_a, all_b)
    out = {"a": str(a), "b": str(b), "runs": None, "metrics": {}, "per_seed": {}}
    if runs is not None:
        def names(rows):
            return sorted({(r["seed"], r["fold"]) for r in rows}, key=run_order)

        out["runs"] = {k: [f"seed {s} / fold {f}" for s, f in v]
                       for k, v in (("a", names(all_a)), ("b", names(all_b)), ("shared", runs))}
    for m in metrics:
        sa, sb = per_image_means(rows_a, m), per_image_means(rows_b, m)
        shared = sorted(set(sa) & set(sb))
        if not shared:
            raise ValueError(f"{a} and {b}: no image in common ({len(sa)} and {len(sb)} images, e.g. "
                             f"{next(iter(sa))!r} and {next(iter(sb))!r}): were they scored on the same data?")
        out.update(n_a=len(sa), n_b=len(sb), n_shared=len(shared))
        out["metrics"][m] = {"mean_a": sum(sa[i] for i in shared) / len(shared),
                             "mean_b": sum(sb[i] for i in shared) / len(shared), **_json_p(paired_difference(sa, sb))}
    seeds = sorted({s for s, _ in runs or ()}, key=lambda s: run_order((s,)))
    for seed in seeds if len(seeds) > 1 else ():
        ra, rb = ([r for r in rows if r["seed"] == seed] for rows in (rows_a, rows_b))
        out["per_seed"][seed] = {m: _json_p(paired_difference(per_image_means(ra, m), per_image_means(rb, m)))
                                 for m in metrics}
    return out


def _json_p(d: dict) -> dict:
    """``paired_difference``'s result with a NaN p (nothing to test) as None: NaN is no JSON number."""
    return {**d, "p": None if d["p"] != d["p"] else d["p"]}


def format_comparison(result: dict) -> str:
    """A plain-text table of :func:`compare_per_image`'s result, in percent points."""
    lines = [f"A = {result['a']}", f"B = {result['b']}",
             f"paired over the {result['n_shared']} images both scored"
             + (f" (A scored {result['n_a']}, B {result['n_b']})" if result["n_a"] != result["n_b"]
                or result["n_a"] != result["n_shared"] else ""),
             f"{'metric':<8} {'A (%)':>7} {'B (%)':>7} {'A - B (points)':>17} {'s.e.':>5} {'A better on':>12} "
             f"{'Wilcoxon p':>10}"]
    for m, d in result["metrics"].items():
        p = "-" if d["p"] is None else f"{d['p']:.3g}"
        lines.append(f"{LABELS.get(m, m):<8} {100 * d['mean_a']:>7.2f} {100 * d['mean_b']:>7.2f} "
                     f"{100 * d['mean']:>+8.2f} ± {100 * d['std']:<6.2f} {100 * d['sem']:>5.2f} "
                     f"{round(d['better'] * d['n']):>5} of {d['n']:<4} {p:>10}")
    runs = result.get("runs")
    if runs and (len(runs["shared"]) < len(runs["a"]) or len(runs["shared"]) < len(runs["b"])):
        n = len(runs["shared"])
        lines.append(f"over the {'run' if n == 1 else f'{n} runs'} both hold ({', '.join(runs['shared'])}); "
                     f"A has {len(runs['a'])}, B {len(runs['b'])}")
    for seed, per in result.get("per_seed", {}).items():
        lines.append(f"seed {seed}: " + "; ".join(
            f"{LABELS.get(m, m)} {100 * d['mean']:+.2f} ± {100 * d['std']:.2f}, A better on "
            f"{round(d['better'] * d['n'])} of {d['n']}, p {'-' if d['p'] is None else format(d['p'], '.3g')}"
            for m, d in per.items()))
    return "\n".join(lines)
