"""VasoMIM training objective: L = L_rec + lambda * L_cons (Eqs. 4-5).

- L_rec: MAE per-patch MSE over the masked patches, optionally against per-patch normalised
  targets (norm_pix).
- L_cons: the reconstruction I' and the original I both go through the frozen segmentor S;
  L_cons = BCE-with-logits(S(I'), sigmoid(S(I)).detach()), averaged over all pixels. S is frozen
  (`freeze`) but differentiable, so the gradient of L_cons reaches the MAE through S.

The reconstruction I' is the decoder output for *all* patches (visible ones included), brought
back to pixel space and unpatchified, as the original VasoMIM code does. The MAE and the
segmentor may normalise their inputs differently: both images are first mapped back to [0, 1]
(`to_unit_range`) and then to the segmentor's own convention (`to_segmentor_input`).

Fine-tuning's segmentation loss is here too: `dice_bce_loss` (BCE + soft Dice).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from vasomim.models.mae import patchify, unpatchify
from vasomim.models.unext import to_segmentor_input

NORM_PIX_EPS = 1e-6


def _patch_stats(target_patches: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-patch mean and standard deviation sqrt(var + eps) (unbiased var, as MAE)."""
    mean = target_patches.mean(dim=-1, keepdim=True)
    var = target_patches.var(dim=-1, keepdim=True)
    return mean, (var + NORM_PIX_EPS).sqrt()


def reconstruction_loss(
    pred: torch.Tensor, target_patches: torch.Tensor, mask: torch.Tensor, norm_pix: bool
) -> torch.Tensor:
    """MAE reconstruction loss: per-patch MSE, averaged over the masked patches.

    Args:
        pred: (B, N, D) decoder output.
        target_patches: (B, N, D) patchified input images.
        mask: (B, N), 1 for masked patches, 0 for visible ones.
        norm_pix: compare with each target patch normalised by its own mean and
            sqrt(var + 1e-6).

    Returns:
        scalar loss.
    """
    if norm_pix:
        mean, std = _patch_stats(target_patches)
        target_patches = (target_patches - mean) / std
    per_patch = (pred - target_patches).pow(2).mean(dim=-1)
    return (per_patch * mask).sum() / mask.sum()


def pred_to_image(
    pred: torch.Tensor, imgs: torch.Tensor, patch_size: int, norm_pix: bool
) -> torch.Tensor:
    """Decoder output back to an image in the MAE's input space.

    Args:
        pred: (B, N, P*P*C) decoder output for all patches.
        imgs: (B, C, H, W) the MAE's input images (for the patch grid and, with norm_pix, the
            per-patch mean and variance that un-normalise the prediction).
        patch_size: P.
        norm_pix: the model predicts normalised patches; undo it with each patch's own
            statistics (pred * sqrt(var + 1e-6) + mean).

    Returns:
        (B, C, H, W) reconstruction I'.
    """
    if norm_pix:
        mean, std = _patch_stats(patchify(imgs, patch_size))
        pred = pred * std + mean
    grid = (imgs.shape[-2] // patch_size, imgs.shape[-1] // patch_size)
    return unpatchify(pred, patch_size, grid)


def to_unit_range(
    x: torch.Tensor, mean: float | Sequence[float], std: float | Sequence[float]
) -> torch.Tensor:
    """Undo a per-channel `(x01 - mean) / std` normalisation: returns x * std + mean.

    Args:
        x: (B, C, H, W) normalised images.
        mean: scalar or C values used by the normalisation.
        std: scalar or C values used by the normalisation.

    Returns:
        (B, C, H, W) images on the [0, 1] scale (not clamped, so gradients are kept).
    """
    shape = (1, -1, 1, 1)
    mean_t = torch.as_tensor(mean, dtype=x.dtype, device=x.device).reshape(shape)
    std_t = torch.as_tensor(std, dtype=x.dtype, device=x.device).reshape(shape)
    return x * std_t + mean_t


def freeze(module: nn.Module) -> nn.Module:
    """Put a module in eval mode and stop gradients to its parameters; returns it.

    Keep the frozen module outside the trained model (a later `.train()` on a parent would
    switch its BatchNorm back to training mode).
    """
    module.eval()
    module.requires_grad_(False)
    return module


def segmentor_probs(segmentor: nn.Module, image01: torch.Tensor) -> torch.Tensor:
    """sigmoid(S(I)) without gradient: the soft target of L_cons (and a guidance map).

    Args:
        segmentor: frozen S.
        image01: (B, 1 or 3, H, W) images on the [0, 1] scale.

    Returns:
        (B, 1, H, W) vessel probabilities.
    """
    with torch.no_grad():
        return torch.sigmoid(segmentor(to_segmentor_input(image01)))


def consistency_loss(
    segmentor: nn.Module,
    recon01: torch.Tensor,
    image01: torch.Tensor,
    image_probs: torch.Tensor | None = None,
) -> torch.Tensor:
    """Anatomical consistency loss (Eq. 4).

    Args:
        segmentor: frozen S, taking `to_segmentor_input` images and returning logits.
        recon01: (B, 1 or 3, H, W) reconstruction I' on the [0, 1] scale.
        image01: (B, 1 or 3, H, W) original I on the [0, 1] scale.
        image_probs: sigmoid(S(I)) when the caller already has it (`segmentor_probs`, e.g. for
            segmentor-guided masking); computed from `image01` otherwise.

    Returns:
        scalar BCE-with-logits of S(I') against the soft target sigmoid(S(I)), mean over pixels.
    """
    if image_probs is None:
        image_probs = segmentor_probs(segmentor, image01)
    logits = segmentor(to_segmentor_input(recon01))
    return F.binary_cross_entropy_with_logits(logits.float(), image_probs.detach().float())


def vasomim_loss(
    pred: torch.Tensor,
    imgs: torch.Tensor,
    mask: torch.Tensor,
    patch_size: int,
    *,
    norm_pix: bool,
    segmentor: nn.Module | None = None,
    input_mean: float | Sequence[float] = 0.0,
    input_std: float | Sequence[float] = 1.0,
    cons_weight: float = 1.0,
    image_probs: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """The VasoMIM objective L = L_rec + cons_weight * L_cons (Eq. 5).

    Args:
        pred: (B, N, P*P*C) decoder output for all patches.
        imgs: (B, C, H, W) the MAE's (normalised) input images.
        mask: (B, N), 1 for masked patches.
        patch_size: P.
        norm_pix: the reconstruction target is per-patch normalised.
        segmentor: frozen S; may be None when `cons_weight` is 0 (the MAE baseline), in which
            case S is not run at all.
        input_mean: mean of the MAE's input normalisation (scalar or per channel).
        input_std: std of the MAE's input normalisation (scalar or per channel).
        cons_weight: lambda.
        image_probs: sigmoid(S(I)) if already computed (see `consistency_loss`).

    Returns:
        dict with `loss` (to backpropagate), `rec` and `cons` (scalar tensors; `cons` is 0 when
        the consistency term is off).
    """
    rec = reconstruction_loss(pred, patchify(imgs, patch_size), mask, norm_pix)
    if cons_weight == 0:
        cons = torch.zeros((), dtype=rec.dtype, device=rec.device)
        return {"loss": rec, "rec": rec, "cons": cons}
    if segmentor is None:
        raise ValueError("a segmentor is needed when cons_weight != 0")
    recon01 = to_unit_range(pred_to_image(pred, imgs, patch_size, norm_pix), input_mean, input_std)
    image01 = to_unit_range(imgs, input_mean, input_std)
    cons = consistency_loss(segmentor, recon01, image01, image_probs)
    return {"loss": rec + cons_weight * cons, "rec": rec, "cons": cons}


def dice_bce_loss(logits: torch.Tensor, target: torch.Tensor, bce_weight: float = 1.0,
                  dice_weight: float = 1.0, eps: float = 1.0) -> torch.Tensor:
    """``bce_weight * BCE-with-logits + dice_weight * (1 - soft Dice)``.

    The soft Dice ``(2 Σ p t + eps) / (Σ p + Σ t + eps)`` is computed per image, then averaged;
    ``eps = 1`` keeps an image without vessels from dominating.

    Args:
        logits: ``(B, 1, H, W)`` network output.
        target: ``(B, 1, H, W)`` 0/1 masks.
        bce_weight, dice_weight: Weights of the two terms.
        eps: Smoothing of the soft Dice.
    """
    logits = logits.float()
    bce = F.binary_cross_entropy_with_logits(logits, target)
    prob = torch.sigmoid(logits).flatten(1)
    t = target.flatten(1)
    dice = (2 * (prob * t).sum(1) + eps) / (prob.sum(1) + t.sum(1) + eps)
    return bce_weight * bce + dice_weight * (1 - dice.mean())
