"""Paired per-image differences between fine-tuning arms (the label-efficiency tables).

Arms scored on the same images (the same folds of a cross-validation, or the same held-out set)
are compared image by image: each arm's score of an image is its mean over the runs that held
that image out (seeds; in a k-fold CV every image is held out once per seed), and the
difference ``reference - other`` is summarised over images (mean, sample std, standard error,
share of images where the reference is better, and the two-sided p-value of the Wilcoxon
signed-rank test, which asks whether the differences are centred on zero without assuming they
are normal). Pairing removes the image-to-image spread that dominates unpaired means on 40 or 100
images.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Iterable, Mapping

from scipy.stats import wilcoxon

__all__ = ["per_image_means", "per_run_means", "paired_difference", "run_order", "shared_runs"]


def shared_runs(a: list[Mapping], b: list[Mapping]) -> tuple[list[Mapping], list[Mapping], list[tuple[str, str]] | None]:
    """The rows of the runs (seed, fold) that both score tables hold.

    Two fine-tuning tables with different seeds (a stage that has run seeds 0 and 1 beside one
    that has run seed 0) would otherwise be paired as the mean of two runs against one run. When
    both tables have ``seed`` and ``fold`` columns and share at least one run, the rows of the
    other runs are dropped. Tables without those columns (``vasomim evaluate --out``), or with no
    run in common, are returned whole.

    Returns:
        ``(rows of a, rows of b, shared runs)``: the runs as sorted ``(seed, fold)`` pairs, or None
        when nothing was filtered because the tables cannot be paired run by run.
    """
    def run(row):
        return (str(row["seed"]), str(row["fold"]))

    if not a or not b or any(k not in a[0] or k not in b[0] for k in ("seed", "fold")):
        return a, b, None
    shared = {run(r) for r in a} & {run(r) for r in b}
    if not shared:
        return a, b, None
    return ([r for r in a if run(r) in shared], [r for r in b if run(r) in shared],
            sorted(shared, key=run_order))


def run_order(run: tuple[str, str]) -> tuple:
    """Sort key of a ``(seed, fold)`` run read from a CSV: numbers in numeric order (2 before 10)."""
    return tuple((0, int(t), "") if t.lstrip("-").isdigit() else (1, 0, t) for t in run)


def per_image_means(rows: Iterable[Mapping], metric: str = "dice") -> dict[str, float]:
    """``{image: mean of metric over the rows of that image}`` (rows as in ``per_image.csv``)."""
    sums: dict[str, list[float]] = defaultdict(list)
    for row in rows:
        sums[str(row["image"])].append(float(row[metric]))
    return {image: sum(v) / len(v) for image, v in sums.items()}


def per_run_means(rows: Iterable[Mapping], metric: str = "dice") -> dict[str, float]:
    """``{"seed S / fold F": mean of metric over that run's held-out images}`` (``per_image.csv`` rows).

    Two arms with the same splits hold out the same images in the same run, so their run means
    pair fold by fold: the per-fold differences of the label-efficiency tables.
    """
    sums: dict[str, list[float]] = defaultdict(list)
    for row in rows:
        sums[f"seed {row['seed']} / fold {row['fold']}"].append(float(row[metric]))
    return {run: sum(v) / len(v) for run, v in sums.items()}


def paired_difference(reference: Mapping[str, float], other: Mapping[str, float]) -> dict[str, float]:
    """Summary of ``reference[i] - other[i]`` over the images (or runs) both arms scored.

    Returns ``{"n", "mean", "std", "sem", "better", "p"}``: number of shared images, mean
    difference, sample standard deviation (0 for one image), standard error of the mean, the share
    of images where ``reference`` is strictly higher, and the two-sided p-value of the Wilcoxon
    signed-rank test (SciPy's: exact for up to 50 differences without ties or zeros, else the
    normal approximation; images with a zero difference are dropped, as Wilcoxon did). ``p`` is
    NaN when fewer than two differences are non-zero: there is nothing to test.
    """
    shared = sorted(set(reference) & set(other))
    if not shared:
        raise ValueError("the two arms scored no image in common")
    d = [reference[i] - other[i] for i in shared]
    n = len(d)
    mean = sum(d) / n
    std = math.sqrt(sum((x - mean) ** 2 for x in d) / (n - 1)) if n > 1 else 0.0
    p = float(wilcoxon(d).pvalue) if sum(x != 0 for x in d) >= 2 else math.nan
    return {"n": n, "mean": mean, "std": std, "sem": std / math.sqrt(n), "better": sum(x > 0 for x in d) / n, "p": p}
