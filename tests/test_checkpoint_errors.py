"""Every checkpoint argument (finetune --init, consistency.segmentor, predict, evaluate, export)
turns a file that is no checkpoint, or an unsafe one, into one line naming it, exit status 2. The
safe loader stays on and the message never suggests turning it off."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vasomim.cli import main
from vasomim.models.checkpoints import load_checkpoint


class Payload:
    """Runs code when unpickled by a loader that allows it."""

    def __reduce__(self):
        return (print, ("payload ran",))


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ckpt-errors")
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(root / "frame.png")
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(root / "image.pth", format="PNG")
    torch.save({"model": {"w": torch.zeros(2)}, "extra": Payload()}, root / "unsafe.pth")
    (root / "empty.pth").write_bytes(b"")
    (root / "notes.pth").write_text("not weights\n")
    (root / "bad.safetensors").write_text("not weights\n")
    torch.save({"model": {"w": torch.zeros(2)}}, root / "good.pth")
    return {p.stem if p.suffix != ".png" else "png": p for p in root.iterdir()}


def test_the_loader_says_what_the_file_is(files):
    assert set(load_checkpoint(files["good"])["model"]) == {"w"}
    expected = {"image": "not a checkpoint (a PNG image)", "png": "not a checkpoint (a PNG image)",
                "empty": "not a checkpoint (an empty file", "notes": "not a checkpoint (not a PyTorch",
                "unsafe": "refused: the checkpoint holds Python objects (print)",
                "bad": "not a safetensors checkpoint"}
    for name, text in expected.items():
        with pytest.raises(ValueError) as info:
            load_checkpoint(files[name])
        message = str(info.value)
        assert message.startswith(f"{files[name]}: {text}") and "\n" not in message, message
        assert "weights_only" not in message and len(message) < 240
    with pytest.raises(FileNotFoundError, match="missing.pth: no such checkpoint file"):
        load_checkpoint(files["good"].parent / "missing.pth")


def one_error_line(capsys) -> str:
    captured = capsys.readouterr()
    assert "payload ran" not in captured.out + captured.err
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    assert "weights_only" not in lines[0] and "Traceback" not in lines[0]
    return lines[0]


def test_every_checkpoint_argument_gives_one_line(files, tmp_path, capsys):
    root = files["good"].parent
    assert main(["synth", str(tmp_path / "data"), "--count", "4", "--size", "64"]) == 0
    capsys.readouterr()
    data = str(tmp_path / "data")
    for bad in ("image", "unsafe"):
        path = str(files[bad])
        commands = [
            ["finetune", "--config", "finetune/vit_tiny_cpu", "--data", data, "--out", str(tmp_path / f"ft-{bad}"),
             "--init", path, "--quiet", "epochs=1", "--folds", "1"],
            ["pretrain", "--images", data + "/images", "--anatomy", str(root), "--out", str(tmp_path / f"pt-{bad}"),
             f"consistency.segmentor={path}", "--quiet"],
            ["predict", path, str(files["png"]), "--out", str(tmp_path / f"pred-{bad}"), "--quiet"],
            ["evaluate", "--checkpoint", path, "--data", data, "--quiet"],
            ["export", path, "--to", str(tmp_path / f"exp-{bad}" / "encoder.safetensors")],
        ]
        for argv in commands:
            assert main(argv) == 2, argv[0]
            line = one_error_line(capsys)
            assert path in line, (argv[0], line)
            assert ("refused" if bad == "unsafe" else "PNG image") in line, (argv[0], line)
