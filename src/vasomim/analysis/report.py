"""A study report written twice from the same blocks: ``report.md`` and a self-contained ``index.html``.

The report is a list of blocks (headings, paragraphs, tables, figures, code) filled by the caller
and rendered by :meth:`Report.write` into Markdown and into HTML with inline CSS. Figures live in
``figures/`` beside both files and are referenced by relative paths, so the folder can be zipped,
copied or served as is. The HTML carries a few lines of script that, once the page has loaded,
record in ``<body data-images-loaded="k/n">`` how many of its ``n`` images decoded (used by the
headless-browser test; harmless elsewhere).

This module also holds the small output helpers every analysis uses: :func:`save_figure` (a
matplotlib figure to PNG, atomically) and :func:`write_json` (numbers to JSON, atomically).
"""

from __future__ import annotations

import html
import json
import math
import os
import platform
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vasomim.analysis.overlays import TP, overlay, side_by_side
from vasomim.data.io import atomic_file, write_png_atomic, write_text_atomic

FIGURE_DPI = 120


# ------------------------------------------------------------------------------ output helpers


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write UTF-8 text atomically; returns the path."""
    write_text_atomic(path, text)
    return Path(path)


def _jsonable(value: Any) -> Any:
    """Plain-JSON copy: NumPy scalars/arrays become numbers/lists, NaN and inf become None."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return value


def write_json(path: str | os.PathLike, data: Any) -> Path:
    """Write ``data`` as indented JSON atomically (non-finite floats become ``null``); returns the path."""
    return write_text(path, json.dumps(_jsonable(data), indent=2) + "\n")


def save_figure(fig, path: str | os.PathLike, dpi: int = FIGURE_DPI) -> Path:
    """Save a matplotlib figure as PNG atomically, then close it; returns the path.

    Args:
        fig: a ``matplotlib.figure.Figure``.
        path: output ``.png`` file; parent folders are created.
        dpi: resolution.
    """
    import matplotlib.pyplot as plt

    path = Path(path)
    try:
        with atomic_file(path) as fh:
            fig.savefig(fh, format="png", dpi=dpi, bbox_inches="tight")
    finally:
        plt.close(fig)
    return path


def pyplot():
    """``matplotlib.pyplot`` on the non-interactive Agg backend (safe on machines without a display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


# ------------------------------------------------------------------------------ hardware


def hardware_info() -> dict[str, str]:
    """What ran the study: CPU model and cores, memory, OS, Python, PyTorch and the CUDA devices."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            names = [line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")]
        if names:
            cpu = names[0]
    except OSError:
        pass
    info = {
        "CPU": f"{cpu} ({os.cpu_count()} logical cores"
        + (f", {len(os.sched_getaffinity(0))} usable)" if hasattr(os, "sched_getaffinity") else ")"),
        "OS": platform.platform(),
        "Python": platform.python_version(),
    }
    try:
        pages, page_size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
        info["Memory"] = f"{pages * page_size / 2**30:.1f} GiB"
    except (ValueError, OSError, AttributeError):
        pass
    try:
        import torch
    except ImportError:
        info["PyTorch"] = "not installed"
        return info
    info["PyTorch"] = torch.__version__
    if torch.cuda.is_available():
        devices = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        info["CUDA"] = f"{torch.version.cuda}: " + ", ".join(devices)
    else:
        info["CUDA"] = "none (CPU only)"
    return info


def _format_duration(seconds: float) -> str:
    seconds = float(seconds)
    if seconds < 120:
        return f"{seconds:.1f} s"
    minutes, sec = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min" if hours else f"{minutes} min {sec:02d} s"


def _flatten(data: Mapping[str, Any], prefix: str = "") -> list[tuple[str, str]]:
    """Nested mapping -> ``[("a.b", "value"), ...]`` with lists joined by commas."""
    out: list[tuple[str, str]] = []
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.extend(_flatten(value, name + "."))
        elif isinstance(value, (list, tuple)):
            out.append((name, ", ".join(str(v) for v in value)))
        else:
            out.append((name, str(value)))
    return out


# ------------------------------------------------------------------------------ the report


@dataclass(frozen=True)
class _Block:
    """One piece of the report: ``kind`` in heading/text/setup/table/figure/gallery/code, with its content."""

    kind: str
    content: Any


CSS = """
body { font-family: -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif;
       max-width: 1100px; margin: 2em auto; padding: 0 1.2em; color: #1d2330; line-height: 1.5; }
h1 { border-bottom: 2px solid #2b6cb0; padding-bottom: .3em; }
h2 { margin-top: 2em; border-bottom: 1px solid #d5dbe5; padding-bottom: .2em; }
h3 { margin-top: 1.5em; }
table { border-collapse: collapse; margin: 1em 0; font-size: .95em; }
th, td { border: 1px solid #d5dbe5; padding: .35em .8em; text-align: left; }
th { background: #edf2f7; }
tr:nth-child(even) td { background: #f7fafc; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
caption { caption-side: bottom; color: #4a5568; font-size: .9em; padding-top: .4em; text-align: left; }
figure { margin: 1.2em 0; }
figure img { max-width: 100%; height: auto; border: 1px solid #e2e8f0; }
.gallery { display: grid; grid-template-columns: repeat(2, minmax(0, 1fr)); gap: 1em; }
.gallery figure { margin: .4em 0; }
.gallery img { width: 100%; }
figcaption { color: #4a5568; font-size: .9em; margin-top: .3em; }
pre { background: #1d2330; color: #f0f4f8; padding: 1em; overflow-x: auto; border-radius: 4px; }
code { font-family: "SFMono-Regular", Menlo, Consolas, monospace; font-size: .9em; }
""".strip()

# Sets <body data-images-loaded="k/n"> once the page has loaded: k of its n images decoded.
IMAGES_LOADED_SCRIPT = """
window.addEventListener("load", function () {
  var imgs = Array.prototype.slice.call(document.images);
  var ok = imgs.filter(function (im) { return im.complete && im.naturalWidth > 0; }).length;
  document.body.dataset.imagesLoaded = ok + "/" + imgs.length;
});
""".strip()


def _is_number(text: str) -> bool:
    """A cell that reads as a number (``68.85``, ``68.85 ± 0.47``, ``-4.19``): right-aligned in HTML."""
    head = text.split("±")[0].strip().rstrip("%")
    try:
        float(head)
    except ValueError:
        return False
    return True


def _html_figure(name: str, caption: str) -> str:
    e = html.escape
    return (f'<figure><img src="{e("figures/" + name, quote=True)}" alt="{e(caption, quote=True)}">'
            f"<figcaption>{e(caption)}</figcaption></figure>")


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


class Report:
    """Build a study report block by block, then write ``report.md`` and ``index.html``.

    Args:
        title: the page title (first heading).
        out_dir: folder of the report; figures go to ``out_dir/figures``. Created on write.

    Example::

        r = Report("VasoMIM study", "out/report")
        r.add_setup({"data": "40 angiograms", "model": "ViT-Tiny/16"})
        r.add_table("Results", rows, "mean ± std over 3 seeds")
        r.add_figure("out/analysis/vessel_share.png", "Fig. 3a")
        r.add_code(["vasomim study study.yaml"])
        md_path, html_path = r.write()
    """

    def __init__(self, title: str, out_dir: str | os.PathLike) -> None:
        self.title = title
        self.out_dir = Path(out_dir)
        self.fig_dir = self.out_dir / "figures"
        self.blocks: list[_Block] = []
        self._started = time.perf_counter()
        self._figure_names: set[str] = set()

    # -- blocks ------------------------------------------------------------------------------

    def add_heading(self, text: str, level: int = 2) -> None:
        """A section heading (level 2 by default; 1 is the title's level)."""
        if not 1 <= level <= 4:
            raise ValueError(f"heading level must be 1..4, got {level}")
        self.blocks.append(_Block("heading", (level, text)))

    def add_text(self, text: str) -> None:
        """Paragraphs of plain text (blank lines separate paragraphs; no Markdown markup is parsed)."""
        paragraphs = [p.strip() for p in text.strip().split("\n\n") if p.strip()]
        self.blocks.extend(_Block("text", p) for p in paragraphs)

    def add_setup(self, info: Mapping[str, Any], detect_hardware: bool = True) -> None:
        """The "Setup" section: the caller's facts (data, model, budgets, ...) plus the hardware.

        Args:
            info: nested mapping of facts; nested keys are shown as ``section.key``. A
                ``wall_time_s`` entry is shown as a duration; without it, the time since this
                report object was created is recorded when the report is written.
            detect_hardware: append :func:`hardware_info` (CPU, memory, OS, Python, PyTorch, CUDA).
        """
        info = dict(info)
        wall = info.pop("wall_time_s", None)
        rows = _flatten(info)
        if detect_hardware:
            rows += [(f"hardware.{k}", v) for k, v in hardware_info().items()]
        self.add_heading("Setup")
        self.blocks.append(_Block("setup", (rows, wall)))

    def add_table(self, title: str | None, rows: Sequence[Mapping[str, Any]], caption: str | None = None) -> None:
        """A table from a list of dicts (columns: the keys of the first row, in order; cells: ``str``).

        Args:
            title: heading above the table (level 3), or None.
            rows: the rows; a missing key gives an empty cell. Use
                :func:`vasomim.analysis.curves.paper_rows` for results in the paper's format.
            caption: text under the table.
        """
        if not rows:
            raise ValueError(f"table {title!r} has no rows")
        columns = list(rows[0])
        cells = [[("" if row.get(c) is None else str(row.get(c))) for c in columns] for row in rows]
        if title:
            self.add_heading(title, 3)
        self.blocks.append(_Block("table", ([str(c) for c in columns], cells, caption)))

    def add_figure(self, figure: str | os.PathLike | np.ndarray, caption: str, name: str | None = None) -> Path:
        """A figure: a PNG/JPEG file (copied into ``figures/``) or an image array (written as PNG).

        Args:
            figure: path of an existing image, or a (H, W) / (H, W, 3) uint8 (or [0, 1] float) array.
            caption: shown under the figure and used as the image's ``alt`` text.
            name: file name inside ``figures/``; default the source's name, or ``figure_<k>.png``.

        Returns:
            the path of the figure inside the report folder.
        """
        dest = self._store(figure, name)
        self.blocks.append(_Block("figure", (dest.name, caption)))
        return dest

    def _store(self, figure: str | os.PathLike | np.ndarray, name: str | None) -> Path:
        """Write or copy a figure into ``figures/`` under a unique name; returns its path."""
        if isinstance(figure, np.ndarray):
            dest = self._reserve(name or f"figure_{len(self._figure_names) + 1}.png")
            arr = figure
            if arr.dtype not in (np.uint8, bool):
                arr = (np.clip(arr, 0, 1) * 255).round().astype(np.uint8)
            write_png_atomic(dest, arr)
            return dest
        src = Path(figure)
        if not src.is_file():
            raise FileNotFoundError(f"{src}: figure file not found")
        dest = self._reserve(name or src.name)
        if src.resolve() != dest.resolve():
            with atomic_file(dest) as fh:
                fh.write(src.read_bytes())
        return dest

    def _reserve(self, name: str) -> Path:
        """A unique file name under ``figures/`` (``x.png``, ``x_2.png``, ...)."""
        stem, suffix = Path(name).stem, Path(name).suffix or ".png"
        candidate, k = f"{stem}{suffix}", 1
        while candidate in self._figure_names:
            k += 1
            candidate = f"{stem}_{k}{suffix}"
        self._figure_names.add(candidate)
        self.fig_dir.mkdir(parents=True, exist_ok=True)
        return self.fig_dir / candidate

    def add_cases(
        self,
        cases: Iterable[tuple[str, str, np.ndarray, np.ndarray, np.ndarray, float]],
        title: str = "Best and worst cases per arm",
    ) -> list[Path]:
        """Overlays of the best and the worst image (by Dice) of every arm.

        Args:
            cases: ``(arm, image_id, image01, pred, gt, dice)`` per scored image: image01 a 2-D gray
                image in [0, 1], pred and gt boolean masks of the same shape, dice in [0, 1].
                Arms keep their order of first appearance.
            title: section heading.

        Returns:
            the written figure paths. Each figure is ``image | reference | prediction`` with true
            positives white, false positives orange and misses blue
            (:func:`vasomim.analysis.overlays.overlay`).
        """
        by_arm: dict[str, list[tuple]] = {}
        for case in cases:
            by_arm.setdefault(str(case[0]), []).append(case)
        if not by_arm:
            raise ValueError("add_cases: no cases given")
        self.add_heading(title)
        self.add_text(
            "Each panel: angiogram | reference (white) | prediction (white: correct, orange: false "
            "positive, blue: missed vessel)."
        )
        written = []
        for arm, arm_cases in by_arm.items():
            gallery = []
            ranked = sorted(arm_cases, key=lambda c: float(c[5]))
            picks = [("best", ranked[-1])] + ([("worst", ranked[0])] if len(ranked) > 1 else [])
            for which, (_, image_id, image01, pred, gt, score) in picks:
                img = np.clip(np.asarray(image01, dtype=np.float32), 0, 1)
                pred, gt = np.asarray(pred, bool), np.asarray(gt, bool)
                panel = side_by_side(
                    (img * 255).round().astype(np.uint8), overlay(img, gt, colour=TP), overlay(img, pred, gt)
                )
                safe = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in f"{arm}_{which}")
                caption = f"{arm}: {which} case, {image_id} (DSC {100 * float(score):.2f}%)"
                dest = self._store(panel, f"case_{safe}.png")
                gallery.append((dest.name, caption))
                written.append(dest)
            self.blocks.append(_Block("gallery", gallery))
        return written

    def add_code(self, commands: str | Sequence[str], title: str | None = "How to reproduce") -> None:
        """A block of shell commands (one per line), under a heading (None: no heading)."""
        text = commands if isinstance(commands, str) else "\n".join(commands)
        if title:
            self.add_heading(title)
        self.blocks.append(_Block("code", text.rstrip("\n")))

    # -- rendering ---------------------------------------------------------------------------

    def _setup_rows(self, rows: list[tuple[str, str]], wall: float | None) -> list[tuple[str, str]]:
        wall = wall if wall is not None else time.perf_counter() - self._started
        return rows + [("wall time", _format_duration(wall))]

    def to_markdown(self) -> str:
        """The report as Markdown (figures referenced as ``figures/<name>``)."""
        out = [f"# {self.title}", ""]
        for block in self.blocks:
            kind, c = block.kind, block.content
            if kind == "heading":
                out += ["#" * c[0] + " " + c[1], ""]
            elif kind == "text":
                out += [c, ""]
            elif kind in ("setup", "table"):
                if kind == "setup":
                    header, cells, caption = ["item", "value"], [list(r) for r in self._setup_rows(*c)], None
                else:
                    header, cells, caption = c
                out.append("| " + " | ".join(_md_cell(h) for h in header) + " |")
                numeric = [kind == "table" and _is_number(cells[0][i]) for i in range(len(header))]
                out.append("|" + "|".join("---:" if n else "---" for n in numeric) + "|")
                out += ["| " + " | ".join(_md_cell(v) for v in row) + " |" for row in cells]
                out += ([""] + [caption] if caption else []) + [""]
            elif kind in ("figure", "gallery"):
                for name, caption in [c] if kind == "figure" else c:
                    alt = caption.replace("[", "(").replace("]", ")")
                    out += [f"![{alt}](figures/{name})", "", f"*{caption}*", ""]
            elif kind == "code":
                out += ["```bash", c, "```", ""]
        return "\n".join(out).rstrip("\n") + "\n"

    def to_html(self) -> str:
        """The report as one HTML page with inline CSS (figures referenced as ``figures/<name>``)."""
        e = html.escape
        body = [f"<h1>{e(self.title)}</h1>"]
        for block in self.blocks:
            kind, c = block.kind, block.content
            if kind == "heading":
                body.append(f"<h{c[0]}>{e(c[1])}</h{c[0]}>")
            elif kind == "text":
                body.append(f"<p>{e(c)}</p>")
            elif kind in ("setup", "table"):
                if kind == "setup":
                    header, cells, caption = ["item", "value"], [list(r) for r in self._setup_rows(*c)], None
                    cls = ' class="setup"'
                else:
                    (header, cells, caption), cls = c, ' class="results"'
                rows = [f"<table{cls}>"]
                if caption:
                    rows.append(f"<caption>{e(caption)}</caption>")
                rows.append("<thead><tr>" + "".join(f"<th>{e(h)}</th>" for h in header) + "</tr></thead><tbody>")
                for row in cells:
                    tds = "".join(
                        f'<td class="num">{e(v)}</td>' if kind == "table" and _is_number(v) else f"<td>{e(v)}</td>" for v in row
                    )
                    rows.append(f"<tr>{tds}</tr>")
                rows.append("</tbody></table>")
                body.append("\n".join(rows))
            elif kind == "figure":
                body.append(_html_figure(*c))
            elif kind == "gallery":
                body.append('<div class="gallery">' + "".join(_html_figure(*f) for f in c) + "</div>")
            elif kind == "code":
                body.append(f"<pre><code>{e(c)}</code></pre>")
        return (
            "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            f"<title>{e(self.title)}</title>\n<style>\n{CSS}\n</style>\n"
            f"<script>\n{IMAGES_LOADED_SCRIPT}\n</script>\n</head>\n<body>\n"
            + "\n".join(body)
            + "\n</body>\n</html>\n"
        )

    def write(self) -> tuple[Path, Path]:
        """Write ``report.md`` and ``index.html`` into the report folder; returns their paths."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        figures = [b.content[0] for b in self.blocks if b.kind == "figure"]
        figures += [name for b in self.blocks if b.kind == "gallery" for name, _ in b.content]
        missing = [name for name in figures if not (self.fig_dir / name).is_file()]
        if missing:
            raise FileNotFoundError(f"report figures missing from {self.fig_dir}: {missing}")
        md = write_text(self.out_dir / "report.md", self.to_markdown())
        page = write_text(self.out_dir / "index.html", self.to_html())
        return md, page

