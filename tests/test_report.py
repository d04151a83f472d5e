"""The study report: Markdown and HTML from the same blocks, and the HTML rendered in headless Chromium."""

from __future__ import annotations

import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from vasomim.analysis import curves, masking_stats
from vasomim.analysis.report import Report, write_json

CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--virtual-time-budget=5000",
]


def chromium() -> str:
    """Path of Debian's chromium; skips the test with a reason when it is absent."""
    path = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").is_file() else None)
    if path is None:
        pytest.skip("headless Chromium not found (Debian: apt-get install chromium); the HTML render test is skipped")
    return path


def dump_dom(page: Path, profile: Path) -> str:
    """The DOM of ``page`` after load, as headless Chromium serialises it."""
    cmd = [chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--dump-dom", page.resolve().as_uri()]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


class TableCells(HTMLParser):
    """Cell texts of every ``<table class="results">``, as lists of rows (header row first)."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: list[list[list[str]]] = []
        self._in_results = self._in_cell = False

    def handle_starttag(self, tag, attrs):
        if tag == "table" and ("class", "results") in attrs:
            self._in_results = True
            self.tables.append([])
        elif self._in_results and tag == "tr":
            self.tables[-1].append([])
        elif self._in_results and tag in ("td", "th"):
            self._in_cell = True
            self.tables[-1][-1].append("")

    def handle_endtag(self, tag):
        if tag == "table":
            self._in_results = False
        elif tag in ("td", "th"):
            self._in_cell = False

    def handle_data(self, data):
        if self._in_cell:
            self.tables[-1][-1][-1] += data


def results_rows(seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    rows = []
    for arm, base in (("scratch", 0.60), ("MAE", 0.68), ("VasoMIM", 0.69)):
        for s in range(3):
            for image in range(4):
                d = base + rng.normal(0, 0.01)
                rows.append({"arm": arm, "x": 0.5, "seed": s, "image": f"im{image}", "dice": d, "cldice": d + 0.02})
    return rows


def cases(rng: np.random.Generator) -> list[tuple]:
    image = rng.random((48, 48)).astype(np.float32)
    gt = np.zeros((48, 48), bool)
    gt[20:24] = True
    return [(arm, f"im{i}", image, np.roll(gt, i, 0), gt, 1 - 0.1 * i) for arm in ("MAE", "VasoMIM") for i in range(3)]


def build_report(out: Path) -> tuple[Report, list[dict]]:
    """A report with every kind of block; returns it and its results table's display rows."""
    rng = np.random.default_rng(0)
    rows = results_rows()
    display = curves.paper_rows(curves.results_table(rows))
    r = Report("VasoMIM study <synthetic>", out / "report")
    r.add_setup({"data": {"unlabelled": "24 synthetic", "labelled": "12"}, "model": "ViT-Tiny/16", "wall_time_s": 75.5})
    r.add_heading("Results")
    r.add_table("Vessel segmentation", display, "mean ± std over seeds")
    r.add_cases(cases(rng))
    sweep_png = out / "analysis" / "sweep.png"
    curves.plot_sweep(rows, "masking ratio", sweep_png)
    mask = np.zeros((48, 48), bool)
    mask[20:24] = True
    map_png = out / "analysis" / "map.png"
    masking_stats.masking_map_analysis(rng.random((48, 48)), mask, map_png, patch=8, epochs=20)
    r.add_heading("Figures")
    r.add_figure(sweep_png, "Masking-ratio sweep")
    r.add_figure(map_png, "Fig. 3b: masking frequency & <guidance>")
    r.add_figure(rng.random((32, 64)), "an array figure")
    r.add_text("Scores are in percent.\n\nA second paragraph with <b>markup</b> & an ampersand.")
    r.add_code(["vasomim study study.yaml", "vasomim analyze sweep results.csv --x x --out analysis"])
    return r, display


def test_markdown_and_html_from_the_same_blocks(tmp_path):
    r, display = build_report(tmp_path)
    md_path, html_path = r.write()
    md, page = md_path.read_text(), html_path.read_text()
    assert md_path.parent == html_path.parent == tmp_path / "report"
    # the table in both, in the paper's format
    for row in display:
        assert f"| {row['arm']} | {row['DSC (%)']} | {row['clDice (%)']} | 3 |" in md
        assert f'<td class="num">{row["DSC (%)"]}</td>' in page
    assert re.search(r"\d\d\.\d\d ± \d\.\d\d", display[0]["DSC (%)"])
    # setup: the caller's facts, the wall time, the detected hardware
    assert "| data.labelled | 12 |" in md and "| wall time | 75.5 s |" in md
    assert "hardware.CPU" in md and "hardware.PyTorch" in page
    # text is escaped in HTML; figures are relative files that exist, with alt text
    assert "&lt;synthetic&gt;" in page and "<synthetic>" not in page
    assert "&lt;b&gt;markup&lt;/b&gt; &amp; an ampersand" in page
    srcs = re.findall(r'<img src="([^"]+)" alt="[^"]+">', page)
    assert len(srcs) == 7 and all(s.startswith("figures/") for s in srcs)
    assert all((html_path.parent / s).is_file() for s in srcs)
    assert sorted(re.findall(r"\]\((figures/[^)]+)\)", md)) == sorted(srcs)
    assert "vasomim analyze sweep results.csv" in page and "```bash" in md


def test_cases_best_and_worst_per_arm(tmp_path):
    r = Report("cases", tmp_path)
    rng = np.random.default_rng(1)
    written = r.add_cases(cases(rng) + [("Frangi", "only", rng.random((48, 48)), np.zeros((48, 48), bool), np.ones((48, 48), bool), 0.0)])
    assert [p.name for p in written] == ["case_MAE_best.png", "case_MAE_worst.png", "case_VasoMIM_best.png",
                                         "case_VasoMIM_worst.png", "case_Frangi_best.png"]
    md = r.to_markdown()
    assert "MAE: best case, im0 (DSC 100.00%)" in md and "MAE: worst case, im2 (DSC 80.00%)" in md
    from PIL import Image

    with Image.open(written[0]) as im:
        assert im.size == (3 * 48 + 2 * 4, 48)  # image | reference | prediction


def test_figure_names_are_unique_and_missing_files_are_errors(tmp_path):
    r = Report("t", tmp_path / "rep")
    a = r.add_figure(np.zeros((8, 8), np.uint8), "a", name="x.png")
    b = r.add_figure(np.zeros((8, 8), np.uint8), "b", name="x.png")
    assert (a.name, b.name) == ("x.png", "x_2.png")
    with pytest.raises(FileNotFoundError):
        r.add_figure(tmp_path / "nope.png", "missing")
    b.unlink()
    with pytest.raises(FileNotFoundError, match="x_2.png"):
        r.write()


def test_write_json_handles_numpy_and_nan(tmp_path):
    import json

    path = write_json(tmp_path / "n.json", {"a": np.float32(0.5), "b": np.arange(3), "c": float("nan")})
    assert json.loads(path.read_text()) == {"a": 0.5, "b": [0, 1, 2], "c": None}


def test_report_renders_in_headless_chromium(tmp_path):
    chromium()
    r, display = build_report(tmp_path)
    _, html_path = r.write()
    dom = dump_dom(html_path, tmp_path / "profile")
    assert "<h1>VasoMIM study &lt;synthetic&gt;</h1>" in dom  # rendered and serialised by the browser
    n = dom.count("<img ")
    assert n == 7
    assert f'data-images-loaded="{n}/{n}"' in dom  # every image decoded (naturalWidth > 0)

    parser = TableCells()
    parser.feed(dom)
    assert len(parser.tables) == 1
    header, *body = parser.tables[0]
    assert header == ["arm", "DSC (%)", "clDice (%)", "seeds"]
    assert body == [[row["arm"], row["DSC (%)"], row["clDice (%)"], row["seeds"]] for row in display]

    # control: the marker does see a broken image
    (html_path.parent / "figures" / "sweep.png").write_bytes(b"not a png")
    dom = dump_dom(html_path, tmp_path / "profile2")
    assert f'data-images-loaded="{n - 1}/{n}"' in dom
