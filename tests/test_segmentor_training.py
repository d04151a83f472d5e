"""train-segmentor: the loss, the split, a tiny run that learns, resume, and loading checkpoints."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from vasomim.cli import main
from vasomim.data.datasets import SegmentationDataset
from vasomim.data.sources import AnatomySource
from vasomim.data.synthetic import write_dataset
from vasomim.data.transforms import TransformConfig, build_transform
from vasomim.engines.anatomy import AnatomyConfig, run_anatomy
from vasomim.engines.segmentor import (SegmentorConfig, evaluate_dice, load_segmentor, seg_loss, split_items,
                                       train_segmentor)
from vasomim.models.unext import UNeXt


def _scoring_loader(items, size: int = 64, batch_size: int = 4):
    """Held-out loader as train_segmentor builds it (gray in [0, 1], whole frames, masks required)."""
    tcfg = TransformConfig(size=size, channels=1, mean=(0.0,), std=(1.0,))
    dataset = SegmentationDataset(items, build_transform(tcfg, train=False), require_masks=True)
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size)


def test_seg_loss_by_hand():
    logits = torch.tensor([[[[0.0, 2.0], [-1.0, 0.5]]]])
    target = torch.tensor([[[[0.0, 1.0], [0.0, 1.0]]]])
    p = 1 / (1 + np.exp(-np.array([0.0, 2.0, -1.0, 0.5])))
    t = np.array([0.0, 1.0, 0.0, 1.0])
    bce = -np.mean(t * np.log(p) + (1 - t) * np.log(1 - p))
    dice = 2 * (p * t).sum() / (p.sum() + t.sum())
    assert seg_loss(logits, target).item() == pytest.approx(0.5 * bce + 0.5 * (1 - dice), rel=1e-5)


def test_split_is_deterministic_and_disjoint():
    items = list(range(20))
    tr, va = split_items(items, 0.2, seed=3)
    assert (tr, va) == split_items(items, 0.2, seed=3)
    assert len(va) == 4 and not set(tr) & set(va) and sorted(tr + va) == items
    assert len(split_items(items[:3], 0.1, 0)[1]) == 1


@pytest.fixture(scope="module")
def pseudo_labelled(tmp_path_factory):
    root = tmp_path_factory.mktemp("seg")
    write_dataset(root / "data", count=10, size=64, seed=0, progress=False)
    # the paper recipe: on 64-px frames the fov recipe's 12-px edge margin leaves a 40-px centre, too
    # little for a tiny UNeXt to learn in 40 epochs; this test is about training, not the recipe
    run_anatomy(root / "data" / "images", root / "anatomy", AnatomyConfig(recipe="paper", border=3, workers=1),
                progress=False)
    return root


def test_tiny_run_learns_and_resumes(pseudo_labelled, tmp_path):
    base = dict(images=str(pseudo_labelled / "data" / "images"), anatomy=str(pseudo_labelled / "anatomy"),
                img_size=64, batch_size=4, val_fraction=0.2, lr=3e-3)
    full = train_segmentor(SegmentorConfig(out=str(tmp_path / "full"), epochs=40, **base), progress=False)
    assert full["val_images"] == 2 and full["train_images"] == 8
    log = (tmp_path / "full" / "log.jsonl").read_text().splitlines()
    losses = [json.loads(l)["loss"] for l in log]
    assert losses[-1] < 0.75 * losses[0]
    # the reported val Dice is the saved model's, rescored here on the same split (40 steps on 64-px
    # pseudo-labels teach the loss, not yet a better Dice than an untrained net's: no bar on its size)
    model = load_segmentor(tmp_path / "full" / "segmentor.pth")
    items = AnatomySource(base["images"], base["anatomy"]).items
    val = _scoring_loader(split_items(items, 0.2, SegmentorConfig(out="x", **base).seed)[1])
    assert 0.0 <= full["val_dice_vs_pseudo_labels"] <= 1.0
    assert evaluate_dice(model, val, "cpu") == pytest.approx(full["val_dice_vs_pseudo_labels"], abs=1e-9)
    assert sum(v.numel() for v in model.state_dict().values()) == 253_920

    # stopped after 2 of 4 epochs (simulated by a crash-free short run writing last.pth), then resumed:
    # the run continues at epoch 3 and its log has one line per epoch
    cfg = SegmentorConfig(out=str(tmp_path / "b"), epochs=2, **base)
    train_segmentor(cfg, progress=False)
    assert torch.load(tmp_path / "b" / "last.pth", weights_only=True)["epoch"] == 2
    train_segmentor(cfg.model_copy(update={"epochs": 4}), resume=True, progress=False)
    epochs = [json.loads(l)["epoch"] for l in (tmp_path / "b" / "log.jsonl").read_text().splitlines()]
    assert epochs == [1, 2, 3, 4]
    assert torch.load(tmp_path / "b" / "segmentor.pth", weights_only=True)["model"].keys() == model.state_dict().keys()


def test_cli_errors_are_one_line(tmp_path, capsys):
    rc = main(["train-segmentor", "--images", str(tmp_path), "--anatomy", str(tmp_path), "--out", str(tmp_path / "o")])
    assert rc == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "manifest" in err and "\n" not in err


def test_load_segmentor_rejects_other_weights(tmp_path):
    torch.save({"model": {"foo": torch.zeros(3)}}, tmp_path / "x.pth")
    with pytest.raises(ValueError, match="not a UNeXt-S"):
        load_segmentor(tmp_path / "x.pth")


def test_scoring_leaves_the_random_streams_as_it_found_them(pseudo_labelled):
    # a DataLoader takes its base seed from the global torch generator; scoring must not move it,
    # or the validation schedule would change the training crops that follow
    items = AnatomySource(str(pseudo_labelled / "data" / "images"), str(pseudo_labelled / "anatomy")).items[:2]
    loader = _scoring_loader(items, batch_size=2)
    model = UNeXt()  # built first: its initialisation draws from the generator too
    torch.manual_seed(5)
    np.random.seed(5)
    expected_torch, expected_np = torch.rand(3), np.random.rand(3)
    torch.manual_seed(5)
    np.random.seed(5)
    score = evaluate_dice(model, loader, "cpu")
    assert 0.0 <= score <= 1.0
    assert torch.equal(torch.rand(3), expected_torch) and np.array_equal(np.random.rand(3), expected_np)
