"""Shipped models: `vasomim ship` writes fp16 weights and a card, `vasomim models` lists them,
`vasomim predict` without a model uses vasomim-cimat, `finetune --init NAME` starts from an encoder."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml

import vasomim
from vasomim import shipped
from vasomim.cli import main
from vasomim.data.io import read_image, read_mask
from vasomim.data.synthetic import write_dataset
from vasomim.engines.finetune import FinetuneConfig, finetune
from vasomim.inference import model_from_checkpoint, predict_images

TINY = dict(embed_dim=64, depth=2, num_heads=2, decoder_channels=(32, 16, 16, 8, 8), img_size=64,
            device="cpu", workers=0)
CARD = {"summary": "A test model.", "data": "8 synthetic angiograms", "licence": "CC0",
        "recipe": {"epochs": 2}, "commands": ["vasomim finetune ..."], "scores_protocol": "3-fold CV"}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("ship")
    write_dataset(root / "data", count=8, size=64, seed=0, progress=False)
    cfg = FinetuneConfig(data=str(root / "data"), out=str(root / "run"), epochs=2, batch_size=4, folds=1,
                         lr=3e-3, **TINY)
    summary = finetune(cfg, progress=False)
    (root / "card.yaml").write_text(yaml.safe_dump(CARD))
    return root, summary


def test_ship_list_load_and_predict_by_name(trained, tmp_path, monkeypatch, capsys):
    root, summary = trained
    weights = tmp_path / "weights"
    monkeypatch.setattr(shipped, "WEIGHTS_DIR", weights)
    ckpt = summary["runs"][0]["checkpoint"]
    assert main(["ship", ckpt, "vasomim-cimat", "--kind", "segmentation", "--card", str(root / "card.yaml"),
                 "--scores", str(root / "run" / "summary.json")]) == 0
    card = json.loads((weights / "vasomim-cimat" / "card.json").read_text())
    assert card["kind"] == "segmentation" and card["dtype"] == "float16" and card["licence"] == "CC0"
    # one run (folds=1): the score alone, no "± 0.00" spread that was never measured
    assert summary["n_runs"] == 1 and card["scores"]["runs"] == "1"
    assert card["scores"]["DSC (%)"] == f"{100 * summary['metrics']['dice']['mean']:.2f}"
    md = (weights / "vasomim-cimat" / "MODEL_CARD.md").read_text()
    assert "## Training data" in md and "vasomim finetune ..." in md and "3-fold CV" in md
    assert not list(weights.glob(".*"))  # no temporary folder left
    assert all(p.stat().st_mode & 0o044 == 0o044 for p in (weights / "vasomim-cimat").rglob("*"))  # world-readable

    capsys.readouterr()
    assert main(["models"]) == 0
    listing = capsys.readouterr().out
    assert "vasomim-cimat" in listing and "segmentation" in listing and "MB" in listing

    # half precision: the same predictions as the fp32 checkpoint, to fp16 rounding
    ref, config = model_from_checkpoint(ckpt)
    model = vasomim.load_model("vasomim-cimat", device="cpu")
    assert next(model.parameters()).dtype == torch.float32
    images = [read_image(p) for p in sorted((root / "data" / "images").glob("*.png"))[:2]]
    a = predict_images(ref, images, config["input"])
    b = predict_images(model, images, model.input_convention)
    assert max(np.abs(x - y).max() for x, y in zip(a, b)) < 5e-3

    # predict with no model argument uses the shipped vasomim-cimat
    out = tmp_path / "seg"
    assert main(["predict", str(root / "data" / "images"), "--out", str(out), "--quiet", "--device", "cpu"]) == 0
    written = sorted(p.name for p in (out / "masks").glob("*.png"))
    assert written == sorted(p.name for p in (root / "data" / "images").glob("*.png"))
    assert read_mask(out / "masks" / written[0]).shape == (64, 64)


def test_predict_without_a_shipped_model_is_one_line(trained, tmp_path, monkeypatch, capsys):
    root, _ = trained
    monkeypatch.setattr(shipped, "WEIGHTS_DIR", tmp_path / "empty")
    assert main(["predict", str(root / "data" / "images"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert "vasomim-cimat" in err and "\n" not in err
    assert main(["predict", summary_ckpt(root), "--out", str(tmp_path / "o")]) == 2
    assert "give the images to segment after it" in capsys.readouterr().err


def summary_ckpt(root):
    return str(next((root / "run").rglob("best.pth")))


def test_finetune_init_from_a_shipped_encoder(trained, tmp_path, monkeypatch):
    root, summary = trained
    monkeypatch.setattr(shipped, "WEIGHTS_DIR", tmp_path / "weights")
    card = tmp_path / "card.yaml"
    card.write_text(yaml.safe_dump(CARD))
    assert main(["ship", summary["runs"][0]["checkpoint"], "vasomim-tiny", "--kind", "encoder",
                 "--card", str(card)]) == 0
    enc = tmp_path / "weights" / "vasomim-tiny"
    assert (enc / "encoder.safetensors").is_file() and json.loads((enc / "encoder.json").read_text())["crop_pct"] == 1.0
    cfg = FinetuneConfig(data=str(root / "data"), out=str(tmp_path / "ft"), epochs=1, batch_size=4, folds=1,
                         init="vasomim-tiny", **TINY)
    from vasomim.engines.finetune import build_network, initialize, network_config

    model = build_network(network_config(cfg))
    notes = initialize(model, "vasomim-tiny", "vit_unet")
    assert "encoder.safetensors" in notes[0] and "tensors loaded" in notes[0]
    ref, _ = model_from_checkpoint(summary["runs"][0]["checkpoint"])
    w, w_ref = model.encoder.blocks[0].attn.qkv.weight, ref.encoder.blocks[0].attn.qkv.weight
    assert torch.equal(w, w_ref.half().float())  # the fp16 weights, read back exactly
    assert finetune(cfg, progress=False)["n_runs"] == 1


def test_the_registry_does_not_load_torch():
    """`vasomim models` reads cards only: importing the registry must not pull in torch (writing a
    shipped folder lives in vasomim.models.ship)."""
    import subprocess
    import sys

    code = "import sys, vasomim.shipped; assert 'torch' not in sys.modules, 'torch loaded'"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True).returncode == 0


def test_card_scores_show_a_spread_only_over_several_runs(tmp_path):
    from vasomim.cli.models import scores_from_summary

    five = {"n_runs": 5, "metrics": {"dice": {"mean": 0.77141, "std": 0.02284}, "cldice": {"mean": 0.8367, "std": 0.0343}}}
    (tmp_path / "five.json").write_text(json.dumps(five))
    assert scores_from_summary(str(tmp_path / "five.json")) == {"DSC (%)": "77.14 ± 2.28", "clDice (%)": "83.67 ± 3.43",
                                                                "runs": "5"}
    one = {"runs": [{"checkpoint": "x"}], "metrics": {"dice": {"mean": 0.7654, "std": 0.0}}}
    (tmp_path / "one.json").write_text(json.dumps(one))
    assert scores_from_summary(str(tmp_path / "one.json")) == {"DSC (%)": "76.54", "runs": "1"}
