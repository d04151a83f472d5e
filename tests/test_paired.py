"""Paired per-image differences, worked by hand."""

from __future__ import annotations

import csv
import itertools
import math
from pathlib import Path

import numpy as np
import pytest

from vasomim.analysis.paired import paired_difference, per_image_means, per_run_means, run_order, shared_runs


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
    # Wilcoxon by hand. In floating point 0.5 - 0.6 is a hair smaller in size than 0.8 - 0.7, so the
    # |d| ranks are 1 (-0.1), 2 (+0.1), 3 (+0.3) and W+ = 2 + 3 = 5. Over the 8 equally likely sign
    # patterns W+ takes {0, 1, 2, 3, 3, 4, 5, 6}: P(W+ >= 5) = 2/8, two-sided p = 0.5
    assert out["p"] == pytest.approx(0.5)
    assert math.isnan(paired_difference({"a": 0.8}, {"a": 0.7})["p"])  # one difference: nothing to test
    assert math.isnan(paired_difference({"a": 0.5, "b": 0.2}, {"a": 0.5, "b": 0.2})["p"])
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


def _exact_wilcoxon_p(d: list[float]) -> float:
    """Two-sided exact signed-rank p by enumerating all 2**n sign patterns (distinct non-zero |d|)."""
    ranks = np.argsort(np.argsort(np.abs(d))) + 1
    w = ranks[np.asarray(d) > 0].sum()
    totals = np.array([ranks[np.array(s, bool)].sum() for s in itertools.product((0, 1), repeat=len(d))])
    return min(1.0, 2 * min((totals <= w).mean(), (totals >= w).mean()))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_wilcoxon_p_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    n = 9
    d = rng.permutation(np.arange(1, n + 1) / 100) * rng.choice([-1, 1], n) + 0.004 * seed  # distinct |d|
    ref = {f"i{k}": 0.5 + x for k, x in enumerate(d)}
    other = {f"i{k}": 0.5 for k in range(n)}
    out = paired_difference(ref, other)
    diffs = [ref[k] - other[k] for k in sorted(ref)]
    assert out["p"] == pytest.approx(_exact_wilcoxon_p(diffs), rel=1e-9)


class _Stage:
    """Just what paired_rows reads of a fine-tune stage: a name, its folder and its per_image.csv."""

    def __init__(self, name: str, path: Path):
        self.name, self.path = name, path

    def dir(self, root):
        return self.path.parent

    def results(self, root):
        return {"per_image": str(self.path)}


def _finetune_graph(tmp_path, scores, cldice):
    """A study graph of fine-tune arms at 10% labels, each with a per_image.csv: ``{arm: {seed: [dice
    of im0, im1, ...]}}`` (fold 0), clDice ``cldice(dice)``."""
    graph = {"finetune": {}}
    for arm, by_seed in scores.items():
        path = tmp_path / arm / "per_image.csv"
        path.parent.mkdir()
        with open(path, "w", newline="") as fh:
            w = csv.DictWriter(fh, ("image", "seed", "fold", "dice", "cldice"))
            w.writeheader()
            for seed, dice in by_seed.items():
                for i, x in enumerate(dice):
                    w.writerow({"image": f"im{i}", "seed": seed, "fold": 0, "dice": x, "cldice": cldice(x)})
        graph["finetune"][(arm, 0.1)] = _Stage(f"{arm}@0.1", path)
    return graph


def test_paired_rows_compare_each_vasomim_arm_once(tmp_path):
    from vasomim.engines.study_report import paired_rows

    scores = {"vasomim": {0: [0.7, 0.6, 0.9]}, "unet_vasomim": {0: [0.8, 0.5, 0.7]}, "unet": {0: [0.6, 0.6, 0.6]}}
    graph = _finetune_graph(tmp_path, scores, cldice=lambda x: x / 2)
    rows = paired_rows(graph, tmp_path)
    assert [r["comparison"] for r in rows] == ["vasomim - unet_vasomim", "vasomim - unet", "unet_vasomim - unet"]
    # unet_vasomim - unet: +0.2, -0.1, +0.1 -> mean +6.67 points, better on 2 of 3
    last = rows[-1]
    assert last["ΔDSC (points)"].startswith("+6.67 ± ")
    assert last["DSC better on"] == "67% of 3"
    assert last["ΔclDice (points)"].startswith("+3.33 ± ")
    assert last["DSC p"] != "-"
    assert paired_rows({"finetune": {("unet", 0.1): graph["finetune"][("unet", 0.1)]}}, tmp_path) == []


def test_shared_runs_keep_the_seeds_and_folds_both_tables_hold():
    def rows(runs):
        return [{"seed": str(s), "fold": str(f), "image": f"im{f}", "dice": 0.5} for s, f in runs]

    a = rows([(0, 0), (0, 1), (1, 0), (1, 1), (10, 0)])
    b = rows([(0, 0), (0, 1), (2, 0), (10, 0)])
    ra, rb, runs = shared_runs(a, b)
    assert runs == [("0", "0"), ("0", "1"), ("10", "0")]  # numeric order: 10 after 0
    assert [(r["seed"], r["fold"]) for r in ra] == [("0", "0"), ("0", "1"), ("10", "0")]
    assert [(r["seed"], r["fold"]) for r in rb] == [("0", "0"), ("0", "1"), ("10", "0")]
    # no run in common, or a table without runs (an `evaluate --out` table): both whole, nothing paired by run
    assert shared_runs(rows([(1, 0)]), rows([(2, 0)])) == (rows([(1, 0)]), rows([(2, 0)]), None)
    plain = [{"image": "im0", "dice": 0.4}]
    assert shared_runs(a, plain) == (a, plain, None)
    assert sorted([("10", "0"), ("9", "1"), ("9", "0"), ("x", "0")], key=run_order) == \
        [("9", "0"), ("9", "1"), ("10", "0"), ("x", "0")]


def test_paired_rows_pair_only_the_seeds_both_arms_ran(tmp_path):
    """A reference arm with seeds 0 and 1 against an arm with seed 0 alone: seed 0 against seed 0."""
    from vasomim.engines.study_report import paired_rows

    scores = {"unet_vasomim": {0: [0.8, 0.5], 1: [0.2, 0.1]}, "unet": {0: [0.6, 0.6]}}
    graph = _finetune_graph(tmp_path, scores, cldice=lambda x: x)
    (row,) = paired_rows(graph, tmp_path)
    # seed 0 only: +0.2, -0.1 -> +5.00 points (with seed 1 averaged in it would be -15.00)
    assert row["ΔDSC (points)"].startswith("+5.00 ± ")
    assert row["ΔDSC per fold"] == "+5.00 ± 0.00 (n=1)"


def test_the_per_image_table_read_is_the_stage_folders_own_when_it_has_one(tmp_path):
    """An archive's stage folder holds its table while its record still names the study folder's
    (which, on the machine that made it, may hold fewer runs): the folder's own is read."""
    from vasomim.engines.study_report import per_image_table

    stale = tmp_path / "study" / "per_image.csv"
    own = tmp_path / "archive" / "per_image.csv"
    for path in (stale, own):
        path.parent.mkdir(parents=True)
        path.write_text("image,dice\n")
    stage = _Stage("a@0.1", own)
    stage.results = lambda root: {"per_image": str(stale)}
    assert per_image_table(stage, tmp_path) == own
    own.unlink()
    assert per_image_table(stage, tmp_path) == stale  # no table of its own: the recorded one
