"""VasoMIM pre-training of the CNN U-Net through the one trainer (``model.arch: unet``): the loss goes
down, a resume after a kill equals an uninterrupted run, two gloo processes follow one process, and
``vasomim finetune --init`` loads the encoder (and the decoder when asked), also from a shipped
``vasomim-unet`` encoder."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from vasomim import shipped
from vasomim.cli import main
from vasomim.config import CONFIG_DIR, build_config
from vasomim.engines import pretrain as engine
from vasomim.engines.finetune import FinetuneConfig, build_network, initialize, network_config
from vasomim.engines.common import seed_everything
from vasomim.engines.pretrain import PretrainConfig, build_model, pretrain

UNET_CPU = CONFIG_DIR / "pretrain" / "unet_cpu.yaml"
# pretrain/unet_cpu at 64 px with 8 base channels (8..128): 4x4 cells of 16 px, as the ViT tests' patches
TINY = ["data.img_size=64", "model.base_channels=8", "workers=0", "device=cpu", "optim.lr=3e-3",
        "optim.warmup_epochs=0", "save_every=1"]
# the fine-tuning U-Net of finetune/unet_cpu, at the same width
FT_TINY = ["base_channels=8", "img_size=64", "epochs=1", "folds=1", "batch_size=4", "val_every=1", "device=cpu"]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, str]:
    """24 synthetic 64-px angiograms with vessel masks, their anatomy, and a random UNeXt-S (scaled as
    in test_pretrain.py so that the consistency loss moves)."""
    from vasomim.data.synthetic import write_dataset
    from vasomim.engines.anatomy import AnatomyConfig, run_anatomy
    from vasomim.models.unext import UNeXt

    root = tmp_path_factory.mktemp("unet-mim")
    write_dataset(root / "synth", 24, size=64, seed=0, progress=False)
    run_anatomy(root / "synth" / "images", root / "anatomy", AnatomyConfig(border=4, workers=1), progress=False)
    torch.manual_seed(0)
    segmentor = UNeXt()
    with torch.no_grad():
        segmentor.final.weight.mul_(30.0)
    torch.save(segmentor.state_dict(), root / "segmentor.pth")
    return {"root": str(root), "labelled": str(root / "synth"), "images": str(root / "synth" / "images"),
            "anatomy": str(root / "anatomy"), "segmentor": str(root / "segmentor.pth")}


def overrides(data: dict[str, str]) -> list[str]:
    return [f"data.images={data['images']}", f"data.anatomy={data['anatomy']}",
            f"consistency.segmentor={data['segmentor']}"]


def tiny_cfg(data: dict[str, str], out: Path, *extra: str) -> PretrainConfig:
    return build_config(PretrainConfig, UNET_CPU, [*TINY, *overrides(data), f"out={out}", *extra])


def read_log(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def pretrained(data, tmp_path_factory) -> Path:
    """Three epochs of U-Net VasoMIM; the run folder."""
    out = tmp_path_factory.mktemp("unet-run") / "run"
    pretrain(tiny_cfg(data, out, "epochs=3", "batch_size=4", "masking.beta_0=0.2"), progress=False)
    return out


def test_three_epochs_lower_both_losses_and_the_checkpoint_is_a_masked_unet(data, pretrained):
    log = read_log(pretrained / "log.jsonl")
    assert [r["step"] for r in log] == [6, 12, 18]
    # seeds 0-2 give last/first 0.64-0.81 (rec) and 0.96-0.995 (cons)
    assert log[-1]["rec"] < 0.9 * log[0]["rec"] and log[-1]["cons"] < log[0]["cons"]
    assert all(0 < r["vessel_share_all"] < 1 for r in log)
    final = torch.load(pretrained / "checkpoint-final.pth", weights_only=True)
    assert final["config"]["model"]["arch"] == "unet"
    model = build_model(tiny_cfg(data, pretrained))
    model.load_state_dict(final["model"])  # strict
    assert type(model).__name__ == "MaskedUNet" and model.patch_size == 16
    # the sparse BatchNorms kept running statistics of the visible pixels
    assert final["model"]["down.0.1.num_batches_tracked"].item() == 18


def test_finetune_from_the_pretraining_loads_the_encoder_and_the_decoder_when_asked(data, pretrained, tmp_path):
    ckpt = str(pretrained / "checkpoint-final.pth")
    state = torch.load(ckpt, weights_only=True)["model"]

    def run(name: str, *extra: str) -> tuple[list[str], dict]:
        out = tmp_path / name
        assert main(["finetune", "--config", "finetune/unet_cpu", "--data", data["labelled"], "--out", str(out),
                     "--init", ckpt, "--quiet", *FT_TINY, *extra]) == 0
        log = read_log(next(out.rglob("log.jsonl")))
        cfg = FinetuneConfig(data=data["labelled"], init=ckpt, **{k: yaml.safe_load(v) for k, v in
                                                                   (o.split("=") for o in [*FT_TINY, *extra])},
                             arch="unet")
        model = build_network(network_config(cfg))
        return [r["event"] for r in log if "event" in r], (model, cfg)

    events, (model, cfg) = run("encoder")
    assert len(events) == 2
    assert events[0].startswith(f"init: U-Net encoder (down blocks) from {ckpt}: ")
    assert events[0].endswith(f"{sum(k.startswith('down.') for k in state)} tensors loaded")
    assert events[1] == "init: U-Net decoder and head start random (init_decoder: false)"
    # the same load, by hand: encoder from the checkpoint, decoder as initialised
    initialize(model, ckpt, "unet")
    own = model.state_dict()
    assert all(torch.equal(own[k], v) for k, v in state.items() if k.startswith("down."))
    assert not torch.equal(own["up.0.conv.0.weight"], state["up.0.conv.0.weight"])

    events, (model, _) = run("decoder", "init_decoder=true")
    assert len(events) == 2 and events[1].startswith(f"init: U-Net decoder (up blocks) from {ckpt}: ")
    initialize(model, ckpt, "unet", init_decoder=True)
    own = model.state_dict()
    assert all(torch.equal(own[k], v) for k, v in state.items() if k.startswith(("down.", "up.")))

    # a U-Net of another width: one line naming the checkpoint
    other = build_network(network_config(cfg.model_copy(update={"base_channels": 4})))
    with pytest.raises(ValueError, match=r"checkpoint-final.pth: its U-Net encoder does not fit this network") as err:
        initialize(other, ckpt, "unet")
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="init_decoder applies to arch unet"):
        FinetuneConfig(data=data["labelled"], init=ckpt, init_decoder=True)


def test_ship_the_unet_encoder_and_finetune_from_its_name(data, pretrained, tmp_path, monkeypatch):
    weights = tmp_path / "weights"
    monkeypatch.setattr(shipped, "WEIGHTS_DIR", weights)
    card = tmp_path / "card.yaml"
    card.write_text(yaml.safe_dump({"summary": "A test U-Net encoder.", "data": "24 synthetic angiograms"}))
    ckpt = pretrained / "checkpoint-final.pth"
    assert main(["ship", str(ckpt), "vasomim-unet", "--kind", "encoder", "--card", str(card)]) == 0
    folder = weights / "vasomim-unet"
    info = json.loads((folder / "card.json").read_text())
    assert info["kind"] == "encoder" and info["dtype"] == "float16"
    assert info["architecture"].startswith("U-Net encoder, base 8 channels, 4 levels, batch norm")
    meta = json.loads((folder / "encoder.json").read_text())
    assert (meta["in_chans"], meta["base_channels"], meta["levels"], meta["norm"]) == (1, 8, 4, "batch")
    assert [m.name for m in shipped.list_shipped()] == ["vasomim-unet"]

    from safetensors.torch import load_file

    tensors = load_file(str(folder / "encoder.safetensors"))
    state = torch.load(ckpt, weights_only=True)["model"]
    assert set(tensors) == {k for k in state if k.startswith("down.")}
    assert all(v.dtype == torch.float16 for v in tensors.values() if v.is_floating_point())

    cfg = FinetuneConfig(data=data["labelled"], arch="unet", base_channels=8, img_size=64, init="vasomim-unet")
    model = build_network(network_config(cfg))
    notes = initialize(model, "vasomim-unet", "unet")
    assert "encoder.safetensors" in notes[0] and "tensors loaded" in notes[0]
    w = model.state_dict()["down.2.0.weight"]
    assert torch.equal(w, state["down.2.0.weight"].half().float())  # the fp16 weights, read back exactly
    with pytest.raises(ValueError, match="encoder.safetensors: holds no U-Net decoder"):
        initialize(model, "vasomim-unet", "unet", init_decoder=True)
    out = tmp_path / "ft"
    assert main(["finetune", "--config", "finetune/unet_cpu", "--data", data["labelled"], "--out", str(out),
                 "--init", "vasomim-unet", "--quiet", *FT_TINY]) == 0


def test_unet_configs_match_the_finetuning_unet_and_the_paper_recipe():
    from vasomim.config import load_yaml

    cpu, gpu = (build_config(PretrainConfig, CONFIG_DIR / "pretrain" / f"{n}.yaml") for n in ("unet_cpu", "vasomim_unet"))
    paper = build_config(PretrainConfig, CONFIG_DIR / "pretrain" / "vasomim_vit_b16.yaml")
    ft = load_yaml(CONFIG_DIR / "finetune" / "unet_cpu.yaml")
    assert (cpu.model.arch, cpu.model.base_channels, cpu.model.levels, cpu.model.norm) == \
        ("unet", ft["base_channels"], ft["levels"], ft["norm"])
    assert (cpu.data.img_size, cpu.model.patch_size, cpu.device) == (128, 16, "cpu")
    assert (gpu.model.arch, gpu.model.base_channels, gpu.data.img_size, gpu.epochs) == ("unet", 32, 224, 800)
    assert (gpu.masking, gpu.consistency, gpu.optim) == (paper.masking, paper.consistency, paper.optim)
    assert gpu.model.norm_pix_loss and cpu.masking == paper.masking


class Killed(Exception):
    """Stands for the process being killed."""


def test_resume_after_a_kill_mid_epoch_matches_an_uninterrupted_run(data, tmp_path, monkeypatch):
    settings = ("epochs=3", "batch_size=4", "optim.warmup_epochs=1", "optim.accum_iter=2",
                "masking.beta_E=1", "masking.schedule=iteration", "masking.guidance=mix")
    pretrain(tiny_cfg(data, tmp_path / "straight", *settings), progress=False)

    calls = {"n": 0}
    real_guided_mask = engine.guided_mask

    def dies_in_epoch_2(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 6 + 3:  # 6 micro-batches per epoch: the 3rd one of epoch 2
            raise Killed
        return real_guided_mask(*args, **kwargs)

    cfg = tiny_cfg(data, tmp_path / "resumed", *settings)
    monkeypatch.setattr(engine, "guided_mask", dies_in_epoch_2)
    with pytest.raises(Killed):
        pretrain(cfg, progress=False)
    monkeypatch.setattr(engine, "guided_mask", real_guided_mask)
    summary = pretrain(cfg, resume=True, progress=False)
    assert summary["start_epoch"] == 1

    a = torch.load(tmp_path / "straight" / "checkpoint-last.pth", weights_only=True)
    b = torch.load(tmp_path / "resumed" / "checkpoint-last.pth", weights_only=True)
    assert a["model"].keys() == b["model"].keys() and "mask_tokens.0" in a["model"]
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])  # bitwise, BN statistics too
    log_a, log_b = read_log(tmp_path / "straight" / "log.jsonl"), read_log(tmp_path / "resumed" / "log.jsonl")
    for ra, rb in zip(log_a, log_b, strict=True):
        assert {k: v for k, v in ra.items() if k != "time"} == {k: v for k, v in rb.items() if k != "time"}

    # the U-Net's widths fix its weights: a resume cannot change them
    with pytest.raises(ValueError, match="cannot resume with model.base_channels=4"):
        pretrain(tiny_cfg(data, tmp_path / "resumed", *settings, "model.base_channels=4"), resume=True,
                 progress=False)
    with pytest.raises(ValueError, match=r"model.patch_size 16 must be 2\*\*model.levels = 8"):
        tiny_cfg(data, tmp_path, "model.levels=3")


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_gloo_processes_match_one_process_at_the_same_global_batch(data, tmp_path):
    """The U-Net path under torchrun follows the single-process trajectory, as the ViT's does
    (test_pretrain_ddp.py): the same samples, augmentations and masks, gradients averaged. GroupNorm
    here, per sample; the sparse BatchNorm's cross-process statistics are
    checked in test_unet_mim.py (its backward is too ill-conditioned for a whole Adam trajectory)."""
    vasomim_cli = Path(sys.executable).with_name("vasomim")
    if not vasomim_cli.is_file():
        pytest.skip(f"the vasomim console script is not installed next to {sys.executable}")
    settings = [*TINY, *overrides(data), "epochs=3", "optim.warmup_epochs=1", "masking.guidance=mix",
                "masking.beta_E=1", "model.norm=group"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
           f"--master_port={free_port()}", str(vasomim_cli), "pretrain", "--config", str(UNET_CPU), "--quiet",
           "--out", str(tmp_path / "ddp"), *settings, "batch_size=4"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout)["world_size"] == 2

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        pretrain(build_config(PretrainConfig, UNET_CPU, [*settings, "batch_size=8", f"out={tmp_path / 'single'}"]),
                 progress=False)
    finally:
        torch.set_num_threads(threads)

    ddp, single = read_log(tmp_path / "ddp" / "log.jsonl"), read_log(tmp_path / "single" / "log.jsonl")
    assert [r["step"] for r in ddp] == [r["step"] for r in single] == [3, 6, 9]
    for a, b in zip(ddp, single):
        assert (a["vessel_share_masked"], a["beta"]) == (b["vessel_share_masked"], b["beta"])
        for key in ("loss", "rec", "cons"):
            # channels-last convolutions sum in an order that depends on the batch (4 per process
            # against 8): ~2e-5 by the third epoch; a wrong sample, mask or gradient shows as 1e-2
            assert a[key] == pytest.approx(b[key], abs=5e-5, rel=0), (a["epoch"], key)
    a = torch.load(tmp_path / "ddp" / "checkpoint-final.pth", weights_only=True)["model"]
    b = torch.load(tmp_path / "single" / "checkpoint-final.pth", weights_only=True)["model"]
    assert a.keys() == b.keys()
    cfg = build_config(PretrainConfig, UNET_CPU, [*settings, "batch_size=8", f"out={tmp_path / 'single'}"])
    seed_everything(cfg.seed)
    init = build_model(cfg).state_dict()  # the weights both runs started from
    for key in a:
        # within 3% of how far training moved each tensor (measured: under 1%): the order of float
        # sums (the norms' backward, channels-last convolutions at batch 4 against 8) gives ~1e-5
        # relative gradient noise, which Adam's normalised steps carry into the weights; a wrong
        # sample, mask or gradient average moves them as far as training does
        moved = (b[key].double() - init[key].double()).norm()
        assert (a[key].double() - b[key].double()).norm() <= 0.03 * moved, key


# ----------------------------------------------------------------------------- the tools: export and analyses


def test_export_writes_the_unet_encoder_and_finetune_loads_it_bit_exactly(data, pretrained, tmp_path, capsys):
    """`vasomim export` on a U-Net pre-training checkpoint writes exactly its down.* tensors (float32, as
    trained) and encoder.json; `finetune --init` takes the file or the folder, as `--init vasomim-unet`."""
    from safetensors.torch import load_file

    ckpt = str(pretrained / "checkpoint-final.pth")
    state = torch.load(ckpt, weights_only=True)["model"]
    exported = tmp_path / "exp" / "encoder.safetensors"
    assert main(["export", ckpt, "--to", str(exported)]) == 0
    out = capsys.readouterr().out
    assert f"--init {exported} in_chans=1 base_channels=8 levels=4 norm=batch" in out
    tensors = load_file(str(exported))
    down = {k: v for k, v in state.items() if k.startswith("down.")}
    assert set(tensors) == set(down) and len(down) == 60
    assert all(torch.equal(tensors[k], v) for k, v in down.items())  # dtype and values
    meta = json.loads((tmp_path / "exp" / "encoder.json").read_text())
    assert (meta["in_chans"], meta["base_channels"], meta["levels"], meta["norm"], meta["input_size"]) == \
        (1, 8, 4, "batch", 64)

    cfg = FinetuneConfig(data=data["labelled"], arch="unet", base_channels=8, img_size=64)
    for init in (str(exported), str(tmp_path / "exp")):  # the file, or the folder export wrote
        model = build_network(network_config(cfg))
        notes = initialize(model, init, "unet")
        assert notes[0] == f"init: U-Net encoder (down blocks) from {exported}: 60 tensors loaded"
        own = model.state_dict()
        assert all(torch.equal(own[k], v) for k, v in down.items())
    out = tmp_path / "ft"
    assert main(["finetune", "--config", "finetune/unet_cpu", "--data", data["labelled"], "--out", str(out),
                 "--init", str(tmp_path / "exp"), "--quiet", *FT_TINY]) == 0
    assert read_log(next(out.rglob("log.jsonl")))[0]["event"].startswith(f"init: U-Net encoder (down blocks) from "
                                                                         f"{exported}")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"empty: a folder to start from holds encoder.safetensors"):
        initialize(model, str(tmp_path / "empty"), "unet")

    # what cannot be done: one line naming the file and the reason, nothing written
    assert main(["export", ckpt, "--to", str(tmp_path / "x.safetensors"), "--in-chans", "3"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"error: {ckpt}: a U-Net encoder keeps its 1 input channel(s); --in-chans 3 applies to ViT "
                   "encoders only")
    assert not (tmp_path / "x.safetensors").exists()
    assert main(["export", ckpt, "--to", str(tmp_path / "model.onnx")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {tmp_path / 'model.onnx'}: --to takes an encoder file") and "\n" not in err


@pytest.fixture(scope="module")
def untrained(data, pretrained, tmp_path_factory) -> Path:
    """A randomly initialised MaskedUNet of the pre-training's shape, saved as a pre-training checkpoint."""
    final = torch.load(pretrained / "checkpoint-final.pth", weights_only=True)
    torch.manual_seed(1)
    model = build_model(tiny_cfg(data, pretrained))
    path = tmp_path_factory.mktemp("unet-untrained") / "untrained.pth"
    torch.save({"model": model.state_dict(), "config": {**final["config"], "name": "untrained"}}, path)
    return path


def test_reconstruction_analysis_of_a_unet_checkpoint(data, pretrained, untrained, tmp_path, capsys):
    """The MaskedUNet's own masked forward with the guided sampler: the trained U-Net reconstructs the
    masked cells better than an untrained one, on the same images and masks."""
    def analyse(ckpt: Path, name: str) -> dict:
        out = tmp_path / name
        assert main(["analyze", "reconstruction", str(ckpt), "--images", data["images"], "--anatomy",
                     data["anatomy"], "--segmentor", data["segmentor"], "--out", str(out)]) == 0
        assert (out / "reconstruction.png").stat().st_size > 0
        return json.loads((out / "reconstruction.json").read_text())

    trained, random_init = analyse(pretrained / "checkpoint-final.pth", "trained"), analyse(untrained, "untrained")
    assert "unet_cpu: masked-patch PSNR" in capsys.readouterr().out
    assert trained["image_ids"] == random_init["image_ids"] and len(trained["image_ids"]) == 4
    assert trained["vessel_share_masked"] == random_init["vessel_share_masked"]  # the same masks
    assert all(0 < s < 1 for s in trained["vessel_share_masked"])
    assert {"consistency_bce", "consistency_dice"} <= set(trained["mean"])
    # 3 epochs: 0.035 vs 0.037 (the sparse BatchNorms' running statistics are young after 18 steps)
    assert trained["mean"]["masked_mse"] < random_init["mean"]["masked_mse"]

    # the analysis reconstructs with the masked forward: the masked cells' pixels never reach the output
    from vasomim.analysis.reconstruction import reconstruct
    from vasomim.cli.analyze import load_pairs
    from vasomim.models.checkpoints import model_from_checkpoint

    model, _ = model_from_checkpoint(pretrained / "checkpoint-final.pth", kind="mae")
    images01, masks, _ = load_pairs(Path(data["images"]), Path(data["anatomy"]), (64, 64), 4)
    first = reconstruct(model, images01, masks, 0.5, 0.5, seed=0)
    hidden = reconstruct(model, images01 + first["pixel_mask"] * torch.rand_like(images01), masks, 0.5, 0.5, seed=0)
    shown = reconstruct(model, images01 + (1 - first["pixel_mask"]) * 0.1, masks, 0.5, 0.5, seed=0)
    assert torch.equal(hidden["decoded"], first["decoded"])
    assert not torch.allclose(shown["decoded"], first["decoded"])


def test_clustering_of_unet_cells(data, pretrained, untrained, tmp_path, capsys):
    """One vector per 16-px cell of the unmasked image, the coarsest encoder level: the fine-tuning
    U-Net's own bottleneck features; finite vessel vs background scores for both checkpoints."""
    from vasomim.analysis.clustering import mae_encoder_forward
    from vasomim.models.checkpoints import model_from_checkpoint
    from vasomim.models.unet import UNet

    ckpt = pretrained / "checkpoint-final.pth"
    masked, _ = model_from_checkpoint(ckpt, kind="mae")
    dense = UNet(1, 8, 4, norm="batch").eval()
    dense.load_state_dict({k: v for k, v in masked.state_dict().items() if k.startswith("down.")}, strict=False)
    x = torch.randn(2, 1, 64, 96)
    with torch.no_grad():
        cells = mae_encoder_forward(masked)(x)
        feats = x
        for i, block in enumerate(dense.down):
            feats = block(feats if i == 0 else dense.pool(feats))
    assert cells.shape == (2, 4 * 6, 128)
    torch.testing.assert_close(cells, feats.flatten(2).transpose(1, 2), rtol=1e-5, atol=1e-5)

    out = tmp_path / "clustering"
    assert main(["analyze", "clustering", str(ckpt), str(untrained), "--images", data["images"], "--anatomy",
                 data["anatomy"], "--max-images", "12", "--out", str(out)]) == 0
    result = json.loads((out / "clustering.json").read_text())
    assert set(result["models"]) == {"unet_cpu", "untrained"}
    for scores in result["models"].values():
        s = scores["embedding"]
        assert s["n"] == 12 * 16 and 0 < s["n_vessel"] < s["n"]
        assert all(math.isfinite(s[k]) for k in ("silhouette", "calinski_harabasz", "davies_bouldin"))
    assert "model: unet_cpu  space: embedding" in capsys.readouterr().out
