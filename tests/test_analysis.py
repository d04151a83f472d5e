"""Analyses (Fig. 3a/3b, reconstructions, Table 4 clustering, sweeps) on tiny fabricated runs."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.metrics import calinski_harabasz_score, davies_bouldin_score, silhouette_score
from torch import nn

from vasomim.analysis import clustering, curves, masking_stats, reconstruction
from vasomim.cli import main
from vasomim.losses import consistency_loss
from vasomim.masking import mask_counts
from vasomim.models.mae import mae_vit, patchify
from vasomim.models.unext import UNeXt

IMG, PATCH = 32, 8  # 4x4 = 16 patches


def assert_png(path: Path, min_bytes: int = 2000) -> tuple[int, int]:
    """The file is a decodable PNG of non-trivial size; returns its (width, height)."""
    assert path.is_file(), path
    assert path.stat().st_size > min_bytes
    with Image.open(path) as im:
        assert im.format == "PNG"
        im.load()
        return im.size


def tiny_mae(norm_pix: bool = False) -> nn.Module:
    torch.manual_seed(0)
    return mae_vit("tiny", img_size=IMG, patch_size=PATCH, embed_dim=32, depth=1, num_heads=2,
                   decoder_embed_dim=32, decoder_depth=1, decoder_num_heads=2, norm_pix_loss=norm_pix)


def band_mask(size: int = 64, rows: slice = slice(26, 30)) -> np.ndarray:
    """A horizontal vessel band inside one patch row: every patch of that row holds the same vessel count."""
    m = np.zeros((size, size), bool)
    m[rows, :] = True
    return m


# ------------------------------------------------------------------------------ Fig. 3a


def write_run(d: Path, name: str | None, records: list[dict], torn_tail: bool = False) -> Path:
    d.mkdir(parents=True)
    if name is not None:
        cfg = {"name": name, "masking": {"mask_ratio": 0.5, "beta_0": 0.0, "beta_E": 0.5}, "consistency": {"weight": 1.0}}
        (d / "config.json").write_text(json.dumps(cfg))
    lines = [json.dumps(r) for r in records]
    text = "\n".join(lines) + "\n" + ('{"epoch": 9, "vessel_sh' if torn_tail else "")
    (d / "log.jsonl").write_text(text)
    return d


def log_records(masked: list[float], everything: list[float]) -> list[dict]:
    return [{"epoch": e, "step": 10 * e, "lr": 1e-4, "beta": 0.1 * e, "loss": 1.0, "rec": 1.0, "cons": None,
             "vessel_share_masked": m, "vessel_share_all": a, "time": 1.0} for e, (m, a) in enumerate(zip(masked, everything))]


def test_vessel_share_curves_equal_the_logs(tmp_path):
    guided = log_records([0.30, 0.40, 0.50], [0.20, 0.22, 0.21])
    resumed = guided + [dict(guided[-1], vessel_share_masked=0.55)]  # epoch 2 logged again after a resume
    resumed.append({"epoch": 3, "loss": 1.0})  # a record without the shares is skipped
    run_a = write_run(tmp_path / "a", "vasomim", resumed, torn_tail=True)
    run_b = write_run(tmp_path / "b", None, log_records([0.21, 0.19, 0.20], [0.20, 0.18, 0.22]))

    curves_ = masking_stats.vessel_share_curves([run_a, run_b])
    assert list(curves_) == ["vasomim", "b"]  # config name, else folder name
    assert curves_["vasomim"]["epoch"] == [0, 1, 2]
    assert curves_["vasomim"]["vessel_share_masked"] == [0.30, 0.40, 0.55]  # last record of epoch 2 wins
    assert curves_["b"]["vessel_share_all"] == [0.20, 0.18, 0.22]
    assert curves_["vasomim"]["config"]["beta_E"] == 0.5 and curves_["b"]["config"]["beta_E"] is None

    out = tmp_path / "fig" / "share.png"
    result = masking_stats.plot_vessel_share(curves_, out)
    assert_png(out)
    saved = json.loads(out.with_suffix(".json").read_text())
    np.testing.assert_allclose(saved["random_expectation"]["share"], [0.20, 0.20, 0.215])
    assert saved["curves"]["vasomim"]["vessel_share_masked"] == [0.30, 0.40, 0.55]
    assert result["summary"]["vasomim"]["final_masked"] == pytest.approx(0.55)
    assert result["summary"]["b"]["mean_masked"] == pytest.approx(0.20)


def test_vessel_share_needs_share_records(tmp_path):
    run = write_run(tmp_path / "r", "x", [{"epoch": 0, "loss": 1.0}])
    with pytest.raises(ValueError, match="no record with epoch"):
        masking_stats.vessel_share_curves({"x": run})


# ------------------------------------------------------------------------------ Fig. 3b


def test_frequency_map_full_guidance_is_exact():
    """beta = 1 and fewer vessel patches (V) than masked ones (M): vessels always masked, rest uniform."""
    mask = band_mask()  # 64x64, patch 8: N = 64, vessel patches V = 8 (one patch row), M = 32
    freq, vessel = masking_stats.masking_frequency_map(mask, 8, 0.5, (1.0, 1.0), epochs=50, seed=1)
    assert freq.shape == vessel.shape == (8, 8) and vessel.sum() == 8
    np.testing.assert_array_equal(freq[vessel], 1.0)
    assert freq[~vessel].mean() == pytest.approx((32 - 8) / (64 - 8))


def test_frequency_map_random_masking_has_no_preference():
    freq, vessel = masking_stats.masking_frequency_map(band_mask(), 8, 0.5, (0.0, 0.0), epochs=400, seed=0)
    assert freq.mean() == pytest.approx(0.5)  # exactly M of N patches every epoch
    stats = masking_stats.frequency_stats(freq, vessel)
    assert abs(stats["mean_vessel"] - stats["mean_background"]) < 0.05
    guided, _ = masking_stats.masking_frequency_map(band_mask(), 8, 0.5, (1.0, 1.0), epochs=400, seed=0)
    assert masking_stats.frequency_stats(guided, vessel)["mean_vessel"] > stats["mean_vessel"] + 0.3


def test_frequency_map_follows_the_schedule():
    """A weak-to-strong schedule: the per-epoch guided count g_e gives each vessel patch probability
    g/V + (1 - g/V)(M - g)/(N - g) (uniform f over the vessel patches), averaged over epochs."""
    n, v, epochs = 64, 8, 600
    freq, vessel = masking_stats.masking_frequency_map(band_mask(), 8, 0.5, (0.0, 0.5), epochs=epochs, seed=3)
    betas = masking_stats.beta_per_epoch(epochs, 0.0, 0.5)
    assert betas[0] == pytest.approx(0.5 / epochs) and betas[-1] == 0.5  # (e + 1)/E, e = 0..E-1
    m = mask_counts(n, 0.5, 0.0)[1]
    g = np.minimum([mask_counts(n, 0.5, b)[2] for b in betas], v)
    expected_vessel = np.mean(g / v + (1 - g / v) * (m - g) / (n - g))
    expected_background = np.mean((m - g) / (n - g))
    assert freq[vessel].mean() == pytest.approx(expected_vessel, abs=0.02)
    assert freq[~vessel].mean() == pytest.approx(expected_background, abs=0.02)


def test_plot_masking_frequency_writes_figure_and_numbers(tmp_path):
    rng = np.random.default_rng(0)
    image = rng.random((64, 64)).astype(np.float32)
    out = tmp_path / "map.png"
    result = masking_stats.masking_map_analysis(image, band_mask(), out, patch=8, epochs=40, seed=0)
    assert_png(out)
    saved = json.loads(out.with_suffix(".json").read_text())
    assert np.array(saved["guided"]["freq"]).shape == (8, 8)
    assert saved["guided"]["stats"]["mean_vessel"] == pytest.approx(result["guided"]["stats"]["mean_vessel"])
    assert saved["guided"]["stats"]["mean_vessel"] > saved["random"]["stats"]["mean_vessel"]
    assert saved["settings"]["epochs"] == 40
    with pytest.raises(ValueError, match="differ in shape"):
        masking_stats.plot_masking_frequency(image, np.zeros((8, 8)), np.zeros((4, 4)), tmp_path / "x.png")


# ------------------------------------------------------------------------------ sweeps and tables


def fabricated_results() -> list[dict]:
    """Two arms x two ratios x two seeds x two images; scores chosen so per-seed means are round."""
    rows = []
    for arm, base in (("VasoMIM", 0.70), ("MAE", 0.65)):
        for x, shift in ((0.5, 0.0), (0.75, -0.02)):
            for seed, s in ((0, 0.00), (1, 0.02)):
                for image, d in (("a", -0.01), ("b", 0.01)):
                    rows.append({"arm": arm, "x": x, "seed": seed, "fold": 0, "image": image,
                                 "dice": base + shift + s + d, "cldice": base + shift + s + d + 0.05})
    return rows


def test_results_table_mean_and_std_over_seeds():
    table = curves.results_table(fabricated_results(), ("arm", "x"))
    assert [(t["arm"], t["x"]) for t in table] == [("VasoMIM", 0.5), ("VasoMIM", 0.75), ("MAE", 0.5), ("MAE", 0.75)]
    first = table[0]
    # per-seed means 0.70 and 0.72: mean 0.71, sample std 0.02 / sqrt(2)
    assert first["n"] == 2
    assert first["dice_mean"] == pytest.approx(0.71)
    assert first["dice_std"] == pytest.approx(0.02 / np.sqrt(2))
    assert first["cldice_mean"] == pytest.approx(0.76)
    # rows without a seed are separate runs
    single = curves.results_table([{"arm": "Frangi", "dice": 0.4130, "cldice": 0.4091}])
    assert single[0]["n"] == 1 and single[0]["dice_std"] == 0.0
    with pytest.raises(ValueError, match="lacks"):
        curves.results_table([{"arm": "x", "dice": 0.5}])


def test_paper_format():
    assert curves.format_score(0.68853, 0.00467, 3) == "68.85 ± 0.47"
    assert curves.format_score(0.4130, 0.0, 1) == "41.30"
    table = [{"arm": "VasoMIM", "dice_mean": 0.6885, "dice_std": 0.0047, "cldice_mean": 0.7056, "cldice_std": 0.0036, "n": 3}]
    md = curves.format_table_markdown(table)
    assert md.splitlines()[0] == "| arm | DSC (%) | clDice (%) | seeds |"
    assert md.splitlines()[2] == "| VasoMIM | 68.85 ± 0.47 | 70.56 ± 0.36 | 3 |"


def test_plot_sweep_numeric_and_categorical(tmp_path):
    out = tmp_path / "ratio.png"
    table = curves.plot_sweep(fabricated_results(), "masking ratio γ", out)
    assert_png(out)
    saved = json.loads(out.with_suffix(".json").read_text())
    assert [t["dice_mean"] for t in saved["table"]] == pytest.approx([t["dice_mean"] for t in table])
    assert [t["dice_mean"] for t in table] == pytest.approx([0.71, 0.69, 0.66, 0.64])
    schedules = [dict(r, x={0.5: "0→0.5", 0.75: "1→1"}[r["x"]]) for r in fabricated_results()]
    out2 = tmp_path / "beta.png"
    table2 = curves.plot_sweep(schedules, "β schedule", out2, metrics=("dice",))
    assert_png(out2)
    assert [t["x"] for t in table2[:2]] == ["0→0.5", "1→1"]


def test_read_results_csv(tmp_path):
    path = tmp_path / "r.csv"
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["arm", "x", "seed", "image", "dice", "cldice"])
        w.writeheader()
        w.writerow({"arm": "MAE", "x": "0.5", "seed": "1", "image": "007", "dice": "0.7", "cldice": "0.75"})
    rows = curves.read_results_csv(path)
    assert rows == [{"arm": "MAE", "x": 0.5, "seed": 1, "image": 7, "dice": 0.7, "cldice": 0.75}]


# ------------------------------------------------------------------------------ clustering


def blobs(separation: float, n: int = 300, dim: int = 8, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = np.repeat([0, 1], n // 2)
    emb = rng.normal(size=(n, dim)) + separation * labels[:, None] * np.eye(dim)[0]
    return emb, labels


def test_clustering_scores_equal_scikit_learn():
    emb, labels = blobs(3.0)
    scores = clustering.clustering_scores(emb, labels)
    assert scores["silhouette"] == pytest.approx(silhouette_score(emb, labels))
    assert scores["calinski_harabasz"] == pytest.approx(calinski_harabasz_score(emb, labels))
    assert scores["davies_bouldin"] == pytest.approx(davies_bouldin_score(emb, labels))
    assert (scores["n"], scores["n_vessel"], scores["n_background"], scores["silhouette_n"]) == (300, 150, 150, 300)


def test_clustering_scores_hand_checkable():
    far = clustering.clustering_scores(*blobs(1000.0))
    assert far["silhouette"] > 0.99 and far["davies_bouldin"] < 0.01
    same = clustering.clustering_scores(*blobs(0.0))
    assert abs(same["silhouette"]) < 0.05 and same["davies_bouldin"] > 5
    # two points per cluster, one dimension: clusters {0, 1} and {10, 11}
    emb, labels = np.array([[0.0], [1.0], [10.0], [11.0]]), np.array([0, 0, 1, 1])
    s = clustering.clustering_scores(emb, labels)
    a, b = 1.0, np.array([10.5, 9.5, 9.5, 10.5])  # distance within, mean distance to the other cluster
    assert s["silhouette"] == pytest.approx(np.mean((b - a) / b))
    assert s["davies_bouldin"] == pytest.approx((0.5 + 0.5) / 10.0)
    with pytest.raises(ValueError, match="both"):
        clustering.clustering_scores(emb, np.zeros(4))


def test_silhouette_is_subsampled_with_a_fixed_seed():
    emb, labels = blobs(2.0, n=600)
    s = clustering.clustering_scores(emb, labels, max_silhouette=200, seed=5)
    assert s["silhouette_n"] == 200
    assert s["silhouette"] == pytest.approx(silhouette_score(emb, labels, sample_size=200, random_state=5))
    assert s["silhouette"] == clustering.clustering_scores(emb, labels, max_silhouette=200, seed=5)["silhouette"]
    assert s["calinski_harabasz"] == pytest.approx(calinski_harabasz_score(emb, labels))  # all points


def test_umap_missing_is_reported(monkeypatch):
    monkeypatch.setitem(sys.modules, "umap", None)  # makes `import umap` fail
    scores, reason = clustering.umap_scores(*blobs(3.0))
    assert scores is None and "umap-learn is not installed" in reason
    xy, method = clustering.project_2d(blobs(3.0)[0])
    assert method == "pca" and xy.shape == (300, 2)
    with pytest.raises(ImportError):
        clustering.project_2d(blobs(3.0)[0], "umap")


def test_umap_scores_when_installed():
    pytest.importorskip("umap", reason="umap-learn (optional extra 'umap') is not installed")
    scores, reason = clustering.umap_scores(*blobs(20.0, n=200))
    assert reason is None and scores["silhouette"] > 0.5


def test_patch_embeddings_drop_the_class_token_and_label_patches():
    images = torch.zeros(2, 1, IMG, IMG)
    masks = torch.zeros(2, 1, IMG, IMG, dtype=torch.bool)
    masks[0, 0, 3, 3] = True  # patch 0 of image 0
    masks[1, 0, 20, 30] = True  # patch (2, 3) = 11 of image 1

    def fake_encoder(x: torch.Tensor) -> torch.Tensor:
        n = (IMG // PATCH) ** 2
        tokens = torch.arange(n, dtype=torch.float32)[None, :, None].expand(x.shape[0], n, 3)
        return torch.cat([torch.full((x.shape[0], 1, 3), -1.0), tokens], dim=1)  # class token first

    emb, labels = clustering.patch_embeddings(fake_encoder, images, masks, PATCH, batch_size=1)
    assert emb.shape == (32, 3)
    np.testing.assert_array_equal(emb[:, 0], np.tile(np.arange(16), 2))
    assert labels.tolist() == [1] + [0] * 15 + [0] * 11 + [1] + [0] * 4

    model = tiny_mae()
    emb, labels = clustering.patch_embeddings(clustering.mae_encoder_forward(model), torch.rand(3, 1, IMG, IMG), masks.repeat(2, 1, 1, 1)[:3], PATCH)
    assert emb.shape == (48, 32) and labels.shape == (48,)


def test_clustering_analysis_writes_scatter_and_numbers(tmp_path):
    out = tmp_path / "clu.png"
    result = clustering.clustering_analysis({"w/ L_cons": blobs(6.0), "w/o L_cons": blobs(0.5)}, out)
    assert_png(out)
    saved = json.loads(out.with_suffix(".json").read_text())
    assert saved["models"]["w/ L_cons"]["embedding"]["silhouette"] > saved["models"]["w/o L_cons"]["embedding"]["silhouette"]
    umap_ok = saved["umap_reason"] is None
    assert saved["scatter"]["method"] == ("umap" if umap_ok else "pca")
    assert (saved["models"]["w/ L_cons"]["umap"] is not None) == umap_ok
    rows = clustering.scores_rows(result)
    assert rows[0]["SS (×10⁻²) ↑"] == f"{100 * result['models']['w/ L_cons']['embedding']['silhouette']:.2f}"


# ------------------------------------------------------------------------------ reconstruction


class OracleMAE(nn.Module):
    """Predicts the exact target (per-patch normalised when norm_pix): a perfect reconstruction."""

    def __init__(self, norm_pix: bool, in_chans: int = 1) -> None:
        super().__init__()
        self.patch_size, self.in_chans, self.norm_pix_loss = PATCH, in_chans, norm_pix

    def forward(self, x, ids_keep, ids_restore):
        p = patchify(x, self.patch_size)
        if self.norm_pix_loss:
            p = (p - p.mean(-1, keepdim=True)) / (p.var(-1, keepdim=True) + 1e-6).sqrt()
        return p


@pytest.mark.parametrize("norm_pix", [False, True])
def test_reconstruct_undoes_normalisation(norm_pix):
    images = torch.rand(2, 1, IMG, IMG)
    masks = torch.zeros(2, 1, IMG, IMG, dtype=torch.bool)
    r = reconstruction.reconstruct(OracleMAE(norm_pix, in_chans=3), images, masks, 0.5, 0.0, mean=(0.3, 0.4, 0.5), std=(0.2, 0.25, 0.3))
    torch.testing.assert_close(r["decoded"], images, atol=1e-4, rtol=0)
    assert r["pixel_mask"].mean().item() == pytest.approx(0.5)


def test_reconstruction_panel(tmp_path):
    model = tiny_mae(norm_pix=True)
    torch.manual_seed(1)
    segmentor = UNeXt().eval()
    images = torch.rand(2, 1, IMG, IMG)
    masks = torch.zeros(2, 1, IMG, IMG, dtype=torch.bool)
    masks[:, :, 10:12, :] = True  # one patch row: 4 vessel patches of 16
    out = tmp_path / "rec.png"
    numbers = reconstruction.reconstruction_panel(model, segmentor, images, masks, 0.5, 1.0, 0, out, mean=0.45, std=0.25,
                                                  image_ids=["x", "y"])
    w, h = assert_png(out)
    assert w > h  # one row per image, six columns
    assert numbers["vessel_share_masked"] == [0.5, 0.5]  # beta 1: all 4 vessel patches among the 8 masked
    saved = json.loads(out.with_suffix(".json").read_text())
    assert saved["image_ids"] == ["x", "y"] and saved["settings"]["norm_pix"] is True

    r = reconstruction.reconstruct(model, images, masks, 0.5, 1.0, 0, mean=0.45, std=0.25)
    visible = r["pixel_mask"] == 0
    torch.testing.assert_close(r["pasted"][visible], images[visible])  # visible patches pasted back
    torch.testing.assert_close(r["pasted"][~visible], r["decoded"][~visible])
    # the panel's consistency number is the loss term of vasomim.losses on the same images
    for i in range(2):
        expected = consistency_loss(segmentor, r["decoded"][i : i + 1], images[i : i + 1]).item()
        assert numbers["consistency_bce"][i] == pytest.approx(expected, rel=1e-4)
    mse = ((r["decoded"] - images) ** 2 * r["pixel_mask"]).sum((1, 2, 3)) / r["pixel_mask"].sum((1, 2, 3))
    np.testing.assert_allclose(numbers["masked_mse"], mse.numpy(), rtol=1e-5)

    no_seg = reconstruction.reconstruction_panel(model, None, images, masks, 0.5, 1.0, 0, tmp_path / "rec2.png")
    assert "consistency_bce" not in no_seg
    assert_png(tmp_path / "rec2.png")


# ------------------------------------------------------------------------------ CLI


def write_pairs(root: Path, count: int = 3, size: int = 40) -> tuple[Path, Path]:
    images, anatomy = root / "images", root / "anatomy"
    images.mkdir(parents=True)
    anatomy.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(count):
        img = (rng.random((size, size)) * 255).astype(np.uint8)
        mask = np.zeros((size, size), np.uint8)
        mask[12 + i : 16 + i, :] = 255
        img[mask > 0] //= 3  # dark vessels
        Image.fromarray(img).save(images / f"img_{i}.png")
        Image.fromarray(mask).save(anatomy / f"img_{i}.png")
    return images, anatomy


def save_checkpoint(path: Path, name: str, norm_pix: bool = False) -> Path:
    model = tiny_mae(norm_pix)
    config = {"name": name, "data": {"img_size": IMG, "in_chans": 1, "mean": None, "std": None},  # the trainer's layout
              "model": {"size": "tiny", "num_heads": 2, "decoder_num_heads": 2, "norm_pix_loss": norm_pix}}
    torch.save({"model": model.state_dict(), "config": config, "epoch": 1}, path)
    return path


def test_cli_vessel_share_and_masking_map(tmp_path, capsys):
    run = write_run(tmp_path / "run", "vasomim", log_records([0.3, 0.4], [0.2, 0.2]))
    assert main(["analyze", "vessel-share", str(run), "--out", str(tmp_path / "o1")]) == 0
    assert_png(tmp_path / "o1" / "vessel_share.png")
    assert "vasomim: vessel-containing among masked 35.0%" in capsys.readouterr().out

    images, anatomy = write_pairs(tmp_path / "data", count=1)
    rc = main(["analyze", "masking-map", str(images / "img_0.png"), str(anatomy / "img_0.png"), "--out", str(tmp_path / "o2"),
               "--size", "64", "--patch", "8", "--epochs", "30", "--ratio", "0.5", "--beta0", "1", "--betaE", "1"])
    assert rc == 0
    assert_png(tmp_path / "o2" / "masking_map.png")
    saved = json.loads((tmp_path / "o2" / "masking_map.json").read_text())
    assert saved["guided"]["stats"]["mean_vessel"] == 1.0
    assert "figure:" in capsys.readouterr().out
    rc = main(["analyze", "masking-map", str(images / "img_0.png"), str(anatomy / "img_0.png"), "--out", str(tmp_path / "o3"),
               "--size", "0", "--patch", "16"])
    assert rc == 2 and "not divisible" in capsys.readouterr().err


def test_cli_clustering_and_reconstruction(tmp_path, capsys):
    images, anatomy = write_pairs(tmp_path / "data")
    a = save_checkpoint(tmp_path / "vasomim.pth", "vasomim", norm_pix=True)
    b = save_checkpoint(tmp_path / "mae.pth", "mae")
    rc = main(["analyze", "clustering", str(a), str(b), "--images", str(images), "--anatomy", str(anatomy),
               "--out", str(tmp_path / "clu")])
    assert rc == 0
    assert_png(tmp_path / "clu" / "clustering.png")
    saved = json.loads((tmp_path / "clu" / "clustering.json").read_text())
    assert set(saved["models"]) == {"vasomim", "mae"}
    assert saved["models"]["mae"]["embedding"]["n"] == 3 * 16
    assert "SS (×10⁻²)" in capsys.readouterr().out

    seg = tmp_path / "seg.pth"
    torch.save({"model": UNeXt().state_dict()}, seg)
    rc = main(["analyze", "reconstruction", str(a), "--images", str(images), "--anatomy", str(anatomy),
               "--segmentor", str(seg), "--out", str(tmp_path / "rec"), "--max-images", "2"])
    assert rc == 0
    assert_png(tmp_path / "rec" / "reconstruction.png")
    saved = json.loads((tmp_path / "rec" / "reconstruction.json").read_text())
    assert saved["image_ids"] == ["img_0.png", "img_1.png"] and saved["settings"]["norm_pix"] is True
    assert "consistency BCE" in capsys.readouterr().out

    bad = tmp_path / "bad.pth"
    torch.save({"model": {"x": torch.zeros(1)}}, bad)
    assert main(["analyze", "clustering", str(bad), "--images", str(images), "--anatomy", str(anatomy), "--out", str(tmp_path / "x")]) == 2
    assert "not an MAE checkpoint" in capsys.readouterr().err


def test_cli_sweep(tmp_path, capsys):
    path = tmp_path / "results.csv"
    rows = fabricated_results()
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    assert main(["analyze", "sweep", str(path), "--x", "x", "--x-label", "masking ratio", "--out", str(tmp_path / "s")]) == 0
    assert_png(tmp_path / "s" / "sweep.png")
    out = capsys.readouterr().out
    assert "| VasoMIM | 0.5 | 71.00 ± 1.41 | 76.00 ± 1.41 | 2 |" in out
    assert main(["analyze", "sweep", str(path), "--x", "ratio", "--out", str(tmp_path / "s")]) == 2
    assert "no column" in capsys.readouterr().err
