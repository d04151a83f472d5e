"""VasoMIM loss terms against hand computations, and where the gradients go."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from vasomim.losses import (
    consistency_loss,
    freeze,
    pred_to_image,
    reconstruction_loss,
    segmentor_probs,
    to_unit_range,
    vasomim_loss,
)
from vasomim.masking import guided_mask
from vasomim.models.mae import mae_vit, patchify
from vasomim.models.unext import SEGMENTOR_MEAN, SEGMENTOR_STD, UNeXt

P = 2  # patch side of the hand-computed examples: 4x4 images -> 4 patches of 4 pixels
MEAN, STD = 0.5, 0.25  # the MAE's input normalisation in these examples


def _sigmoid(x):
    return 1.0 / (1.0 + math.exp(-x))


def _bce_with_logits(x, t):
    return -(t * math.log(_sigmoid(x)) + (1 - t) * math.log(1 - _sigmoid(x)))


def _hand_patches(img):
    """(H, W) numpy image -> list of patches, row by row, pixels row-major."""
    h, w = img.shape
    return [img[i:i + P, j:j + P].reshape(-1) for i in range(0, h, P) for j in range(0, w, P)]


def _hand_image(patches, h, w):
    img = np.zeros((h, w))
    k = 0
    for i in range(0, h, P):
        for j in range(0, w, P):
            img[i:i + P, j:j + P] = np.asarray(patches[k]).reshape(P, P)
            k += 1
    return img


def _hand_norm(patch):
    return (patch - patch.mean()) / math.sqrt(patch.var(ddof=1) + 1e-6)


class PixelSegmentor(nn.Module):
    """A 1x1 convolution: logits = w . x + b per pixel, easy to follow by hand."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 1, 1)
        with torch.no_grad():
            self.conv.weight.copy_(torch.tensor([0.3, -0.2, 0.5]).view(1, 3, 1, 1))
            self.conv.bias.fill_(-0.1)

    def forward(self, x):
        return self.conv(x)


def _hand_segmentor_logit(pixel01):
    w, b = [0.3, -0.2, 0.5], -0.1
    return sum(w[c] * (pixel01 - SEGMENTOR_MEAN[c]) / SEGMENTOR_STD[c] for c in range(3)) + b


def _example(seed=0):
    gen = torch.Generator().manual_seed(seed)
    imgs = (torch.rand(2, 1, 4, 4, generator=gen) - MEAN) / STD  # normalised MAE input
    pred = torch.randn(2, 4, P * P, generator=gen)
    mask = torch.tensor([[1.0, 0.0, 1.0, 0.0], [0.0, 1.0, 1.0, 1.0]])
    return imgs, pred, mask


def _hand_losses(imgs, pred, mask, norm_pix):
    imgs, pred, mask = imgs.double().numpy(), pred.double().numpy(), mask.numpy()
    sq, count, bce = 0.0, 0, []
    for b in range(2):
        patches = _hand_patches(imgs[b, 0])
        recon_patches = []
        for n in range(4):
            target = _hand_norm(patches[n]) if norm_pix else patches[n]
            if mask[b, n]:
                sq += np.mean((pred[b, n] - target) ** 2)
                count += 1
            if norm_pix:
                std = math.sqrt(patches[n].var(ddof=1) + 1e-6)
                recon_patches.append(pred[b, n] * std + patches[n].mean())
            else:
                recon_patches.append(pred[b, n])
        recon01 = _hand_image(recon_patches, 4, 4) * STD + MEAN
        image01 = imgs[b, 0] * STD + MEAN
        for i in range(4):
            for j in range(4):
                target = _sigmoid(_hand_segmentor_logit(image01[i, j]))
                bce.append(_bce_with_logits(_hand_segmentor_logit(recon01[i, j]), target))
    return sq / count, float(np.mean(bce))


@pytest.mark.parametrize("norm_pix", [False, True])
def test_vasomim_loss_equals_hand_computation(norm_pix):
    imgs, pred, mask = _example()
    rec, cons = _hand_losses(imgs, pred, mask, norm_pix)
    out = vasomim_loss(pred, imgs, mask, P, norm_pix=norm_pix, segmentor=PixelSegmentor(),
                       input_mean=MEAN, input_std=STD, cons_weight=0.7)
    assert out["rec"].item() == pytest.approx(rec, rel=1e-5)
    assert out["cons"].item() == pytest.approx(cons, rel=1e-5)
    assert out["loss"].item() == pytest.approx(rec + 0.7 * cons, rel=1e-5)


def test_reconstruction_loss_counts_only_masked_patches():
    imgs, pred, mask = _example()
    target = patchify(imgs, P)
    base = reconstruction_loss(pred, target, mask, norm_pix=False)
    visible_changed = pred.clone()
    visible_changed[mask == 0] += 10.0
    assert reconstruction_loss(visible_changed, target, mask, norm_pix=False) == base
    masked_changed = pred.clone()
    masked_changed[mask == 1] += 10.0
    assert reconstruction_loss(masked_changed, target, mask, norm_pix=False) > base


def test_pred_to_image_undoes_norm_pix():
    imgs = torch.rand(2, 3, 8, 8)
    target = patchify(imgs, 4)
    mean = target.mean(-1, keepdim=True)
    normalised = (target - mean) / (target.var(-1, keepdim=True) + 1e-6).sqrt()
    torch.testing.assert_close(pred_to_image(normalised, imgs, 4, norm_pix=True), imgs)
    torch.testing.assert_close(pred_to_image(target, imgs, 4, norm_pix=False), imgs)


def test_to_unit_range_per_channel():
    x01 = torch.rand(2, 3, 4, 4)
    mean, std = (0.2, 0.4, 0.6), (0.1, 0.2, 0.3)
    normalised = (x01 - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    torch.testing.assert_close(to_unit_range(normalised, mean, std), x01)


def test_consistency_loss_is_minimal_for_a_perfect_reconstruction():
    image01 = torch.rand(2, 1, 4, 4)
    seg = PixelSegmentor()
    perfect = consistency_loss(seg, image01, image01)
    assert consistency_loss(seg, image01.flip(-1), image01) > perfect


def test_precomputed_segmentor_probabilities_give_the_same_loss():
    imgs, pred, mask = _example()
    seg = PixelSegmentor()
    kw = dict(norm_pix=False, segmentor=seg, input_mean=MEAN, input_std=STD)
    probs = segmentor_probs(seg, to_unit_range(imgs, MEAN, STD))
    assert probs.shape == (2, 1, 4, 4) and not probs.requires_grad
    plain = vasomim_loss(pred, imgs, mask, P, **kw)
    given = vasomim_loss(pred, imgs, mask, P, image_probs=probs, **kw)
    assert given["cons"].item() == pytest.approx(plain["cons"].item(), rel=1e-6)
    other = vasomim_loss(pred, imgs, mask, P, image_probs=1 - probs, **kw)
    assert other["cons"].item() != pytest.approx(plain["cons"].item(), rel=1e-3)


def test_mae_baseline_skips_the_segmentor():
    imgs, pred, mask = _example()
    out = vasomim_loss(pred, imgs, mask, P, norm_pix=False, segmentor=None, cons_weight=0.0)
    assert out["cons"].item() == 0.0 and torch.equal(out["loss"], out["rec"])
    with pytest.raises(ValueError, match="segmentor"):
        vasomim_loss(pred, imgs, mask, P, norm_pix=False, segmentor=None, cons_weight=1.0)


def test_freeze():
    seg = UNeXt().train()
    assert freeze(seg) is seg
    assert not seg.training and not seg.ebn1.training
    assert not any(p.requires_grad for p in seg.parameters())


@pytest.mark.parametrize("norm_pix", [False, True])
def test_gradients_reach_the_mae_through_the_frozen_segmentor(norm_pix):
    torch.manual_seed(0)
    model = mae_vit("tiny", img_size=64, embed_dim=64, depth=2, num_heads=4,
                    decoder_embed_dim=32, decoder_depth=1, decoder_num_heads=4)
    seg = freeze(UNeXt())
    running_mean = seg.ebn1.running_mean.clone()
    imgs = torch.randn(2, 1, 64, 64)
    ids_keep, _, ids_restore, mask = guided_mask(torch.zeros(2, 16), 0.5, 0.0)
    pred = model(imgs, ids_keep, ids_restore)
    out = vasomim_loss(pred, imgs, mask, 16, norm_pix=norm_pix, segmentor=seg,
                       input_mean=0.5, input_std=0.25)
    out["cons"].backward(retain_graph=True)  # the consistency term alone
    for name in ("patch_embed.proj.weight", "blocks.0.attn.qkv.weight", "decoder_pred.weight"):
        grad = model.get_parameter(name).grad
        assert grad is not None and grad.abs().sum() > 0, name
    out["loss"].backward()
    assert all(p.grad is None for p in seg.parameters())
    assert torch.equal(seg.ebn1.running_mean, running_mean)  # BatchNorm statistics untouched
