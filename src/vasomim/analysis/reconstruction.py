"""Reconstructions, and what the anatomical consistency loss sees.

One row per image:

    original I | masked input | reconstruction (visible patches pasted back) | decoder output I'
    | S(I) | S(I')

The masked input shows the masked patches in a flat blue-gray. "Reconstruction" pastes the
visible patches of I over the decoder output, as the MAE paper shows its results; "decoder output
I'" is the prediction for *every* patch, which is what the consistency loss feeds to the frozen
segmentor S (:mod:`vasomim.losses`). S(I) and S(I') are the segmentor's vessel probabilities; the
consistency loss is the BCE of S(I') against S(I).

The MAE's input normalisation ``(x01 - mean) / std`` (``mean``/``std`` arguments, the data
pipeline's gray defaults unless given) and ``norm_pix`` (the decoder predicts per-patch
normalised pixels, un-normalised here with the target's own per-patch statistics, as
:func:`vasomim.losses.pred_to_image` does) are undone before display.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from vasomim.analysis.report import pyplot, save_figure, write_json

MASK_GRAY = (0.55, 0.58, 0.68)  # colour of masked patches in the "masked input" panel
DEFAULT_MEAN = (0.449,)  # vasomim.data.transforms.GRAY_MEAN, the one-channel default
DEFAULT_STD = (0.226,)  # vasomim.data.transforms.GRAY_STD


def reconstruct(
    model,
    images01,
    anatomy_masks,
    mask_ratio: float,
    beta: float,
    seed: int = 0,
    mean: float | Sequence[float] = DEFAULT_MEAN,
    std: float | Sequence[float] = DEFAULT_STD,
    norm_pix: bool | None = None,
) -> dict[str, Any]:
    """Mask images with the anatomy-guided sampler and reconstruct them with an MAE.

    Args:
        model: :class:`~vasomim.models.mae.MaskedAutoencoderViT` (run in eval mode, no gradients).
        images01: (B, 1, H, W) gray images in [0, 1], H and W the model's input size.
        anatomy_masks: (B, 1, H, W) vessel masks (guide the masking; all zeros = random masking).
        mask_ratio: gamma.
        beta: guided share of the masked patches.
        seed: seed of the sampler.
        mean: the MAE's input normalisation mean (scalar or per channel).
        std: the MAE's input normalisation std.
        norm_pix: the model predicts per-patch normalised pixels; None reads ``model.norm_pix_loss``.

    Returns:
        dict of (B, 1, H, W) tensors on the [0, 1] scale: ``image``, ``decoded`` (I', all
        patches), ``pasted`` (visible patches of I over I'), ``pixel_mask`` (1 on masked
        pixels); and ``mask`` (B, N) and ``f`` (B, N), the patch mask and patch distribution.
    """
    import torch

    from vasomim.losses import pred_to_image, to_unit_range
    from vasomim.masking import guided_mask, patch_distribution

    norm_pix = model.norm_pix_loss if norm_pix is None else norm_pix
    p = model.patch_size
    images01 = images01.float()
    x01 = images01.expand(-1, model.in_chans, -1, -1)
    shape = (1, -1, 1, 1)
    x = (x01 - torch.as_tensor(mean, dtype=torch.float32).reshape(shape)) / torch.as_tensor(std, dtype=torch.float32).reshape(shape)
    f = patch_distribution(anatomy_masks, p)
    gen = torch.Generator().manual_seed(int(seed))
    ids_keep, _, ids_restore, mask = guided_mask(f, mask_ratio, beta, gen)
    was_training = model.training
    model.eval()
    with torch.no_grad():
        pred = model(x, ids_keep, ids_restore)
        decoded = to_unit_range(pred_to_image(pred, x, p, norm_pix), mean, std).mean(1, keepdim=True)
    model.train(was_training)
    gh, gw = images01.shape[-2] // p, images01.shape[-1] // p
    pixel_mask = mask.reshape(-1, 1, gh, gw).repeat_interleave(p, 2).repeat_interleave(p, 3)
    pasted = pixel_mask * decoded + (1 - pixel_mask) * images01
    return {"image": images01, "decoded": decoded, "pasted": pasted, "pixel_mask": pixel_mask, "mask": mask, "f": f}


def segmentor_logits(segmentor, images01):
    """Segmentor logits on [0, 1]-scale gray images (not clamped, as in the loss): (B, 1, H, W) -> (B, 1, H, W)."""
    import torch

    from vasomim.models.unext import to_segmentor_input

    with torch.no_grad():
        return segmentor(to_segmentor_input(images01)).float()


def _masked_input_rgb(image: np.ndarray, pixel_mask: np.ndarray) -> np.ndarray:
    rgb = np.repeat(np.clip(image, 0, 1)[..., None], 3, axis=2)
    rgb[pixel_mask > 0] = MASK_GRAY
    return rgb


def reconstruction_panel(
    model,
    segmentor,
    images01,
    anatomy_masks,
    mask_ratio: float,
    beta: float,
    seed: int,
    out_png: str | os.PathLike,
    mean: float | Sequence[float] = DEFAULT_MEAN,
    std: float | Sequence[float] = DEFAULT_STD,
    norm_pix: bool | None = None,
    image_ids: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Figure of reconstructions and of the segmentor on them, with the per-image numbers.

    Args:
        model: the MAE.
        segmentor: frozen segmentor S (e.g. UNeXt-S) taking ``to_segmentor_input`` images and
            returning logits; None leaves out the two S columns and the consistency numbers.
        images01: (B, 1, H, W) gray images in [0, 1].
        anatomy_masks: (B, 1, H, W) vessel masks guiding the masking.
        mask_ratio: gamma.
        beta: guided share of the masked patches.
        seed: sampler seed.
        out_png: figure path; the numbers go beside it as ``.json``.
        mean: the MAE's input normalisation mean.
        std: the MAE's input normalisation std.
        norm_pix: see :func:`reconstruct`.
        image_ids: row labels (default ``image 0``, ``image 1``, ...).

    Returns:
        per image (lists, in order): ``masked_mse`` (MSE on the masked pixels, [0, 1] scale),
        ``masked_psnr`` (dB), ``vessel_share_masked`` (vessel-containing patches among the masked);
        with a segmentor also ``consistency_bce`` (BCE of S(I') against S(I), the loss term) and
        ``consistency_dice`` (Dice of S(I') > 0.5 vs S(I) > 0.5); and the means of each under
        ``mean``.
    """
    import torch
    import torch.nn.functional as F

    from vasomim.masking import masked_vessel_share

    r = reconstruct(model, images01, anatomy_masks, mask_ratio, beta, seed, mean, std, norm_pix)
    b = r["image"].shape[0]
    ids = list(image_ids) if image_ids is not None else [f"image {i}" for i in range(b)]
    err = (r["decoded"] - r["image"]).pow(2) * r["pixel_mask"]
    mse = err.sum((1, 2, 3)) / r["pixel_mask"].sum((1, 2, 3)).clamp_min(1)
    numbers: dict[str, Any] = {
        "image_ids": ids,
        "settings": {"mask_ratio": mask_ratio, "beta": beta, "seed": seed, "mean": mean, "std": std,
                     "norm_pix": bool(model.norm_pix_loss if norm_pix is None else norm_pix)},
        "masked_mse": mse.tolist(),
        "masked_psnr": (10 * torch.log10(1 / mse.clamp_min(1e-12))).tolist(),
        "vessel_share_masked": masked_vessel_share(r["f"], r["mask"]).tolist(),
    }
    columns = [("original I", r["image"], "gray"), ("masked input", None, None),
               ("reconstruction + visible", r["pasted"], "gray"), ("decoder output I'", r["decoded"], "gray")]
    if segmentor is not None:
        logit_rec = segmentor_logits(segmentor, r["decoded"])
        s_img, s_rec = torch.sigmoid(segmentor_logits(segmentor, r["image"])), torch.sigmoid(logit_rec)
        bce = F.binary_cross_entropy_with_logits(logit_rec, s_img, reduction="none").mean((1, 2, 3))
        hard_i, hard_r = s_img > 0.5, s_rec > 0.5
        inter = (hard_i & hard_r).sum((1, 2, 3)).float()
        total = (hard_i.sum((1, 2, 3)) + hard_r.sum((1, 2, 3))).float()
        numbers["consistency_bce"] = bce.tolist()
        numbers["consistency_dice"] = torch.where(total > 0, 2 * inter / total.clamp_min(1), 1.0).tolist()
        columns += [("S(I)", s_img, "magma"), ("S(I')", s_rec, "magma")]
    keys = [k for k in ("masked_mse", "masked_psnr", "vessel_share_masked", "consistency_bce", "consistency_dice") if k in numbers]
    numbers["mean"] = {k: float(np.mean(numbers[k])) for k in keys}

    plt = pyplot()
    fig, axes = plt.subplots(b, len(columns), figsize=(2.3 * len(columns), 2.4 * b), squeeze=False, constrained_layout=True)
    for i in range(b):
        for j, (title, tensor, cmap) in enumerate(columns):
            ax = axes[i][j]
            if tensor is None:
                ax.imshow(_masked_input_rgb(r["image"][i, 0].numpy(), r["pixel_mask"][i, 0].numpy()))
            else:
                ax.imshow(tensor[i, 0].clamp(0, 1).numpy(), cmap=cmap, vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(title, fontsize=9)
        axes[i][0].set_ylabel(f"{ids[i]}\nPSNR {numbers['masked_psnr'][i]:.1f} dB", fontsize=8)
    save_figure(fig, out_png)
    write_json(Path(out_png).with_suffix(".json"), numbers)
    return numbers
