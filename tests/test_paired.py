"""Paired per-image differences, worked by hand."""

from __future__ import annotations

import math

import pytest

from vasomim.analysis.paired import paired_difference, per_image_means, per_run_means


def test_per_image_means_average_over_seeds():
    rows = [{"image": "a", "dice": 0.5, "seed": 0}, {"image": "a", "dice": 0.7, "seed": 1},
            {"image": "b", "dice": 0.2, "seed": 0}, {"image": "b", "dice": 0.4, "seed": 1}]
    assert per_image_means(rows) == pytest.approx({"a": 0.6, "b": 0.3})


def test_paired_difference_by_hand():
    ref = {"a": 0.8, "b": 0.5, "c": 0.6, "only_ref": 1.0}
    other = {"a": 0.7, "b": 0.6, "c": 0.3, "only_other": 0.0}
    out = paired_difference(ref, other)
    # differences 0.1, -0.1, 0.3: mean 0.1, sample variance (0 + 0.04 + 0.04) / 2 = 0.04
    assert out["n"] == 3
    assert out["mean"] == pytest.approx(0.1)
    assert out["std"] == pytest.approx(0.2)
    assert out["sem"] == pytest.approx(0.2 / math.sqrt(3))
    assert out["better"] == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="no image in common"):
        paired_difference({"a": 1.0}, {"b": 1.0})


def test_per_run_means_pair_fold_by_fold():
    rows = [{"image": "a", "dice": 0.5, "seed": 0, "fold": 0}, {"image": "b", "dice": 0.7, "seed": 0, "fold": 0},
            {"image": "c", "dice": 0.2, "seed": 0, "fold": 1}, {"image": "a", "dice": 0.9, "seed": 1, "fold": 1}]
    assert per_run_means(rows) == pytest.approx({"seed 0 / fold 0": 0.6, "seed 0 / fold 1": 0.2,
                                                 "seed 1 / fold 1": 0.9})
    other = [{"image": "a", "dice": 0.4, "seed": 0, "fold": 0}, {"image": "b", "dice": 0.4, "seed": 0, "fold": 0},
             {"image": "c", "dice": 0.3, "seed": 0, "fold": 1}]
    # runs in common: fold 0 (0.6 - 0.4 = 0.2) and fold 1 (0.2 - 0.3 = -0.1): mean 0.05,
    # sample std sqrt((0.15^2 + 0.15^2) / 1) = 0.2121
    out = paired_difference(per_run_means(rows), per_run_means(other))
    assert out["n"] == 2
    assert out["mean"] == pytest.approx(0.05)
    assert out["std"] == pytest.approx(math.sqrt(2 * 0.15**2))
