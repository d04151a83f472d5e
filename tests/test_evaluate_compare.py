"""``vasomim evaluate --compare``: two per-image score tables paired image by image, worked by hand."""

from __future__ import annotations

import json

import pytest

from vasomim.cli import main
from vasomim.engines.evaluate import compare_per_image, read_per_image


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.fixture
def tables(tmp_path):
    # A: a fine-tuning run's table, two seeds per image; B: an `evaluate --out` folder, one more image
    a = write(tmp_path / "ft" / "per_image.csv", "seed,fold,image,dice,cldice,tprec,tsens\n"
              "0,0,x.png,0.60,0.50,1,1\n1,0,x.png,0.80,0.70,1,1\n"
              "0,0,y.png,0.40,0.40,1,1\n1,0,y.png,0.50,0.60,1,1\n"
              "0,0,z.png,0.90,0.90,1,1\n1,0,z.png,0.90,0.90,1,1\n")
    b = write(tmp_path / "ev" / "per_image.csv", "image,dice,cldice,tprec,tsens\n"
              "x.png,0.50,0.60,1,1\ny.png,0.55,0.50,1,1\nz.png,0.75,0.90,1,1\nw.png,0.10,0.10,1,1\n")
    return a, b


def test_compare_pairs_seed_means_on_shared_images(tables):
    a, b = tables
    out = compare_per_image(a.parent, b)  # a folder or the file itself
    assert (out["n_a"], out["n_b"], out["n_shared"]) == (3, 4, 3)
    dice = out["metrics"]["dice"]
    # A per image: x 0.70, y 0.45, z 0.90; B: x 0.50, y 0.55, z 0.75 (w is B's only)
    assert dice["mean_a"] == pytest.approx((0.70 + 0.45 + 0.90) / 3)
    assert dice["mean_b"] == pytest.approx((0.50 + 0.55 + 0.75) / 3)
    # differences +0.20, -0.10, +0.15: mean 0.0833, better on 2 of 3
    assert dice["mean"] == pytest.approx(0.25 / 3)
    assert dice["better"] == pytest.approx(2 / 3) and dice["n"] == 3
    # Wilcoxon: |d| ranks 1 (-0.10), 2 (+0.15), 3 (+0.20) -> W+ = 5; over the 8 equally likely sign
    # patterns W+ takes {0,1,2,3,3,4,5,6}: two-sided p = 2 * P(W+ >= 5) = 2 * 2/8
    assert dice["p"] == pytest.approx(0.5)
    cl = out["metrics"]["cldice"]  # A x 0.60, y 0.50, z 0.90; B 0.60, 0.50, 0.90: no difference
    assert cl["mean"] == pytest.approx(0.0) and cl["p"] is None


def test_cli_prints_and_writes_strict_json(tables, tmp_path, capsys):
    a, b = tables
    assert main(["evaluate", "--compare", str(a), str(b.parent), "--out", str(tmp_path / "cmp")]) == 0
    text = capsys.readouterr().out
    assert "paired over the 3 images both scored (A scored 3, B 4)" in text
    assert "DSC        68.33   60.00    +8.33 ± " in text
    saved = json.loads((tmp_path / "cmp" / "compare.json").read_text(),
                       parse_constant=lambda c: pytest.fail(f"{c} in compare.json"))
    assert saved["metrics"]["cldice"]["p"] is None and saved["n_shared"] == 3



def test_compare_pairs_the_runs_both_tables_hold_and_each_seed(tmp_path, capsys):
    # A ran seeds 0, 1 and 2; B seeds 0 and 1: seed 2 is left out, and each shared seed is paired alone
    a = write(tmp_path / "a" / "per_image.csv", "seed,fold,image,dice,cldice\n"
              "0,0,x.png,0.60,0.6\n0,0,y.png,0.40,0.4\n"
              "1,0,x.png,0.80,0.8\n1,0,y.png,0.50,0.5\n"
              "2,0,x.png,0.00,0.0\n2,0,y.png,0.00,0.0\n")
    b = write(tmp_path / "b" / "per_image.csv", "seed,fold,image,dice,cldice\n"
              "0,0,x.png,0.50,0.5\n0,0,y.png,0.50,0.5\n"
              "1,0,x.png,0.70,0.7\n1,0,y.png,0.30,0.3\n")
    out = compare_per_image(a, b)
    assert out["runs"] == {"a": ["seed 0 / fold 0", "seed 1 / fold 0", "seed 2 / fold 0"],
                           "b": ["seed 0 / fold 0", "seed 1 / fold 0"],
                           "shared": ["seed 0 / fold 0", "seed 1 / fold 0"]}
    dice = out["metrics"]["dice"]
    # over seeds 0 and 1: A x 0.70, y 0.45; B x 0.60, y 0.40 -> +0.10, +0.05
    assert dice["mean_a"] == pytest.approx(0.575) and dice["mean_b"] == pytest.approx(0.50)
    assert dice["mean"] == pytest.approx(0.075) and dice["better"] == 1.0
    # seed 0: +0.10, -0.10 -> 0, better on 1 of 2; seed 1: +0.10, +0.20 -> +0.15, 2 of 2
    s0, s1 = out["per_seed"]["0"]["dice"], out["per_seed"]["1"]["dice"]
    assert s0["mean"] == pytest.approx(0.0) and s0["better"] == 0.5
    assert s1["mean"] == pytest.approx(0.15) and s1["better"] == 1.0
    assert list(out["per_seed"]) == ["0", "1"]
    assert main(["evaluate", "--compare", str(a), str(b)]) == 0
    text = capsys.readouterr().out
    assert "over the 2 runs both hold (seed 0 / fold 0, seed 1 / fold 0); A has 3, B 2" in text
    assert "seed 1: DSC +15.00 ± 7.07, A better on 2 of 2" in text
    b1 = write(tmp_path / "b1" / "per_image.csv", "seed,fold,image,dice,cldice\n0,0,x.png,0.5,0.5\n")
    assert main(["evaluate", "--compare", str(a), str(b1)]) == 0
    assert "over the run both hold (seed 0 / fold 0); A has 3, B 1" in capsys.readouterr().out
    # a table without runs pairs whole, with no per-seed rows
    c = write(tmp_path / "c" / "per_image.csv", "image,dice,cldice\nx.png,0.5,0.5\ny.png,0.5,0.5\n")
    whole = compare_per_image(a, c)
    assert whole["runs"] is None and whole["per_seed"] == {}
    assert whole["metrics"]["dice"]["mean_a"] == pytest.approx((0.60 + 0.80 + 0.0 + 0.40 + 0.50 + 0.0) / 6)


@pytest.mark.parametrize("content, reason", [
    (None, "no such per-image score table"),
    ("", "no image, dice, cldice columns"),
    ("image,dice\nx.png,0.5\n", "no cldice column; it has image, dice"),
    ("image,dice,cldice\nx.png,0.5,abc\n", "line 2: cldice 'abc' is not a number"),
    ("image,dice,cldice\n", "holds no scored image"),
    (b"\xff\xfe\x00\x81binary", "not a text CSV file"),
])
def test_bad_tables_get_one_line_naming_the_file(tables, tmp_path, capsys, content, reason):
    _, good = tables
    bad = tmp_path / "bad" / "per_image.csv"
    if content is not None:
        bad.parent.mkdir()
        bad.write_bytes(content) if isinstance(content, bytes) else bad.write_text(content)
    with pytest.raises(ValueError, match=reason):
        read_per_image(bad)
    assert main(["evaluate", "--compare", str(bad), str(good)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and str(bad) in err and err.startswith("error: ")


def test_no_shared_image_and_usage_errors(tables, tmp_path, capsys):
    a, _ = tables
    other = write(tmp_path / "other.csv", "image,dice,cldice\nq.png,0.5,0.5\n")
    with pytest.raises(ValueError, match="no image in common"):
        compare_per_image(a, other)
    assert main(["evaluate", "--compare", str(a), str(other), "--pred", str(tmp_path)]) == 2
    assert "--compare takes two score tables" in capsys.readouterr().err
