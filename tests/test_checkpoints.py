"""Checkpoint loading (every flavour, fabricated in its original key layout) and export to timm."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import timm
import timm.models._builder as timm_builder
import torch
from safetensors.torch import save_file
from timm.models.vision_transformer import VisionTransformer

from vasomim.models.checkpoints import (
    adapt_patch_embed,
    load_encoder_weights,
    read_state_dict,
    split_encoder,
)
from vasomim.models.export import export_encoder
from vasomim.models.segmentation import ViTUNet

DIMS = dict(embed_dim=64, depth=2, num_heads=2)


def _vit_unet(img_size=64, in_chans=3, **kw) -> ViTUNet:
    return ViTUNet(img_size=img_size, in_chans=in_chans, **{**DIMS, **kw}).eval()


def _timm_encoder_state(img_size=64, in_chans=3, seed=0, **kw) -> dict[str, torch.Tensor]:
    """Encoder tensors of a timm ViT, randomised so that every loaded value is recognisable."""
    vit = VisionTransformer(img_size=img_size, patch_size=16, in_chans=in_chans, num_classes=0,
                            global_pool="", **{**DIMS, **kw})
    gen = torch.Generator().manual_seed(seed)
    return {k: torch.randn(v.shape, generator=gen) for k, v in vit.state_dict().items()}


def _mae_decoder_state(in_chans=3) -> dict[str, torch.Tensor]:
    """Fake MAE decoder tensors in the original MAE key layout (decoder width 32, 1 block)."""
    return {
        "mask_token": torch.zeros(1, 1, 32),
        "decoder_embed.weight": torch.zeros(32, 64),
        "decoder_embed.bias": torch.zeros(32),
        "decoder_pos_embed": torch.zeros(1, 17, 32),
        "decoder_blocks.0.norm1.weight": torch.ones(32),
        "decoder_blocks.0.attn.qkv.weight": torch.zeros(96, 32),
        "decoder_norm.weight": torch.ones(32),
        "decoder_pred.weight": torch.zeros(16 * 16 * in_chans, 32),
        "decoder_pred.bias": torch.zeros(16 * 16 * in_chans),
    }


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """timm must load the exported file and never reach for the network."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    def refuse(*args, **kwargs):
        raise AssertionError("timm tried to download weights")

    for name in ("load_state_dict_from_url", "load_state_dict_from_hf"):
        monkeypatch.setattr(timm_builder, name, refuse)


def _assert_encoder_equals(model: ViTUNet, expected: dict[str, torch.Tensor]) -> None:
    state = model.encoder.state_dict()
    assert set(state) == set(expected)
    for k, v in expected.items():
        torch.testing.assert_close(state[k], v, rtol=0, atol=0, msg=k)


# --------------------------------------------------------------------------- flavours


def _flavours(tmp_path):
    enc = _timm_encoder_state()
    dec = _mae_decoder_state()
    head = {"head.weight": torch.zeros(10, 64), "head.bias": torch.zeros(10),
            "fc_norm.weight": torch.ones(64), "fc_norm.bias": torch.zeros(64)}
    seg = _vit_unet()
    seg.encoder.load_state_dict(enc)
    seg_state = seg.state_dict()
    decoder_of_seg = [k for k in seg_state if not k.startswith("encoder.")]

    torch.save({"model": {**enc, **dec}}, tmp_path / "mae.pth")
    torch.save({"model": {**enc, **dec}, "config": {"model": {"size": "tiny"}, "beta": 0.5},
                "epoch": 3, "step": 120, "best_metric": None}, tmp_path / "vasomim_pretrain.pth")
    torch.save({"model": {f"module.{k}": v for k, v in {**enc, **dec}.items()}},
               tmp_path / "ddp.pth")
    torch.save({**enc, **head}, tmp_path / "timm.pth")
    save_file({**enc, **head}, str(tmp_path / "timm.safetensors"))
    torch.save({"model": seg_state, "config": {"arch": "vit_unet"}, "epoch": 9},
               tmp_path / "segmentation.pth")
    return enc, {
        "mae.pth": list(dec),
        "vasomim_pretrain.pth": list(dec),
        "ddp.pth": list(dec),
        "timm.pth": list(head),
        "timm.safetensors": list(head),
        "segmentation.pth": decoder_of_seg,
    }


def test_every_flavour_loads_by_name(tmp_path):
    enc, dropped = _flavours(tmp_path)
    for fname, expected_unexpected in dropped.items():
        model = _vit_unet()
        report = load_encoder_weights(model, tmp_path / fname)
        _assert_encoder_equals(model, enc)
        assert sorted(report.loaded) == sorted(enc), fname
        assert report.missing == [], fname
        assert sorted(report.unexpected) == sorted(expected_unexpected), fname
        assert report.adapted == [], fname
        assert report.source.endswith(fname)


def test_loads_an_in_memory_checkpoint_dict():
    enc = _timm_encoder_state()
    model = _vit_unet()
    report = load_encoder_weights(model, {"model": {f"module.encoder.{k}": v
                                                    for k, v in enc.items()}})
    _assert_encoder_equals(model, enc)
    assert report.source == "<state dict>"


def test_report_names_the_keys_in_the_log(tmp_path, caplog):
    enc = _timm_encoder_state()
    del enc["blocks.1.mlp.fc2.bias"]
    torch.save({"model": {**enc, **_mae_decoder_state()}}, tmp_path / "partial.pth")
    model = _vit_unet()
    before = model.encoder.blocks[1].mlp.fc2.bias.detach().clone()
    with caplog.at_level(logging.INFO, logger="vasomim.models.checkpoints"):
        report = load_encoder_weights(model, tmp_path / "partial.pth", strict_encoder=False)
    assert report.missing == ["blocks.1.mlp.fc2.bias"]
    torch.testing.assert_close(model.encoder.blocks[1].mlp.fc2.bias, before)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("blocks.1.mlp.fc2.bias" in w for w in warnings)
    assert "decoder_pred.weight" in caplog.text and "decoder_pred.weight" in str(report)


def test_strict_encoder_refuses_missing_keys(tmp_path):
    enc = _timm_encoder_state()
    del enc["norm.weight"]
    torch.save(enc, tmp_path / "no_norm.pth")
    with pytest.raises(ValueError, match=r"no_norm\.pth.*lacks encoder keys: norm\.weight"):
        load_encoder_weights(_vit_unet(), tmp_path / "no_norm.pth")


# --------------------------------------------------------------------------- errors


def test_garbage_dict_names_the_file(tmp_path):
    torch.save({"model": {"conv1.weight": torch.zeros(3, 3), "fc.bias": torch.zeros(2)}},
               tmp_path / "resnet.pth")
    with pytest.raises(ValueError, match=r"resnet\.pth: no ViT encoder weights found"):
        load_encoder_weights(_vit_unet(), tmp_path / "resnet.pth")


def test_unreadable_and_absent_files_name_the_file(tmp_path):
    (tmp_path / "notes.pth").write_text("not a checkpoint")
    with pytest.raises(ValueError, match=r"notes\.pth: not a checkpoint"):
        load_encoder_weights(_vit_unet(), tmp_path / "notes.pth")
    with pytest.raises(FileNotFoundError, match=r"absent\.pth"):
        load_encoder_weights(_vit_unet(), tmp_path / "absent.pth")
    torch.save({"model": {"a": 1}}, tmp_path / "no_tensors.pth")
    with pytest.raises(ValueError, match=r"no_tensors\.pth: holds no tensors"):
        read_state_dict(tmp_path / "no_tensors.pth")


def test_width_mismatch_is_a_clear_error(tmp_path):
    torch.save(_timm_encoder_state(embed_dim=32), tmp_path / "narrow.pth")
    with pytest.raises(ValueError, match=r"narrow\.pth: encoder shapes do not match"):
        load_encoder_weights(_vit_unet(), tmp_path / "narrow.pth")


# --------------------------------------------------------------------------- adaptations


def _keys_cubic(t: np.ndarray, a: float = -0.75) -> np.ndarray:
    """Keys' cubic convolution kernel (PyTorch's bicubic uses a = -0.75)."""
    t = np.abs(t)
    return np.where(t <= 1, (a + 2) * t**3 - (a + 3) * t**2 + 1,
                    np.where(t < 2, a * t**3 - 5 * a * t**2 + 8 * a * t - 4 * a, 0.0))


def _bicubic_matrix(n_in: int, n_out: int) -> np.ndarray:
    """Row i: weights of the n_in source samples for output i (half-pixel centres, edges
    clamped), written out from the definition of bicubic interpolation."""
    m = np.zeros((n_out, n_in))
    for i in range(n_out):
        x = (i + 0.5) * n_in / n_out - 0.5
        x0 = int(np.floor(x))
        for j in range(x0 - 1, x0 + 3):
            m[i, min(max(j, 0), n_in - 1)] += _keys_cubic(x - j)
    return m


def test_pos_embed_grid_is_resampled_bicubically(tmp_path):
    enc = _timm_encoder_state(img_size=64)  # 4x4 grid
    torch.save({"model": enc}, tmp_path / "grid4.pth")
    model = _vit_unet(img_size=128)  # 8x8 grid
    report = load_encoder_weights(model, tmp_path / "grid4.pth")
    assert report.adapted == ["pos_embed: grid 4x4 -> 8x8 (bicubic)"]

    src = enc["pos_embed"][0, 1:].numpy().reshape(4, 4, 64)
    w = _bicubic_matrix(4, 8)
    expected = np.einsum("ia,jb,abd->ijd", w, w, src).reshape(64, 64)
    got = model.encoder.pos_embed.detach()
    torch.testing.assert_close(got[0, 0], enc["pos_embed"][0, 0], rtol=0, atol=0)  # class token
    np.testing.assert_allclose(got[0, 1:].numpy(), expected, atol=1e-5)
    assert model(torch.randn(1, 3, 128, 128)).shape == (1, 1, 128, 128)


def _tokens(model: ViTUNet, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.encoder.forward_features(x)


def test_rgb_checkpoint_into_gray_model_sums_channels(tmp_path):
    enc = _timm_encoder_state(in_chans=3)
    torch.save({"model": enc}, tmp_path / "rgb.pth")
    gray = _vit_unet(in_chans=1)
    report = load_encoder_weights(gray, tmp_path / "rgb.pth")
    assert report.adapted == ["patch_embed.proj.weight: 3 -> 1 input channels (summed)"]
    torch.testing.assert_close(gray.encoder.patch_embed.proj.weight,
                               enc["patch_embed.proj.weight"].sum(1, keepdim=True))
    rgb = _vit_unet(in_chans=3)
    load_encoder_weights(rgb, tmp_path / "rgb.pth")
    x = torch.randn(2, 1, 64, 64)
    with torch.no_grad():  # the rest of the encoder is identical, so the patch tokens decide
        torch.testing.assert_close(gray.encoder.patch_embed(x),
                                   rgb.encoder.patch_embed(x.repeat(1, 3, 1, 1)),
                                   atol=1e-4, rtol=1e-5)


def test_gray_checkpoint_into_rgb_model_repeats_and_divides(tmp_path):
    enc = _timm_encoder_state(in_chans=1)
    torch.save({"model": enc}, tmp_path / "gray.pth")
    rgb = _vit_unet(in_chans=3)
    report = load_encoder_weights(rgb, tmp_path / "gray.pth")
    assert report.adapted == ["patch_embed.proj.weight: 1 -> 3 input channels (repeated / 3)"]
    w = enc["patch_embed.proj.weight"]
    torch.testing.assert_close(rgb.encoder.patch_embed.proj.weight, torch.cat([w / 3] * 3, 1))
    with pytest.raises(ValueError, match="from 3 to 4 input channels"):
        adapt_patch_embed(torch.zeros(8, 3, 16, 16), 4)


def test_split_encoder_splits_flavours():
    enc, others = split_encoder({"_orig_mod.module.blocks.0.norm1.weight": torch.ones(2),
                                      "module.decoder_norm.weight": torch.ones(2),
                                      "norm.bias": torch.zeros(2)})
    assert sorted(enc) == ["blocks.0.norm1.weight", "norm.bias"]
    assert others == ["decoder_norm.weight"]
    # in a segmentation layout only the encoder.* keys count, even if others look like encoder keys
    enc, others = split_encoder({"encoder.cls_token": torch.zeros(1), "norm.weight":
                                      torch.ones(1)})
    assert list(enc) == ["cls_token"] and others == ["norm.weight"]


# --------------------------------------------------------------------------- export


def test_export_loads_in_timm_with_the_same_features(tmp_path):
    torch.manual_seed(0)
    model = ViTUNet(size="tiny", depth=2, img_size=224, in_chans=1).eval()
    out = export_encoder(model, tmp_path / "encoder.safetensors")
    overlay = dict(file=str(out))
    x = torch.randn(2, 1, 224, 224)
    ours = _tokens(model, x)

    rgb = timm.create_model("vit_tiny_patch16_224", pretrained=True, num_classes=0, depth=2,
                            pretrained_cfg_overlay=overlay).eval()
    assert set(read_state_dict(out)[0]) == set(rgb.state_dict())  # nothing left at init
    with torch.no_grad():
        torch.testing.assert_close(rgb.forward_features(x.repeat(1, 3, 1, 1)), ours,
                                   atol=1e-5, rtol=1e-5)
    gray = timm.create_model("vit_tiny_patch16_224", pretrained=True, num_classes=0, depth=2,
                             in_chans=1, pretrained_cfg_overlay=overlay).eval()
    with torch.no_grad():
        torch.testing.assert_close(gray.forward_features(x), ours, atol=1e-5, rtol=1e-5)


def test_export_from_a_segmentation_checkpoint_file(tmp_path):
    torch.manual_seed(1)
    model = _vit_unet(in_chans=1)
    torch.save({"model": {f"module.{k}": v for k, v in model.state_dict().items()},
                "config": {"arch": "vit_unet"}}, tmp_path / "seg.pth")
    out = export_encoder(tmp_path / "seg.pth", tmp_path / "sub" / "encoder.pth", in_chans=None)
    exported = read_state_dict(out)[0]
    assert exported["patch_embed.proj.weight"].shape[1] == 1
    timm_model = timm.create_model("vit_tiny_patch16_224", pretrained=True, num_classes=0,
                                   in_chans=1, img_size=64, **DIMS,
                                   pretrained_cfg_overlay=dict(file=str(out))).eval()
    assert set(exported) == set(timm_model.state_dict())
    x = torch.randn(2, 1, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(timm_model.forward_features(x), _tokens(model, x),
                                   atol=1e-5, rtol=1e-5)
    # ... and it comes back into a fresh ViTUNet unchanged
    again = _vit_unet(in_chans=1)
    load_encoder_weights(again, out)
    _assert_encoder_equals(again, model.encoder.state_dict())


def test_export_without_an_encoder_is_an_error(tmp_path):
    torch.save({"model": {"conv1.weight": torch.zeros(3, 3)}}, tmp_path / "cnn.pth")
    with pytest.raises(ValueError, match=r"cnn\.pth: no ViT encoder"):
        export_encoder(tmp_path / "cnn.pth", tmp_path / "out.safetensors")


def test_adaptation_errors_name_the_file(tmp_path):
    enc = _timm_encoder_state(in_chans=3)
    enc["patch_embed.proj.weight"] = torch.zeros(64, 4, 16, 16)
    torch.save(enc, tmp_path / "rgba.pth")
    with pytest.raises(ValueError, match=r"rgba\.pth: cannot convert a patch embedding from 4"):
        load_encoder_weights(_vit_unet(in_chans=1), tmp_path / "rgba.pth")
    enc = _timm_encoder_state()
    enc["pos_embed"] = torch.zeros(1, 20, 64)  # 19 grid tokens: not a square grid
    torch.save(enc, tmp_path / "odd_grid.pth")
    with pytest.raises(ValueError, match=r"odd_grid\.pth: pos_embed with 19 grid tokens"):
        load_encoder_weights(_vit_unet(), tmp_path / "odd_grid.pth")


def _hand_written_pos_embed_resample(pos_embed: torch.Tensor, grid: tuple[int, int], prefix: int = 1) -> torch.Tensor:
    """The resampling vasomim wrote by hand before it used timm's (kept here as the reference)."""
    side = int(round((pos_embed.shape[1] - prefix) ** 0.5))
    head, tokens = pos_embed[:, :prefix], pos_embed[:, prefix:]
    dim = tokens.shape[-1]
    tokens = tokens.float().reshape(1, side, side, dim).permute(0, 3, 1, 2)
    tokens = torch.nn.functional.interpolate(tokens, size=tuple(grid), mode="bicubic", align_corners=False)
    tokens = tokens.permute(0, 2, 3, 1).reshape(1, -1, dim).to(pos_embed.dtype)
    return torch.cat([head, tokens], dim=1)


@pytest.mark.parametrize("old, new", [(4, (8, 8)), (14, (8, 12)), (8, (5, 3)), (4, (6, 6))])
def test_loaded_pos_embed_equals_the_hand_written_resampling(tmp_path, old, new):
    """timm's resample_abs_pos_embed (no anti-aliasing) gives the weights the hand-written code gave."""
    enc = _timm_encoder_state(img_size=16 * old)
    torch.save({"model": enc}, tmp_path / "ckpt.pth")
    model = _vit_unet(img_size=(16 * new[0], 16 * new[1]))
    load_encoder_weights(model, tmp_path / "ckpt.pth")
    expected = _hand_written_pos_embed_resample(enc["pos_embed"], new)
    torch.testing.assert_close(model.encoder.pos_embed.detach(), expected, rtol=0, atol=0)


def test_safetensors_files_are_byte_reproducible_and_read_back_by_the_library(tmp_path):
    """The library writes metadata in hash order; ours sorts it, so a re-shipped model is the same file."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    from vasomim.models.checkpoints import tensors_to_safetensors, write_tensors

    g = torch.Generator().manual_seed(0)
    tensors = {"b.weight": torch.randn(3, 5, generator=g).half(), "a.bias": torch.arange(7, dtype=torch.int64),
               "c.scale": torch.randn(2, generator=g)}
    meta = {"zeta": "last", "format": "pt", "naming": "x", "alpha": "first"}
    files = {tensors_to_safetensors(tensors, meta) for _ in range(8)}
    assert len(files) == 1
    (blob,) = files
    n = int.from_bytes(blob[:8], "little")
    assert n % 8 == 0 and list(json.loads(blob[8:8 + n])["__metadata__"]) == sorted(meta)
    path = write_tensors(tensors, tmp_path / "w" / "enc.safetensors", "x")
    back = load_file(str(path))  # the library's own reader is the reference
    assert set(back) == set(tensors)
    for k, v in tensors.items():
        assert back[k].dtype == v.dtype and torch.equal(back[k], v)
    with safe_open(str(path), framework="pt") as fh:
        assert fh.metadata() == {"format": "pt", "naming": "x"}
    assert path.read_bytes() == write_tensors(tensors, tmp_path / "again.safetensors", "x").read_bytes()
    assert [p.name for p in (tmp_path / "w").iterdir()] == ["enc.safetensors"]  # no temporary file left
