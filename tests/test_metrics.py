"""Tests for vasomim.metrics: hand-worked DSC/clDice values, empty cases, a brute-force clDice."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage
from skimage.morphology import skeletonize

from vasomim import metrics
from vasomim.metrics import (
    binarize,
    cldice,
    dice,
    evaluate_batch,
    evaluate_pair,
    resize_to,
    summarize,
    topology_scores,
)


def _line(row: int, c0: int, c1: int, shape=(11, 20)) -> np.ndarray:
    """1-px-wide horizontal line on ``row`` covering columns ``c0..c1-1``."""
    m = np.zeros(shape, bool)
    m[row, c0:c1] = True
    return m


def _bar() -> np.ndarray:
    """3-px-wide bar: rows 4..6, columns 2..17 (3 x 16 = 48 pixels)."""
    m = np.zeros((11, 20), bool)
    m[4:7, 2:18] = True
    return m


# --------------------------------------------------------------------------- Dice by hand


def test_dice_shifted_line():
    # P = row 5, cols 2..11 (10 px); G = row 5, cols 4..13 (10 px); overlap cols 4..11 = 8 px.
    # DSC = 2 * 8 / (10 + 10) = 0.8
    assert dice(_line(5, 2, 12), _line(5, 4, 14)) == pytest.approx(0.8)


def test_dice_line_one_row_off_is_zero():
    # Same columns, rows 5 and 6: no common pixel -> 2 * 0 / 20 = 0
    assert dice(_line(5, 2, 12), _line(6, 2, 12)) == 0.0


def test_dice_bar_vs_centre_line():
    # |P| = 16 (row 5, cols 2..17), |G| = 48, P inside G: DSC = 2 * 16 / (16 + 48) = 0.5
    assert dice(_line(5, 2, 18), _bar()) == pytest.approx(0.5)


def test_dice_accepts_0_255_masks():
    p, g = _line(5, 2, 12), _line(5, 4, 14)
    assert dice(p.astype(np.uint8) * 255, g.astype(np.uint8) * 255) == dice(p, g)


# --------------------------------------------------------------------------- clDice by hand


def test_line_is_its_own_skeleton_and_bar_skeleton_is_known():
    line = _line(5, 2, 18)
    assert np.array_equal(skeletonize(line), line)
    # scikit-image's skeleton of the 3 x 16 bar: the centre row from column 2 to 15 (14 px)
    # plus one pixel at (4, 16): 15 pixels. The hand values below rely on this.
    expected = {(5, c) for c in range(2, 16)} | {(4, 16)}
    assert set(map(tuple, np.argwhere(skeletonize(_bar())))) == expected


def test_cldice_shifted_line():
    # Both lines are their own skeletons. Tprec = |S(P) n G| / |S(P)| = 8 / 10,
    # Tsens = |S(G) n P| / |S(G)| = 8 / 10, clDice = 2 * .8 * .8 / 1.6 = 0.8
    tprec, tsens, cl = topology_scores(_line(5, 2, 12), _line(5, 4, 14))
    assert (tprec, tsens, cl) == pytest.approx((0.8, 0.8, 0.8))


def test_cldice_centre_line_in_bar():
    # P = centre line, row 5, cols 2..17 (16 px) = S(P); G = bar, S(G) = 15 px (see above).
    # Tprec = 16 / 16 = 1 (the whole line lies inside the bar).
    # Tsens = |S(G) n P| / 15 = 14 / 15 (the skeleton pixel (4, 16) is off row 5).
    # clDice = 2 * 1 * (14/15) / (1 + 14/15) = 28 / 29, while DSC is only 0.5.
    tprec, tsens, cl = topology_scores(_line(5, 2, 18), _bar())
    assert tprec == pytest.approx(1.0)
    assert tsens == pytest.approx(14 / 15)
    assert cl == pytest.approx(28 / 29)


def test_cldice_half_line_in_bar():
    # P = row 5, cols 2..9 (8 px) = S(P), inside the bar: Tprec = 8 / 8 = 1.
    # S(G) n P = (5, 2..9) = 8 px: Tsens = 8 / 15. clDice = 2 * (8/15) / (23/15) = 16 / 23.
    # DSC = 2 * 8 / (8 + 48) = 2 / 7.
    p = _line(5, 2, 10)
    assert cldice(p, _bar()) == pytest.approx(16 / 23)
    assert dice(p, _bar()) == pytest.approx(2 / 7)


def test_cldice_disjoint_centerlines_is_zero():
    # Row 9 lies outside the bar (rows 4..6): Tprec = Tsens = 0, so clDice = 0 (not 0/0).
    tprec, tsens, cl = topology_scores(_line(9, 2, 18), _bar())
    assert (tprec, tsens, cl) == (0.0, 0.0, 0.0)


# --------------------------------------------------------------------------- empty masks


def test_both_empty_is_perfect():
    z = np.zeros((8, 8), bool)
    assert evaluate_pair(z, z) == {"dice": 1.0, "cldice": 1.0, "tprec": 1.0, "tsens": 1.0}


@pytest.mark.parametrize("pred_empty", [True, False])
def test_one_empty_is_zero(pred_empty):
    z, m = np.zeros((8, 8), bool), np.zeros((8, 8), bool)
    m[2:5, 3] = True
    pred, gt = (z, m) if pred_empty else (m, z)
    assert evaluate_pair(pred, gt) == {"dice": 0.0, "cldice": 0.0, "tprec": 0.0, "tsens": 0.0}


def test_empty_skeleton_falls_back_to_the_mask(monkeypatch):
    # Force the guarded case: with S(M) = M, P = 2x2 inside G = 4x4 gives
    # Tprec = |P n G| / |P| = 4/4 = 1, Tsens = |G n P| / |G| = 4/16, clDice = 0.5 / 1.25 = 0.4.
    monkeypatch.setattr(metrics, "skeletonize", lambda m: np.zeros_like(m))
    p, g = np.zeros((8, 8), bool), np.zeros((8, 8), bool)
    p[3:5, 3:5] = True
    g[2:6, 2:6] = True
    assert topology_scores(p, g) == pytest.approx((1.0, 0.25, 0.4))


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="resize_to"):
        dice(np.zeros((4, 4), bool), np.zeros((4, 5), bool))


# --------------------------------------------------------------------------- brute force


def _brute_cldice(pred: np.ndarray, gt: np.ndarray) -> float:
    """The paper's formula written with sets of pixel coordinates."""
    p = set(map(tuple, np.argwhere(pred)))
    g = set(map(tuple, np.argwhere(gt)))
    if not p and not g:
        return 1.0
    if not p or not g:
        return 0.0
    sp = set(map(tuple, np.argwhere(skeletonize(pred))))
    sg = set(map(tuple, np.argwhere(skeletonize(gt))))
    tprec = len(sp & g) / len(sp)
    tsens = len(sg & p) / len(sg)
    return 0.0 if tprec + tsens == 0 else 2 * tprec * tsens / (tprec + tsens)


def _blobs(rng: np.random.Generator, shape=(40, 48)) -> np.ndarray:
    field = ndimage.gaussian_filter(rng.standard_normal(shape), sigma=rng.uniform(1.0, 3.0))
    return field > np.quantile(field, rng.uniform(0.5, 0.95))


@pytest.mark.parametrize("seed", range(25))
def test_cldice_matches_brute_force_on_random_blobs(seed):
    rng = np.random.default_rng(seed)
    pred, gt = _blobs(rng), _blobs(rng)
    assert cldice(pred, gt) == pytest.approx(_brute_cldice(pred, gt), abs=1e-12)
    assert cldice(gt, gt) == pytest.approx(1.0)


@pytest.mark.parametrize("seed", range(25))
def test_scores_are_finite_and_bounded_on_sparse_masks(seed):
    # Salt noise, often a handful of isolated pixels or nothing at all.
    rng = np.random.default_rng(1000 + seed)
    pred = rng.random((9, 9)) < rng.choice([0.0, 0.01, 0.05, 0.3])
    gt = rng.random((9, 9)) < rng.choice([0.0, 0.01, 0.05, 0.3])
    scores = evaluate_pair(pred, gt)
    for value in scores.values():
        assert math.isfinite(value) and 0.0 <= value <= 1.0
    assert scores["cldice"] == pytest.approx(_brute_cldice(pred, gt), abs=1e-12)


# --------------------------------------------------------------------------- batch, summary


def test_evaluate_batch_pairs_in_order_and_checks_lengths():
    pairs = [(_line(5, 2, 12), _line(5, 4, 14)), (np.zeros((3, 3)), np.zeros((3, 3)))]
    out = evaluate_batch([p for p, _ in pairs], [g for _, g in pairs])
    assert [round(r["dice"], 6) for r in out] == [0.8, 1.0]
    with pytest.raises(ValueError, match="2 predictions but 1"):
        evaluate_batch([p for p, _ in pairs], [pairs[0][1]])


def test_summarize_uses_sample_std():
    # mean 2.5; squared deviations 2.25 + 0.25 + 0.25 + 2.25 = 5; sample var 5 / 3
    mean, std = summarize([1, 2, 3, 4])
    assert mean == pytest.approx(2.5)
    assert std == pytest.approx(math.sqrt(5 / 3))
    assert summarize([0.7]) == (0.7, 0.0)
    with pytest.raises(ValueError):
        summarize([])
    with pytest.raises(ValueError, match="non-finite"):
        summarize([0.5, float("nan")])


# --------------------------------------------------------------------------- resizing


def test_resize_probability_bilinear_by_hand():
    # Source columns [0, 1] -> 4 columns; output centres map to source x = (i + .5) * 2/4 - .5
    # = -0.25, 0.25, 0.75, 1.25, clamped at the edges to 0, .25, .75, 1 -> the values themselves.
    out = resize_to(np.array([[0.0, 1.0]]), (1, 4))
    assert out.dtype == np.float64
    np.testing.assert_allclose(out, [[0.0, 0.25, 0.75, 1.0]], atol=1e-12)


def test_resize_mask_nearest_keeps_dtype():
    m = np.array([[True, False], [False, True]])
    out = resize_to(m, (4, 4))
    assert out.dtype == bool
    np.testing.assert_array_equal(out, np.kron(m, np.ones((2, 2), bool)))
    labels = np.array([[0, 255]], dtype=np.uint8)
    np.testing.assert_array_equal(resize_to(labels, (1, 4)), [[0, 0, 255, 255]])


def test_prediction_back_to_original_resolution():
    prob = np.random.default_rng(0).random((32, 32))
    mask = binarize(resize_to(prob, (300, 300)))
    assert mask.shape == (300, 300) and mask.dtype == bool
    assert binarize(np.array([0.5, 0.49])).tolist() == [True, False]
