"""Anatomy-guided masking (VasoMIM, Eqs. 2-3), vectorised over the batch.

Counting convention, for N patches, mask ratio gamma and guidance share beta:

- M = round(gamma * N) patches are masked and K = N - M stay visible (round: nearest integer,
  halves up); the same M for every image of the batch;
- n_g = round(beta * M) of the masked patches are drawn from the patch distribution f without
  replacement, the other M - n_g uniformly from the patches left.

Sampling without replacement proportionally to f (successive sampling: draw one patch with
probability f_i, remove it, renormalise, repeat) is done for the whole batch at once with
Efraimidis-Spirakis keys: the n_g patches with the largest log(u_i) / f_i, u_i i.i.d. uniform,
are such a draw (Efraimidis & Spirakis 2006; it is the Gumbel-top-k trick on log f, Vieira 2014,
Kool et al. 2019). Patches with f_i = 0 get -inf and are never drawn by guidance; when an image
has fewer than n_g such patches, all of them are masked and the remainder is filled uniformly,
so an image without vessels gets plain random masking.

One torch path draws it on any device, written like MAE's ``random_masking``: the noise is drawn
on the CPU in float64 (a generator state gives the same masks on a CPU and on a GPU; ties have
probability ~1e-13), guided patches are lifted above the others, and one argsort per row gives
``ids_shuffle``.
"""

from __future__ import annotations

import math

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


def epoch_beta(epoch: int, epochs: int, beta_0: float, beta_E: float) -> float:
    """beta of epoch ``epoch`` (0-based) of ``epochs``: Eq. 3 at progress (epoch + 1) / epochs.

    The paper counts epochs from 1 (e / E with e = 1..E), so the last epoch reaches beta_E exactly,
    as in the original code.
    """
    if not 0 <= epoch < epochs:
        raise ValueError(f"epoch must be in [0, {epochs}), got {epoch}")
    return beta_at((epoch + 1) / epochs, beta_0, beta_E)


def mask_counts(num_patches: int, mask_ratio: float, beta: float) -> tuple[int, int, int]:
    """Visible, masked and guided patch counts (K, M, n_g) for N patches; see the module doc."""
    if not 0.0 <= mask_ratio <= 1.0:
        raise ValueError(f"mask_ratio must be in [0, 1], got {mask_ratio}")
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"beta must be in [0, 1], got {beta}")
    n_masked = _round_half_up(mask_ratio * num_patches)
    return num_patches - n_masked, n_masked, _round_half_up(beta * n_masked)


def guided_mask(
    f: torch.Tensor,
    mask_ratio: float,
    beta: float,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Draw anatomy-guided masks for a batch (no per-image loop).

    Per image: the n_g guided patches are the largest Efraimidis-Spirakis keys ``log(u) / f`` (a
    draw without replacement proportional to f; ``f = 0`` gives ``-inf``, never guided), the
    other ``M - n_g`` masked patches the largest uniform scores among the rest.

    Args:
        f: (B, N) non-negative patch weights, typically ``patch_distribution(...)``; only their
            ratios within a row matter. An all-zero row means "no vessels". Negative or NaN
            weights raise a ValueError for CPU tensors (not checked on other devices).
        mask_ratio: gamma, the share of masked patches.
        beta: share of the masked patches drawn from f (the rest are uniform).
        generator: a CPU ``torch.Generator`` (None: torch's global one). The noise is drawn from
            it on the CPU and moved to f's device, so the same state gives the same masks on
            every device.

    Returns:
        ids_keep: (B, K) visible patches.
        ids_masked: (B, M) masked patches.
        ids_restore: (B, N) position of each patch in ids_shuffle = [ids_keep, ids_masked]
            (argsort of ids_shuffle, as in MAE); ``forward_decoder`` takes it.
        mask: (B, N) float, 1 for masked patches, 0 for visible ones, in patch order.
    """
    if f.dim() != 2:
        raise ValueError(f"f must be (B, N), got shape {tuple(f.shape)}")
    b, n = f.shape
    n_keep, n_masked, n_guided = mask_counts(n, mask_ratio, beta)
    f = f.detach().to(torch.float64)
    if f.device.type == "cpu" and b * n and not bool(f.min() >= 0):  # also catches NaN
        # (checked on the CPU only: on a GPU the check would cost a host synchronisation per step)
        raise ValueError("f must hold non-negative weights (got a negative or NaN value)")
    noise = torch.rand(2, b, n, generator=generator, dtype=torch.float64).to(f.device)
    score = noise[1]  # uniform scores in [0, 1): the fill
    if n_guided > 0:
        keys = noise[0].clamp_min(torch.finfo(torch.float64).tiny).log() / f
        guided = torch.zeros(b, n, dtype=torch.bool, device=f.device)
        guided.scatter_(1, torch.topk(keys, n_guided, dim=1).indices, True)
        score = score + (guided & torch.isfinite(keys))  # guided patches score in [1, 2)
    # ascending: the K lowest scores stay visible, the M highest (every guided patch) are masked
    ids_shuffle = torch.argsort(score, dim=1)
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    mask = torch.ones(b, n, device=f.device)
    mask[:, :n_keep] = 0
    mask = torch.gather(mask, 1, ids_restore)
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
