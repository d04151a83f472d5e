"""vasomim export: the printed timm one-liner loads the file offline and gives the same features."""

from __future__ import annotations

import re

import pytest
import timm
import timm.models._builder as timm_builder
import torch

from vasomim.cli import main
from vasomim.cli.export import heads_from_config
from vasomim.engines.finetune import FinetuneConfig, build_network, network_config
from vasomim.inference import input_convention


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
    model = build_network(network_config(cfg)).eval()
    torch.save({"model": model.state_dict(), "epoch": 1, "best_metric": 0.5,
                "config": {**cfg.model_dump(), "network": network_config(cfg), "input": input_convention(64, 1)}}, path)
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


def test_encoder_json_gives_timm_the_training_preprocessing(tmp_path, capsys):
    """Without encoder.json timm normalises with 0.5/0.5 at 224, crop 0.9; with it, as trained."""
    import json

    from timm.data import resolve_data_config

    _segmentation_checkpoint(tmp_path / "best.pth", depth=2)
    out = tmp_path / "encoder.safetensors"
    assert main(["export", str(tmp_path / "best.pth"), "--to", str(out)]) == 0
    assert "pretrained_cfg_overlay=dict(json.load(open(" in capsys.readouterr().out
    cfg = json.loads(out.with_suffix(".json").read_text())
    assert cfg["architecture"] == "vit_tiny_patch16_224" and cfg["file"] == "encoder.safetensors"
    kwargs = dict(pretrained=True, num_classes=0, depth=2, img_size=64)
    bare = timm.create_model(cfg["architecture"], pretrained_cfg_overlay=dict(file=str(out)), **kwargs)
    assert resolve_data_config(model=bare)["mean"] != (0.449,) * 3  # timm's own defaults
    model = timm.create_model(cfg["architecture"], pretrained_cfg_overlay=dict(cfg, file=str(out)), **kwargs)
    data = resolve_data_config(model=model)
    gray = input_convention(64, 1)
    assert data["mean"] == pytest.approx(tuple(gray["mean"] * 3))
    assert data["std"] == pytest.approx(tuple(gray["std"] * 3))
    assert tuple(data["input_size"]) == (3, 64, 64) and data["crop_pct"] == 1.0


@pytest.mark.parametrize("arch", ["vit_unet", "unet"])
def test_model_folder_and_onnx_equal_the_checkpoint(tmp_path, capsys, arch):
    import numpy as np

    import vasomim

    net = dict(depth=2, embed_dim=64, num_heads=2) if arch == "vit_unet" else dict(arch="unet", base_channels=4, levels=2)
    model = _segmentation_checkpoint(tmp_path / "best.pth", **net)
    assert main(["export", str(tmp_path / "best.pth"), "--to", str(tmp_path / "exp")]) == 0
    folder = tmp_path / "exp" / "model"
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]
    loaded = vasomim.load_model(folder, device="cpu")
    assert loaded.input_convention == input_convention(64, 1)
    x = torch.randn(2, 1, 64, 96)  # not the training square: the exports must follow the size
    with torch.no_grad():
        want = model(x)
        torch.testing.assert_close(loaded(x), want, rtol=0, atol=0)
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime (the 'onnx' extra) is not installed")
    session = ort.InferenceSession(str(tmp_path / "exp" / "model.onnx"), providers=["CPUExecutionProvider"])
    for shape in [(2, 1, 64, 96), (1, 1, 128, 48), (1, 1, 64, 64)]:
        x = torch.randn(*shape)
        with torch.no_grad():
            want = model(x).numpy()
        got = session.run(None, {"image": x.numpy()})[0]
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)


def test_unet_finetuning_checkpoint_exports_its_encoder_and_network(tmp_path, capsys, monkeypatch):
    """A unet fine-tuning checkpoint: --to FILE writes its down.* blocks (as `vasomim ship` does) and their
    settings; --to DIR also the whole network (model/, and model.onnx unless --no-onnx)."""
    import json

    from safetensors.torch import load_file

    model = _segmentation_checkpoint(tmp_path / "best.pth", arch="unet", base_channels=4, levels=2, norm="group")
    own = model.state_dict()
    out = tmp_path / "unet.safetensors"
    assert main(["export", str(tmp_path / "best.pth"), "--to", str(out)]) == 0
    assert "base_channels=4 levels=2 norm=group" in capsys.readouterr().out
    tensors = load_file(str(out))
    assert set(tensors) == {k for k in own if k.startswith("down.")}
    assert all(torch.equal(v, own[k]) for k, v in tensors.items())
    meta = json.loads(out.with_suffix(".json").read_text())
    gray = input_convention(64, 1)
    assert (meta["base_channels"], meta["levels"], meta["norm"], meta["input_size"], meta["mean"], meta["std"]) == \
        (4, 2, "group", 64, gray["mean"], gray["std"])

    loads, torch_load = [], torch.load

    def counted(*args, **kwargs):
        loads.append(args[0])
        return torch_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", counted)
    assert main(["export", str(tmp_path / "best.pth"), "--to", str(tmp_path / "exp"), "--no-onnx"]) == 0
    assert loads == [tmp_path / "best.pth"]  # the checkpoint is read once, for the encoder and the network
    assert sorted(p.name for p in (tmp_path / "exp").iterdir()) == ["encoder.json", "encoder.safetensors", "model"]
    assert set(load_file(str(tmp_path / "exp" / "encoder.safetensors"))) == set(tensors)
