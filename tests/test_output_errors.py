"""An output the system refuses (read-only folder, full disk, permission, a file in the way) gives one
line naming the path and the reason, exit status 1, and leaves no temporary file behind. Tests run
as root, where chmod does not stop writes, so the refusals are simulated at os.replace / write."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from vasomim.cli import main
from vasomim.data.io import atomic_file, write_png_atomic
from vasomim.data.io import write_text_atomic
from vasomim.engines.common import atomic_torch_save


def leftovers(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob(".*"))


def refuse(code: int):
    def replace(src, dst, *args, **kwargs):
        raise OSError(code, os.strerror(code), str(src), None, str(dst))  # as the system names it: the temporary
    return replace


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS, errno.EACCES])
def test_atomic_writers_name_the_destination_and_clean_up(tmp_path, monkeypatch, code):
    target = tmp_path / "out" / "a.png"
    write_png_atomic(target, np.zeros((4, 4), np.uint8))
    before = target.read_bytes()
    monkeypatch.setattr(os, "replace", refuse(code))
    for write in (lambda: write_png_atomic(target, np.ones((4, 4), bool)),
                  lambda: write_text_atomic(target, "text"),
                  lambda: atomic_torch_save({"w": torch.zeros(2)}, target)):
        with pytest.raises(OSError) as info:
            write()
        assert (info.value.errno, info.value.filename) == (code, str(target))
        assert leftovers(tmp_path) == [] and target.read_bytes() == before


def test_a_failed_write_leaves_no_temporary(tmp_path):
    def full_disk(fh):
        fh.write(b"half")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with pytest.raises(OSError) as info:
        with atomic_file(tmp_path / "x.json") as fh:
            full_disk(fh)
    assert info.value.filename == str(tmp_path / "x.json") and info.value.errno == errno.ENOSPC
    assert list(tmp_path.iterdir()) == []


def test_commands_report_a_refused_output_in_one_line_with_status_1(tmp_path, monkeypatch, capsys):
    # a full disk while `vasomim synth` writes its first image
    monkeypatch.setattr(os, "replace", refuse(errno.ENOSPC))
    assert main(["synth", str(tmp_path / "synth"), "--count", "2", "--size", "64"]) == 1
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip() and "img/s" not in line]  # not the progress bar
    assert err == [f"error: {tmp_path / 'synth' / 'masks' / 'synth_0000.png'}: No space left on device"]
    assert leftovers(tmp_path) == []
    monkeypatch.undo()

    # a read-only folder for the reports of `vasomim evaluate`
    assert main(["synth", str(tmp_path / "synth"), "--count", "2", "--size", "64"]) == 0
    masks = str(tmp_path / "synth" / "masks")
    capsys.readouterr()
    monkeypatch.setattr(os, "replace", refuse(errno.EROFS))
    assert main(["evaluate", "--pred", masks, "--gt", masks, "--out", str(tmp_path / "report")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: {tmp_path / 'report' / 'per_image.csv'}: Read-only file system"]
    assert leftovers(tmp_path) == []
    monkeypatch.undo()

    # a file where the output folder should be
    (tmp_path / "taken").write_text("")
    assert main(["evaluate", "--pred", masks, "--gt", masks, "--out", str(tmp_path / "taken")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {tmp_path / 'taken'}: "), err
