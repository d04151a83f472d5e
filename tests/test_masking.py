"""Anatomy-guided masking: Eq. 2, Eq. 3, exact counts, fallbacks and the sampling law."""

import itertools

import numpy as np
import pytest
import torch

from vasomim.masking import (
    beta_at,
    guided_mask,
    mask_counts,
    masked_vessel_share,
    patch_distribution,
)
from vasomim.models.mae import patchify


def _reference_masked(f: np.ndarray, gamma: float, beta: float, rng) -> np.ndarray:
    """Brute-force, one image: guided picks with numpy's weighted choice, then a uniform fill."""
    n = f.size
    _, n_masked, n_guided = mask_counts(n, gamma, beta)
    positive = np.flatnonzero(f > 0)
    if positive.size <= n_guided:
        guided = positive
    else:
        guided = rng.choice(n, n_guided, replace=False, p=f / f.sum())
    rest = np.setdiff1d(np.arange(n), guided)
    fill = rng.choice(rest, n_masked - guided.size, replace=False)
    return np.concatenate([guided, fill])


def _reference_frequencies(f, gamma, beta, draws, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    freq = np.zeros(f.size)
    for _ in range(draws):
        freq[_reference_masked(f, gamma, beta, rng)] += 1
    return freq / draws


def _successive_sampling_inclusion(f: np.ndarray, k: int) -> np.ndarray:
    """Exact inclusion probabilities of k draws without replacement proportional to f."""
    f = f / f.sum()
    incl = np.zeros(f.size)
    for seq in itertools.permutations(range(f.size), k):
        p, left = 1.0, 1.0
        for i in seq:
            p *= f[i] / left
            left -= f[i]
        incl[list(seq)] += p
    return incl


def _masking_frequencies(f_row, gamma, beta, draws, seed=0) -> np.ndarray:
    """Per-patch masking frequency of `guided_mask` over `draws` copies of one image."""
    f = torch.as_tensor(f_row, dtype=torch.float32).expand(draws, -1).contiguous()
    gen = torch.Generator().manual_seed(seed)
    _, _, _, mask = guided_mask(f, gamma, beta, gen)
    return mask.mean(0).numpy()


# --- Eq. 2 ---------------------------------------------------------------------------------


def test_patch_distribution_hand_example():
    m = torch.zeros(2, 1, 8, 8)
    m[0, 0, 0:2, 0:2] = 1  # 4 pixels in patch 0 (top left)
    m[0, 0, 0, 4:8] = 1  # 4 pixels in patch 1 (top right)
    m[0, 0, 7, 0:8] = 1  # 4 pixels in patch 2, 4 in patch 3 (bottom row)
    f = patch_distribution(m, 4)
    assert f.shape == (2, 4)
    torch.testing.assert_close(f[0], torch.tensor([0.25, 0.25, 0.25, 0.25]))
    torch.testing.assert_close(f[1], torch.zeros(4))  # no vessels: a row of zeros

    m2 = torch.zeros(1, 8, 8, dtype=torch.bool)
    m2[0, 5, 1] = m2[0, 6, 1] = m2[0, 0, 5] = True  # two in patch 2, one in patch 1
    torch.testing.assert_close(patch_distribution(m2, 4), torch.tensor([[0.0, 1 / 3, 2 / 3, 0.0]]))


def test_patch_distribution_follows_patchify_order():
    m = (torch.rand(3, 1, 48, 32, generator=torch.Generator().manual_seed(1)) > 0.8).float()
    counts = patchify(m, 16).sum(-1)
    torch.testing.assert_close(patch_distribution(m, 16), counts / counts.sum(1, keepdim=True))


def test_patch_distribution_rejects_bad_shapes():
    with pytest.raises(ValueError, match="divisible"):
        patch_distribution(torch.zeros(1, 1, 30, 32), 16)
    with pytest.raises(ValueError, match="one channel"):
        patch_distribution(torch.zeros(1, 3, 32, 32), 16)


# --- Eq. 3 and counts -----------------------------------------------------------------------


def test_beta_schedule_is_linear():
    assert beta_at(0.0, 0.0, 0.5) == 0.0
    assert beta_at(1.0, 0.0, 0.5) == 0.5
    assert beta_at(0.25, 0.2, 0.6) == pytest.approx(0.3)
    with pytest.raises(ValueError):
        beta_at(1.5, 0.0, 0.5)


def test_mask_counts():
    assert mask_counts(196, 0.75, 0.0) == (49, 147, 0)
    assert mask_counts(196, 0.5, 0.5) == (98, 98, 49)
    assert mask_counts(16, 0.5, 0.3) == (8, 8, 2)  # 2.4 -> 2
    assert mask_counts(16, 0.5, 0.5625) == (8, 8, 5)  # 4.5 -> 5 (halves up)
    with pytest.raises(ValueError):
        mask_counts(16, 1.2, 0.5)


# --- guided_mask: structure -----------------------------------------------------------------


def _mixed_batch(n=16):
    gen = torch.Generator().manual_seed(3)
    f = torch.rand(6, n, generator=gen) ** 4
    f[1] = 0  # no vessels
    f[2] = 0
    f[2, [3, 9]] = torch.tensor([0.7, 0.3])  # fewer positive patches than n_g
    f[3, :] = 1.0  # vessels everywhere
    return f / f.sum(1, keepdim=True).clamp_min(1e-12)


@pytest.mark.parametrize("gamma,beta", [(0.5, 0.5), (0.75, 1.0), (0.25, 0.0), (0.5, 1.0), (1.0, 0.5), (0.0, 0.0)])
def test_guided_mask_structure(gamma, beta):
    f = _mixed_batch()
    b, n = f.shape
    n_keep, n_masked, n_guided = mask_counts(n, gamma, beta)
    ids_keep, ids_masked, ids_restore, mask = guided_mask(
        f, gamma, beta, torch.Generator().manual_seed(0)
    )
    assert ids_keep.shape == (b, n_keep) and ids_masked.shape == (b, n_masked)
    assert ids_restore.shape == (b, n) and mask.shape == (b, n)
    ids_shuffle = torch.cat([ids_keep, ids_masked], dim=1)
    # a permutation per row: no duplicates, nothing missing
    assert torch.equal(ids_shuffle.sort(1).values, torch.arange(n).expand(b, n))
    # ids_restore inverts the shuffle
    assert torch.equal(ids_restore, torch.argsort(ids_shuffle, dim=1))
    assert torch.equal(torch.gather(ids_shuffle, 1, ids_restore), torch.arange(n).expand(b, n))
    # the mask marks exactly ids_masked
    assert torch.equal(mask.sum(1), torch.full((b,), float(n_masked)))
    assert torch.all(torch.gather(mask, 1, ids_masked) == 1)
    assert torch.all(torch.gather(mask, 1, ids_keep) == 0)
    # the guided share: at least min(n_g, #positive) vessel patches are masked in every row
    positive = f > 0
    assert torch.all(((mask > 0) & positive).sum(1) >= positive.sum(1).clamp_max(n_guided))


def test_guided_mask_is_reproducible_with_a_generator():
    f = _mixed_batch()
    a = guided_mask(f, 0.5, 0.5, torch.Generator().manual_seed(7))
    b = guided_mask(f, 0.5, 0.5, torch.Generator().manual_seed(7))
    c = guided_mask(f, 0.5, 0.5, torch.Generator().manual_seed(8))
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not torch.equal(a[3], c[3])


def test_a_rows_draw_depends_on_its_own_weights_only():
    # draw_masks relies on it under DDP: each rank fills the other ranks' rows with zeros
    f = _mixed_batch()
    other = f.clone()
    other[[1, 3, 5]] = torch.rand(3, f.shape[1])
    a = guided_mask(f, 0.5, 0.5, torch.Generator().manual_seed(4))
    b = guided_mask(other, 0.5, 0.5, torch.Generator().manual_seed(4))
    for x, y in zip(a, b):
        assert torch.equal(x[[0, 2, 4]], y[[0, 2, 4]])


def test_guided_mask_rejects_negative_or_nan_weights():
    f = _mixed_batch()
    for bad in (-0.1, float("nan")):
        g = f.clone()
        g[0, 0] = bad
        with pytest.raises(ValueError, match="non-negative"):
            guided_mask(g, 0.5, 0.5)


# --- guided_mask: fallbacks and sampling law -------------------------------------------------

DRAWS = 20000


def _tolerance(p, draws, sigmas=5.0):
    return sigmas * np.sqrt(np.maximum(p * (1 - p), 1e-4) / draws)


def test_fewer_positive_patches_than_guided_are_all_masked_then_uniform_fill():
    n, gamma, beta = 16, 0.5, 1.0  # M = n_g = 8, only 2 positive patches
    f = np.zeros(n)
    f[[4, 11]] = [0.9, 0.1]
    freq = _masking_frequencies(f, gamma, beta, DRAWS)
    assert freq[4] == 1.0 and freq[11] == 1.0
    others = np.delete(freq, [4, 11])
    expected = (8 - 2) / (n - 2)
    assert np.all(np.abs(others - expected) < _tolerance(expected, DRAWS))


def test_vessel_free_image_gets_uniform_random_masking():
    n = 16
    freq = _masking_frequencies(np.zeros(n), 0.5, 1.0, DRAWS)
    assert np.all(np.abs(freq - 0.5) < _tolerance(0.5, DRAWS))


def test_beta_zero_ignores_the_distribution():
    f = np.array([0.5, 0.2, 0.1, 0.1, 0.05, 0.05] + [0.0] * 10)
    freq = _masking_frequencies(f, 0.5, 0.0, DRAWS)
    chi2 = np.sum((freq * DRAWS - 0.5 * DRAWS) ** 2 / (0.5 * DRAWS))
    # per-patch counts are Binomial(DRAWS, 1/2); sum over 16 patches of z^2 (with correlation
    # from the fixed count) stays far below 60 under uniform masking
    assert chi2 < 60.0
    assert np.all(np.abs(freq - 0.5) < _tolerance(0.5, DRAWS))


def test_beta_one_matches_sampling_without_replacement_proportional_to_f():
    # 6 patches, gamma 0.5 -> M = n_g = 3: the masked set is exactly the guided draw. Its law is
    # successive sampling; proportional inclusion (min(1, 3 f)), sampling with replacement or a
    # deterministic top-k all miss these inclusion probabilities by >= 0.07 on some patch.
    f = np.array([0.4, 0.25, 0.15, 0.1, 0.06, 0.04])
    exact = _successive_sampling_inclusion(f, 3)
    freq = _masking_frequencies(f, 0.5, 1.0, DRAWS)
    reference = _reference_frequencies(f, 0.5, 1.0, 5000)
    assert np.all(np.abs(freq - exact) < _tolerance(exact, DRAWS))
    assert np.max(np.abs(freq - reference)) < 0.03
    for wrong in (np.minimum(1, 3 * f), 1 - (1 - f) ** 3, np.array([1, 1, 1, 0, 0, 0.0])):
        assert np.max(np.abs(wrong - exact)) > 0.06  # the test separates these


def test_partial_guidance_matches_the_brute_force_reference():
    # gamma 0.5, beta 0.5 on 16 patches: 4 guided picks from 7 positive patches, 4 uniform.
    f = np.array([0.3, 0.2, 0.15, 0.12, 0.1, 0.08, 0.05] + [0.0] * 9)
    freq = _masking_frequencies(f, 0.5, 0.5, DRAWS)
    reference = _reference_frequencies(f, 0.5, 0.5, 5000, seed=1)
    assert np.max(np.abs(freq - reference)) < 0.035
    # vessel patches are masked more often than background ones, which share one frequency
    assert freq[:7].min() > freq[7:].max()
    assert np.ptp(freq[7:]) < 0.03


def test_masked_vessel_share():
    f = torch.tensor([[0.5, 0.5, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    mask = torch.tensor([[1.0, 0.0, 1.0, 1.0], [1.0, 1.0, 0.0, 0.0]])
    torch.testing.assert_close(masked_vessel_share(f, mask), torch.tensor([1 / 3, 0.0]))


def test_guided_mask_accepts_float64_weights():
    f = _mixed_batch()
    a = guided_mask(f.double(), 0.5, 0.5, torch.Generator().manual_seed(2))
    b = guided_mask(f, 0.5, 0.5, torch.Generator().manual_seed(2))
    assert all(torch.equal(x, y) for x, y in zip(a, b))


@pytest.mark.parametrize("n", [4096, 1025])
def test_many_patches_keep_exact_counts_and_guidance(n):
    gen = torch.Generator().manual_seed(0)
    f = torch.zeros(3, n)
    f[0, :40] = 1.0
    f[1, ::7] = torch.rand(len(range(0, n, 7)), generator=gen)
    ids_keep, ids_masked, ids_restore, mask = guided_mask(f, 0.75, 0.5, gen)
    n_keep, n_masked, n_guided = mask_counts(n, 0.75, 0.5)
    assert torch.equal(torch.cat([ids_keep, ids_masked], 1).sort(1).values, torch.arange(n).expand(3, n))
    assert torch.equal(mask.sum(1), torch.full((3,), float(n_masked)))
    assert torch.all(mask[0, :40] == 1)  # 40 positive patches < n_g: all masked
    assert ((mask[1] > 0) & (f[1] > 0)).sum() >= min(n_guided, int((f[1] > 0).sum()))


def test_the_same_seed_gives_the_same_masks_on_every_device():
    """The noise is drawn on the CPU: a CUDA batch gets exactly the CPU batch's masks."""
    f = _mixed_batch()
    cpu = guided_mask(f, 0.5, 0.5, torch.Generator().manual_seed(11))
    if not torch.cuda.is_available():
        # without a GPU: the weights' dtype (a float32 or float64 device copy) changes nothing
        again = guided_mask(f.double(), 0.5, 0.5, torch.Generator().manual_seed(11))
        assert all(torch.equal(x, y) for x, y in zip(cpu, again))
        pytest.skip("no CUDA device: the CPU/GPU equality itself runs where a GPU is present")
    gpu = guided_mask(f.cuda(), 0.5, 0.5, torch.Generator().manual_seed(11))
    assert all(torch.equal(x, y.cpu()) for x, y in zip(cpu, gpu))


def test_masks_follow_mae_random_masking_when_unguided():
    """beta 0 is MAE's random_masking: keep the K lowest noise values, in ascending noise order."""
    gen = torch.Generator().manual_seed(5)
    f = torch.rand(4, 16, generator=torch.Generator().manual_seed(1))
    ids_keep, ids_masked, ids_restore, mask = guided_mask(f, 0.75, 0.0, gen)
    noise = torch.rand(2, 4, 16, generator=torch.Generator().manual_seed(5), dtype=torch.float64)[1]
    ids_shuffle = torch.argsort(noise, dim=1)
    assert torch.equal(ids_keep, ids_shuffle[:, :4]) and torch.equal(ids_masked, ids_shuffle[:, 4:])
