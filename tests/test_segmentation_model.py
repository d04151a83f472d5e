"""Forward/backward tests for the segmentation networks and the layer-wise lr-decay groups."""

from __future__ import annotations

import pytest
import torch

from vasomim.models.segmentation import (
    ViTUNet,
    build_segmentation_model,
    default_taps,
    param_groups_lrd,
)
from vasomim.models.unet import UNet

TINY = dict(img_size=64, embed_dim=64, depth=2, num_heads=2)


def _vit(**kw) -> ViTUNet:
    torch.manual_seed(0)
    return ViTUNet(**{**TINY, **kw})


@pytest.mark.parametrize("in_chans", [1, 3])
@pytest.mark.parametrize("hw", [(64, 64), (96, 96), (64, 96)])
def test_vit_unet_output_shape(in_chans, hw):
    model = _vit(in_chans=in_chans).eval()
    with torch.no_grad():
        out = model(torch.randn(2, in_chans, *hw))
    assert out.shape == (2, 1, *hw)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("stem_levels", [0, 1, 2, 3])
def test_stem_levels(stem_levels):
    model = _vit(stem_levels=stem_levels)
    assert len(model.stem) == stem_levels
    assert model(torch.randn(1, 1, 64, 64)).shape == (1, 1, 64, 64)


@pytest.mark.parametrize("stem_levels", [0, 1])
def test_without_a_stem_the_image_reaches_the_decoder_only_through_the_encoder(stem_levels):
    """Silence the patch embedding: with no stem the output no longer depends on the image."""
    model = _vit(stem_levels=stem_levels).eval()
    with torch.no_grad():
        model.encoder.patch_embed.proj.weight.zero_()
        a, b = model(torch.randn(1, 1, 64, 64)), model(torch.randn(1, 1, 64, 64))
    assert torch.equal(a, b) == (stem_levels == 0)


def test_gradients_reach_every_parameter():
    model = _vit()
    model(torch.randn(2, 1, 64, 64)).square().mean().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name
    assert {"encoder.patch_embed.proj.weight", "encoder.cls_token", "encoder.pos_embed",
            "encoder.norm.weight"} <= set(model.encoder_param_names())


def test_blocks_after_the_last_tap_are_not_run():
    model = _vit(taps=(1, 1, 1, 1))
    model(torch.randn(1, 1, 64, 64)).mean().backward()
    assert model.encoder.blocks[1].mlp.fc1.weight.grad is None
    assert model.encoder.blocks[0].mlp.fc1.weight.grad is not None


def test_taps_are_the_outputs_of_the_named_blocks():
    model = _vit(taps=(1, 2, 2, 2)).eval()
    seen = {}
    for i, block in enumerate(model.encoder.blocks):
        block.register_forward_hook(lambda mod, inp, out, i=i: seen.__setitem__(i + 1, out))
    with torch.no_grad():
        z2, z4, z8, _ = model.encode(torch.randn(2, 1, 64, 96))
    for z, block in [(z2, 1), (z4, 2), (z8, 2)]:
        assert z.shape == (2, 64, 4, 6)
        torch.testing.assert_close(z.flatten(2).transpose(1, 2), seen[block][:, 1:])


def test_deepest_tap_is_the_vit_output():
    model = _vit().eval()
    x = torch.randn(2, 1, 64, 64)
    with torch.no_grad():
        deepest = model.encode(x)[-1]
        tokens = model.encoder.forward_features(x)[:, 1:]  # drop the class token
    assert deepest.shape == (2, 64, 4, 4)
    torch.testing.assert_close(deepest.flatten(2).transpose(1, 2), tokens)


def test_default_taps():
    assert default_taps(12) == (3, 6, 9, 12)
    assert default_taps(24) == (6, 12, 18, 24)
    assert default_taps(2) == (1, 1, 2, 2)
    assert ViTUNet(size="tiny", img_size=32).taps == (3, 6, 9, 12)


def test_sizes():
    model = ViTUNet(size="tiny", img_size=32)
    assert (model.embed_dim, model.depth, model.encoder.blocks[0].attn.num_heads) == (192, 12, 3)
    with pytest.raises(ValueError, match="unknown ViT size"):
        ViTUNet(size="huge")


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(taps=(1, 2)), "taps"),
        (dict(taps=(2, 1, 2, 2)), "taps"),
        (dict(taps=(1, 1, 2, 3)), "taps"),
        (dict(taps=(0, 1, 2, 2)), "taps"),
        (dict(stem_levels=4), "stem_levels"),
        (dict(img_size=60), "divisible"),
        (dict(decoder_channels=(8, 8, 8)), "decoder_channels"),
    ],
)
def test_invalid_configuration(kw, match):
    with pytest.raises(ValueError, match=match):
        _vit(**kw)


def test_input_not_divisible_by_16():
    with pytest.raises(ValueError, match="not divisible"):
        _vit()(torch.randn(1, 1, 64, 72))


# --------------------------------------------------------------------------- lr decay groups


def test_param_groups_lrd():
    model = _vit()
    model.decoder_frozen = torch.nn.Parameter(torch.zeros(3), requires_grad=False)
    groups = param_groups_lrd(model, base_lr=1.0, weight_decay=0.05, layer_decay=0.5)
    seen = [id(p) for g in groups for p in g["params"]]
    trainable = [id(p) for p in model.parameters() if p.requires_grad]
    assert sorted(seen) == sorted(trainable)  # each trainable parameter exactly once

    def group_of(name):
        param = dict(model.named_parameters())[name]
        return next(g for g in groups if any(p is param for p in g["params"]))

    # depth 2 -> num_layers 3: patch embed/tokens layer 0 (0.5^3), block i layer i+1 (0.5^(2-i))
    assert group_of("encoder.patch_embed.proj.weight")["lr"] == pytest.approx(0.125)
    assert group_of("encoder.blocks.0.attn.qkv.weight")["lr"] == pytest.approx(0.25)
    assert group_of("encoder.blocks.1.attn.qkv.weight")["lr"] == pytest.approx(0.5)
    assert group_of("encoder.norm.weight")["lr"] == pytest.approx(1.0)
    assert group_of("head.weight")["lr"] == pytest.approx(1.0)
    assert group_of("encoder.blocks.1.attn.qkv.weight")["lr_scale"] == pytest.approx(0.5)
    for name, wd in [("encoder.cls_token", 0.0), ("encoder.pos_embed", 0.0),
                     ("encoder.blocks.0.norm1.weight", 0.0), ("encoder.blocks.0.mlp.fc1.bias", 0.0),
                     ("bottleneck.1.weight", 0.0), ("encoder.blocks.0.mlp.fc1.weight", 0.05),
                     ("head.weight", 0.05)]:
        assert group_of(name)["weight_decay"] == wd, name


def test_param_groups_for_cnn_unet_without_decay_have_full_lr():
    model = UNet()
    groups = param_groups_lrd(model, base_lr=1e-3, weight_decay=0.05, layer_decay=1.0)
    assert {g["lr"] for g in groups} == {1e-3}
    assert {g["weight_decay"] for g in groups} == {0.0, 0.05}
    assert sorted(id(p) for g in groups for p in g["params"]) == sorted(id(p) for p in model.parameters())


def test_param_groups_for_cnn_unet_decay_over_the_encoder_blocks():
    model = UNet(base_channels=8, levels=3)  # encoder blocks down.0 .. down.3 -> num_layers 4
    groups = param_groups_lrd(model, base_lr=1.0, weight_decay=0.05, layer_decay=0.5)
    seen = sorted(id(p) for g in groups for p in g["params"])
    assert seen == sorted(id(p) for p in model.parameters())  # each parameter exactly once

    def lr_of(name):
        param = dict(model.named_parameters())[name]
        return next(g["lr"] for g in groups if any(p is param for p in g["params"]))

    # by hand: down.i gets 0.5 ** (4 - i); the decoder and head the full lr
    assert lr_of("down.0.0.weight") == pytest.approx(0.0625)
    assert lr_of("down.1.0.weight") == pytest.approx(0.125)
    assert lr_of("down.2.0.weight") == pytest.approx(0.25)
    assert lr_of("down.3.0.weight") == pytest.approx(0.5)
    assert lr_of("down.3.1.bias") == pytest.approx(0.5)
    assert lr_of("up.0.up.weight") == pytest.approx(1.0)
    assert lr_of("head.weight") == pytest.approx(1.0)
    decay = {name: next(g["weight_decay"] for g in groups if any(p is q for p in g["params"]))
             for name, q in model.named_parameters()}
    assert decay["down.0.0.weight"] == 0.05 and decay["down.0.1.bias"] == 0.0


# --------------------------------------------------------------------------- CNN U-Net


@pytest.mark.parametrize("up", ["transpose", "bilinear"])
@pytest.mark.parametrize("in_chans", [1, 3])
def test_unet_shapes_and_gradients(up, in_chans):
    torch.manual_seed(0)
    model = UNet(in_chans=in_chans, base_channels=8, levels=3, up=up, norm="group")
    out = model(torch.randn(2, in_chans, 64, 96))
    assert out.shape == (2, 1, 64, 96)
    out.mean().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_unet_defaults_and_divisibility():
    model = UNet()
    assert model.levels == 4 and model.down[0][0].out_channels == 16
    assert model.down[-1][0].out_channels == 256  # 16 * 2**4 at 1/16
    with pytest.raises(ValueError, match="divisible by 16"):
        model(torch.randn(1, 1, 40, 40))


def test_build_segmentation_model():
    vit = build_segmentation_model("vit_unet", size="tiny", img_size=64, in_chans=3,
                                   embed_dim=64, depth=2, num_heads=2)
    assert isinstance(vit, ViTUNet) and vit.encoder.patch_embed.proj.in_channels == 3
    unet = build_segmentation_model("unet", in_chans=1, base_channels=8, levels=2)
    assert isinstance(unet, UNet) and unet.levels == 2
    with pytest.raises(ValueError, match="unknown segmentation arch"):
        build_segmentation_model("swin")
    with pytest.raises(ValueError, match="base_channels"):
        build_segmentation_model("unet", size="base")
