"""vasomim export: the printed timm one-liner loads the file offline and gives the same features."""

from __future__ import annotations

import re

import pytest
import timm
import timm.models._builder as timm_builder
import torch

from vasomim.cli import main
from vasomim.cli.export import heads_from_config
from vasomim.engines.finetune import FinetuneConfig, build_network, network_spec
from vasomim.engines.predict import input_spec


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    """timm must read the exported file and never reach for the network."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    def refuse(*args, **kwargs):
        raise AssertionError("timm tried to download weights")

    for name in ("load_state_dict_from_url", "load_state_dict_from_hf"):
        monkeypatch.setattr(timm_builder, name, refuse)


def _segmentation_checkpoint(path, **net):
    cfg = FinetuneConfig(data="unused", img_size=64, decoder_channels=(32, 16, 16, 8, 8), **net)
    torch.manual_seed(0)
    model = build_network(network_spec(cfg)).eval()
    torch.save({"model": model.state_dict(), "epoch": 1, "best_metric": 0.5,
                "config": {**cfg.model_dump(), "network": network_spec(cfg), "input": input_spec(64, 1)}}, path)
    return model


def _one_liner(stdout: str) -> str:
    match = re.search(r"model = (timm\.create_model\(.*\))", stdout)
    assert match, stdout
    return match.group(1)


@pytest.mark.parametrize("in_chans", [3, 1])
def test_export_loads_in_timm_with_equal_features(tmp_path, capsys, in_chans):
    model = _segmentation_checkpoint(tmp_path / "best.pth", depth=2)  # ViT-Tiny width 192, 3 heads
    out = tmp_path / "encoder.safetensors"
    assert main(["export", str(tmp_path / "best.pth"), "--to", str(out), "--in-chans", str(in_chans)]) == 0
    call = _one_liner(capsys.readouterr().out)
    assert call.startswith('timm.create_model("vit_tiny_patch16_224", pretrained=True')
    assert "depth=2" in call and "img_size=64" in call and "num_heads" not in call
    timm_model = eval(call, {"timm": timm}).eval()
    x = torch.rand(2, 1, 64, 64)
    with torch.no_grad():
        ours = model.encoder.forward_features(x)
        theirs = timm_model.forward_features(x.repeat(1, in_chans, 1, 1))
    torch.testing.assert_close(theirs, ours, rtol=1e-4, atol=1e-5)


def test_custom_width_keeps_its_heads(tmp_path, capsys):
    model = _segmentation_checkpoint(tmp_path / "best.pth", embed_dim=64, depth=2, num_heads=2)
    out = tmp_path / "encoder.safetensors"
    assert main(["export", str(tmp_path / "best.pth"), "--to", str(out)]) == 0
    call = _one_liner(capsys.readouterr().out)
    assert "embed_dim=64" in call and "num_heads=2" in call
    timm_model = eval(call, {"timm": timm}).eval()
    x = torch.rand(1, 1, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(timm_model.forward_features(x.repeat(1, 3, 1, 1)),
                                   model.encoder.forward_features(x), rtol=1e-4, atol=1e-5)


def test_heads_from_config_and_errors(tmp_path, capsys):
    assert heads_from_config({"network": {"size": "base"}}, 768) == 12
    assert heads_from_config({"model": {"num_heads": 4, "size": "tiny"}}, 64) == 4
    assert heads_from_config(None, 64) is None
    torch.save({"model": {"head.weight": torch.zeros(2, 2)}}, tmp_path / "x.pth")
    assert main(["export", str(tmp_path / "x.pth"), "--to", str(tmp_path / "e.safetensors")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "x.pth" in err and "\n" not in err
