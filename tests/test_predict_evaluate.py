"""predict and evaluate: resolution round trips, DICOM frames, bad files, scores equal to vasomim.metrics."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from PIL import Image

from vasomim.cli import main
from vasomim.data.io import read_image, read_mask, write_png_atomic
from vasomim.data.synthetic import synthesize
from vasomim.data.transforms import TransformConfig, build_transform
from vasomim.engines.evaluate import evaluate_folders
from vasomim.engines.finetune import FinetuneConfig, build_network, network_config
from vasomim.models.checkpoints import model_from_checkpoint
from vasomim.engines.predict import collect_inputs
from vasomim.inference import input_convention
from vasomim.metrics import binarize, evaluate_pair, resize_to, summarize

TINY = dict(embed_dim=64, depth=2, num_heads=2, decoder_channels=(32, 16, 16, 8, 8), img_size=64)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny ViT U-Net checkpoint in the layout `vasomim finetune` writes (random weights)."""
    cfg = FinetuneConfig(data="unused", **TINY)
    torch.manual_seed(0)
    model = build_network(network_config(cfg))
    with torch.no_grad():  # a bias that puts part of every image above 0.5
        model.head.bias.fill_(0.1)
    path = tmp_path_factory.mktemp("ckpt") / "best.pth"
    torch.save({"model": model.state_dict(), "epoch": 1, "best_metric": 0.5,
                "config": {"network": network_config(cfg), "input": input_convention(64, 1)}}, path)
    return path


def _expected_mask(path, checkpoint) -> np.ndarray:
    """The mask worked out directly: resize, normalise, forward, sigmoid, resize back, >= 0.5."""
    model, config = model_from_checkpoint(checkpoint)
    image = read_image(path)
    x, _ = build_transform(TransformConfig(size=64, channels=1), train=False)(image)
    with torch.no_grad():
        prob = torch.sigmoid(model(x[None]))[0, 0].numpy()
    return binarize(resize_to(prob, image.shape))


def test_predict_round_trips_resolution_and_names_bad_files(tmp_path, checkpoint, capsys):
    inp = tmp_path / "in"
    image, _ = synthesize(1, size=300)
    write_png_atomic(inp / "square.png", image)
    write_png_atomic(inp / "sub" / "wide.png", np.array(Image.fromarray(image).resize((320, 200))))
    (inp / "broken.png").write_bytes(b"\x89PNG not really")
    (inp / "notes.txt").write_text("ignored: not an image")
    rc = main(["predict", str(checkpoint), str(inp), str(tmp_path / "nowhere.png"), "--out",
               str(tmp_path / "out"), "--prob", "--prob-bits", "16", "--overlay", "--batch-size", "2",
               "--device", "cpu", "--quiet"])
    assert rc == 1
    err = capsys.readouterr().err
    failed = [line for line in err.splitlines() if line.startswith("failed:")]
    assert len(failed) == 2
    assert any("broken.png" in line for line in failed) and any("nowhere.png" in line for line in failed)

    out = tmp_path / "out"
    for name, (h, w) in {"square.png": (300, 300), "sub/wide.png": (200, 320)}.items():
        mask = np.array(Image.open(out / "masks" / name))
        assert mask.shape == (h, w) and set(np.unique(mask)) <= {0, 255}
        np.testing.assert_array_equal(mask == 255, _expected_mask(inp / name, checkpoint))
        prob = Image.open(out / "prob" / name)
        assert prob.size == (w, h) and prob.mode.startswith("I;16")
        overlay = Image.open(out / "overlay" / name)
        assert overlay.size == (w, h) and overlay.mode == "RGB"
    assert not (out / "masks" / "broken.png").exists()


def test_dicom_frames_become_images(tmp_path, checkpoint):
    pydicom = pytest.importorskip("pydicom", reason="pydicom (the 'dicom' extra) is not installed")
    from test_data_dicom import write_dicom  # one DICOM writer for the tests, pydicom 2.x and 3

    frames = np.stack([synthesize(s, size=48)[0] for s in range(3)]).astype("<u2") * 16
    write_dicom(tmp_path / "cine.dcm", frames, bits_stored=12)
    assert pydicom.dcmread(tmp_path / "cine.dcm").NumberOfFrames == 3

    items, failures = collect_inputs([tmp_path / "cine.dcm"])
    assert failures == [] and [it.id for it in items] == ["cine_f000.png", "cine_f001.png", "cine_f002.png"]
    rc = main(["predict", str(checkpoint), str(tmp_path / "cine.dcm"), "--out", str(tmp_path / "o"),
               "--device", "cpu", "--quiet"])
    assert rc == 0
    for k in range(3):
        assert np.array(Image.open(tmp_path / "o" / "masks" / f"cine_f{k:03d}.png")).shape == (48, 48)


def test_collect_inputs_keeps_same_stems_apart(tmp_path):
    image, _ = synthesize(2, size=32)
    write_png_atomic(tmp_path / "a" / "x.png", image)
    Image.fromarray(image).save(tmp_path / "a" / "x.jpg")
    write_png_atomic(tmp_path / "b" / "x.png", image)
    items, failures = collect_inputs([tmp_path / "a", tmp_path / "b"])
    assert failures == []
    assert [it.id for it in items] == ["a/x.jpg.png", "a/x.png.png", "b/x.png"]


def _read_csv(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_evaluate_folders_equals_metrics_and_names_failures(tmp_path, capsys):
    gt_dir, pred_dir = tmp_path / "gt", tmp_path / "pred"
    rng = np.random.default_rng(0)
    expected = {}
    for i in range(4):
        _, mask = synthesize(10 + i, size=64)
        write_png_atomic(gt_dir / f"img{i}.png", mask)
        pred = mask ^ (rng.random(mask.shape) < 0.05)  # 5 % of the pixels flipped
        write_png_atomic(pred_dir / f"img{i}.png", pred)
        expected[f"img{i}.png"] = evaluate_pair(pred, mask)
    write_png_atomic(gt_dir / "sub" / "missing.png", np.zeros((64, 64), bool))
    write_png_atomic(gt_dir / "small.png", np.zeros((64, 64), bool))
    write_png_atomic(pred_dir / "small.png", np.zeros((32, 32), bool))

    rc = main(["evaluate", "--pred", str(pred_dir), "--gt", str(gt_dir), "--out", str(tmp_path / "ev")])
    assert rc == 1
    captured = capsys.readouterr()
    assert "missing" in captured.err and "no prediction" in captured.err
    assert "small.png: prediction size 32x32 differs from reference" in captured.err
    assert "DSC" in captured.out and "clDice" in captured.out

    rows = _read_csv(tmp_path / "ev" / "per_image.csv")
    assert [r["image"] for r in rows] == sorted(expected)
    for r in rows:
        for m in ("dice", "cldice", "tprec", "tsens"):
            assert float(r[m]) == pytest.approx(expected[r["image"]][m], abs=1e-6)
    summary = json.loads((tmp_path / "ev" / "summary.json").read_text())
    assert summary["n_images"] == 4 and summary["n_failed"] == 2
    for m in ("dice", "cldice"):
        mean, std = summarize([expected[k][m] for k in sorted(expected)])
        assert summary["metrics"][m]["mean"] == pytest.approx(mean, abs=1e-12)
        assert summary["metrics"][m]["std"] == pytest.approx(std, abs=1e-12)


def test_predict_then_evaluate_equals_evaluate_checkpoint(tmp_path, checkpoint):
    data = tmp_path / "data"
    for i, size in enumerate((64, 80, 96)):
        image, mask = synthesize(20 + i, size=size)
        write_png_atomic(data / "images" / f"c{i}.png", image)
        write_png_atomic(data / "masks" / f"c{i}.png", mask)
    assert main(["predict", str(checkpoint), str(data / "images"), "--out", str(tmp_path / "p"),
                 "--device", "cpu", "--quiet"]) == 0
    folders = evaluate_folders(tmp_path / "p" / "masks", data / "masks")
    assert folders.failures == [] and len(folders.rows) == 3
    for row in folders.rows:  # each written mask has the reference's own size
        assert read_mask(tmp_path / "p" / "masks" / row["image"]).shape == read_mask(data / "masks" / row["image"]).shape
    assert main(["evaluate", "--checkpoint", str(checkpoint), "--data", str(data), "--out", str(tmp_path / "e"),
                 "--device", "cpu", "--quiet"]) == 0
    rows = {r["image"]: r for r in _read_csv(tmp_path / "e" / "per_image.csv")}
    for row in folders.rows:
        got = rows[row["image"]]
        assert float(got["dice"]) == pytest.approx(row["dice"], abs=1e-6)
        assert float(got["cldice"]) == pytest.approx(row["cldice"], abs=1e-6)


def test_usage_and_checkpoint_errors_are_one_line(tmp_path, capsys):
    assert main(["evaluate", "--pred", str(tmp_path)]) == 2
    assert "either --pred DIR --gt DIR" in capsys.readouterr().err
    torch.save({"model": {"w": torch.zeros(2)}}, tmp_path / "other.pth")
    (tmp_path / "in").mkdir()
    write_png_atomic(tmp_path / "in" / "a.png", np.zeros((8, 8), dtype=np.uint8))  # inputs exist: the model is at fault
    assert main(["predict", str(tmp_path / "other.pth"), str(tmp_path / "in"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "other.pth: not a vasomim segmentation checkpoint" in err and "\n" not in err
