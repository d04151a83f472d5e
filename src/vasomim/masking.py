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

Two implementations draw from this law: NumPy on the CPU (integer row sorts, no argsort; the
default there) and torch ops on any device (`guided_mask(..., backend=...)`).
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


def _top_set(keys: torch.Tensor, k: int) -> torch.Tensor:
    """Bool (B, N): the k largest entries of each row (torch.topk; ties have probability ~0)."""
    b, n = keys.shape
    out = torch.zeros(b, n, dtype=torch.bool, device=keys.device)
    if k == 0:
        return out
    return out.scatter_(1, torch.topk(keys, k, dim=1, sorted=False).indices, True)


def _seed_from(generator: torch.Generator | None) -> int:
    """A 63-bit seed drawn from a torch generator (torch's global one when None)."""
    return int(torch.randint(0, 2**63 - 1, (1,), generator=generator))


def _es_keys(f: np.ndarray, raw: np.ndarray) -> np.ndarray:
    """Efraimidis-Spirakis keys log(u) / f (float32) from the top 23 bits of 64-bit words.

    u = (k + 1/2) 2^-23 with k the top 23 bits: uniform on (0, 1), never 0 or 1, built by
    placing k in the mantissa of a float in [1, 2) and subtracting 1 - 2^-24 (exact). A patch
    with f > 0 gets a finite negative key; f = 0 gets -inf.
    """
    u = np.right_shift(raw, np.uint64(41)).astype(np.uint32)
    u |= np.uint32(0x3F800000)
    u = u.view(np.float32)
    u -= np.float32(1.0 - 2.0**-24)
    with np.errstate(divide="ignore", invalid="ignore"):  # x / 0 -> -inf (some SIMD paths flag "invalid")
        return np.divide(np.log(u, out=u), f, out=u)  # a weight so small that x / f overflows: -inf too


def _top_k_by_threshold(keys: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Bool (B, N) ``keys >= k-th largest key`` per row, and the rows where that is ambiguous.

    A row is ambiguous when its k-th and (k+1)-th largest keys are equal and finite (a tie of
    float32 keys, probability ~N 2^-24 per row): the threshold would then select more than k.
    A row whose k-th largest key is -inf selects everything (the caller keeps the finite keys).
    """
    n = keys.shape[1]
    ordered = np.sort(keys, axis=1)  # a SIMD row sort: faster than a partial selection here
    threshold = ordered[:, n - k]
    if k < n:
        ties = np.isfinite(threshold) & (ordered[:, n - k - 1] == threshold)
    else:
        ties = np.zeros(len(keys), dtype=bool)
    return keys >= threshold[:, None], ties


def _attempts(limit: int = 64):
    """Attempt numbers for a row drawn again; an attempt fails with probability ~1e-5 (N = 196)."""
    yield from range(1, limit + 1)
    raise RuntimeError("guided_mask: a row kept tying after 64 fresh draws (degenerate weights?)")


def _row_raw(seed: int, stage: int, row: int, attempt: int, n: int) -> np.ndarray:
    """Fresh 64-bit words for one row drawn again: a function of (seed, row), not of the batch."""
    return np.random.SFC64([seed, stage, row, attempt]).random_raw(n)


def _guided_set_numpy(f: np.ndarray, raw: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Bool (B, N): per row, min(k, #{f > 0}) patches drawn without replacement proportionally to f."""
    n = f.shape[1]
    keys = _es_keys(f, raw)
    guided, ties = _top_k_by_threshold(keys, k)
    for row in np.flatnonzero(ties):  # equal float32 keys at the threshold: draw the row again
        for attempt in _attempts():
            keys[row] = _es_keys(f[row], _row_raw(seed, 1, row, attempt, n))
            one, tie = _top_k_by_threshold(keys[row : row + 1], k)
            if not tie[0]:
                guided[row] = one[0]
                break
    guided &= np.isfinite(keys)  # fewer than k positive patches: the -inf picks are dropped
    return guided


def _fill_keys(raw: np.ndarray, guided: np.ndarray | None, index_bits: int) -> np.ndarray:
    """Row-sorted integer keys [guided flag | random bits | patch index].

    32-bit keys (random bits from the low half of each word) when the index takes at most 10
    bits, 64-bit keys otherwise.
    """
    dtype = np.uint32 if index_bits <= 10 else np.uint64
    width = np.dtype(dtype).itemsize * 8
    keys = raw.astype(dtype)  # uint32: the low 32 bits
    keys &= dtype(((1 << (width - 1)) - 1) & ~((1 << index_bits) - 1))
    keys |= np.arange(raw.shape[-1], dtype=dtype)
    if guided is not None:
        flag = guided.astype(dtype)
        flag <<= dtype(width - 1)
        keys |= flag
    keys.sort(axis=-1)
    return keys


def _masked_order_numpy(f: np.ndarray, n_keep: int, n_guided: int, seed: int) -> np.ndarray:
    """ids_shuffle (B, N) int64 for a CPU batch: visible patches first, then the masked ones.

    Random bits: 64-bit words from NumPy's SFC64 seeded from torch's generator, one per patch,
    row r using words r*N .. r*N+N-1, so a row's draw depends on its own weights only. With
    N <= 1024 the top 23 bits of a word give the guided key and its low 32 bits the fill key;
    with more patches the fill gets a second word per patch.

    Guided set: the n_g largest Efraimidis-Spirakis keys log(u)/f, found with one row sort.
    Fill and order: one integer key per patch, [guided flag | random bits | patch index], sorted
    per row. Guided patches (flag set) sort last, so the last M entries are the guided patches
    plus M - n_g of the others chosen uniformly by their random bits, and the index in the low
    bits turns the sorted keys into ids_shuffle without an argsort. Equal random bits at the
    visible/masked boundary (probability ~N 2^-23 per row, 2e-5 at N = 196) would let the index
    decide; such a row is drawn again, which keeps the fill exactly uniform (whether it happens
    does not depend on which patches are involved).
    """
    b, n = f.shape
    index_bits = max(1, (n - 1).bit_length())
    raw = np.random.SFC64(seed).random_raw(b * n).reshape(b, n)
    guided = _guided_set_numpy(f, raw, n_guided, seed) if n_guided > 0 else None
    if index_bits > 10:  # the fill's random bits would overlap the guided key's
        raw = np.random.SFC64([seed, 2]).random_raw(b * n).reshape(b, n)
    keys = _fill_keys(raw, guided, index_bits)
    if 0 < n_keep < n:
        ambiguous = ((keys[:, n_keep - 1] ^ keys[:, n_keep]) >> index_bits) == 0
        for row in np.flatnonzero(ambiguous):
            g_row = None if guided is None else guided[row]
            for attempt in _attempts():
                one = _fill_keys(_row_raw(seed, 2, row, attempt, n), g_row, index_bits)
                if (one[n_keep - 1] ^ one[n_keep]) >> index_bits:
                    keys[row] = one
                    break
    keys &= keys.dtype.type((1 << index_bits) - 1)
    return keys.astype(np.int64)


def _masked_order_torch(
    f: torch.Tensor, n_masked: int, n_guided: int, generator: torch.Generator | None
) -> torch.Tensor:
    """ids_shuffle (B, N) with torch ops (any device): visible then masked, each in patch order."""
    b, n = f.shape
    device = f.device
    # One draw of uniforms for both stages: u[0] for the guided keys, u[1] for the fill.
    u = torch.rand(2, b, n, device=device, generator=generator)
    score = u[1]
    if n_guided > 0:
        # Efraimidis-Spirakis keys log(u)/f: the n_g largest are a draw without replacement
        # proportional to f; f = 0 gives -inf (u is kept away from 0).
        keys = u[0].clamp_(min=torch.finfo(u.dtype).tiny).log_().div_(f)
        guided = _top_set(keys, n_guided) & torch.isfinite(keys)  # fewer than n_g positive patches: drop -inf picks
        # Guided patches score in [1, 2), the others in [0, 1): the M largest scores are all
        # guided patches (at most n_g <= M per row) plus a uniform draw among the others.
        score = score + guided
    mask = _top_set(score, n_masked)
    # stable sort of the 0/1 mask: visible patches first, then masked, each in patch order
    return torch.sort(mask.to(torch.uint8), dim=1, stable=True).indices


def guided_mask(
    f: torch.Tensor,
    mask_ratio: float,
    beta: float,
    generator: torch.Generator | None = None,
    *,
    backend: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Draw anatomy-guided masks for a batch.

    The guided patches are a draw without replacement proportional to f (Efraimidis-Spirakis
    keys log(u)/f, equivalent to Gumbel-top-k on log f); the fill is uniform over the patches
    left. Everything is vectorised over the batch: a few whole-array passes and row sorts.

    Args:
        f: (B, N) non-negative patch weights, typically `patch_distribution(...)`; only their
            ratios within a row matter. An all-zero row means "no vessels". Negative or NaN
            weights raise a ValueError for CPU tensors (not checked on other devices).
        mask_ratio: gamma, the share of masked patches.
        beta: share of the masked patches drawn from f (the rest are uniform).
        generator: random source on f's device; None uses torch's global generator. The same
            generator state gives the same masks.
        backend: "numpy" (CPU tensors only: NumPy SFC64 bits seeded from `generator`, integer
            row sorts; the fastest on CPU), "torch" (torch ops, any device) or "auto" (numpy for
            CPU tensors, torch otherwise). Both draw from the same law; their outputs differ.

    Returns:
        ids_keep: (B, K) visible patches.
        ids_masked: (B, M) masked patches.
        ids_restore: (B, N) position of each patch in ids_shuffle = [ids_keep, ids_masked]
            (argsort of ids_shuffle, as in MAE); `forward_decoder` takes it. The order within
            ids_keep and within ids_masked is not specified (random with "numpy", increasing
            with "torch"); a ViT encoder does not depend on it.
        mask: (B, N) float, 1 for masked patches, 0 for visible ones, in patch order.
    """
    if f.dim() != 2:
        raise ValueError(f"f must be (B, N), got shape {tuple(f.shape)}")
    if backend not in ("auto", "numpy", "torch"):
        raise ValueError(f"backend must be 'auto', 'numpy' or 'torch', got {backend!r}")
    if backend == "numpy" and f.device.type != "cpu":
        raise ValueError("backend 'numpy' needs f on the CPU")
    b, n = f.shape
    n_keep, n_masked, n_guided = mask_counts(n, mask_ratio, beta)
    f = f.detach().to(torch.float32)
    if f.device.type == "cpu" and b * n and not bool(f.min() >= 0):  # also catches NaN
        # (checked on the CPU only: on a GPU the check would cost a host synchronisation per step)
        raise ValueError("f must hold non-negative weights (got a negative or NaN value)")
    if backend == "numpy" or (backend == "auto" and f.device.type == "cpu"):
        seed = _seed_from(generator)
        ids_shuffle = torch.from_numpy(_masked_order_numpy(f.contiguous().numpy(), n_keep, n_guided, seed))
    else:
        ids_shuffle = _masked_order_torch(f, n_masked, n_guided, generator)
    ids_restore = _inverse_permutation(ids_shuffle)
    if ids_restore.device.type == "cpu":  # the same comparison in NumPy: ~3x faster than torch's here
        mask = torch.from_numpy((ids_restore.numpy() >= n_keep).astype(np.float32))
    else:
        mask = (ids_restore >= n_keep).to(torch.float32)
    return ids_shuffle[:, :n_keep], ids_shuffle[:, n_keep:], ids_restore, mask


def _inverse_permutation(ids_shuffle: torch.Tensor) -> torch.Tensor:
    """Row-wise inverse of a permutation (what argsort gives, with one scatter)."""
    b, n = ids_shuffle.shape
    positions = torch.arange(n, device=ids_shuffle.device).expand(b, n)
    return torch.empty_like(ids_shuffle).scatter_(1, ids_shuffle, positions)


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
