"""`vasomim anatomy --recipe`: the manifest records the recipe, the field of view and suspect masks."""

from __future__ import annotations

import numpy as np
from PIL import Image

from test_anatomy import collimated_frame
from vasomim.cli import main
from vasomim.engines.anatomy import AnatomyConfig, read_manifest, run_anatomy


def make_frames(root):
    root.mkdir()
    img, _, fov = collimated_frame(1, 192, "iris")
    Image.fromarray(np.clip(np.rint(img), 0, 255).astype(np.uint8)).save(root / "iris.png")
    Image.fromarray(np.full((192, 192), 140, dtype=np.uint8)).save(root / "flat.png")
    return fov


def test_manifest_records_recipe_fov_and_suspect_masks(tmp_path, capsys):
    src, out = tmp_path / "in", tmp_path / "out"
    fov = make_frames(src)
    assert main(["anatomy", str(src), str(out), "--border", "8", "--workers", "1", "--quiet"]) == 0
    captured = capsys.readouterr()
    assert "1 suspect" in captured.out
    assert "suspect: flat.png: mask covers 0.00% of the frame" in captured.err
    recs = read_manifest(out)
    assert recs["iris.png"]["status"] == "ok" and recs["iris.png"]["recipe"] == "fov"
    assert abs(recs["iris.png"]["fov_fraction"] - fov.mean()) < 0.02
    assert recs["flat.png"]["status"] == "suspect" and recs["flat.png"]["fov_fraction"] == 1.0
    assert "flat.png" in recs["flat.png"]["reason"]

    # the paper's recipe on the same frames: its seed lands on the iris edge
    paper = tmp_path / "paper"
    summary = run_anatomy(src, paper, AnatomyConfig(recipe="paper", border=8, workers=1), progress=False)
    assert summary.ok and summary.processed == 2
    assert {f for f, _ in summary.suspect} == {"iris.png", "flat.png"}
    assert "field of view's edge" in read_manifest(paper)["iris.png"]["reason"]

    # a re-run with another recipe into the same folder redoes every mask; the same recipe skips them
    summary = run_anatomy(src, paper, AnatomyConfig(recipe="official", border=8, workers=1), progress=False)
    assert summary.processed == 2 and summary.skipped == 0
    assert read_manifest(paper)["iris.png"]["recipe"] == "official"
    summary = run_anatomy(src, paper, AnatomyConfig(recipe="official", border=8, workers=1), progress=False)
    assert summary.processed == 0 and summary.skipped == 2


def test_unknown_recipe_is_a_one_line_error(tmp_path, capsys):
    (tmp_path / "in").mkdir()
    assert main(["anatomy", str(tmp_path / "in"), str(tmp_path / "o"), "--config", str(_yaml(tmp_path))]) == 2
    err = capsys.readouterr().err.strip()
    assert "unknown recipe 'frangi'" in err and len(err.splitlines()) == 1


def _yaml(tmp_path):
    path = tmp_path / "anatomy.yaml"
    path.write_text("recipe: frangi\n")
    return path
