"""VasoMIM pre-training engine on tiny models (CPU): losses go down, checkpoints load with
weights_only, resume is exact, masks and augmentations do not depend on the process layout, the
frozen segmentor gets no gradient, the configs and the error messages."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from vasomim.config import CONFIG_DIR, build_config
from vasomim.engines import pretrain as engine
from vasomim.engines.pretrain import (
    EpochSeededDataset,
    PretrainConfig,
    build_model,
    draw_masks,
    guidance_weights,
    load_frozen_segmentor,
    mask_and_forward,
    pretrain,
)

LOG_KEYS = {"epoch", "step", "lr", "beta", "loss", "rec", "cons", "vessel_share_masked", "vessel_share_all", "time"}
CKPT_KEYS = {"model", "optimizer", "epoch", "step", "config", "rng"}

# ViT with depth 2 and width 64, a 32-d one-block decoder, 64x64 images (16 patches of 16 px)
TINY = [
    "data.img_size=64", "model.size=tiny", "model.embed_dim=64", "model.depth=2", "model.num_heads=4",
    "model.decoder_embed_dim=32", "model.decoder_depth=1", "model.decoder_num_heads=4",
    "workers=0", "device=cpu", "optim.lr=3e-3", "optim.warmup_epochs=0", "save_every=1",
]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, str]:
    """24 synthetic 64-px angiograms, their anatomy masks, and a random UNeXt-S as the segmentor.

    The segmentor's last layer is scaled up so that its vessel probabilities spread over (0, 1);
    with the initial scale every output is close to 0.5 and the consistency loss barely moves.
    """
    from vasomim.data.synthetic import write_dataset
    from vasomim.engines.anatomy import AnatomyConfig, run_anatomy
    from vasomim.models.unext import UNeXt

    root = tmp_path_factory.mktemp("pretrain-data")
    write_dataset(root / "synth", 24, size=64, seed=0, progress=False)
    summary = run_anatomy(root / "synth" / "images", root / "anatomy", AnatomyConfig(border=4, workers=1),
                          progress=False)
    assert summary.processed == 24 and not summary.failures
    torch.manual_seed(0)
    segmentor = UNeXt()
    with torch.no_grad():
        segmentor.final.weight.mul_(30.0)
    torch.save(segmentor.state_dict(), root / "segmentor.pth")
    return {"images": str(root / "synth" / "images"), "anatomy": str(root / "anatomy"),
            "segmentor": str(root / "segmentor.pth")}


def tiny_cfg(data: dict[str, str], out: Path, *overrides: str, config: str | Path | None = None) -> PretrainConfig:
    values = {"data": {"images": data["images"], "anatomy": data["anatomy"]}, "out": str(out)}
    return build_config(PretrainConfig, config, [*TINY, f"consistency.segmentor={data['segmentor']}", *overrides],
                        **values)


def read_log(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]


def test_three_epochs_lower_both_losses_and_write_loadable_checkpoints(data, tmp_path):
    cfg = tiny_cfg(data, tmp_path / "run", "epochs=3", "batch_size=4", "masking.beta_0=0.2")
    summary = pretrain(cfg, progress=False)

    log = read_log(tmp_path / "run")
    assert [r["epoch"] for r in log] == [1, 2, 3] and [r["step"] for r in log] == [6, 12, 18]
    assert all(set(r) == LOG_KEYS for r in log)
    # seeds 0-5 give last/first 0.67-0.88 (rec) and 0.91-0.94 (cons)
    assert log[-1]["rec"] < 0.95 * log[0]["rec"]
    assert log[-1]["cons"] < 0.98 * log[0]["cons"]
    # Eq. 3 per epoch with progress (e + 1) / E (e from 0): the last epoch reaches beta_E
    assert [r["beta"] for r in log] == pytest.approx([0.2 + 0.3 / 3, 0.2 + 0.6 / 3, 0.5])
    assert all(0 < r["vessel_share_all"] < 1 for r in log)

    last = torch.load(tmp_path / "run" / "checkpoint-last.pth", weights_only=True)
    assert set(last) == CKPT_KEYS and (last["epoch"], last["step"]) == (3, 18)
    final = torch.load(summary["checkpoint"], weights_only=True)
    assert (final["epoch"], final["step"]) == (3, 18) and final["config"] == last["config"]
    model = build_model(cfg)
    model.load_state_dict(final["model"])  # strict: the plain MAE state dict, no DDP prefix
    assert all(torch.equal(final["model"][k], v) for k, v in last["model"].items())

    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["name"] == "vasomim" and config["masking"]["mask_ratio"] == 0.5
    assert (config["masking"]["beta_0"], config["masking"]["beta_E"], config["consistency"]["weight"]) == (0.2, 0.5, 1)
    assert summary["steps"] == 18 and summary["last"] == log[-1] and summary["effective_batch_size"] == 4


def test_segmentor_gets_no_gradient_while_the_mae_does(data, tmp_path):
    from vasomim.data.datasets import PretrainDataset
    from vasomim.data.sources import AnatomySource
    from vasomim.data.transforms import build_transform

    cfg = tiny_cfg(data, tmp_path, "masking.guidance=mix")
    items = AnatomySource(cfg.data.images, cfg.data.anatomy).items[:4]
    batch = torch.utils.data.default_collate(
        [PretrainDataset(items, build_transform(cfg.data.transform_config()))[i] for i in range(4)])
    segmentor = load_frozen_segmentor(cfg, torch.device("cpu"))
    state_before = {k: v.clone() for k, v in segmentor.state_dict().items()}

    def grads(weight: float) -> dict[str, torch.Tensor | None]:
        torch.manual_seed(0)
        model = build_model(cfg)
        run_cfg = cfg.model_copy(update={"consistency": cfg.consistency.model_copy(update={"weight": weight})})
        out = mask_and_forward(model, segmentor, batch["image"], batch["anatomy"], run_cfg, 0.5,
                             torch.Generator().manual_seed(0))
        out["loss"].backward()
        return {name: p.grad for name, p in model.named_parameters() if p.requires_grad}

    with_cons, without_cons = grads(1.0), grads(0.0)
    assert all(p.grad is None and not p.requires_grad for p in segmentor.parameters())
    assert not segmentor.training  # (its BatchNorms are folded into the convolutions: no statistics to update)
    assert all(torch.equal(v, segmentor.state_dict()[k]) for k, v in state_before.items())
    # every trainable MAE parameter gets a gradient (DDP runs without find_unused_parameters)
    assert all(g is not None and g.abs().sum() > 0 for g in with_cons.values())
    # and the consistency term reaches the encoder through the frozen segmentor
    assert not torch.allclose(with_cons["patch_embed.proj.weight"], without_cons["patch_embed.proj.weight"])
    assert not torch.allclose(with_cons["blocks.0.attn.qkv.weight"], without_cons["blocks.0.attn.qkv.weight"])


class Killed(Exception):
    """Stands for the process being killed."""


def test_resume_after_a_kill_mid_epoch_matches_an_uninterrupted_run(data, tmp_path, monkeypatch):
    # schedules that move within epochs: lr warm-up then cosine, beta 0 -> 1 per iteration;
    # accumulation of 2 micro-batches
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
    assert torch.load(tmp_path / "resumed" / "checkpoint-last.pth", weights_only=True)["epoch"] == 1
    summary = pretrain(cfg, resume=True, progress=False)
    assert summary["start_epoch"] == 1

    a = torch.load(tmp_path / "straight" / "checkpoint-last.pth", weights_only=True)
    b = torch.load(tmp_path / "resumed" / "checkpoint-last.pth", weights_only=True)
    assert a["model"].keys() == b["model"].keys()
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])  # bitwise
    assert (a["epoch"], a["step"]) == (b["epoch"], b["step"]) == (3, 9)
    log_a, log_b = read_log(tmp_path / "straight"), read_log(tmp_path / "resumed")
    assert [r["epoch"] for r in log_b] == [1, 2, 3]  # epoch 2 is redone, not logged twice
    assert [r["beta"] for r in log_b] == pytest.approx([(k + 5 / 12) / 3 for k in range(3)])  # mean of (e + i/6)/3
    for ra, rb in zip(log_a, log_b):
        assert {k: v for k, v in ra.items() if k != "time"} == {k: v for k, v in rb.items() if k != "time"}


def test_masks_do_not_depend_on_the_number_of_processes():
    f = torch.rand(8, 16) * (torch.rand(8, 16) < 0.4)
    f[3] = 0  # an image without vessels
    one = draw_masks(f, 0.5, 0.75, torch.Generator().manual_seed(1))
    for rank in (0, 1):
        # a DistributedSampler with 2 replicas gives rank r the global rows r, r + 2, ...
        two = draw_masks(f[rank::2], 0.5, 0.75, torch.Generator().manual_seed(1), rank=rank, world_size=2)
        for full, part in zip(one, two):
            assert torch.equal(full[rank::2], part)
    assert one[2].sum(1).eq(8).all()
    assert not torch.equal(one[2], draw_masks(f, 0.5, 0.75, torch.Generator().manual_seed(2))[2])


def test_guidance_weights_from_anatomy_segmentor_or_both():
    from vasomim.masking import patch_distribution

    anatomy = torch.zeros(2, 1, 32, 32)
    anatomy[0, 0, :8, :8] = 1  # image 0: 64 vessel pixels in patch 0; image 1: none
    probs = torch.full((2, 1, 32, 32), 0.01)
    probs[:, :, 16:, 16:] = 0.97  # the segmentor sees a vessel in patch 3
    f_anatomy = patch_distribution(anatomy, 16)
    assert guidance_weights("anatomy", f_anatomy, anatomy, None, 16) is f_anatomy
    f_seg = guidance_weights("segmentor", f_anatomy, anatomy, probs, 16)
    assert torch.allclose(f_seg, torch.tensor([[0.01, 0.01, 0.01, 0.97]]).expand(2, 4), atol=1e-6)
    # mix, per pixel then Eq. 2 (the original code), worked by hand: patch sums of 0.5 A + 0.5 P are
    # image 0: 32 + 0.5 * 0.01 * 256 = 33.28, 1.28, 1.28, 0.5 * 0.97 * 256 = 124.16; image 1: 1.28, 1.28, 1.28, 124.16
    f_mix = guidance_weights("mix", f_anatomy, anatomy, probs, 16)
    expected = torch.tensor([[33.28, 1.28, 1.28, 124.16], [1.28, 1.28, 1.28, 124.16]])
    assert torch.allclose(f_mix, expected / expected.sum(dim=1, keepdim=True), atol=1e-6)
    for i in range(2):  # not the mean of the two distributions
        assert not torch.allclose(f_mix[i], 0.5 * (f_anatomy[i] + f_seg[i]), atol=1e-2)


def test_augmentation_is_a_function_of_seed_epoch_and_index(data):
    from vasomim.data.datasets import PretrainDataset
    from vasomim.data.sources import AnatomySource
    from vasomim.data.transforms import TransformConfig, build_transform

    items = AnatomySource(data["images"], data["anatomy"]).items
    ds = EpochSeededDataset(PretrainDataset(items, build_transform(TransformConfig(size=32))), seed=7)
    ds.set_epoch(3)
    first = ds[5]["image"]
    torch.manual_seed(123)  # the global generator does not matter ...
    state = torch.get_rng_state()
    assert torch.equal(ds[2]["image"], ds[2]["image"]) and torch.equal(ds[5]["image"], first)
    assert torch.equal(torch.get_rng_state(), state)  # ... and is left as it was
    ds.set_epoch(4)
    assert not torch.equal(ds[5]["image"], first)


def test_mae_baseline_logs_null_cons_and_guidance_masks_more_vessel_patches(data, tmp_path, capsys):
    from vasomim.cli import main

    common = ["--images", data["images"], "--anatomy", data["anatomy"], "--quiet", *TINY, "epochs=1",
              "batch_size=4"]
    # the MAE baseline needs no segmentor
    assert main(["pretrain", "--config", str(CONFIG_DIR / "pretrain" / "mae_vit_b16.yaml"),
                 "--out", str(tmp_path / "mae"), *common, "tensorboard=true"]) == 0
    # TensorBoard is optional: written when installed, skipped with a message otherwise
    assert (tmp_path / "mae" / "tensorboard").is_dir() or "tensorboard is not installed" in capsys.readouterr().err
    assert main(["pretrain", "--config", str(CONFIG_DIR / "pretrain" / "masking_beta_1_1.yaml"),
                 "--out", str(tmp_path / "guided"), *common, "consistency.weight=0"]) == 0
    (mae,), (guided,) = read_log(tmp_path / "mae"), read_log(tmp_path / "guided")
    assert mae["cons"] is None and mae["beta"] == 0 and guided["beta"] == 1
    assert json.loads((tmp_path / "mae" / "config.json").read_text())["name"] == "mae_vit_b16"
    # Fig. 3a in miniature: full guidance masks vessel patches far above their share of the image
    assert guided["vessel_share_masked"] > 1.5 * guided["vessel_share_all"]
    assert guided["vessel_share_masked"] > mae["vessel_share_masked"]


def test_configs_load_with_the_paper_settings():
    def load(name: str) -> PretrainConfig:
        return build_config(PretrainConfig, CONFIG_DIR / "pretrain" / f"{name}.yaml")

    paper = load("vasomim_vit_b16")
    assert (paper.data.img_size, paper.model.size, paper.masking.mask_ratio) == (224, "base", 0.5)
    assert (paper.masking.beta_0, paper.masking.beta_E, paper.consistency.weight) == (0, 0.5, 1)
    assert (paper.epochs, paper.batch_size, paper.optim.blr, paper.optim.warmup_epochs) == (800, 256, 1.5e-4, 40)
    assert paper.model.norm_pix_loss  # as the official script; every ablation inherits it (cfg.model == paper.model)
    expected = {  # name: (beta_0, beta_E, consistency weight, mask ratio)
        "mae_vit_b16": (0, 0, 0, 0.5),
        "ablation_guidance_only": (0, 0.5, 0, 0.5),
        "ablation_consistency_only": (0, 0, 1, 0.5),
        "masking_beta_0_0": (0, 0, 1, 0.5),
        "masking_beta_0_1": (0, 1, 1, 0.5),
        "masking_beta_1_1": (1, 1, 1, 0.5),
        "masking_beta_0.5_0": (0.5, 0, 1, 0.5),
        "ratio_0.25": (0, 0.5, 1, 0.25),
        "ratio_0.75": (0, 0.5, 1, 0.75),
    }
    for name, values in expected.items():
        cfg = load(name)
        assert cfg.name == name
        assert (cfg.masking.beta_0, cfg.masking.beta_E, cfg.consistency.weight, cfg.masking.mask_ratio) == values
        assert cfg.model == paper.model and cfg.optim == paper.optim and cfg.epochs == 800
    tiny = load("tiny_cpu")
    assert (tiny.data.img_size, tiny.model.size, tiny.model.decoder_embed_dim) == (128, "tiny", 128)
    assert (tiny.batch_size, tiny.optim.warmup_epochs, tiny.device) == (16, 2, "cpu") and not tiny.model.norm_pix_loss
    # + paper, tiny, 3 ratios, the U-Net's paper-scale and CPU configs (test_unet_mim_runs.py)
    assert len(list((CONFIG_DIR / "pretrain").glob("*.yaml"))) == len(expected) + 7


def test_clear_errors(data, tmp_path, capsys):
    from pydantic import ValidationError

    from vasomim.cli import main

    with pytest.raises(ValidationError, match="not divisible by model.patch_size"):
        tiny_cfg(data, tmp_path, "data.img_size=72")
    with pytest.raises(ValidationError, match="divisible by 32 for the UNeXt-S"):
        tiny_cfg(data, tmp_path, "data.img_size=80")
    tiny_cfg(data, tmp_path, "data.img_size=80", "consistency.weight=0")  # no segmentor, no constraint
    with pytest.raises(ValueError, match="consistency.segmentor: a UNeXt-S checkpoint is required"):
        pretrain(tiny_cfg(data, tmp_path, "consistency.segmentor=null", "batch_size=4"), progress=False)
    with pytest.raises(FileNotFoundError, match="nope.pth: no such file"):
        pretrain(tiny_cfg(data, tmp_path, f"consistency.segmentor={tmp_path / 'nope.pth'}"), progress=False)
    with pytest.raises(ValueError, match="no optimizer step per epoch"):
        pretrain(tiny_cfg(data, tmp_path, "batch_size=32"), progress=False)

    # the command line prints one line and exits with 2
    args = ["pretrain", "--images", data["images"], "--anatomy", str(tmp_path), "--out", str(tmp_path / "r"),
            *TINY, f"consistency.segmentor={data['segmentor']}"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no manifest.jsonl" in err[0] and err[0].startswith("error:")
    assert main(["pretrain", "--out", str(tmp_path / "r"), "consistency.weight=0"]) == 2
    assert "give data.images and data.anatomy" in capsys.readouterr().err
