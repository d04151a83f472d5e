"""Messages: the library logs through the `vasomim` logger (never print), the command line routes it
(--quiet / --verbose), every demo option has help, and TensorBoard logging is optional for
fine-tuning and the segmentor as for pre-training."""

from __future__ import annotations

import ast
import json
import logging
import sys
import types
from pathlib import Path

import pytest

import vasomim
from vasomim.cli import build_parser, main

TINY_PRETRAIN = [
    "data.img_size=32", "model.size=tiny", "model.embed_dim=32", "model.depth=1", "model.num_heads=2",
    "model.decoder_embed_dim=16", "model.decoder_depth=1", "model.decoder_num_heads=2", "consistency.weight=0",
    "workers=0", "device=cpu", "batch_size=4", "epochs=1",
]
TINY_FINETUNE = dict(embed_dim=32, depth=1, num_heads=2, decoder_channels=(16, 8, 8, 8, 8), img_size=64,
                     device="cpu", workers=0)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """6 synthetic 64-px angiograms whose exact vessel masks also stand for their anatomy masks."""
    from vasomim.data.synthetic import write_dataset

    root = tmp_path_factory.mktemp("messages") / "synth"
    write_dataset(root, 6, size=64, seed=0, progress=False)
    names = sorted(p.name for p in (root / "images").iterdir())
    (root / "masks" / "manifest.jsonl").write_text(
        "".join(json.dumps({"file": n, "status": "ok", "mask": n}) + "\n" for n in names))
    return root


def test_the_library_never_prints():
    root = Path(vasomim.__file__).parent
    printing = []
    for path in root.rglob("*.py"):
        if path.parent.name == "cli":  # the command line prints its results to stdout
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "print":
                printing.append(f"{path.relative_to(root)}:{node.lineno}")
    assert printing == []


def test_quiet_and_verbose_route_the_vasomim_logger(data, tmp_path, capsys, caplog):
    from vasomim.config import build_config
    from vasomim.engines.pretrain import PretrainConfig, pretrain

    # a library caller gets the messages as log records
    cfg = build_config(PretrainConfig, None, TINY_PRETRAIN, out=str(tmp_path / "lib"),
                       data={"images": str(data / "images"), "anatomy": str(data / "masks")})
    with caplog.at_level(logging.INFO, logger="vasomim"):
        pretrain(cfg, progress=False)
    assert any(r.name == "vasomim.engines.pretrain" and "[pretrain] vasomim: ViT-tiny" in r.getMessage()
               for r in caplog.records)

    args = ["pretrain", "--images", str(data / "images"), "--anatomy", str(data / "masks"), *TINY_PRETRAIN]
    assert main([*args, "--out", str(tmp_path / "a")]) == 0
    assert "[pretrain] vasomim: ViT-tiny" in capsys.readouterr().err
    for quiet in (["--quiet", *args], [*args, "--quiet"], ["-q", *args]):
        assert main([*quiet, "--out", str(tmp_path / f"q{len(quiet)}{quiet[0]}")]) == 0
        assert capsys.readouterr().err == ""  # no messages, no progress bars
    assert main(["--verbose", *args, "--out", str(tmp_path / "v"), "--quiet"]) == 0
    assert logging.getLogger("vasomim").level == logging.DEBUG
    capsys.readouterr()
    with pytest.raises(SystemExit):  # one or the other
        build_parser().parse_args(["--quiet", "--verbose", "demo"])


def test_every_demo_option_has_help():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    demo = sub.choices["demo"]
    options = [a for a in demo._actions if a.option_strings and a.dest != "help"]
    assert {"pretrain_epochs", "finetune_epochs", "seed"} <= {a.dest for a in options}
    assert [a.dest for a in options if not a.help] == []


class FakeWriter:
    """Stands for torch.utils.tensorboard.SummaryWriter (the optional package is not installed here)."""

    written: list[tuple[str, str, float, int]] = []

    def __init__(self, log_dir: str) -> None:
        self.log_dir = log_dir

    def add_scalar(self, tag: str, value: float, step: int) -> None:
        FakeWriter.written.append((self.log_dir, tag, value, step))

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def test_tensorboard_for_finetuning_and_the_segmentor(data, tmp_path, monkeypatch, caplog):
    from vasomim.engines.finetune import FinetuneConfig, finetune
    from vasomim.engines.segmentor import SegmentorConfig, train_segmentor

    seg = dict(images=str(data / "images"), anatomy=str(data / "masks"), img_size=64, batch_size=4,
               val_fraction=0.2, epochs=2, device="cpu")
    ft = dict(data=str(data), epochs=2, batch_size=4, val_every=1, folds=1, val_fraction=0.2, **TINY_FINETUNE)

    # not installed: a warning naming the extra, and the runs go on
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    with caplog.at_level(logging.WARNING, logger="vasomim"):
        train_segmentor(SegmentorConfig(out=str(tmp_path / "seg0"), tensorboard=True, **seg), progress=False)
        finetune(FinetuneConfig(out=str(tmp_path / "ft0"), tensorboard=True, **ft), progress=False)
    warnings = [r.getMessage() for r in caplog.records if "tensorboard is not installed" in r.getMessage()]
    assert len(warnings) == 2 and all("vasomim[tensorboard]" in w for w in warnings)

    # installed: every numeric value of every epoch's log line, per run folder
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", types.SimpleNamespace(SummaryWriter=FakeWriter))
    FakeWriter.written.clear()
    train_segmentor(SegmentorConfig(out=str(tmp_path / "seg1"), tensorboard=True, **seg), progress=False)
    finetune(FinetuneConfig(out=str(tmp_path / "ft1"), tensorboard=True, **ft), progress=False)
    seg_tags = {(tag, step) for d, tag, _, step in FakeWriter.written if d == str(tmp_path / "seg1" / "tensorboard")}
    assert {("segmentor/loss", 1), ("segmentor/loss", 2), ("segmentor/lr", 2)} <= seg_tags
    ft_dir = str(tmp_path / "ft1" / "seed0" / "fold0" / "tensorboard")
    ft_tags = {(tag, step) for d, tag, _, step in FakeWriter.written if d == ft_dir}
    assert {("finetune/loss", 1), ("finetune/loss", 2), ("finetune/val_dice", 2)} <= ft_tags
    # off by default
    FakeWriter.written.clear()
    train_segmentor(SegmentorConfig(out=str(tmp_path / "seg2"), **seg), progress=False)
    assert FakeWriter.written == []
