"""Shared trainer pieces: RNG round trip through weights_only, atomic save, schedule, groups, log."""

import json
import math
import random

import numpy as np
import pytest
import torch
from torch import nn

from vasomim.engines.common import (
    JsonlLogger,
    atomic_torch_save,
    cosine_lr,
    init_distributed,
    param_groups_weight_decay,
    rng_state,
    seed_everything,
    set_rng_state,
)


def _draws():
    return (random.random(), np.random.rand(), np.random.randn(), torch.rand(3).tolist())


def test_rng_state_survives_weights_only_load(tmp_path):
    seed_everything(5)
    np.random.randn()  # leave a cached gaussian in numpy's state
    path = tmp_path / "rng.pt"
    atomic_torch_save(rng_state(), path)
    first = _draws()
    set_rng_state(torch.load(path, weights_only=True))
    assert _draws() == first


def test_atomic_save_replaces_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "ckpt" / "last.pth"
    atomic_torch_save({"step": 1}, path)
    atomic_torch_save({"step": 2, "w": torch.ones(2)}, path)
    assert torch.load(path, weights_only=True)["step"] == 2
    assert [p.name for p in path.parent.iterdir()] == ["last.pth"]


def test_atomic_save_keeps_the_old_file_when_saving_fails(tmp_path):
    path = tmp_path / "last.pth"
    atomic_torch_save({"step": 1}, path)
    with pytest.raises(Exception):
        atomic_torch_save({"bad": lambda: None}, path)  # lambdas cannot be pickled
    assert torch.load(path, weights_only=True) == {"step": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["last.pth"]


def test_cosine_lr():
    assert cosine_lr(0, 100, 10, 1.0) == 0.0
    assert cosine_lr(5, 100, 10, 1.0) == pytest.approx(0.5)
    assert cosine_lr(10, 100, 10, 1.0) == pytest.approx(1.0)
    assert cosine_lr(55, 100, 10, 1.0, min_lr=0.1) == pytest.approx(0.1 + 0.9 * 0.5)
    assert cosine_lr(100, 100, 10, 1.0, min_lr=0.1) == pytest.approx(0.1)
    assert cosine_lr(150, 100, 10, 1.0) == pytest.approx(0.0)
    assert cosine_lr(32, 100, 10, 2.0) == pytest.approx(1.0 + math.cos(math.pi * 22 / 90))


def test_param_groups_weight_decay():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.pos_embed = nn.Parameter(torch.zeros(1, 4, 8))
            self.cls_token = nn.Parameter(torch.zeros(1, 1, 8))
            self.decoder_pos_embed = nn.Parameter(torch.zeros(1, 4, 8))
            self.fc = nn.Linear(8, 8)
            self.norm = nn.LayerNorm(8)
            self.frozen = nn.Linear(8, 8).requires_grad_(False)

    net = Net()
    decay, no_decay = param_groups_weight_decay(net, 0.05)
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    assert {id(p) for p in decay["params"]} == {id(net.fc.weight)}
    assert {id(p) for p in no_decay["params"]} == {
        id(net.pos_embed), id(net.cls_token), id(net.decoder_pos_embed), id(net.fc.bias),
        id(net.norm.weight), id(net.norm.bias)}


def test_jsonl_logger_appends(tmp_path):
    path = tmp_path / "logs" / "log.jsonl"
    with JsonlLogger(path) as log:
        log.log({"epoch": 0, "loss": torch.tensor(1.5)})
    with JsonlLogger(path) as log:
        log.log({"epoch": 1, "loss": np.float32(0.5)})
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    assert lines == [{"epoch": 0, "loss": 1.5}, {"epoch": 1, "loss": 0.5}]


def test_init_distributed_is_a_noop_without_torchrun(monkeypatch):
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(key, raising=False)
    info = init_distributed(device="cpu")
    assert (info.rank, info.world_size, info.is_main, info.distributed) == (0, 1, True, False)
    assert info.device == torch.device("cpu")
    assert not torch.distributed.is_initialized()
