"""Results tables in the paper's format and sweep plots with error bars over seeds.

Fine-tuning results come as rows, one per scored image: ``{"arm", "seed", "fold", "image",
"dice", "cldice", ...}`` plus whatever varies in a study (``x``: a masking ratio, a beta schedule,
a label fraction). Aggregation follows the paper: the score of a run (one arm, one seed) is the
mean over its images (and folds); the table shows the mean and the sample standard deviation of
those run scores over seeds (``n`` = number of seeds). Rows without a ``seed`` are each their own
run (e.g. a deterministic baseline such as the Frangi filter, shown without ``±``).

- :func:`results_table`: rows -> one aggregated row per group.
- :func:`paper_rows` / :func:`format_table_markdown`: ``68.85 ± 0.47`` cells, in percent.
- :func:`plot_learning_curves`: scores logged during training, a line per arm with a ± std band.
- :func:`plot_sweep`: Fig. 5 (masking ratio), Table 5 (beta schedules) and Table 6 (label
  fractions) as a plot per metric, one line per arm, error bars = std over seeds.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from vasomim.analysis.report import pyplot, save_figure, write_json
from vasomim.metrics import summarize

METRICS = ("dice", "cldice")
METRIC_NAMES = {"dice": "DSC (%)", "cldice": "clDice (%)"}


def read_results_csv(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Rows of a results CSV; cells that read as numbers become floats (ints stay ints).

    Raises:
        FileNotFoundError: no such file.
        ValueError: an empty file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such results file")
    with open(path, newline="", encoding="utf-8") as fh:
        rows = [{k: _number(v) for k, v in row.items()} for row in csv.DictReader(fh)]
    if not rows:
        raise ValueError(f"{path}: no result rows")
    return rows


def _number(text: str | None) -> Any:
    if text is None or text == "":
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def results_table(
    rows: Iterable[Mapping[str, Any]],
    group_keys: Sequence[str] = ("arm",),
    metrics: Sequence[str] = METRICS,
    seed_key: str = "seed",
) -> list[dict[str, Any]]:
    """Aggregate per-image scores into mean ± std over seeds, per group.

    Args:
        rows: one mapping per scored image with the ``group_keys``, the ``metrics`` and
            (usually) ``seed_key``.
        group_keys: the columns that define a table row, e.g. ``("arm",)`` or ``("arm", "x")``.
        metrics: score columns (fractions in [0, 1] or percentages: kept as given).
        seed_key: the column naming the seed; rows without it count as separate runs.

    Returns:
        one dict per group, in order of first appearance: the group keys, then
        ``<metric>_mean``, ``<metric>_std`` (sample std over seeds, 0 for a single seed) for every
        metric, and ``n`` (number of seeds / runs).
    """
    runs: dict[tuple, dict[Any, list[Mapping[str, Any]]]] = {}
    for i, row in enumerate(rows):
        missing = [k for k in (*group_keys, *metrics) if row.get(k) is None]
        if missing:
            raise ValueError(f"results row {i} lacks {missing}: {dict(row)}")
        group = tuple(row[k] for k in group_keys)
        run = row.get(seed_key)
        runs.setdefault(group, {}).setdefault(("row", i) if run is None else run, []).append(row)
    table = []
    for group, by_run in runs.items():
        entry: dict[str, Any] = dict(zip(group_keys, group))
        for m in metrics:
            per_run = [float(np.mean([float(r[m]) for r in rs])) for rs in by_run.values()]
            entry[f"{m}_mean"], entry[f"{m}_std"] = summarize(per_run)
        entry["n"] = len(by_run)
        table.append(entry)
    return table


def format_score(mean: float, std: float, n: int, scale: float = 100.0, decimals: int = 2) -> str:
    """``68.85 ± 0.47`` (``scale`` 100 turns fractions into percent); the bare mean when n == 1."""
    text = f"{scale * mean:.{decimals}f}"
    return text if n <= 1 else f"{text} ± {scale * std:.{decimals}f}"


def paper_rows(
    table: Sequence[Mapping[str, Any]],
    metrics: Sequence[str] = METRICS,
    scale: float = 100.0,
    decimals: int = 2,
    with_n: bool = True,
) -> list[dict[str, str]]:
    """Display rows for a results table: the group columns as text, then one ``mean ± std`` cell per metric.

    Args:
        table: output of :func:`results_table`.
        metrics: metric columns to show; headers from ``METRIC_NAMES`` (else the metric name).
        scale: multiply scores by this (100: fractions to percent; 1: already percent).
        decimals: digits after the point.
        with_n: add a ``seeds`` column with ``n``.

    Returns:
        list of ``{column: text}``, ready for :meth:`vasomim.analysis.report.Report.add_table`.
    """
    out = []
    for entry in table:
        row = {k: _label(v) for k, v in entry.items() if k != "n" and not k.endswith(("_mean", "_std"))}
        for m in metrics:
            row[METRIC_NAMES.get(m, m)] = format_score(entry[f"{m}_mean"], entry[f"{m}_std"], entry["n"], scale, decimals)
        if with_n:
            row["seeds"] = str(entry["n"])
        out.append(row)
    return out


def _label(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def format_table_markdown(
    table: Sequence[Mapping[str, Any]], metrics: Sequence[str] = METRICS, scale: float = 100.0, decimals: int = 2
) -> str:
    """A results table as Markdown in the paper's style (``| arm | DSC (%) | clDice (%) |``)."""
    rows = paper_rows(table, metrics, scale, decimals)
    if not rows:
        return ""
    header = list(rows[0])
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row[h] for h in header) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def plot_sweep(
    results: Iterable[Mapping[str, Any]],
    x_label: str,
    out_png: str | os.PathLike,
    x_key: str = "x",
    arm_key: str = "arm",
    metrics: Sequence[str] = METRICS,
    scale: float = 100.0,
    title: str | None = None,
) -> list[dict[str, Any]]:
    """Plot a sweep: score vs ``x`` per arm, mean over seeds with std error bars; one panel per metric.

    Numeric ``x`` values (masking ratio, label fraction) are placed on a numeric axis and sorted;
    anything else (e.g. a beta schedule ``"0→0.5"``) is categorical, in order of first appearance.
    Writes ``out_png`` and the aggregated table to the same path with ``.json``.

    Args:
        results: per-image (or per-run) rows with ``arm_key``, ``x_key``, ``seed`` and the metrics.
        x_label: axis label, e.g. ``"masking ratio γ"``.
        out_png: figure path.
        x_key: column of the swept value.
        arm_key: column of the arm (one line per arm).
        metrics: score columns, one panel each.
        scale: multiply scores by this on the plot (100: percent).
        title: figure title.

    Returns:
        the aggregated table (:func:`results_table` grouped by ``(arm_key, x_key)``).
    """
    table = results_table(results, (arm_key, x_key), metrics)
    if not table:
        raise ValueError("plot_sweep: no results")
    xs = list(dict.fromkeys(entry[x_key] for entry in table))
    numeric = all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in xs)
    position = {x: (float(x) if numeric else float(i)) for i, x in enumerate(xs)}
    plt = pyplot()
    fig, axes = plt.subplots(1, len(metrics), figsize=(5.2 * len(metrics), 3.8), squeeze=False, constrained_layout=True)
    arms = list(dict.fromkeys(entry[arm_key] for entry in table))
    for ax, m in zip(axes[0], metrics):
        for arm in arms:
            pts = sorted((position[e[x_key]], e[f"{m}_mean"], e[f"{m}_std"]) for e in table if e[arm_key] == arm)
            px, mean, std = (np.array(v) for v in zip(*pts))
            ax.errorbar(px, scale * mean, yerr=scale * std, marker="o", capsize=4, lw=1.8, label=str(arm))
        ax.set_xticks([position[x] for x in xs], [_label(x) for x in xs])
        ax.set_xlabel(x_label)
        ax.set_ylabel(METRIC_NAMES.get(m, m))
        ax.set_title("mean ± std over seeds", fontsize=8)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    if title:
        fig.suptitle(title)
    save_figure(fig, out_png)
    write_json(Path(out_png).with_suffix(".json"), {"x_key": x_key, "x_label": x_label, "table": table})
    return table


def plot_learning_curves(
    results: Iterable[Mapping[str, Any]],
    out_png: str | os.PathLike,
    x_label: str = "fine-tuning epoch",
    metrics: Sequence[str] = METRICS,
    scale: float = 100.0,
    title: str | None = None,
    start: float = 0.0,
) -> list[dict[str, Any]]:
    """Plot scores logged during training: per arm, the mean over its runs at each ``x`` as a line,
    the std over runs as a band; one panel per metric, the y-axis fitted to ``x > start`` (the
    score before training, near 0, would flatten the rest).

    Args:
        results: rows ``{"arm", "x", "seed", metric, ...}``, one per run and logged point.
        out_png: figure path; the aggregated table goes beside it (``.json``).
        x_label: axis label.
        metrics: score columns, one panel each.
        scale: multiply scores by this on the plot (100: percent).
        title: figure title.
        start: points at or below this ``x`` are left out of the figure (not of the table).

    Returns:
        the aggregated table (:func:`results_table` grouped by ``("arm", "x")``).
    """
    table = results_table(results, ("arm", "x"), metrics)
    if not table:
        raise ValueError("plot_learning_curves: no results")
    plt = pyplot()
    fig, axes = plt.subplots(1, len(metrics), figsize=(6.2 * len(metrics), 4.0), squeeze=False, constrained_layout=True)
    arms = list(dict.fromkeys(entry["arm"] for entry in table))
    styles = ["-", "--", ":", "-."]
    for ax, m in zip(axes[0], metrics):
        for k, arm in enumerate(arms):
            pts = sorted((float(e["x"]), e[f"{m}_mean"], e[f"{m}_std"]) for e in table
                         if e["arm"] == arm and float(e["x"]) > start)
            if not pts:
                continue
            x, mean, std = (np.array(v) for v in zip(*pts))
            line, = ax.plot(x, scale * mean, styles[(k // 10) % len(styles)], lw=1.6, label=str(arm))
            ax.fill_between(x, scale * (mean - std), scale * (mean + std), color=line.get_color(), alpha=0.12, lw=0)
        ax.set_xlabel(x_label)
        ax.set_ylabel(METRIC_NAMES.get(m, m))
        ax.set_title("mean over runs, band: ± std", fontsize=8)
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=7, loc="lower right", ncol=2 if len(arms) > 6 else 1)
    if title:
        fig.suptitle(title)
    save_figure(fig, out_png)
    write_json(Path(out_png).with_suffix(".json"), {"x_key": "x", "x_label": x_label, "table": table})
    return table
