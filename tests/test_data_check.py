"""``vasomim data check``: counts, sizes, modes, coverage, and every failing file with its reason."""

from __future__ import annotations

import json

import numpy as np
from PIL import Image

from conftest import shared_data
from vasomim.cli import main
from vasomim.data.check import check_source
from vasomim.data.sources import FolderSource


def mixed_tree(root):
    img, msk = root / "images", root / "masks"
    img.mkdir(parents=True)
    msk.mkdir()
    rng = np.random.default_rng(0)
    gray = (rng.random((20, 30)) * 255).astype(np.uint8)
    m = np.zeros((20, 30), np.uint8)
    m[5:10, :] = 255  # coverage 25%
    Image.fromarray(gray).save(img / "gray.png")
    Image.fromarray(m).save(msk / "gray.png")
    Image.fromarray(np.dstack([gray, gray, gray, np.full_like(gray, 255)])).save(img / "rgba.png")
    Image.fromarray((m > 0).astype(np.uint8)).save(msk / "rgba.png")  # a 0/1 mask
    Image.fromarray(gray.astype(np.uint16) * 16).save(img / "twelve_bit.png")  # 12-bit data, 16-bit file
    Image.fromarray(np.zeros((20, 30), np.uint8)).save(msk / "twelve_bit.png")  # empty mask
    Image.fromarray(gray).save(img / "trunc.png")
    (img / "trunc.png").write_bytes((img / "trunc.png").read_bytes()[:80])
    Image.fromarray(m).save(msk / "trunc.png")
    (img / "zero.png").write_bytes(b"")
    Image.fromarray(gray).save(img / "colour_mask.jpg")
    Image.fromarray(np.dstack([m, np.zeros_like(m), np.zeros_like(m)])).save(msk / "colour_mask.png")
    Image.fromarray(gray).save(img / "small_mask.bmp")
    Image.fromarray(m[:, :25]).save(msk / "small_mask.png")
    Image.fromarray(gray).save(img / "unlabelled.png")
    return root


def test_report_on_a_mixed_tree(tmp_path):
    root = mixed_tree(tmp_path / "data")
    report = check_source(FolderSource(root / "images", root / "masks"), workers=2)
    s = report.summary()
    assert (s["items"], s["ok"], s["failed"]) == (8, 4, 4)
    assert s["sizes"] == {"30x20": 4}
    assert s["modes"] == {"PNG L": 2, "PNG RGBA": 1, "PNG I;16": 1}
    assert s["masks"]["with_mask"] == 3 and s["masks"]["empty"] == 1
    assert abs(s["masks"]["coverage_mean"] - 0.5 / 3) < 1e-9 and s["masks"]["coverage_max"] == 0.25
    assert s["dark_images"] == ["twelve_bit.png"]
    failures = "\n".join(report.failures)
    for name, reason in [
        ("images/trunc.png", "corrupt or truncated"),
        ("images/zero.png", "empty file (0 bytes)"),
        ("masks/colour_mask.png", "mask is a colour (RGB) image"),
        ("masks/small_mask.png", "mask size 25x20 differs from its image 30x20"),
    ]:
        assert f"{name}: {reason}" in failures


def test_cli_lists_failures_and_exits_non_zero(tmp_path, capsys):
    root = mixed_tree(tmp_path / "data")
    rc = main(["data", "check", str(root), "--quiet", "--json", str(tmp_path / "report.json")])
    out = capsys.readouterr().out
    assert rc == 1
    assert "items: 8 (4 ok, 4 failed)" in out and "modes: PNG L (2), PNG RGBA (1), PNG I;16 (1)" in out
    assert "failed files (4):" in out and "trunc.png: corrupt or truncated" in out and "zero.png: empty file" in out
    assert "2 images without a mask" in out and "unlabelled.png, zero.png" in out
    assert "12-bit data in a 16-bit file?): twelve_bit.png" in out and "1 masks are empty" in out
    assert json.loads((tmp_path / "report.json").read_text())["failed"] == 4


def test_cli_on_an_unlistable_source(tmp_path, capsys):
    spec = tmp_path / "spec.yaml"
    spec.write_text("sources:\n  - {type: folder}\n")
    assert main(["data", "check", str(spec), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "needs key(s) images" in err and err.count("\n") == 1


def test_cli_on_the_real_angiograms(capsys):
    cimat, xca = shared_data("cimat-coronary"), shared_data("xca-unlabeled")
    assert main(["data", "check", str(cimat), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "items: 40 (40 ok, 0 failed)" in out and "sizes: 300x300 (40)" in out and "masks: 40 of 40" in out
    assert "warnings" not in out and "failed files" not in out
    assert main(["data", "check", str(xca), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "items: 15 (15 ok, 0 failed)" in out and "sizes: 512x512 (15)" in out
    for mode in ("BMP RGB", "PNG RGBA", "PNG L", "JPEG L"):
        assert mode in out
