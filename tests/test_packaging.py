"""Packaging and the documented API: the wheel carries the configs, the README's example runs."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import torch

from vasomim.config import CONFIG_DIR
from vasomim.data.io import write_png_atomic
from vasomim.data.synthetic import synthesize
from vasomim.engines.finetune import FinetuneConfig, build_network, network_config
from vasomim.inference import input_convention

REPO = Path(__file__).resolve().parents[1]


def test_the_wheel_holds_every_config(tmp_path):
    """Built offline from a copy of the sources (no build folder left in the checkout)."""
    src = tmp_path / "src_copy"
    shutil.copytree(REPO / "src", src / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp_path / "dist"), str(src)], check=True, capture_output=True)
    (wheel,) = (tmp_path / "dist").glob("vasomim-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = {f"vasomim/configs/{p.relative_to(CONFIG_DIR).as_posix()}" for p in CONFIG_DIR.rglob("*.yaml")}
    assert "vasomim/configs/finetune/vit_tiny_cpu.yaml" in shipped
    assert shipped <= names, sorted(shipped - names)
    assert "vasomim/__main__.py" in names


def test_python_m_vasomim_is_the_command():
    out = subprocess.run([sys.executable, "-m", "vasomim", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.startswith("vasomim ")


def test_the_readme_api_example_runs_as_written(tmp_path, monkeypatch, capsys):
    block = re.search(r"### Python API\n\n```python\n(.*?)```", (REPO / "README.md").read_text(), re.S)
    assert block, "README has no Python API example"
    monkeypatch.chdir(tmp_path)
    cfg = FinetuneConfig(data="unused", embed_dim=64, depth=2, num_heads=2,
                         decoder_channels=(32, 16, 16, 8, 8), img_size=64)
    torch.manual_seed(0)
    model = build_network(network_config(cfg))
    ckpt = Path("runs/ft/seed0/fold0/best.pth")
    ckpt.parent.mkdir(parents=True)
    torch.save({"model": model.state_dict(),
                "config": {"network": network_config(cfg), "input": input_convention(64, 1, 0.5)}}, ckpt)
    write_png_atomic("frame.png", synthesize(1, size=96)[0][:, :80])
    exec(compile(block.group(1), "README.md", "exec"), {})
    printed = capsys.readouterr().out
    assert "(96, 80) (96, 80) float32 bool" in printed
