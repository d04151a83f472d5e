"""MAE with externally supplied masks: shapes, masking semantics, timm naming, init."""

import pytest
import timm
import torch
from timm.models.vision_transformer import VisionTransformer

from vasomim.masking import guided_mask
from vasomim.models.mae import mae_encoder_weights, mae_vit, patchify, unpatchify
from vasomim.models.vit import VIT_SIZES, sincos_pos_embed, vit_dims

TINY = dict(embed_dim=64, depth=2, num_heads=4, decoder_embed_dim=32, decoder_depth=1,
            decoder_num_heads=4)


def _uniform_ids(b, n, gamma, seed=0):
    return guided_mask(torch.zeros(b, n), gamma, 0.0, torch.Generator().manual_seed(seed))


def test_vit_sizes_and_overrides():
    assert VIT_SIZES["base"] == dict(embed_dim=768, depth=12, num_heads=12)
    assert VIT_SIZES["large"] == dict(embed_dim=1024, depth=24, num_heads=16)
    assert vit_dims("tiny", depth=2) == dict(embed_dim=192, depth=2, num_heads=3)
    with pytest.raises(ValueError, match="divisible"):
        vit_dims("tiny", embed_dim=64)  # 64 / 3 heads
    with pytest.raises(ValueError, match="unknown"):
        vit_dims("huge")


def test_sincos_matches_the_mae_formula():
    d, g = 8, 3
    emb = sincos_pos_embed(d, g, cls_token=True)
    assert emb.shape == (1 + g * g, d)
    assert torch.all(emb[0] == 0)
    omega = 1.0 / 10000 ** (torch.arange(2) / 2.0)  # d/4 frequencies per coordinate
    patch = 1 * g + 2  # row 1, column 2
    col, row = 2.0, 1.0
    expected = torch.cat([torch.sin(col * omega), torch.cos(col * omega),
                          torch.sin(row * omega), torch.cos(row * omega)])
    torch.testing.assert_close(emb[1 + patch], expected)
    assert sincos_pos_embed(8, (2, 5), cls_token=False).shape == (10, 8)


@pytest.mark.parametrize("in_chans,img_size", [(1, 64), (3, (64, 32))])
def test_patchify_roundtrip(in_chans, img_size):
    h, w = (img_size, img_size) if isinstance(img_size, int) else img_size
    imgs = torch.randn(2, in_chans, h, w)
    patches = patchify(imgs, 16)
    assert patches.shape == (2, (h // 16) * (w // 16), 16 * 16 * in_chans)
    torch.testing.assert_close(patches[0, 1, :16 * in_chans].reshape(16, in_chans).T,
                               imgs[0, :, 0, 16:32])  # patch 1 = top row, second column
    assert torch.equal(unpatchify(patches, 16, (h // 16, w // 16)), imgs)


@pytest.mark.parametrize("in_chans,img_size", [(1, 64), (3, (64, 32))])
def test_forward_shapes(in_chans, img_size):
    model = mae_vit("tiny", img_size=img_size, in_chans=in_chans, **TINY)
    h, w = (img_size, img_size) if isinstance(img_size, int) else img_size
    n = (h // 16) * (w // 16)
    imgs = torch.randn(2, in_chans, h, w)
    ids_keep, _, ids_restore, _ = _uniform_ids(2, n, 0.5)
    latent = model.forward_encoder(imgs, ids_keep)
    assert latent.shape == (2, 1 + n // 2, 64)
    pred = model(imgs, ids_keep, ids_restore)
    assert pred.shape == (2, n, 16 * 16 * in_chans)
    assert model.unpatchify(pred).shape == imgs.shape


def test_encoder_sees_only_the_kept_patches():
    torch.manual_seed(0)
    model = mae_vit("tiny", img_size=64, **TINY).eval()
    n = model.num_patches
    ids_keep, ids_masked, ids_restore, _ = _uniform_ids(1, n, 0.5)
    imgs = torch.randn(1, 1, 64, 64)
    changed = imgs.clone()
    p = patchify(changed, 16)
    p[0, ids_masked[0]] = 100.0  # scribble over the masked patches only
    changed = unpatchify(p, 16, (4, 4))
    with torch.no_grad():
        torch.testing.assert_close(model(imgs, ids_keep, ids_restore),
                                   model(changed, ids_keep, ids_restore))
        p2 = patchify(imgs, 16)
        p2[0, ids_keep[0, 0]] += 1.0  # a kept patch does matter
        other = model(unpatchify(p2, 16, (4, 4)), ids_keep, ids_restore)
        assert not torch.allclose(other, model(imgs, ids_keep, ids_restore))


def test_mask_tokens_go_back_to_their_positions():
    """With the decoder reduced to identity-like maps, each output row is its input token."""
    model = mae_vit("tiny", img_size=64, **TINY).eval()
    n = model.num_patches
    ids_keep, ids_masked, ids_restore, _ = _uniform_ids(1, n, 0.5, seed=3)
    d = model.mask_token.shape[-1]
    latent = torch.randn(1, 1 + ids_keep.shape[1], 64)
    with torch.no_grad():
        model.decoder_pos_embed.zero_()
        x = model.decoder_embed(latent)
        model.decoder_blocks = torch.nn.ModuleList()
        model.decoder_norm = torch.nn.Identity()
        model.decoder_pred = torch.nn.Identity()
        out = model.forward_decoder(latent, ids_restore)
    assert out.shape == (1, n, d)
    torch.testing.assert_close(out[0, ids_keep[0]], x[0, 1:])
    for j in ids_masked[0]:
        torch.testing.assert_close(out[0, j], model.mask_token[0, 0])


def test_initialisation_follows_mae():
    model = mae_vit("tiny", img_size=64, **TINY)
    assert not model.pos_embed.requires_grad and not model.decoder_pos_embed.requires_grad
    torch.testing.assert_close(model.pos_embed[0], sincos_pos_embed(64, 4))
    torch.testing.assert_close(model.decoder_pos_embed[0], sincos_pos_embed(32, 4))
    w = model.blocks[0].mlp.fc1.weight
    bound = (6.0 / (w.shape[0] + w.shape[1])) ** 0.5  # xavier-uniform
    assert w.abs().max() <= bound and w.abs().max() > 0.9 * bound
    assert torch.all(model.blocks[0].mlp.fc1.bias == 0)
    assert 0.005 < model.cls_token.std() < 0.04 and 0.005 < model.mask_token.std() < 0.04


def test_mae_encoder_weights_load_into_timm_vit():
    model = mae_vit("tiny", img_size=64, in_chans=1, **TINY)
    enc = mae_encoder_weights(model)
    assert not any(k.startswith(("decoder", "mask_token")) for k in enc)
    vit = VisionTransformer(img_size=64, patch_size=16, in_chans=1, embed_dim=64, depth=2,
                            num_heads=4, num_classes=0)
    vit.load_state_dict(enc, strict=True)
    # same tokens: timm's features equal our encoder's output with every patch kept
    imgs = torch.randn(2, 1, 64, 64)
    keep_all = torch.arange(16).expand(2, 16)
    model.eval()
    vit.eval()
    with torch.no_grad():
        ours = model.forward_encoder(imgs, keep_all)
        torch.testing.assert_close(vit.forward_features(imgs), ours)


def test_encoder_names_match_timm_registry_model():
    model = mae_vit("base", img_size=224, in_chans=3, decoder_depth=1)
    vit = timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=0)
    missing, unexpected = vit.load_state_dict(mae_encoder_weights(model), strict=True)
    assert not missing and not unexpected
