"""vasomim.inference: window placement, blending against brute force, the reading rule for arrays,
load_model / segment, and the shipped-name hook."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import vasomim
from vasomim.data.io import ImageReadError, write_png_atomic
from vasomim.data.synthetic import synthesize
from vasomim.engines.finetune import FinetuneConfig, build_network, network_config
from vasomim.inference import (MODEL_REGISTRY, as_gray, input_convention, predict_image, register_model,
                               sliding_window, training_layout, window_starts)

TINY = dict(embed_dim=64, depth=2, num_heads=2, decoder_channels=(32, 16, 16, 8, 8), img_size=64)


@pytest.mark.parametrize("length,window,overlap", [(64, 64, 0.5), (65, 64, 0.5), (300, 64, 0.5),
                                                   (130, 48, 0.25), (97, 16, 0.0)])
def test_window_starts_cover_with_the_overlap(length, window, overlap):
    starts = window_starts(length, window, overlap)
    assert starts[0] == 0 and starts[-1] == length - window
    assert all(b > a for a, b in zip(starts, starts[1:]))
    assert all(a + window - b >= overlap * window - 1 for a, b in zip(starts, starts[1:]))


class WindowMean(nn.Module):
    """Every pixel of a window gets the logit of the window's mean: shows which windows blend."""

    def forward(self, x):
        return torch.logit(x.mean(dim=(1, 2, 3), keepdim=True).expand(-1, 1, *x.shape[-2:]))


def test_uniform_blend_equals_brute_force():
    """Each pixel is the mean over the windows that hold it; windows are on the (reflect) padded image."""
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.uniform(0.1, 0.9, (2, 1, 40, 23)).astype(np.float32))
    got = sliding_window(WindowMean(), x, (16, 32), overlap=0.5, blend="uniform", batch_size=3)
    xp = np.pad(x.numpy(), ((0, 0), (0, 0), (0, 0), (4, 5)), mode="reflect")  # 23 -> 32 evenly
    want = np.zeros((2, 40, 32))
    count = np.zeros((40, 32))
    for y in window_starts(40, 16, 0.5):
        for z in window_starts(32, 32, 0.5):
            want[:, y:y + 16, z:z + 32] += xp[:, 0, y:y + 16, z:z + 32].mean(axis=(1, 2))[:, None, None]
            count[y:y + 16, z:z + 32] += 1
    np.testing.assert_allclose(got[:, 0].numpy(), (want / count)[:, :, 4:27], atol=1e-6)


@pytest.mark.parametrize("shape", [(40, 23), (64, 64), (100, 70), (17, 150)])
@pytest.mark.parametrize("blend", ["gaussian", "uniform"])
def test_a_pointwise_model_gives_the_same_map_through_any_windows(shape, blend):
    torch.manual_seed(0)
    model = nn.Conv2d(1, 1, 1)
    x = torch.randn(3, 1, *shape)
    whole = torch.sigmoid(model(x)).detach()
    got = sliding_window(model, x, 32, overlap=0.5, blend=blend, batch_size=4)
    torch.testing.assert_close(got, whole, atol=1e-6, rtol=0)
    one_pass = sliding_window(model, x, None, grid=16)
    torch.testing.assert_close(one_pass, whole, atol=1e-6, rtol=0)


def test_arrays_follow_the_reading_rule():
    u8 = np.array([[0, 255], [51, 102]], np.uint8)
    np.testing.assert_allclose(as_gray(u8), u8 / 255.0, atol=1e-7)
    u16 = np.array([[0, 65535], [4095, 1000]], np.uint16)
    np.testing.assert_allclose(as_gray(u16), u16 / 65535.0, atol=1e-7)
    np.testing.assert_array_equal(as_gray(np.eye(3, dtype=bool)), np.eye(3, dtype=np.float32))
    f64 = np.linspace(0, 1, 12).reshape(3, 4)
    assert as_gray(f64).dtype == np.float32
    with pytest.raises(ImageReadError, match="<array>.*outside"):
        as_gray(f64 * 2)
    with pytest.raises(ImageReadError, match="2-D"):
        as_gray(np.zeros((2, 3, 4, 5)))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    cfg = FinetuneConfig(data="unused", **TINY)
    torch.manual_seed(0)
    model = build_network(network_config(cfg))
    with torch.no_grad():
        model.head.bias.fill_(0.05)
    path = tmp_path_factory.mktemp("ckpt") / "best.pth"
    torch.save({"model": model.state_dict(),
                "config": {"network": network_config(cfg), "input": input_convention(64, 1, 64 / 90)}}, path)
    return path


def test_segment_keeps_size_and_tta_is_the_flip_average(tmp_path, checkpoint):
    model = vasomim.load_model(checkpoint, device="cpu")
    assert not model.training and model.input_convention["scale"] == pytest.approx(64 / 90)
    image = synthesize(3, size=90)[0][:, :70].astype(np.uint16) * 257  # 16-bit, 90 x 70
    prob, mask = vasomim.segment(model, image)
    assert prob.shape == mask.shape == (90, 70) and prob.dtype == np.float32 and mask.dtype == bool
    assert 0 <= prob.min() and prob.max() <= 1 and np.array_equal(mask, prob >= 0.5)
    flipped, _ = vasomim.segment(model, image[:, ::-1])
    tta, _ = vasomim.segment(model, image, tta=True)
    np.testing.assert_allclose(tta, 0.5 * (prob + flipped[:, ::-1]), atol=1e-5)
    write_png_atomic(tmp_path / "x.png", image)
    from_file, _ = vasomim.segment(model, tmp_path / "x.png")
    np.testing.assert_allclose(from_file, prob, atol=1e-6)


def test_unknown_names_and_bad_files_are_one_line(tmp_path, checkpoint):
    with pytest.raises(FileNotFoundError, match="no-such-model: .*no shipped model of that name .shipped: "):
        vasomim.load_model("no-such-model")
    bad = tmp_path / "x.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match=r"x\.pth: not a checkpoint"):
        vasomim.load_model(bad)
    register_model("tiny-test", lambda: checkpoint)
    try:
        assert vasomim.load_model("tiny-test", device="cpu").input_convention["size"] == 64
    finally:
        MODEL_REGISTRY.pop("tiny-test")
    with pytest.raises(ValueError, match="input_convention"):
        vasomim.segment(nn.Conv2d(1, 1, 1), np.zeros((8, 8)))


def test_resize_mode_is_the_square_squash(checkpoint):
    from vasomim.data.transforms import TransformConfig, build_transform
    from vasomim.metrics import resize_to

    model = vasomim.load_model(checkpoint, device="cpu")
    image = synthesize(5, size=100)[0][:80].astype(np.float32) / 255
    x, _ = build_transform(TransformConfig(size=64, channels=1), train=False)(image)
    with torch.no_grad():
        want = resize_to(torch.sigmoid(model(x[None]))[0, 0].numpy(), image.shape)
    got = predict_image(model, image, model.input_convention, mode="resize")
    np.testing.assert_allclose(got, want, atol=1e-5)


@pytest.mark.parametrize("capability, device, expected", [
    ("AVX512", "cpu", torch.channels_last), ("AVX2", "cpu", torch.contiguous_format),
    ("DEFAULT", "cpu", torch.contiguous_format), ("AVX2", "cuda", torch.channels_last)])
def test_training_layout_follows_the_device(monkeypatch, capability, device, expected):
    """Channels-last where oneDNN (AVX512) or cuDNN runs it faster, the default layout elsewhere."""
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
    assert training_layout(torch.device(device)) is expected


def test_a_forced_layout_overrides_the_rule(monkeypatch):
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")
    cpu = torch.device("cpu")
    assert training_layout(cpu, "channels_last") is torch.channels_last
    assert training_layout(cpu, "contiguous") is torch.contiguous_format
    assert training_layout(torch.device("cuda"), "contiguous") is torch.contiguous_format
    assert training_layout(cpu, "auto") is torch.contiguous_format
    with pytest.raises(ValueError, match="layout 'nhwc': not one of auto, channels_last, contiguous"):
        training_layout(cpu, "nhwc")


@pytest.mark.parametrize("arch", ["unet", "vit_unet"])
def test_layouts_agree_on_a_training_step(arch):
    """Either layout trains the same network: logits and gradients equal to float32 rounding."""
    cfg = FinetuneConfig(data="unused", arch=arch, size="tiny", img_size=64, depth=2, embed_dim=64, num_heads=2)
    x = torch.randn(2, 1, 64, 64, generator=torch.Generator().manual_seed(0))
    out = {}
    for layout in (torch.channels_last, torch.contiguous_format):
        torch.manual_seed(0)
        model = build_network(network_config(cfg)).to(memory_format=layout)
        logits = model(x.contiguous(memory_format=layout))
        logits.square().mean().backward()
        out[layout] = (logits.detach(), torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
    (l_cl, g_cl), (l_c, g_c) = out[torch.channels_last], out[torch.contiguous_format]
    torch.testing.assert_close(l_cl, l_c, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(g_cl, g_c, rtol=1e-3, atol=1e-5)
