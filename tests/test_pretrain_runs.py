"""A pre-training run is never lost or misrecorded: a folder that holds a run is only reused with
--resume or --overwrite, a resume refuses a change to the weights' shapes, and other changes are
logged as events while config.json keeps what the first epochs ran with."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from vasomim.cli import main
from vasomim.config import build_config
from vasomim.engines.pretrain import PretrainConfig, pretrain

# a depth-1 ViT of width 32 on 32-px images, no consistency loss (no segmentor needed)
TINY = [
    "data.img_size=32", "model.size=tiny", "model.embed_dim=32", "model.depth=1", "model.num_heads=2",
    "model.decoder_embed_dim=16", "model.decoder_depth=1", "model.decoder_num_heads=2", "consistency.weight=0",
    "workers=0", "device=cpu", "optim.warmup_epochs=0", "save_every=1", "batch_size=4",
]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, str]:
    """8 synthetic 32-px angiograms; their exact vessel masks stand for the anatomy masks."""
    from vasomim.data.synthetic import write_dataset

    root = tmp_path_factory.mktemp("runs-data")
    write_dataset(root / "synth", 8, size=32, seed=0, progress=False)
    names = sorted(p.name for p in (root / "synth" / "images").iterdir())
    lines = [json.dumps({"file": n, "status": "ok", "mask": n}) for n in names]
    (root / "synth" / "masks" / "manifest.jsonl").write_text("\n".join(lines) + "\n")
    return {"images": str(root / "synth" / "images"), "anatomy": str(root / "synth" / "masks")}


def cfg(data: dict[str, str], out: Path, *overrides: str) -> PretrainConfig:
    values = {"data": {"images": data["images"], "anatomy": data["anatomy"]}, "out": str(out)}
    return build_config(PretrainConfig, None, [*TINY, *overrides], **values)


def log_lines(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]


def test_a_finished_run_is_not_overwritten_without_resume_or_overwrite(data, tmp_path, capsys):
    run = tmp_path / "run"
    pretrain(cfg(data, run, "epochs=3"), progress=False)
    before = (run / "checkpoint-final.pth").read_bytes()
    capsys.readouterr()
    args = ["pretrain", "--images", data["images"], "--anatomy", data["anatomy"], "--out", str(run), "--quiet",
            *TINY, "epochs=1"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(run) in err[0] and "--resume" in err[0] and "--overwrite" in err[0]
    assert (run / "checkpoint-final.pth").read_bytes() == before
    assert [r["epoch"] for r in log_lines(run)] == [1, 2, 3]

    (run / "tensorboard").mkdir()
    assert main([*args, "--overwrite"]) == 0
    assert [r["epoch"] for r in log_lines(run)] == [1]  # a new 1-epoch run, nothing of the old one left
    assert torch.load(run / "checkpoint-final.pth", weights_only=True)["epoch"] == 1
    assert not (run / "tensorboard").exists()
    assert main([*args, "--overwrite", "--resume"]) == 2


def test_resume_refuses_a_change_to_the_weights_shapes_in_one_line(data, tmp_path, capsys):
    run = tmp_path / "run"
    pretrain(cfg(data, run, "epochs=1"), progress=False)
    capsys.readouterr()
    for change, key in [("model.depth=2", "model.depth"), ("data.img_size=64", "data.img_size"),
                        ("model.patch_size=8", "model.patch_size"), ("data.in_chans=3", "data.in_chans")]:
        assert main(["pretrain", "--images", data["images"], "--anatomy", data["anatomy"], "--out", str(run),
                     "--quiet", "--resume", *TINY, "epochs=2", change]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and f"{key}=" in err[0] and "checkpoint-last.pth" in err[0], err
        assert "Traceback" not in err[0] and "state_dict" not in err[0]
    assert [r["epoch"] for r in log_lines(run)] == [1]


def test_resume_logs_other_changes_and_keeps_the_recorded_config(data, tmp_path):
    run = tmp_path / "run"
    pretrain(cfg(data, run, "epochs=2"), progress=False)
    first_config = (run / "config.json").read_text()

    pretrain(cfg(data, run, "epochs=3", "masking.mask_ratio=0.75"), resume=True, progress=False)
    lines = log_lines(run)
    assert [r.get("epoch") for r in lines] == [1, 2, None, 3]
    assert lines[2] == {"event": "config_changed", "from_epoch": 3,
                        "changes": {"epochs": [2, 3], "masking.mask_ratio": [0.5, 0.75]}}
    assert (run / "config.json").read_text() == first_config  # what epochs 1-2 ran with
    assert torch.load(run / "checkpoint-last.pth", weights_only=True)["config"]["masking"]["mask_ratio"] == 0.75

    # a finished run resumed with another value trains nothing: no event, and the checkpoints keep
    # the config their last epoch ran with
    pretrain(cfg(data, run, "epochs=3", "masking.mask_ratio=0.25"), resume=True, progress=False)
    assert log_lines(run) == lines
    for name in ("checkpoint-last.pth", "checkpoint-final.pth"):
        assert torch.load(run / name, weights_only=True)["config"]["masking"]["mask_ratio"] == 0.75


def test_an_event_of_an_epoch_redone_after_a_crash_is_not_logged_twice(data, tmp_path):
    run = tmp_path / "run"
    pretrain(cfg(data, run, "epochs=1"), progress=False)
    # as if resumed with a change and killed in epoch 2 after its log line, before its checkpoint
    with open(run / "log.jsonl", "a") as fh:
        fh.write(json.dumps({"event": "config_changed", "from_epoch": 2, "changes": {}}) + "\n")
        fh.write(json.dumps({"epoch": 2, "step": 4}) + "\n")
    pretrain(cfg(data, run, "epochs=2", "masking.mask_ratio=0.75"), resume=True, progress=False)
    events = [r for r in log_lines(run) if "event" in r]
    assert [r.get("epoch") for r in log_lines(run)] == [1, None, 2] and len(events) == 1
    assert events[0]["changes"] == {"epochs": [1, 2], "masking.mask_ratio": [0.5, 0.75]}
