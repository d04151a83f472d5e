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
    out_text = capsys.readouterr().out
    assert "index.html" in out_text
    # the results table ends the run, one row per arm
    table = [line for line in out_text.splitlines() if line.startswith("|")]
    assert table[0].startswith("| method") and "DSC (%)" in table[0]
    for arm in ("Frangi", "scratch", "mae", "vasomim", "unet"):
        assert any(arm in row for row in table[2:]), arm
    assert main(["demo", "--out", str(out), "--size", "100"]) == 2  # not a multiple of 32
