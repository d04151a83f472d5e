"""finetune: splits, label subsets, the loss, a tiny run that learns, k-fold reports, resume, init."""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest
import torch
from timm.models.vision_transformer import VisionTransformer

from vasomim.cli import main
from vasomim.config import config_to_dict
from vasomim.data.io import write_png_atomic
from vasomim.data.synthetic import synthesize, write_dataset
from vasomim.engines.finetune import (
    AugmentConfig,
    FinetuneConfig,
    build_network,
    dice_bce_loss,
    finetune,
    format_results,
    initialize,
    kfold_splits,
    network_config,
    subsample,
)
from vasomim.engines.finetune_run import check_resumable
from vasomim.metrics import summarize
from vasomim.models.checkpoints import model_from_checkpoint

TINY = dict(embed_dim=64, depth=2, num_heads=2, decoder_channels=(32, 16, 16, 8, 8), img_size=64,
            device="cpu", workers=0)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("ft") / "data"
    write_dataset(root, count=10, size=64, seed=0, progress=False)
    return root


def _log(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]


# --------------------------------------------------------------------------- pure pieces


def test_kfold_validates_every_item_exactly_once():
    for n, k in ((10, 3), (40, 5), (7, 7)):
        splits = kfold_splits(n, k, seed=4)
        assert splits == kfold_splits(n, k, seed=4)
        val = [i for _, v in splits for i in v]
        assert sorted(val) == list(range(n))
        for train, v in splits:
            assert sorted(train + v) == list(range(n)) and not set(train) & set(v)
        assert max(len(v) for _, v in splits) - min(len(v) for _, v in splits) <= 1
    assert kfold_splits(10, 3, seed=1) != kfold_splits(10, 3, seed=2)
    (train, val), = kfold_splits(10, 1, seed=0, val_fraction=0.2)
    assert len(val) == 2 and len(train) == 8
    with pytest.raises(ValueError, match="at least 5 labelled images"):
        kfold_splits(4, 5)


def test_label_fraction_subsets_are_deterministic_and_nested():
    idx = list(range(100, 132))
    quarter, half = subsample(idx, 0.25, [0, 1]), subsample(idx, 0.5, [0, 1])
    assert quarter == subsample(idx, 0.25, [0, 1]) and len(quarter) == 8 and len(half) == 16
    assert set(quarter) <= set(half) <= set(idx)
    assert quarter != subsample(idx, 0.25, [0, 2])
    assert subsample(idx, 1.0, 0) == idx and len(subsample(idx[:3], 0.1, 0)) == 1


def test_dice_bce_loss_by_hand():
    logits = torch.tensor([[[[0.0, 2.0], [-1.0, 0.5]]]])
    target = torch.tensor([[[[0.0, 1.0], [0.0, 1.0]]]])
    p = 1 / (1 + np.exp(-np.array([0.0, 2.0, -1.0, 0.5])))
    t = np.array([0.0, 1.0, 0.0, 1.0])
    bce = -np.mean(t * np.log(p) + (1 - t) * np.log(1 - p))
    dice = (2 * (p * t).sum() + 1) / (p.sum() + t.sum() + 1)
    assert dice_bce_loss(logits, target).item() == pytest.approx(bce + 1 - dice, rel=1e-5)
    assert dice_bce_loss(logits, target, 0.5, 2.0).item() == pytest.approx(0.5 * bce + 2 * (1 - dice), rel=1e-5)


# --------------------------------------------------------------------------- training


def test_tiny_finetune_beats_the_untrained_model(data, tmp_path):
    cfg = FinetuneConfig(data=str(data), out=str(tmp_path / "run"), epochs=20, batch_size=4, lr=3e-3,
                         val_every=5, folds=1, val_fraction=0.2, **TINY)
    summary = finetune(cfg, progress=False)
    log = _log(tmp_path / "run" / "seed0" / "fold0")
    untrained = next(r["val_dice"] for r in log if r.get("epoch") == 0)
    best = max(r["val_dice"] for r in log if r.get("epoch", 0) > 0 and "val_dice" in r)
    assert best > untrained + 0.15, (untrained, best)
    run = summary["runs"][0]
    assert run["best_val_dice"] == pytest.approx(best) and run["dice"] == pytest.approx(best)
    ckpt = torch.load(tmp_path / "run" / "seed0" / "fold0" / "best.pth", weights_only=True)
    assert ckpt["best_metric"] == pytest.approx(best) and ckpt["epoch"] == run["best_epoch"]
    model, config = model_from_checkpoint(tmp_path / "run" / "seed0" / "fold0" / "best.pth")
    assert config["network"]["embed_dim"] == 64 and config["input"]["size"] == 64
    assert model(torch.zeros(1, 1, 64, 64)).shape == (1, 1, 64, 64)


def test_native_recipe_trains_on_windows_and_records_its_scale(tmp_path, monkeypatch):
    """input_scale 1 + zoom crops: 32-px windows of 64-px images at their own resolution, no stem,
    flip TTA in scoring; the checkpoint says scale 1, and the scores are the sliding-window ones."""
    from vasomim.engines.evaluate import score_items
    from vasomim.engines.finetune import labelled_items

    root = tmp_path / "data"
    write_dataset(root, count=6, size=64, seed=3, progress=False)
    tiny = {**TINY, "img_size": 32}
    cfg = FinetuneConfig(data=str(root), out=str(tmp_path / "run"), epochs=2, batch_size=2, lr=3e-3, folds=1,
                         val_fraction=0.34, input_scale=1.0, stem_levels=0, tta=True,
                         augment={"zoom": (0.9, 1.1), "photometric": False}, **tiny)
    import vasomim.engines.finetune_run as engine

    seen = []
    real_score = engine.score_items
    monkeypatch.setattr(engine, "score_items", lambda *a, **k: seen.append(k.get("tta")) or real_score(*a, **k))
    summary = finetune(cfg, progress=False)
    assert seen and all(seen)  # validation and the final scoring average with the flip
    model, config = model_from_checkpoint(summary["runs"][0]["checkpoint"])
    assert config["input"]["scale"] == 1.0 and config["network"]["stem_levels"] == 0
    assert config["tta"] is True and tuple(config["augment"]["zoom"]) == (0.9, 1.1)
    recorded = {r["image"]: float(r["dice"]) for r in summary_rows(tmp_path / "run")}
    val = [it for it in labelled_items(str(root)) if it.id in recorded]
    with_tta = {r["image"]: r["dice"] for r in score_items(model, val, config["input"], tta=True).rows}
    assert with_tta == pytest.approx(recorded, abs=1e-5)  # the CSV keeps 6 decimals


def test_only_folds_runs_those_folds(data, tmp_path):
    cfg = FinetuneConfig(data=str(data), out=str(tmp_path / "run"), epochs=1, batch_size=4, folds=3,
                         only_folds=[1], **TINY)
    summary = finetune(cfg, progress=False)
    assert [r["fold"] for r in summary["runs"]] == [1]
    assert {r["fold"] for r in summary_rows(tmp_path / "run")} == {"1"}
    assert not (tmp_path / "run" / "seed0" / "fold0").exists()
    with pytest.raises(ValueError, match="only_folds"):
        FinetuneConfig(data=str(data), folds=3, only_folds=[3], **TINY)


def test_val_data_is_the_held_out_set_and_all_of_data_trains(data, tmp_path):
    held = tmp_path / "held"
    write_dataset(held, count=3, size=64, seed=99, progress=False)
    cfg = FinetuneConfig(data=str(data), val_data=str(held), out=str(tmp_path / "run"), epochs=1, batch_size=4,
                         label_fraction=0.5, **TINY)
    summary = finetune(cfg, progress=False)
    run = summary["runs"][0]
    assert (run["n_train"], run["n_val"]) == (5, 3)  # half of the 10 training images, all 3 held out
    assert sorted(r["image"] for r in summary_rows(tmp_path / "run")) == [f"synth_{i:04d}.png" for i in range(3)]
    with pytest.raises(ValueError, match="folds must be 1"):
        FinetuneConfig(data=str(data), val_data=str(held), folds=5, **TINY)


def summary_rows(run):
    with open(run / "per_image.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def test_kfold_report_covers_every_image_once(data, tmp_path, capsys):
    rc = main(["finetune", "--data", str(data), "--out", str(tmp_path / "cv"), "--folds", "3", "--seeds", "0,1",
               "--quiet", "epochs=1", "batch_size=4", "embed_dim=64", "depth=2", "num_heads=2", "img_size=64",
               "decoder_channels=[32,16,16,8,8]", "device=cpu"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "DSC" in out and "over 6 runs (folds x seeds)" in out
    with open(tmp_path / "cv" / "per_image.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    for seed in ("0", "1"):
        images = sorted(r["image"] for r in rows if r["seed"] == seed)
        assert images == [f"synth_{i:04d}.png" for i in range(10)]
    summary = json.loads((tmp_path / "cv" / "summary.json").read_text())
    assert summary["n_runs"] == 6
    per_run = [np.mean([float(r["dice"]) for r in rows if (r["seed"], r["fold"]) == (s, f)])
               for s in ("0", "1") for f in ("0", "1", "2")]
    mean, std = summarize(per_run)
    assert summary["metrics"]["dice"]["mean"] == pytest.approx(mean, abs=1e-6)
    assert summary["metrics"]["dice"]["std"] == pytest.approx(std, abs=1e-6)


def test_resume_gives_the_weights_of_an_uninterrupted_run(data, tmp_path, capsys):
    base = dict(data=str(data), epochs=3, batch_size=4, lr=3e-3, val_every=2, folds=1, **TINY)
    finetune(FinetuneConfig(out=str(tmp_path / "full"), **base), progress=False)
    cut = FinetuneConfig(out=str(tmp_path / "cut"), **base)
    assert finetune(cut, progress=False, stop_after=1) is None
    assert torch.load(tmp_path / "cut" / "seed0" / "fold0" / "last.pth", weights_only=True)["epoch"] == 1
    with pytest.raises(ValueError, match="holds a previous run"):
        finetune(cut, progress=False)
    with pytest.raises(ValueError, match="config differs in lr"):
        finetune(cut.model_copy(update={"lr": 1e-3}), resume=True, progress=False)
    finetune(cut, resume=True, progress=False)
    for name in ("last.pth", "best.pth"):
        a = torch.load(tmp_path / "full" / "seed0" / "fold0" / name, weights_only=True)
        b = torch.load(tmp_path / "cut" / "seed0" / "fold0" / name, weights_only=True)
        assert a["epoch"] == b["epoch"]
        for key, value in a["model"].items():
            torch.testing.assert_close(b["model"][key], value, rtol=0, atol=0, msg=f"{name} {key}")
    epochs = [r["epoch"] for r in _log(tmp_path / "cut" / "seed0" / "fold0") if "epoch" in r]
    assert epochs == [0, 1, 2, 3]


def test_a_forced_layout_trains_in_it_and_a_run_may_resume_in_the_other(data, tmp_path):
    """``layout`` forces the training layout (the saved weights keep it) and is speed only, so a run
    cut in channels-last resumes in the default layout. (That both layouts compute the same step is
    ``test_inference.py::test_layouts_agree_on_a_training_step``; over epochs Adam turns their float32
    rounding into lr-sized weight differences, so whole runs are not compared here.)"""
    def conv_layouts(path):
        state = torch.load(path, weights_only=True)["model"]
        convs = [v for k, v in state.items() if v.ndim == 4 and v.shape[1] > 1 and v.shape[2] > 1]
        assert convs
        return ({v.is_contiguous(memory_format=torch.channels_last) for v in convs},
                {v.is_contiguous() for v in convs})

    base = dict(data=str(data), epochs=2, batch_size=4, lr=3e-3, val_every=2, folds=1, **TINY)
    cut = FinetuneConfig(out=str(tmp_path / "cut"), layout="channels_last", **base)
    assert finetune(cut, progress=False, stop_after=1) is None
    last = tmp_path / "cut" / "seed0" / "fold0" / "last.pth"
    assert conv_layouts(last) == ({True}, {False})
    finetune(cut.model_copy(update={"layout": "contiguous"}), resume=True, progress=False)
    assert torch.load(last, weights_only=True)["epoch"] == 2
    assert conv_layouts(last) == ({False}, {True})
    with pytest.raises(ValueError, match="layout"):
        FinetuneConfig(data="unused", layout="nhwc")


def test_validation_does_not_move_the_training_random_streams(data, tmp_path):
    # scoring held-out frames every epoch or never in between must train the same weights
    base = dict(data=str(data), epochs=3, batch_size=4, lr=3e-3, folds=1, **TINY)
    finetune(FinetuneConfig(out=str(tmp_path / "often"), val_every=1, **base), progress=False)
    finetune(FinetuneConfig(out=str(tmp_path / "once"), val_every=3, **base), progress=False)
    a = torch.load(tmp_path / "often" / "seed0" / "fold0" / "last.pth", weights_only=True)["model"]
    b = torch.load(tmp_path / "once" / "seed0" / "fold0" / "last.pth", weights_only=True)["model"]
    for key, value in a.items():
        torch.testing.assert_close(b[key], value, rtol=0, atol=0, msg=key)


def test_resume_check_reads_settings_a_checkpoint_lacks_as_their_defaults(tmp_path):
    cfg = FinetuneConfig(data="unused", **TINY)
    saved = config_to_dict(cfg)
    del saved["augment"]["margin"], saved["augment"]["margin_width"], saved["tta"]  # an older run
    check_resumable(saved, cfg, tmp_path)  # the missing keys are at their defaults: resumable
    with pytest.raises(ValueError, match=r"differs in augment \(saved"):
        check_resumable(saved, cfg.model_copy(update={"augment": AugmentConfig(margin=0.5)}), tmp_path)
    with pytest.raises(ValueError, match="differs in tta"):
        check_resumable(saved, cfg.model_copy(update={"tta": not cfg.tta}), tmp_path)
    check_resumable({**saved, "epochs": 7}, cfg, tmp_path)  # a resumable change


def test_select_last_scores_the_final_epoch_and_rescoring_needs_no_training(data, tmp_path, capsys):
    base = dict(data=str(data), out=str(tmp_path / "run"), epochs=6, batch_size=4, lr=3e-3, val_every=1,
                folds=1, val_fraction=0.3, **TINY)
    best = finetune(FinetuneConfig(**base), progress=False)
    run_dir = tmp_path / "run" / "seed0" / "fold0"
    log = [r for r in _log(run_dir) if "val_dice" in r]
    by_epoch = {r["epoch"]: r["val_dice"] for r in log}
    top = max((r for r in log if r["epoch"] > 0), key=lambda r: r["val_dice"])
    assert best["select"] == "best" and best["runs"][0]["selected_epoch"] == top["epoch"]
    assert best["runs"][0]["dice"] == pytest.approx(top["val_dice"])
    assert best["runs"][0]["checkpoint"].endswith("best.pth")

    # the same finished run, scored the unbiased way: no epoch is trained again
    last = finetune(FinetuneConfig(select="last", **base), resume=True, progress=False)
    run = last["runs"][0]
    assert run["checkpoint"].endswith("last.pth") and run["selected_epoch"] == 6
    assert run["dice"] == pytest.approx(by_epoch[6])
    assert run["best_epoch"] == top["epoch"]  # the best epoch is still reported as such
    assert [r["epoch"] for r in _log(run_dir) if "val_dice" in r] == [r["epoch"] for r in log]
    with open(tmp_path / "run" / "per_image.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert np.mean([float(r["dice"]) for r in rows]) == pytest.approx(by_epoch[6], abs=1e-6)
    assert "select: last" in format_results(last)


# --------------------------------------------------------------------------- initialisation


def test_init_from_an_mae_checkpoint_loads_the_encoder_only(tmp_path):
    cfg = FinetuneConfig(data="unused", **TINY)
    vit = VisionTransformer(img_size=224, patch_size=16, in_chans=3, num_classes=0, global_pool="",
                            embed_dim=64, depth=2, num_heads=2)
    gen = torch.Generator().manual_seed(1)
    enc = {k: torch.randn(v.shape, generator=gen) for k, v in vit.state_dict().items()}
    mae = {**enc, "mask_token": torch.zeros(1, 1, 32), "decoder_embed.weight": torch.zeros(32, 64),
           "decoder_pred.weight": torch.zeros(768, 32)}
    torch.save({"model": mae}, tmp_path / "mae.pth")
    torch.manual_seed(0)
    model = build_network(network_config(cfg))
    decoder_before = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("encoder.")}
    notes = initialize(model, str(tmp_path / "mae.pth"), "vit_unet")
    assert "encoder" in notes[0] and "pos_embed: grid 14x14 -> 4x4" in notes[0] and len(notes) == 1
    state = model.state_dict()
    torch.testing.assert_close(state["encoder.blocks.1.mlp.fc2.weight"], enc["blocks.1.mlp.fc2.weight"])
    torch.testing.assert_close(state["encoder.patch_embed.proj.weight"],
                               enc["patch_embed.proj.weight"].sum(1, keepdim=True))
    for k, v in decoder_before.items():
        torch.testing.assert_close(state[k], v, rtol=0, atol=0)


def _anatomy_source(root, n=6):
    """Images + anatomy masks + manifest, as `vasomim anatomy` writes them."""
    lines = []
    for i in range(n):
        image, mask = synthesize(50 + i, size=64)
        write_png_atomic(root / "images" / f"u{i}.png", image)
        write_png_atomic(root / "anatomy" / f"u{i}.png", mask)
        lines.append(json.dumps({"file": f"u{i}.png", "status": "ok", "mask": f"u{i}.png"}))
    (root / "anatomy" / "manifest.jsonl").write_text("\n".join(lines) + "\n")


def test_spt_pseudo_label_checkpoint_initialises_the_whole_network(data, tmp_path, capsys):
    _anatomy_source(tmp_path)
    spt = FinetuneConfig(data={"type": "anatomy", "images": str(tmp_path / "images"),
                               "anatomy": str(tmp_path / "anatomy")},
                         out=str(tmp_path / "spt"), epochs=1, batch_size=4, folds=1, val_fraction=0.0, **TINY)
    summary = finetune(spt, progress=False)
    assert summary["runs"][0]["n_train"] == 6 and summary["metrics"] == {}
    best = tmp_path / "spt" / "seed0" / "fold0" / "best.pth"
    trained = torch.load(best, weights_only=True)["model"]

    torch.manual_seed(123)
    model = build_network(network_config(spt))
    notes = initialize(model, str(best), "vit_unet")
    assert any("whole network" in n for n in notes)
    state = model.state_dict()
    assert set(state) == set(trained)
    for k, v in trained.items():
        torch.testing.assert_close(state[k], v, rtol=0, atol=0, msg=k)

    # the CLI path: a second fine-tune on labelled data starts from it
    rc = main(["finetune", "--data", str(data), "--out", str(tmp_path / "ft"), "--init", str(best), "--quiet",
               "epochs=1", "batch_size=4", "embed_dim=64", "depth=2", "num_heads=2", "img_size=64",
               "decoder_channels=[32,16,16,8,8]", "device=cpu"])
    assert rc == 0
    events = [r["event"] for r in _log(tmp_path / "ft" / "seed0" / "fold0") if "event" in r]
    assert any("whole network" in e for e in events)
    # another decoder width: the encoder loads, the decoder is named and left random
    other = build_network(network_config(spt.model_copy(update={"decoder_channels": (16, 16, 8, 8, 8)})))
    notes = initialize(other, str(best), "vit_unet")
    assert "decoder" in notes[1] and "not loaded" in notes[1]


def test_unet_arm_from_its_config_and_its_init_rule(data, tmp_path, capsys):
    rc = main(["finetune", "--config", "finetune/unet_cpu", "--data", str(data), "--out",
               str(tmp_path / "u"), "--folds", "2", "--quiet", "epochs=1", "img_size=64", "base_channels=4",
               "levels=2", "device=cpu"])
    assert rc == 0, capsys.readouterr().err
    model, config = model_from_checkpoint(tmp_path / "u" / "seed0" / "fold1" / "best.pth")
    assert config["network"]["arch"] == "unet" and config["network"]["base_channels"] == 4
    vit = build_network(network_config(FinetuneConfig(data="unused", **TINY)))
    torch.save({"model": vit.state_dict()}, tmp_path / "vit.pth")
    with pytest.raises(ValueError, match="vit.pth: not a U-Net checkpoint"):
        initialize(model, str(tmp_path / "vit.pth"), "unet")
    rc = main(["finetune", "--data", str(data), "--out", str(tmp_path / "bad"), "--quiet", "folds=0"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith("error:") and "folds" in err and "\n" not in err


def test_a_run_another_job_holds_is_skipped_and_left_to_it(data, tmp_path, caplog):
    from vasomim.engines.common import claim

    cfg = FinetuneConfig(data=str(data), out=str(tmp_path / "run"), epochs=1, batch_size=4, folds=1,
                         seeds=[0, 1], **TINY)
    with claim(tmp_path / "run" / "seed1" / "fold0"):  # seed 1 is being trained by another job
        summary = finetune(cfg, progress=False)
    assert summary["busy"] == ["seed 1 / fold 0"] and [r["seed"] for r in summary["runs"]] == [0]
    assert {r["seed"] for r in summary_rows(tmp_path / "run")} == {"0"}
    assert not (tmp_path / "run" / "seed1" / "fold0" / "last.pth").exists()  # never touched
    assert any("seed 1 fold 0: skipped" in r.message and "in use by process" in r.message for r in caplog.records)
    again = finetune(cfg, resume=True, progress=False)  # free now: the next job trains it
    assert "busy" not in again and [r["seed"] for r in again["runs"]] == [0, 1]


# --------------------------------------------------------------------------- run records


def test_a_finished_run_counts_from_its_record_when_its_weights_are_gone(data, tmp_path, caplog):
    """A run trained by an earlier invocation (or refilled from an archive) keeps its scores in the
    summary and the per-image table of a later one that does not train it."""
    cfg = FinetuneConfig(data=str(data), out=str(tmp_path / "run"), epochs=1, batch_size=4, folds=1,
                         seeds=[0, 1], **TINY)
    first = finetune(cfg, progress=False)
    before = summary_rows(tmp_path / "run")
    seed0 = tmp_path / "run" / "seed0" / "fold0"
    record = json.loads((seed0 / "result.json").read_text())
    assert record["seed"] == 0 and record["rows"] and record["config"]["lr"] == cfg.lr
    for name in ("last.pth", "best.pth"):  # only the text records are left, as in an archive
        (seed0 / name).unlink()

    caplog.set_level("INFO")
    again = finetune(cfg, resume=True, progress=True, runs={(1, 0)})
    assert [r["seed"] for r in again["runs"]] == [0, 1]
    assert again["runs"][0]["dice"] == pytest.approx(first["runs"][0]["dice"])
    assert again["metrics"]["dice"]["mean"] == pytest.approx(first["metrics"]["dice"]["mean"])
    assert summary_rows(tmp_path / "run") == before  # the same rows, seed 0's from its record
    assert any("seed 0 fold 0: finished earlier" in r.message for r in caplog.records)
    assert not (seed0 / "last.pth").exists()  # counted, not trained again
    # chosen too, it is still not trained again: it is finished
    assert [r["seed"] for r in finetune(cfg, resume=True, progress=False)["runs"]] == [0, 1]
    assert not (seed0 / "last.pth").exists()


def test_the_reports_rebuilt_from_the_run_records_alone_match_the_invocations(data, tmp_path):
    """``summary_from_records`` gives the summary and per-image table of the runs' records alone:
    those of the invocation that trained them (but the wall time, the sum of the runs' times), and
    for runs trained apart in two folders, gathered in one, those of one invocation over both."""
    from vasomim.engines.finetune import recorded_runs, summary_from_records

    cfg = FinetuneConfig(data=str(data), out=str(tmp_path / "run"), epochs=1, batch_size=4, folds=2,
                         seeds=[0], **TINY)
    whole = finetune(cfg, progress=False)
    table = (tmp_path / "run" / "per_image.csv").read_text()
    for name in ("per_image.csv", "summary.json"):
        (tmp_path / "run" / name).unlink()
    rebuilt = summary_from_records(tmp_path / "run")
    assert (tmp_path / "run" / "per_image.csv").read_text() == table
    assert json.loads((tmp_path / "run" / "summary.json").read_text()) == rebuilt
    assert {k: v for k, v in rebuilt.items() if k != "wall_s"} == {k: v for k, v in whole.items() if k != "wall_s"}
    assert rebuilt["wall_s"] == pytest.approx(sum(r["wall_s"] for r in whole["runs"]))

    # fold 1 trained in a folder of its own (another machine), its run folder gathered with fold 0's
    apart = finetune(cfg.model_copy(update={"out": str(tmp_path / "apart"), "only_folds": [1]}), progress=False)
    shutil.rmtree(tmp_path / "run" / "seed0" / "fold1")
    shutil.copytree(tmp_path / "apart" / "seed0" / "fold1", tmp_path / "run" / "seed0" / "fold1")
    assert recorded_runs(tmp_path / "run") == {(0, 0), (0, 1)}
    merged = summary_from_records(tmp_path / "run")
    rows = list(csv.DictReader(open(tmp_path / "run" / "per_image.csv", newline="")))
    assert {r["fold"] for r in rows} == {"0", "1"} and len(rows) == len(table.splitlines()) - 1
    assert merged["runs"][1]["dice"] == apart["runs"][0]["dice"]
    per_run = [np.mean([float(r["dice"]) for r in rows if r["fold"] == f]) for f in "01"]
    assert merged["metrics"]["dice"]["mean"] == pytest.approx(np.mean(per_run), abs=1e-6)  # of the run means (the table: 6 digits)
    assert merged["metrics"]["dice"]["std"] == pytest.approx(np.std(per_run, ddof=1), abs=1e-6)
    (tmp_path / "run" / "config.json").unlink()
    with pytest.raises(ValueError, match=r"config\.json: no readable fine-tuning config"):
        summary_from_records(tmp_path / "run")


def test_resuming_a_finished_run_keeps_its_record_and_log(data, tmp_path):
    """``--resume`` over a run that finished under the same config (its weights still there, e.g. a
    study run with ``only`` naming another seed) counts it from its record: no re-scoring, its
    record and its log are left as they were; another ``select`` re-scores it."""
    cfg = FinetuneConfig(data=str(data), out=str(tmp_path / "run"), epochs=1, batch_size=4, folds=1, **TINY)
    first = finetune(cfg, progress=False)
    run_dir = tmp_path / "run" / "seed0" / "fold0"
    record, log = (run_dir / "result.json").read_text(), (run_dir / "log.jsonl").read_text()
    assert json.loads(record)["wall_s"] > 0
    again = finetune(cfg, resume=True, progress=False)
    assert again["runs"][0]["dice"] == first["runs"][0]["dice"]
    assert (run_dir / "result.json").read_text() == record
    assert (run_dir / "log.jsonl").read_text() == log
    rescored = finetune(cfg.model_copy(update={"select": "last"}), resume=True, progress=False)
    assert json.loads((run_dir / "result.json").read_text())["config"]["select"] == "last"
    assert rescored["runs"][0]["selected_epoch"] == 1


def test_a_run_record_of_another_config_or_unreadable_is_ignored(data, tmp_path, caplog):
    from vasomim.engines.finetune_run import load_result

    cfg = FinetuneConfig(data=str(data), out=str(tmp_path / "run"), epochs=1, batch_size=4, folds=1, **TINY)
    finetune(cfg, progress=False)
    run_dir = tmp_path / "run" / "seed0" / "fold0"
    assert load_result(run_dir, cfg).seed == 0
    assert load_result(run_dir, cfg.model_copy(update={"workers": 0, "val_every": 7})) is not None
    assert load_result(run_dir, cfg.model_copy(update={"lr": 0.5})) is None
    assert load_result(run_dir, cfg.model_copy(update={"epochs": 2})) is None
    assert any("another config (differs in lr)" in r.message for r in caplog.records)
    (run_dir / "result.json").write_text("{not json")
    assert load_result(run_dir, cfg) is None
    assert any("unreadable run record" in r.message and str(run_dir) in r.message for r in caplog.records)
