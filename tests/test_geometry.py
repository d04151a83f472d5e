"""True geometry on a real angiogram: a non-square frame around the same pixels gives the same mask."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import shared_data

from vasomim.data.io import read_image, read_mask
from vasomim.data.transforms import TransformConfig, build_transform
from vasomim.engines.finetune import FinetuneConfig, build_network, dice_bce_loss, network_config
from vasomim.inference import input_convention, predict_image
from vasomim.metrics import dice


@pytest.mark.slow
def test_padding_a_real_angiogram_to_a_wide_frame_keeps_its_mask():
    """A tiny ViT U-Net, trained briefly with the CPU recipe's geometry (96-px windows cut at native
    resolution, zoom 0.8-1.25) on 8 CIMAT frames, segments frame 40 alone (300x300) and placed in a
    480x300 frame (median-grey margins, the original 120 px from the left: not on the 16-px patch
    grid nor on the window grid). Inside the original region the two masks agree: measured 0.986
    (0.990 with flip TTA). The squash to a square (the old path) gives 0.86. A model trained on
    whole frames shrunk to 96 px agrees less (0.950 at this offset): its windows resample the image
    at another phase (120 x 0.32 = 38.4 network pixels)."""
    root = shared_data("cimat-coronary")
    names = [f"cimat_{i:02d}.png" for i in range(1, 9)]
    cfg = FinetuneConfig(data="unused", embed_dim=96, depth=2, num_heads=3,
                         decoder_channels=(64, 32, 16, 16, 8), img_size=96)
    torch.manual_seed(0)
    model = build_network(network_config(cfg))
    transform = build_transform(TransformConfig(size=96, zoom=(0.8, 1.25), base_scale=1.0), train=True)
    images = [read_image(root / "images" / n) for n in names]
    masks = [read_mask(root / "masks" / n) for n in names]
    rng = np.random.default_rng(0)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    model.train()
    for _ in range(120):
        batch = [transform(images[k], masks[k], rng) for k in rng.integers(0, len(names), 8)]
        x, y = torch.stack([b[0] for b in batch]), torch.stack([b[1] for b in batch])
        loss = dice_bce_loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()

    image = read_image(root / "images" / "cimat_40.png")
    wide = np.full((300, 480), np.median(image), np.float32)
    wide[:, 120:420] = image
    convention = input_convention(96, 1, 1.0)  # what finetune records with input_scale 1
    agree = {}
    for mode in ("native", "resize"):
        square = predict_image(model, image, convention, mode=mode) >= 0.5
        inside = (predict_image(model, wide, convention, mode=mode) >= 0.5)[:, 120:420]
        agree[mode] = dice(inside, square)
    truth = read_mask(root / "masks" / "cimat_40.png")
    square = predict_image(model, image, convention) >= 0.5
    assert dice(square, truth) > 0.6, "the briefly trained model should find vessels"
    assert agree["native"] >= 0.98, agree
    assert agree["native"] - agree["resize"] >= 0.05, agree
