"""`vasomim demo` wiring, at a toy budget: every arm reaches the report."""

from __future__ import annotations

from vasomim.cli import main


def test_demo_cli_small(tmp_path, capsys):
    out = tmp_path / "demo"
    rc = main(["demo", "--out", str(out), "--count", "6", "--unlabelled", "4", "--size", "64",
               "--pretrain-epochs", "1", "--finetune-epochs", "1"])
    assert rc == 0
    md = (out / "study" / "report" / "report.md").read_text()
    for arm in ("Frangi", "scratch", "mae", "vasomim", "unet"):
        assert arm in md
    assert (out / "study" / "report" / "index.html").is_file()
    assert "index.html" in capsys.readouterr().out
    assert main(["demo", "--out", str(out), "--size", "100"]) == 2  # not a multiple of 32
