"""Anatomy-guided masking (VasoMIM, Eqs. 2-3), vectorised over the batch.

Counting convention, for N patches, mask ratio gamma and guidance share beta:

- M = round(gamma * N) patches are masked and K = N - M stay visible (round: nearest integer,
  halves up); the same M for every image of the batch;
- n_g = round(beta * M) of the masked patches are drawn from the patch distribution f without
  replacement, the other M - n_g uniformly from the patches left.

Sampling without replacement proportionally to f (successive sampling: draw one patch with
probability f_i, remove it, renormalise, repeat) is done for the whole batch at once with the
Gumbel-top-k trick: the n_g patches with the largest log f_i + G_i, G_i i.i.d. Gumbel(0, 1), are
such a draw (Vieira 2014; Kool et al. 2019). Patches with f_i = 0 get -inf and are never drawn
by guidance; when an image has fewer than n_g patches with f_i > 0, all of them are masked and
the remainder is filled uniformly, so an image without vessels gets plain random masking.
"""

from __future__ import annotations

import math

import numpy as np
import torch


def _round_half_up(x: float) -> int:
    return int(math.floor(x + 0.5))


def patch_distribution(masks: torch.Tensor, patch: int) -> torch.Tensor:
    """Share of the image's vessel pixels that falls in each patch (Eq. 2).

    Args:
        masks: anatomy masks, (B, 1, H, W) or (B, H, W), bool or float. Float values are used as
            non-negative weights (a soft vesselness or probability map is allowed); a binary
            mask gives Eq. 2 exactly. H and W must be divisible by `patch`.
        patch: patch side P.

    Returns:
        f: float32 (B, N), patches numbered row by row as in `patchify`. Each row sums to 1, or
        is all zeros for an image without vessel pixels.
    """
    if masks.dim() == 4:
        if masks.shape[1] != 1:
            raise ValueError(f"masks must have one channel, got shape {tuple(masks.shape)}")
        masks = masks[:, 0]
    if masks.dim() != 3:
        raise ValueError(f"masks must be (B, 1, H, W) or (B, H, W), got {tuple(masks.shape)}")
    b, h, w = masks.shape
    if h % patch or w % patch:
        raise ValueError(f"mask size {h}x{w} is not divisible by the patch size {patch}")
    m = masks.to(torch.float32)
    counts = m.reshape(b, h // patch, patch, w // patch, patch).sum(dim=(2, 4)).reshape(b, -1)
    total = counts.sum(dim=1, keepdim=True)
    return torch.where(total > 0, counts / total.clamp_min(torch.finfo(m.dtype).tiny), 0.0)


def beta_at(progress: float, beta_0: float, beta_E: float) -> float:
    """Share of guided patches at a point of training (Eq. 3): linear from beta_0 to beta_E.

    Args:
        progress: fraction of training done, e/E, in [0, 1] (per epoch in the paper; the trainer
            may pass a per-iteration fraction).
        beta_0: guided share at the start, in [0, 1].
        beta_E: guided share at the end, in [0, 1].

    Returns:
        beta_e = beta_0 + progress * (beta_E - beta_0).
    """
    if not 0.0 <= progress <= 1.0:
        raise ValueError(f"progress must be in [0, 1], got {progress}")
    return beta_0 + progress * (beta_E - beta_0)


def mask_counts(num_patches: int, mask_ratio: float, beta: float) -> tuple[int, int, int]:
    """Visible, masked and guided patch counts (K, M, n_g) for N patches; see the module doc."""
    if not 0.0 <= mask_ratio <= 1.0:
        raise ValueError(f"mask_ratio must be in [0, 1], got {mask_ratio}")
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"beta must be in [0, 1], got {beta}")
    n_masked = _round_half_up(mask_ratio * num_patches)
    return num_patches - n_masked, n_masked, _round_half_up(beta * n_masked)


def _top_set(keys: torch.Tensor, k: int) -> torch.Tensor:
    """Bool (B, N): the k largest entries of each row (a set; ties have probability ~0).

    A row whose k-th largest key is ``-inf`` (fewer than k finite keys) may select every entry; the
    caller drops the ``-inf`` ones.

    On CPU a row-wise SIMD sort (NumPy) gives each row's k-th largest value as a threshold, ~8x
    faster than ``torch.topk`` at (256, 196); if a tie at the threshold would change a row's count,
    the exact ``topk`` path is taken instead, so counts are always exact.  On GPU: ``topk``.
    """
    b, n = keys.shape
    if k == 0:
        return torch.zeros(b, n, dtype=torch.bool, device=keys.device)
    if keys.device.type == "cpu":
        kn = keys.detach().numpy()
        threshold = np.sort(kn, axis=1)[:, n - k]
        sel = torch.from_numpy(kn >= threshold[:, None])
        if bool(((sel.sum(1).numpy() == k) | np.isneginf(threshold)).all()):
            return sel
    out = torch.zeros(b, n, dtype=torch.bool, device=keys.device)
    return out.scatter_(1, torch.topk(keys, k, dim=1, sorted=False).indices, True)


def guided_mask(
    f: torch.Tensor,
    mask_ratio: float,
    beta: float,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Draw anatomy-guided masks for a batch.

    Args:
        f: (B, N) non-negative patch weights, typically `patch_distribution(...)`; only their
            ratios within a row matter. An all-zero row means "no vessels".
        mask_ratio: gamma, the share of masked patches.
        beta: share of the masked patches drawn from f (the rest are uniform).
        generator: random source on f's device; None uses torch's global generator.

    Returns:
        ids_keep: (B, K) visible patches.
        ids_masked: (B, M) masked patches.
        ids_restore: (B, N) position of each patch in ids_shuffle = [ids_keep, ids_masked]
            (argsort of ids_shuffle, as in MAE); `forward_decoder` takes it.
        mask: (B, N) float, 1 for masked patches, 0 for visible ones, in patch order.
    """
    if f.dim() != 2:
        raise ValueError(f"f must be (B, N), got shape {tuple(f.shape)}")
    b, n = f.shape
    n_keep, n_masked, n_guided = mask_counts(n, mask_ratio, beta)
    f = f.to(torch.float32)
    device = f.device

    # One draw of uniforms for both stages: u[0] for the guided keys, u[1] for the fill.
    u = torch.rand(2, b, n, device=device, generator=generator)

    # Guided picks. Efraimidis-Spirakis keys log(u)/f are Gumbel-top-k keys in disguise
    # (log(u)/f = -E/f with E ~ Exp(1); the largest -E/f are the largest log f - log E), so
    # the n_g largest form a draw without replacement proportional to f. f = 0 gives -inf; u is
    # kept away from 0 so that a positive patch always has a finite key.
    score = u[1]
    if n_guided > 0:
        keys = u[0].clamp_(min=torch.finfo(u.dtype).tiny).log_().div_(f)
        guided = _top_set(keys, n_guided) & (f > 0)  # fewer than n_g positive patches: drop -inf picks
        # Uniform fill. Guided patches score in [1, 2), the others in [0, 1), so the M largest
        # scores are all guided patches (at most n_g <= M per row) plus a uniform draw among the
        # other patches.
        score = score + guided
    mask = _top_set(score, n_masked).to(torch.float32)

    # ids_shuffle = [visible patches, masked patches], each group in increasing patch order.
    # Its inverse ids_restore follows from c, the running count of masked patches:
    # a masked patch sits at K - 1 + c, a visible one at (its index) - c.
    c = mask.cumsum(dim=1)
    index = torch.arange(n, device=device, dtype=mask.dtype)
    ids_restore = (index - c).addcmul_(mask, 2 * c + (n_keep - 1) - index).long()
    ids_shuffle = torch.empty_like(ids_restore).scatter_(
        1, ids_restore, torch.arange(n, device=device).expand(b, n)
    )
    return ids_shuffle[:, :n_keep], ids_shuffle[:, n_keep:], ids_restore, mask


def masked_vessel_share(f: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Share of the masked patches that contain vessel pixels (the paper's Fig. 3a).

    Args:
        f: (B, N) patch distribution.
        mask: (B, N), 1 for masked patches.

    Returns:
        (B,) float: per image, (# masked patches with f > 0) / (# masked patches).
    """
    masked = mask > 0
    return ((f > 0) & masked).sum(1).float() / masked.sum(1).clamp_min(1).float()
