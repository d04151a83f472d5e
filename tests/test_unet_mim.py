"""The masked U-Net (SparK-style pre-training of the CNN U-Net): masked pixels never reach visible
features, the sparse norms take the statistics of the visible pixels only, the MAE's masking indices
become the U-Net's grid, and the parameter names are the segmentation U-Net's."""

from __future__ import annotations

import copy
import os
import socket

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from vasomim.masking import guided_mask
from vasomim.models.mae import patchify
from vasomim.models.unet import UNet
from vasomim.models.unet_mim import MaskedUNet, masked_norm, visible_grid


def masks(batch: int, grid: int, seed: int = 0):
    f = torch.rand(batch, grid * grid, generator=torch.Generator().manual_seed(seed))
    ids_keep, _, ids_restore, mask = guided_mask(f, 0.5, 0.5, torch.Generator().manual_seed(seed))
    return ids_keep, ids_restore, mask


@pytest.mark.parametrize("norm", ["batch", "group", "instance"])
def test_masked_pixels_never_reach_visible_features(norm):
    """The leak test: d(visible features of every encoder stage) / d(masked input pixels) is exactly
    zero, and so is the gradient with respect to anything added at masked positions after any layer
    of the encoder (a convolution, a norm + ReLU, the pooling). Training mode: BatchNorm mixes the
    samples of the batch, through their visible pixels only."""
    torch.manual_seed(0)
    model = MaskedUNet(in_chans=1, base_channels=4, levels=3, norm=norm).train()  # 8-px cells
    ids_keep, ids_restore, mask = masks(3, 8)
    visible = visible_grid(ids_keep, ids_restore, (8, 8))
    imgs = torch.randn(3, 1, 64, 64, requires_grad=True)

    injected = []

    def inject(module, inputs, output):
        delta = torch.zeros_like(output, requires_grad=True)
        injected.append(delta)
        return output + delta

    leaves = [m for m in model.down.modules() if not list(m.children())] + [model.pool]
    hooks = [m.register_forward_hook(inject) for m in leaves]
    feats = model.encode(imgs, visible)
    for h in hooks:
        h.remove()
    # per block 2 convolutions and 2 ReLUs (the norms run as masked_norm, each followed by its ReLU),
    # and 3 poolings
    assert len(feats) == 4 and len(injected) == 4 * 4 + 3
    weights = torch.Generator().manual_seed(1)
    objective = sum((f * model.level_visible(visible, i) * torch.randn(f.shape, generator=weights)).sum()
                    for i, f in enumerate(feats))
    objective.backward()

    def masked_at(t: torch.Tensor) -> torch.Tensor:
        return 1 - F.interpolate(visible, size=t.shape[-2:], mode="nearest")

    assert torch.equal(imgs.grad * masked_at(imgs), torch.zeros_like(imgs))
    assert (imgs.grad * (1 - masked_at(imgs))).abs().sum() > 0  # the visible pixels do count
    for delta in injected:
        assert torch.equal(delta.grad * masked_at(delta), torch.zeros_like(delta))
    assert all((d.grad * (1 - masked_at(d))).abs().sum() > 0 for d in injected)
    for f in feats:  # the masked regions stay empty through the encoder
        assert torch.equal(f * masked_at(f), torch.zeros_like(f))


def test_sparse_batch_norm_uses_the_visible_pixels_of_the_batch():
    torch.manual_seed(0)
    x = torch.randn(3, 8, 8, 8) * 2 + 1
    visible = (torch.rand(3, 1, 8, 8) > 0.5).float()
    bn = nn.BatchNorm2d(8)
    nn.init.normal_(bn.weight)
    nn.init.normal_(bn.bias)
    ref = copy.deepcopy(bn)
    out = masked_norm(bn, x * visible, visible)
    # reference: the visible pixels gathered into a (pixels, channels) batch (SparK's sparse BN)
    keep = visible[:, 0].bool()
    expected = F.batch_norm(x.permute(0, 2, 3, 1)[keep], ref.running_mean, ref.running_var, ref.weight, ref.bias,
                            True, ref.momentum, ref.eps)
    assert torch.allclose(out.permute(0, 2, 3, 1)[keep], expected, atol=1e-5)
    assert torch.equal(out * (1 - visible), torch.zeros_like(out))
    assert torch.allclose(bn.running_mean, ref.running_mean, atol=1e-6)
    assert torch.allclose(bn.running_var, ref.running_var, atol=1e-5)
    assert bn.num_batches_tracked.item() == 1
    # a plain BatchNorm would count the masked zeros: other statistics
    assert not torch.allclose(copy.deepcopy(ref)(x * visible).permute(0, 2, 3, 1)[keep], expected, atol=1e-2)
    # eval: the running statistics
    bn.eval()
    assert torch.allclose(masked_norm(bn, x, visible), bn(x) * visible, atol=1e-6)


def test_dense_batchnorm_statistics_path_matches_torch_batchnorm():
    # a dense tensor runs nn.BatchNorm2d itself on one process; the hand-written statistics (the
    # path DDP runs, summing over processes) must give the same output and running statistics
    torch.manual_seed(0)
    x = torch.randn(3, 5, 7, 6).contiguous(memory_format=torch.channels_last) * 2 + 0.5
    fast, manual = nn.BatchNorm2d(5), nn.BatchNorm2d(5)
    nn.init.normal_(fast.weight)
    nn.init.normal_(fast.bias)
    manual.load_state_dict(fast.state_dict())
    out_fast = masked_norm(fast, x, None)
    out_manual = masked_norm(manual, x, torch.ones(3, 1, 7, 6))
    assert torch.allclose(out_fast, out_manual, atol=1e-5)
    assert torch.allclose(fast.running_mean, manual.running_mean, atol=1e-6)
    assert torch.allclose(fast.running_var, manual.running_var, atol=1e-5)
    assert fast.num_batches_tracked.item() == manual.num_batches_tracked.item() == 1


@pytest.mark.parametrize("kind", ["group", "instance"])
def test_sparse_group_and_instance_norms_use_each_samples_visible_pixels(kind):
    torch.manual_seed(0)
    x = torch.randn(2, 8, 6, 6) * 3 - 1
    visible = (torch.rand(2, 1, 6, 6) > 0.4).float()
    layer = nn.GroupNorm(4, 8) if kind == "group" else nn.InstanceNorm2d(8, affine=True)
    nn.init.normal_(layer.weight)
    nn.init.normal_(layer.bias)
    out = masked_norm(layer, x * visible, visible)
    groups = 4 if kind == "group" else 8
    for b in range(2):
        keep = visible[b, 0].bool()
        for g in range(groups):
            ch = slice(g * 8 // groups, (g + 1) * 8 // groups)
            vals = x[b, ch][:, keep]  # (channels of the group, visible pixels)
            norm = (vals - vals.mean()) / torch.sqrt(vals.var(unbiased=False) + layer.eps)
            expected = norm * layer.weight[ch, None] + layer.bias[ch, None]
            assert torch.allclose(out[b, ch][:, keep], expected, atol=1e-5), (b, g)
    assert torch.equal(out * (1 - visible), torch.zeros_like(out))


def test_mae_indices_become_the_unet_grid_and_predictions_are_in_patch_space():
    ids_keep, ids_restore, mask = masks(2, 4)
    visible = visible_grid(ids_keep, ids_restore, (4, 4))
    assert torch.equal(1 - visible.flatten(1), mask)  # patch k of patchify is cell (k // 4, k % 4)
    # ids_keep lists the visible patches
    assert torch.equal(torch.sort(ids_keep, 1).values, torch.nonzero(mask == 0)[:, 1].reshape(2, -1))
    model = MaskedUNet(in_chans=1, base_channels=4, levels=4)
    imgs = torch.randn(2, 1, 64, 64)
    pred = model(imgs, ids_keep, ids_restore)
    assert pred.shape == patchify(imgs, 16).shape == (2, 16, 256) and model.patch_size == 16
    with pytest.raises(ValueError, match="not divisible by 16"):
        model(torch.randn(2, 1, 72, 72), ids_keep, ids_restore)
    # the visible cells' content decides the prediction; the masked cells' does not
    other = imgs.clone()
    cells = patchify(other, 16)
    cells[mask.bool()] = 5.0
    other = cells.reshape(2, 4, 4, 16, 16, 1).permute(0, 5, 1, 3, 2, 4).reshape(2, 1, 64, 64)
    model.eval()
    assert torch.equal(model(imgs, ids_keep, ids_restore), model(other, ids_keep, ids_restore))


@pytest.mark.parametrize("norm", ["batch", "group"])
def test_parameter_names_are_the_segmentation_unets(norm):
    mim, seg = MaskedUNet(1, 4, 3, norm).state_dict(), UNet(1, 4, 3, norm=norm).state_dict()
    enc_dec = {k: v.shape for k, v in mim.items() if k.startswith(("down.", "up."))}
    assert enc_dec == {k: v.shape for k, v in seg.items() if not k.startswith("head.")}
    assert set(mim) - set(enc_dec) == {f"mask_tokens.{i}" for i in range(4)} | {"rec_head.weight", "rec_head.bias"}


def _gradients(model: nn.Module, imgs, ids_keep, ids_restore) -> dict[str, torch.Tensor]:
    model.zero_grad()
    pred = model(imgs, ids_keep, ids_restore)
    (pred.pow(2).mean() + pred.mean()).backward()
    out = {n.removeprefix("module."): p.grad.clone() for n, p in model.named_parameters()}
    out.update({n.removeprefix("module."): b.clone() for n, b in model.named_buffers() if "running" in n})
    return out


def _batch(n: int = 8):
    g = torch.Generator().manual_seed(0)
    imgs = torch.randn(n, 1, 64, 64, generator=g)
    ids_keep, ids_restore, _ = masks(n, 4)
    return imgs, ids_keep, ids_restore


def _ddp_worker(rank: int, port: int, out: str) -> None:
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        torch.manual_seed(0)
        model = DistributedDataParallel(MaskedUNet(1, 4, 4, "batch"))
        imgs, ids_keep, ids_restore = _batch()
        rows = slice(rank, None, 2)  # a DistributedSampler's round-robin share
        grads = _gradients(model, imgs[rows], ids_keep[rows], ids_restore[rows])
        if rank == 0:
            torch.save(grads, out)
    finally:
        dist.destroy_process_group()


def test_sparse_batch_norm_under_ddp_computes_what_one_process_does(tmp_path):
    """Two gloo processes with half the batch each: the BatchNorm statistics are those of the whole
    batch's visible pixels (summed over processes, with their gradient), so the averaged gradients
    and the running statistics are one process's, to float32 rounding. (The BatchNorm backward is
    ill-conditioned: reordering the batch alone moves these gradients by ~1e-5 of their size, which
    Adam turns into differences of the weights; test_unet_mim_runs.py's trainer run under DDP uses
    GroupNorm to compare whole trajectories.)"""
    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_ddp_worker, args=(port, str(tmp_path / "g.pt")), nprocs=2)
    torch.manual_seed(0)
    ref = _gradients(MaskedUNet(1, 4, 4, "batch"), *_batch())
    got = torch.load(tmp_path / "g.pt", weights_only=True)
    assert got.keys() == ref.keys()
    for key in ref:
        scale = ref[key].abs().max()
        assert (got[key] - ref[key]).abs().max() <= 2e-4 * scale, key
