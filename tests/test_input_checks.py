"""Inputs are checked before any work: an empty input folder is an error naming the folder and the
files looked for (exit status 2), and fine-tuning names every image/mask pair whose sizes differ,
from the file headers, before training starts."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from vasomim.cli import main

SUFFIXES = ".png, .jpg, .jpeg, .bmp, .tif, .tiff"


def error_line(capsys) -> str:
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


def test_an_empty_input_folder_is_an_error_naming_it(tmp_path, capsys):
    empty = tmp_path / "empty"
    (empty / "images").mkdir(parents=True)
    (empty / "masks").mkdir()
    (empty / "images" / "notes.txt").write_text("not an image")
    commands = [
        ["anatomy", str(empty), str(tmp_path / "anatomy"), "--quiet"],
        ["predict", str(tmp_path / "model.pth"), str(empty), "--out", str(tmp_path / "pred"), "--quiet"],
        ["data", "check", str(empty), "--quiet"],
        ["finetune", "--config", "finetune/vit_tiny_cpu", "--data", str(empty), "--out", str(tmp_path / "ft"),
         "--quiet"],
    ]
    for argv in commands:
        assert main(argv) == 2, argv[0]
        line = error_line(capsys)
        assert f"{empty}: no images found" in line and SUFFIXES in line, (argv[0], line)
    assert not (tmp_path / "anatomy" / "manifest.jsonl").exists() and not (tmp_path / "pred").exists()

    assert main(["synth", str(tmp_path / "s"), "--count", "1", "--size", "64"]) == 0
    capsys.readouterr()
    assert main(["evaluate", "--pred", str(empty / "masks"), "--gt", str(tmp_path / "s" / "masks")]) == 2
    line = error_line(capsys)
    assert f"{empty / 'masks'}: no predicted masks found" in line and SUFFIXES in line


def test_finetune_names_every_mask_whose_size_differs_before_training(tmp_path, capsys, monkeypatch):
    from vasomim.data.check import pair_size_problems
    from vasomim.data.sources import load_source

    data = tmp_path / "data"
    assert main(["synth", str(data), "--count", "6", "--size", "64"]) == 0
    Image.fromarray(np.zeros((48, 64), np.uint8)).save(data / "masks" / "synth_0002.png")
    Image.fromarray(np.zeros((64, 32), np.uint8)).save(data / "masks" / "synth_0005.png")
    capsys.readouterr()

    # from the headers alone: no pixel is decoded
    items = sorted(load_source(str(data)).items, key=lambda it: it.id)
    monkeypatch.setattr(Image.Image, "load", lambda self: pytest.fail("pixels decoded"))
    problems = pair_size_problems(items)
    monkeypatch.undo()
    assert problems == [
        f"{data / 'masks' / 'synth_0002.png'}: mask size 64x48 differs from its image "
        f"{data / 'images' / 'synth_0002.png'} (64x64)",
        f"{data / 'masks' / 'synth_0005.png'}: mask size 32x64 differs from its image "
        f"{data / 'images' / 'synth_0005.png'} (64x64)",
    ]

    # batch_size 4 with drop_last could skip a bad pair for a whole run; the check comes first
    out = tmp_path / "ft"
    assert main(["finetune", "--config", "finetune/vit_tiny_cpu", "--data", str(data), "--out", str(out),
                 "--quiet", "--folds", "1", "epochs=1", "batch_size=4"]) == 2
    line = error_line(capsys)
    assert "2 image/mask pair(s)" in line and problems[0] in line and problems[1] in line
    assert not out.exists() or not list(out.rglob("*.pth"))
