"""Realism statistics against hand-worked cases, and the realistic generator's new parts."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from vasomim.data import realism
from vasomim.data.synthetic import SynthConfig, synthesize


@pytest.mark.parametrize("width", [1, 2, 3, 4, 7])
def test_straight_tube_of_known_width_gives_that_width(width):
    for vertical in (True, False):
        mask = np.zeros((80, 80), bool)
        mask[10:70, 30:30 + width] = True
        mask = mask if vertical else mask.T
        widths = realism.vessel_widths(mask)
        assert np.median(widths) == width
        # away from the rounded ends (two widths at each end) every skeleton pixel measures it
        assert np.mean(widths == width) > 0.85


def _arc(radius, angle, shape=(200, 200), centre=(20, 100)):
    t = np.linspace(0.0, angle, 4000)
    mask = np.zeros(shape, bool)
    mask[np.round(centre[0] + radius * np.sin(t)).astype(int), np.round(centre[1] + radius * np.cos(t)).astype(int)] = True
    return mask


@pytest.mark.parametrize("radius, angle", [(40, np.pi), (60, np.pi / 2), (50, 1.0)])
def test_circle_arc_gives_its_arc_to_chord_ratio(radius, angle):
    expected = (angle / 2) / np.sin(angle / 2)  # R * angle / (2 R sin(angle / 2))
    got = realism.branch_tortuosity(_arc(radius, angle), skeleton=False)
    assert got.shape == (1,)
    assert got[0] == pytest.approx(expected, rel=0.01)


def test_digital_straight_line_is_not_tortuous_and_smoothing_is_what_fixes_it():
    s = np.linspace(0, 100, 2000)
    mask = np.zeros((128, 128), bool)
    mask[np.round(10 + s * np.sin(np.pi / 8)).astype(int), np.round(10 + s * np.cos(np.pi / 8)).astype(int)] = True
    assert realism.branch_tortuosity(mask, skeleton=False)[0] == pytest.approx(1.0, abs=0.005)
    # the raw 8-connected path at 22.5 degrees: cos + (sqrt 2 - 1) sin = 1.082
    raw = realism.branch_tortuosity(mask, skeleton=False, smooth=0)[0]
    assert raw == pytest.approx(np.cos(np.pi / 8) + (np.sqrt(2) - 1) * np.sin(np.pi / 8), abs=0.01)


def test_junctions_split_branches_and_short_ones_are_left_out():
    mask = np.zeros((128, 128), bool)
    mask[10:120, 60] = True  # a line with a diagonal branch leaving it at (60, 60)
    for i in range(50):
        mask[60 + i, 60 + i] = True
    assert np.allclose(realism.branch_tortuosity(mask, skeleton=False), 1.0)
    assert len(realism.branch_tortuosity(mask, skeleton=False)) == 3
    assert len(realism.branch_tortuosity(mask, skeleton=False, min_chord=49.5)) == 2  # the 48-px stubs go


def test_white_noise_has_a_flat_psd_at_its_variance():
    rng = np.random.default_rng(0)
    runs = [realism.radial_psd(rng.normal(0.0, 2.0, (256, 256))) for _ in range(16)]
    freqs, psd = runs[0][0], np.mean([p for _, p in runs], axis=0)
    assert freqs[0] == pytest.approx(0.25 / realism.PSD_BINS) and freqs[-1] < 0.5
    # variance 4 in every ring but the two lowest (the removed mean, spread by the window, and
    # a few dozen frequencies each)
    assert np.all(np.abs(psd[2:] / 4.0 - 1) < 0.1)
    assert psd[2:].mean() == pytest.approx(4.0, rel=0.02)
    # a blurred noise is not flat: its power falls with frequency (the test can fail)
    _, blurred = realism.radial_psd(ndimage.gaussian_filter(rng.normal(size=(256, 256)), 1.5))
    assert blurred[-1] < 0.01 * blurred[2]


def test_histogram_distances_by_hand():
    a = np.zeros(1000)
    b = np.full(1000, 0.25)
    assert realism.wasserstein(a, b) == pytest.approx(0.25)
    assert realism.wasserstein(a, a) == 0.0
    u = np.linspace(0, 1, 10_000)
    assert realism.wasserstein(u, u**2) == pytest.approx(1 / 2 - 1 / 3, abs=1e-3)  # integral of |q - q^2|
    p = realism.histogram(np.array([0.1, 0.1, 0.6, 0.9]), bins=4)
    assert p.tolist() == [0.5, 0.0, 0.25, 0.25]
    assert realism.histogram_intersection(p, np.array([0.0, 0.5, 0.25, 0.25])) == pytest.approx(0.5)
    x = realism.normalise_frame(np.arange(1000.0))
    assert x.min() == 0.0 and x.max() == 1.0 and x[500] == pytest.approx((500 - 4.995) / (994.005 - 4.995))


# ----------------------------------------------------------------------------- realistic generator


def test_realistic_preset_is_deterministic_and_the_classic_default_is_unchanged():
    cfg = SynthConfig.realistic()
    a, b = synthesize(4, 96, cfg), synthesize(4, 96, cfg)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert not np.array_equal(a[0], synthesize(5, 96, cfg)[0])
    # the new options off: the classic image (first pixels of seed 0 at 64 px, as before this change)
    classic = synthesize(0, 64)[0]
    assert np.array_equal(synthesize(0, 64, SynthConfig(anatomy=False, wash_in=0.0, overlap=False))[0], classic)


def test_background_anatomy_changes_the_image_not_the_mask():
    base = SynthConfig.realistic(motion_blur=0.0)
    for seed in range(4):
        with_img, with_mask = synthesize(seed, 128, base)
        without_img, without_mask = synthesize(seed, 128, SynthConfig.realistic(motion_blur=0.0, anatomy=False))
        assert np.array_equal(with_mask, without_mask)
        assert np.abs(with_img.astype(int) - without_img.astype(int)).mean() > 3


def test_wash_in_only_removes_vessel_pixels_and_the_rest_stays_dark():
    cut = 0
    for seed in range(8):
        full_img, full = synthesize(seed, 128, SynthConfig.realistic(wash_in=0.0))
        part_img, part = synthesize(seed, 128, SynthConfig.realistic(wash_in=1.0))
        assert not (part & ~full).any()  # never adds vessel pixels
        cut += part.sum() < full.sum()
        ring = ndimage.binary_dilation(part, iterations=3) & ~part
        if part.sum() > 50:
            assert part_img[part].mean() < part_img[ring].mean() - 3  # what stays labelled is darkened
    assert cut >= 6  # a front inside the tree cuts it in most images


def test_overlapping_vessels_add_their_attenuation():
    """Summed chords: at least as dark as the per-tree maximum wherever vessels are, same mask."""
    darker = 0
    for seed in range(6):
        cfg = dict(motion_blur=0.0, anatomy=False, noise=0.0, quantum_noise=0.0, wash_in=0.0, n_trees=(3, 3))
        summed_img, summed = synthesize(seed, 128, SynthConfig.realistic(overlap=True, **cfg))
        max_img, maxed = synthesize(seed, 128, SynthConfig.realistic(overlap=False, **cfg))
        assert np.array_equal(summed, maxed)
        diff = max_img.astype(int) - summed_img.astype(int)
        # never lighter, but for a pixel or two where a branch's start inside its parent (not drawn
        # twice when chords add) was thicker than the parent's chord there
        assert (diff < -1).sum() <= 3
        darker += (diff > 5).sum() > 5
    assert darker >= 3


def test_motion_blur_smears_vessels_but_keeps_the_mask():
    cfg = dict(anatomy=False, noise=0.0, quantum_noise=0.0)
    sharp_img, sharp = synthesize(2, 128, SynthConfig.realistic(motion_blur=0.0, **cfg))
    blur_img, blurred = synthesize(2, 128, SynthConfig.realistic(motion_blur=1.0, **cfg))
    assert np.array_equal(sharp, blurred)
    gy, gx = np.gradient(sharp_img.astype(float))
    by, bx = np.gradient(blur_img.astype(float))
    assert np.hypot(by, bx)[sharp].mean() < np.hypot(gy, gx)[sharp].mean()
