"""The CPU precision settings of pre-training: fp32 unless ``cpu_amp`` asks for bf16 autocast; the
bf16 CPU path runs the trainer's step with the loss math in float32 and stays close to fp32; the
trainer's AdamW is the fused kernel on CPU."""

from __future__ import annotations

import pytest
import torch

from vasomim.engines import pretrain as engine
from vasomim.engines.pretrain import (ConsistencyConfig, DataConfig, MaskingConfig, ModelConfig, PretrainConfig,
                                      build_model, mask_and_forward)
from vasomim.models.unext import UNeXt, frozen_for_inference


def small_cfg(**kw) -> PretrainConfig:
    return PretrainConfig(
        data=DataConfig(img_size=64),
        model=ModelConfig(size="tiny", embed_dim=64, depth=2, num_heads=4, decoder_embed_dim=32, decoder_depth=1,
                          decoder_num_heads=4),
        masking=MaskingConfig(mask_ratio=0.5, beta_0=0.5, beta_E=0.5),
        consistency=ConsistencyConfig(weight=1.0), **kw)


def batch() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    imgs = torch.randn(4, 1, 64, 64, generator=gen)
    anatomy = torch.rand(4, 1, 64, 64, generator=gen) > 0.9
    return imgs, anatomy


def test_cpu_autocast_follows_amp_and_cpu_amp():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert not engine.autocast_enabled(small_cfg(), cpu)  # the CPU default: fp32
    assert engine.autocast_enabled(small_cfg(cpu_amp=True), cpu)
    assert not engine.autocast_enabled(small_cfg(cpu_amp=True, amp="none"), cpu)  # amp none forces fp32
    assert engine.autocast_enabled(small_cfg(), cuda)
    assert not engine.autocast_enabled(small_cfg(amp="none"), cuda)


def test_bf16_cpu_step_matches_fp32_within_tolerance():
    """Same weights, batch and masks: the losses within 2% and the gradients point the same way;
    the losses come out in float32 (the reductions are not done in bf16)."""
    torch.manual_seed(0)
    segmentor = UNeXt()
    with torch.no_grad():
        segmentor.final.weight.mul_(30.0)  # probabilities spread over (0, 1), as in test_pretrain
    segmentor = frozen_for_inference(segmentor)
    imgs, anatomy = batch()
    results = {}
    for cpu_amp in (False, True):
        cfg = small_cfg(cpu_amp=cpu_amp)
        torch.manual_seed(0)
        model = build_model(cfg)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=engine.autocast_enabled(cfg, torch.device("cpu"))):
            out = mask_and_forward(model, segmentor, imgs, anatomy, cfg, 0.5, torch.Generator().manual_seed(1))
        out["loss"].backward()
        grad = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
        results[cpu_amp] = (out, grad)
    (fp32, g32), (bf16, g16) = results[False], results[True]
    for key in ("loss", "rec", "cons"):
        assert bf16[key].dtype == torch.float32, key
        assert bf16[key].item() == pytest.approx(fp32[key].item(), rel=0.02), key
    assert torch.nn.functional.cosine_similarity(g16, g32, dim=0) > 0.99


def test_trainer_adamw_is_fused_on_cpu():
    model = torch.nn.Linear(4, 4)
    opt = engine.build_optimizer(model, small_cfg(), lr=1e-3, device=torch.device("cpu"))
    assert opt.defaults["fused"] is engine.CPU_FUSED_ADAMW
    assert opt.defaults["betas"] == (0.9, 0.95)


def test_a_bf16_cpu_run_trains_like_fp32_and_records_the_choice(tmp_path):
    """Three epochs on synthetic angiograms (their vessel masks as the anatomy): with cpu_amp the
    losses are finite, fall as in fp32 and end within 10% of it; config.json and the checkpoint
    record the setting."""
    import json

    from vasomim.config import build_config
    from vasomim.data.synthetic import write_dataset

    write_dataset(tmp_path / "synth", 16, size=32, seed=0, progress=False)
    names = sorted(p.name for p in (tmp_path / "synth" / "images").iterdir())
    (tmp_path / "synth" / "masks" / "manifest.jsonl").write_text(
        "".join(json.dumps({"file": n, "status": "ok", "mask": n}) + "\n" for n in names))
    overrides = ["data.img_size=32", "model.size=tiny", "model.embed_dim=32", "model.depth=1", "model.num_heads=2",
                 "model.decoder_embed_dim=16", "model.decoder_depth=1", "model.decoder_num_heads=2",
                 "consistency.weight=0", "workers=0", "device=cpu", "optim.lr=3e-3", "optim.warmup_epochs=0",
                 "batch_size=4", "epochs=3"]
    data = {"images": str(tmp_path / "synth" / "images"), "anatomy": str(tmp_path / "synth" / "masks")}
    logs = {}
    for cpu_amp in (False, True):
        run = tmp_path / f"run-{cpu_amp}"
        cfg = build_config(PretrainConfig, None, [*overrides, f"cpu_amp={cpu_amp}"], data=data, out=str(run))
        engine.pretrain(cfg, progress=False)
        logs[cpu_amp] = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
        assert json.loads((run / "config.json").read_text())["cpu_amp"] is cpu_amp
        assert torch.load(run / "checkpoint-final.pth", weights_only=True)["config"]["cpu_amp"] is cpu_amp
    fp32, bf16 = ([r["rec"] for r in logs[k]] for k in (False, True))
    assert bf16[-1] < bf16[0] and fp32[-1] < fp32[0]
    assert bf16[-1] == pytest.approx(fp32[-1], rel=0.10)
