"""Two gloo processes under torchrun follow the single-process loss trajectory at the same global
batch: the same samples per global batch, the same augmentations and masks per sample (whether a
DataLoader worker or the main process reads it), gradients averaged by DDP (up to the order of
float reductions)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from vasomim.config import build_config
from vasomim.engines.pretrain import PretrainConfig, pretrain

TINY = [
    "data.img_size=64", "model.size=tiny", "model.embed_dim=64", "model.depth=2", "model.num_heads=4",
    "model.decoder_embed_dim=32", "model.decoder_depth=1", "model.decoder_num_heads=4",
    "workers=0", "device=cpu", "optim.lr=3e-3", "optim.warmup_epochs=1", "epochs=3",
    # every path that could differ between layouts: segmentor guidance, a moving beta, the consistency loss
    "masking.guidance=mix", "masking.beta_E=1",
]
GLOBAL_BATCH = 8


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> list[str]:
    """Overrides pointing at 24 synthetic 64-px angiograms, their anatomy and a random UNeXt-S."""
    from vasomim.data.synthetic import write_dataset
    from vasomim.engines.anatomy import AnatomyConfig, run_anatomy
    from vasomim.models.unext import UNeXt

    root = tmp_path_factory.mktemp("ddp-data")
    write_dataset(root / "synth", 24, size=64, seed=0, progress=False)
    run_anatomy(root / "synth" / "images", root / "anatomy", AnatomyConfig(border=4, workers=1), progress=False)
    torch.manual_seed(0)  # a fixed segmentor: the run is reproducible from pytest run to pytest run
    segmentor = UNeXt()
    with torch.no_grad():
        segmentor.final.weight.mul_(30.0)  # spread its probabilities (see test_pretrain.py)
    torch.save(segmentor.state_dict(), root / "segmentor.pth")
    return [f"data.images={root / 'synth' / 'images'}", f"data.anatomy={root / 'anatomy'}",
            f"consistency.segmentor={root / 'segmentor.pth'}"]


def test_two_gloo_processes_match_one_process_at_the_same_global_batch(data, tmp_path):
    vasomim_cli = Path(sys.executable).with_name("vasomim")
    if not vasomim_cli.is_file():
        pytest.skip(f"the vasomim console script is not installed next to {sys.executable}")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
           f"--master_port={free_port()}", str(vasomim_cli), "pretrain", "--quiet", "--out", str(tmp_path / "ddp"),
           *TINY, *data, f"batch_size={GLOBAL_BATCH // 2}", "workers=1"]  # a DataLoader worker per rank
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout)  # rank 0 only prints the summary
    assert (summary["world_size"], summary["effective_batch_size"]) == (2, GLOBAL_BATCH)

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        cfg = build_config(PretrainConfig, None, [*TINY, *data, f"batch_size={GLOBAL_BATCH}",
                                                  f"out={tmp_path / 'single'}"])
        pretrain(cfg, progress=False)
    finally:
        torch.set_num_threads(threads)

    def log(run: str) -> list[dict]:
        return [json.loads(line) for line in (tmp_path / run / "log.jsonl").read_text().splitlines()]

    ddp, single = log("ddp"), log("single")
    assert [r["step"] for r in ddp] == [r["step"] for r in single] == [3, 6, 9]
    for a, b in zip(ddp, single):
        # identical masks: the vessel shares of the masked patches agree exactly
        assert (a["vessel_share_masked"], a["vessel_share_all"], a["beta"]) == \
            (b["vessel_share_masked"], b["vessel_share_all"], b["beta"])
        for key in ("loss", "rec", "cons", "lr"):
            assert a[key] == pytest.approx(b[key], abs=1e-5, rel=0), (a["epoch"], key)
    assert ddp[0]["loss"] != ddp[-1]["loss"]  # it trained

    a = torch.load(tmp_path / "ddp" / "checkpoint-final.pth", weights_only=True)["model"]
    b = torch.load(tmp_path / "single" / "checkpoint-final.pth", weights_only=True)["model"]
    assert a.keys() == b.keys()
    for key in a:
        wa, wb = a[key], b[key]
        if key.endswith("qkv.bias"):
            # The key bias has an exactly zero gradient (softmax ignores a shift shared by all keys):
            # its gradient is rounding noise, which Adam scales up to lr-sized steps of random sign.
            # Compare the query and value biases only.
            d = wa.numel() // 3
            wa, wb = torch.cat([wa[:d], wa[2 * d:]]), torch.cat([wb[:d], wb[2 * d:]])
        assert torch.allclose(wa, wb, rtol=0, atol=1e-6), key
