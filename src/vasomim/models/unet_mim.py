"""Masked image modeling for the convolutional U-Net: VasoMIM's pre-training for ``arch: unet``.

The ideas are SparK's (K. Tian et al., "Designing BERT for convolutional networks: sparse and
hierarchical masked modeling", ICLR 2023) with ConvMAE's hierarchical masking (P. Gao et al.,
NeurIPS 2022); the code is ours.

- **Mask on the coarsest grid.** One cell per ``2**levels``-pixel patch, numbered as
  :func:`vasomim.models.mae.patchify` numbers patches, so the anatomy-guided sampler
  (:func:`vasomim.masking.guided_mask`) and the MAE loss (:func:`vasomim.losses.vasomim_loss`)
  are used unchanged. The model takes the MAE's ``(imgs, ids_keep, ids_restore)`` and returns
  ``(B, N, P*P*C)`` predictions in patch space.
- **Masked regions stay empty through the encoder** (SparK's sparse convolution, emulated on a
  dense tensor): the input of every level and the output of every conv -> norm -> ReLU stage are
  multiplied by the visibility mask at that level's resolution, and the norm's statistics ignore
  the masked positions. A 3x3 convolution at a visible position therefore reads zeros where the
  image is masked, and a masked pixel has no path to a visible feature (``tests/test_unet_mim.py``
  checks that the gradient is exactly zero). The mask cells are ``2**levels`` pixels wide, so a 2x2 max-pool never mixes a visible and a masked cell.
- **Sparse normalisation.** A BatchNorm over a tensor whose masked half is zero would learn the
  statistics of zeros, not of images. Every norm here takes its statistics over the visible
  positions only: BatchNorm per channel over the visible pixels of the batch (SparK's sparse BN;
  across all processes under DDP, so a 2-process run computes what one process does), GroupNorm
  and InstanceNorm per sample over its visible pixels. We keep the norm the fine-tuning network
  has (``batch`` in ``finetune/unet_cpu``), so its weights and running statistics load as they are.
- **Decoder.** Each skip level's masked positions are filled with a learned mask token (one per
  level), and the U-Net decoder (:class:`~vasomim.models.unet.UpBlock` s) runs densely, then a 1x1
  convolution predicts the pixels.

Parameter names are those of :class:`vasomim.models.unet.UNet` (``down.*``, ``up.*``), plus
``mask_tokens.*`` and ``rec_head.*``, so ``vasomim finetune --init`` loads the encoder (and, with
``init_decoder: true``, the decoder) into the segmentation U-Net; see :func:`load_pretrained_unet`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from vasomim.data.transforms import TransformConfig
from vasomim.models.checkpoints import load_checkpoint, read_state_dict, strip_wrappers, write_tensors
from vasomim.models.mae import patchify
from vasomim.models.unet import UNet

__all__ = ["MaskedUNet", "masked_norm", "visible_grid", "is_unet_state", "is_masked_unet_state", "unet_layout",
           "masked_unet_from_state", "load_pretrained_unet", "export_unet_encoder", "unet_shipped_encoder"]


def visible_grid(ids_keep: torch.Tensor, ids_restore: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """The MAE's masking indices as an image of the patch grid.

    Args:
        ids_keep: (B, K) indices of the visible patches.
        ids_restore: (B, N) position of each patch in the [kept..., masked...] ordering.
        grid: (rows, columns) of the patch grid, rows * columns == N.

    Returns:
        (B, 1, rows, columns) float, 1 where the patch is visible, 0 where it is masked.
    """
    b, n = ids_restore.shape
    if grid[0] * grid[1] != n:
        raise ValueError(f"grid {grid[0]}x{grid[1]} does not hold the {n} patches of the mask")
    mask = torch.ones(b, n, device=ids_restore.device)
    mask[:, : ids_keep.shape[1]] = 0  # MAE: 0 is keep, 1 is remove, in shuffled order ...
    mask = torch.gather(mask, 1, ids_restore)  # ... then back to patch order
    return (1 - mask).reshape(b, 1, *grid)


def _distributed() -> bool:
    """More than one DDP process: batch statistics are then summed over the processes."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _sum_over_processes(t: torch.Tensor) -> torch.Tensor:
    """Sum over DDP processes, with a gradient (identity when not distributed)."""
    if _distributed():
        from torch.distributed.nn.functional import all_reduce

        return all_reduce(t)
    return t


def _moments(x: torch.Tensor, weight: torch.Tensor, dims: tuple[int, ...], sync: bool):
    """Mean and biased variance of ``x`` over ``dims`` where ``weight`` is 1 (two passes)."""
    s1 = (x * weight).sum(dims, keepdim=True)
    broadcast = math.prod(x.shape[d] // weight.shape[d] for d in dims)  # e.g. the channels of a group
    count = (weight.sum(dims, keepdim=True) * broadcast).expand_as(s1)
    if sync:
        count, s1 = _sum_over_processes(torch.cat([count, s1])).chunk(2)
    count = count.clamp_min(1)
    mean = s1 / count
    s2 = ((x - mean) * weight).pow(2).sum(dims, keepdim=True)
    if sync:
        s2 = _sum_over_processes(s2)
    return mean, s2 / count, count


def masked_norm(layer: nn.Module, x: torch.Tensor, visible: torch.Tensor | None) -> torch.Tensor:
    """Apply a norm layer's normalisation with statistics of the visible positions only.

    Args:
        layer: ``nn.BatchNorm2d``, ``nn.GroupNorm`` or ``nn.InstanceNorm2d`` (its affine weights,
            and for BatchNorm its running statistics, are used and updated as the layer would).
        x: (B, C, H, W) features.
        visible: (B, 1, H, W), 1 at visible positions; None: every position (a dense tensor).

    Returns:
        (B, C, H, W), zero at masked positions. BatchNorm in training mode normalises with the
        statistics of the visible pixels of the whole batch, summed over DDP processes; in eval
        mode with its running statistics. GroupNorm and InstanceNorm normalise each sample with
        the statistics of its own visible pixels.
    """
    if visible is None and not (isinstance(layer, nn.BatchNorm2d) and layer.training and _distributed()):
        return layer(x)  # dense, and no statistics to share between processes: the layer itself
    dtype, xf = x.dtype, (x.float() if x.dtype in (torch.float16, torch.bfloat16) else x)  # statistics in fp32+
    weight = torch.ones_like(xf[:, :1]) if visible is None else visible.to(xf.dtype)
    c = x.shape[1]
    if isinstance(layer, nn.BatchNorm2d):
        if not layer.training and layer.track_running_stats:
            out = F.batch_norm(xf, layer.running_mean, layer.running_var, layer.weight, layer.bias, False, 0.0,
                               layer.eps)
        else:
            mean, var, count = _moments(xf, weight, (0, 2, 3), sync=True)
            scale = torch.rsqrt(var + layer.eps) * layer.weight.view(1, c, 1, 1)
            out = xf * scale + (layer.bias.view(1, c, 1, 1) - mean * scale)
            if layer.track_running_stats:
                with torch.no_grad():
                    layer.num_batches_tracked.add_(1)
                    momentum = layer.momentum if layer.momentum is not None else 1 / layer.num_batches_tracked.item()
                    n = count.reshape(-1)[0]
                    unbiased = var.reshape(c) * n / (n - 1).clamp_min(1)
                    layer.running_mean.lerp_(mean.reshape(c), momentum)
                    layer.running_var.lerp_(unbiased, momentum)
    elif isinstance(layer, (nn.GroupNorm, nn.InstanceNorm2d)):
        groups = layer.num_groups if isinstance(layer, nn.GroupNorm) else c
        b, h, w = x.shape[0], x.shape[2], x.shape[3]
        xg = xf.reshape(b, groups, c // groups, h, w)
        mean, var, _ = _moments(xg, weight.reshape(b, 1, 1, h, w), (2, 3, 4), sync=False)
        out = ((xg - mean) * torch.rsqrt(var + layer.eps)).reshape(b, c, h, w)
        if layer.weight is not None:
            out = out * layer.weight.view(1, c, 1, 1) + layer.bias.view(1, c, 1, 1)
    else:
        raise TypeError(f"masked_norm: unsupported layer {type(layer).__name__}")
    out = out.to(dtype)
    return out if visible is None else out * visible


class MaskedUNet(UNet):
    """The U-Net as a masked autoencoder (SparK-style), called like the MAE.

    Args:
        in_chans: image channels.
        base_channels: channels of the full-resolution level (as the fine-tuning U-Net).
        levels: down-sampling steps; the mask grid has one cell per ``2**levels`` pixels.
        norm: ``batch``, ``group`` or ``instance`` (as the fine-tuning U-Net), made sparse.
        norm_pix_loss: stored for the trainer; the loss lives in :mod:`vasomim.losses`.
    """

    def __init__(self, in_chans: int = 1, base_channels: int = 16, levels: int = 4, norm: str = "batch",
                 norm_pix_loss: bool = False) -> None:
        super().__init__(in_chans, base_channels, levels, "transpose", norm)
        del self.head  # the vessel head is the fine-tuning's; pre-training predicts pixels
        widths = [base_channels * 2**i for i in range(levels + 1)]
        # 1-D, so AdamW leaves them undecayed (param_groups_weight_decay), as MAE's mask token
        self.mask_tokens = nn.ParameterList(nn.Parameter(torch.zeros(w)) for w in widths)
        self.rec_head = nn.Conv2d(widths[0], in_chans, 1)
        for token in self.mask_tokens:
            nn.init.trunc_normal_(token, std=0.02, a=-0.02, b=0.02)
        self.patch_size = 2**levels
        self.in_chans = in_chans
        self.norm = norm
        self.norm_pix_loss = norm_pix_loss

    def level_visible(self, visible: torch.Tensor, level: int) -> torch.Tensor:
        """The (B, 1, rows, cols) grid mask at the resolution of encoder level ``level`` (1/2**level)."""
        f = 2 ** (self.levels - level)
        return visible.repeat_interleave(f, dim=2).repeat_interleave(f, dim=3)

    def _block(self, block: nn.Sequential, x: torch.Tensor, visible: torch.Tensor | None) -> torch.Tensor:
        """A :class:`~vasomim.models.unet.ConvBlock`, re-masked after every conv -> norm -> ReLU stage."""
        for layer in block:
            if isinstance(layer, nn.Conv2d):
                x = layer(x)  # at masked positions: ignored by the norm's statistics
            elif isinstance(layer, (nn.BatchNorm2d, nn.GroupNorm, nn.InstanceNorm2d)):
                x = masked_norm(layer, x, visible)
            else:  # the ReLU ending a conv -> norm -> ReLU stage: its output is zeroed where masked
                x = layer(x) if visible is None else layer(x) * visible
        return x

    def encode(self, imgs: torch.Tensor, visible: torch.Tensor) -> list[torch.Tensor]:
        """Encoder features of every level, zero at masked positions.

        Args:
            imgs: (B, C, H, W) images, H and W divisible by ``2**levels``.
            visible: (B, 1, H / 2**levels, W / 2**levels), 1 for visible cells.

        Returns:
            ``levels + 1`` tensors, (B, base * 2**i, H / 2**i, W / 2**i).
        """
        feats, x = [], imgs
        for i, block in enumerate(self.down):
            v = self.level_visible(visible, i)
            x = (x if i == 0 else self.pool(x)) * v
            x = self._block(block, x, v)
            feats.append(x)
        return feats

    def decode(self, feats: list[torch.Tensor], visible: torch.Tensor) -> torch.Tensor:
        """Pixels (B, C, H, W) from the encoder features, masked positions filled with mask tokens."""
        filled = []
        for i, (f, token) in enumerate(zip(feats, self.mask_tokens)):
            v = self.level_visible(visible, i).to(f.dtype)
            filled.append(f * v + token.to(f.dtype).view(1, -1, 1, 1) * (1 - v))
        x = filled.pop()
        for up in self.up:
            x = self._block(up.conv, torch.cat([up.up(x), filled.pop()], dim=1), None)
        return self.rec_head(x)

    def forward(self, imgs: torch.Tensor, ids_keep: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        """Encode the visible cells of ``imgs`` and predict all patches: (B, N, P*P*C), P = 2**levels."""
        p = self.patch_size
        if imgs.shape[-2] % p or imgs.shape[-1] % p:
            raise ValueError(f"input size {tuple(imgs.shape[-2:])} is not divisible by {p} (2**levels)")
        visible = visible_grid(ids_keep, ids_restore, (imgs.shape[-2] // p, imgs.shape[-1] // p)).to(imgs.dtype)
        return patchify(self.decode(self.encode(imgs, visible), visible), p)


# ----------------------------------------------------------------------------- fine-tuning and shipping


def is_unet_state(state: dict) -> bool:
    """A state dict with a U-Net encoder (``down.*``): a U-Net pre-training, fine-tuning or encoder file."""
    return any(k.startswith("down.") for k in state)


def _load_part(model: nn.Module, state: dict, prefix: str, source: str, what: str) -> int:
    """Load the ``prefix`` tensors of ``state`` into ``model`` when every one of the model's fits."""
    own = {k: v for k, v in model.state_dict().items() if k.startswith(prefix)}
    part = {k: v for k, v in state.items() if k.startswith(prefix)}
    differ = sorted(set(own) ^ set(part)) + sorted(k for k in set(own) & set(part) if own[k].shape != part[k].shape)
    if differ:
        k = differ[0]
        found = f"{tuple(part[k].shape)} vs this network's {tuple(own[k].shape)}" if k in own and k in part \
            else ("missing in the checkpoint" if k in own else "not in this network")
        raise ValueError(f"{source}: its U-Net {what} does not fit this network ({len(differ)} keys differ, e.g. "
                         f"{k}: {found}); use the pre-training's base_channels, levels, norm and in_chans")
    model.load_state_dict(part, strict=False)
    return len(part)


def load_pretrained_unet(model: UNet, state: dict, source: str, init_decoder: bool) -> list[str]:
    """Fill a segmentation U-Net from a U-Net pre-training checkpoint or a shipped U-Net encoder.

    Args:
        model: the fresh :class:`~vasomim.models.unet.UNet`.
        state: the checkpoint's state dict (wrapper prefixes stripped).
        source: the file, for messages.
        init_decoder: also load the decoder (``up.*``); the vessel head always starts random.

    Returns:
        one line per thing loaded (for the log).

    Raises:
        ValueError: one line naming ``source`` when a part does not fit or is missing.
    """
    notes = [f"init: U-Net encoder (down blocks) from {source}: {_load_part(model, state, 'down.', source, 'encoder')} "
             "tensors loaded"]
    if init_decoder:
        if not any(k.startswith("up.") for k in state):
            raise ValueError(f"{source}: holds no U-Net decoder (up.*) for init_decoder: true (a shipped encoder "
                             "has none; give the pre-training checkpoint)")
        n = _load_part(model, state, "up.", source, "decoder")
        notes.append(f"init: U-Net decoder (up blocks) from {source}: {n} tensors loaded; the head starts random")
    else:
        notes.append("init: U-Net decoder and head start random (init_decoder: false)")
    return notes


def unet_layout(state: Mapping[str, torch.Tensor], config: Mapping | None = None) -> dict:
    """The shape of the U-Net whose encoder (``down.*``) is in ``state``.

    Args:
        state: a U-Net state dict (pre-training, fine-tuning or encoder file), wrappers stripped.
        config: the checkpoint's config; its ``model`` (pre-training) or ``network`` (fine-tuning)
            section names the norm, which the weights cannot tell apart for ``group`` and
            ``instance``.

    Returns:
        ``{"in_chans", "base_channels", "levels", "norm"}``; without a config the norm is ``batch``
        when the encoder keeps running statistics, else ``group``.
    """
    first = state["down.0.0.weight"]
    levels = len({k.split(".")[1] for k in state if k.startswith("down.")}) - 1
    config = config or {}
    section = config.get("model") if isinstance(config.get("model"), Mapping) else config.get("network")
    norm = (section if isinstance(section, Mapping) else {}).get("norm") or \
        ("batch" if any(k.startswith("down.") and k.endswith("running_mean") for k in state) else "group")
    return {"in_chans": int(first.shape[1]), "base_channels": int(first.shape[0]), "levels": levels, "norm": norm}


def is_masked_unet_state(state: Mapping[str, torch.Tensor]) -> bool:
    """A :class:`MaskedUNet` state dict (a ``vasomim pretrain`` checkpoint with ``model.arch: unet``)."""
    return is_unet_state(state) and "rec_head.weight" in state and "mask_tokens.0" in state


def masked_unet_from_state(state: Mapping[str, torch.Tensor], config: Mapping | None, hints: Mapping | None,
                           source: str) -> MaskedUNet:
    """The (untrained) :class:`MaskedUNet` a pre-training state dict fits, for the analyses.

    Args:
        state: the checkpoint's state dict, wrappers stripped.
        config: the checkpoint's config (norm, ``norm_pix_loss``); None or ``{}`` when it has none.
        hints: ``norm_pix_loss`` when the caller knows better than the config.
        source: the file, for messages.

    Raises:
        ValueError: one line naming ``source`` when the state is no masked U-Net.
    """
    if not is_masked_unet_state(state):
        raise ValueError(f"{source}: not a U-Net pre-training checkpoint (no down.*, mask_tokens.* and rec_head.*)")
    layout = unet_layout(state, config)
    model_cfg = (config or {}).get("model") if isinstance((config or {}).get("model"), Mapping) else {}
    norm_pix = (hints or {}).get("norm_pix_loss")
    norm_pix = bool(model_cfg.get("norm_pix_loss", False)) if norm_pix is None else bool(norm_pix)
    return MaskedUNet(layout["in_chans"], layout["base_channels"], layout["levels"], layout["norm"], norm_pix)


def export_unet_encoder(checkpoint: str | Path | Mapping, out_path: str | Path,
                        dtype: torch.dtype | None = torch.float16, source: str | None = None) -> tuple[dict, str]:
    """Write a U-Net checkpoint's encoder (``down.*``) to a file, plus its settings as ``.json`` beside it.

    Args:
        checkpoint: a ``vasomim pretrain`` checkpoint with ``model.arch: unet``, a U-Net
            fine-tuning checkpoint, or an encoder file written here (a file, or what
            :func:`~vasomim.models.checkpoints.load_checkpoint` read from one).
        out_path: ``.safetensors`` writes safetensors, any other suffix a ``torch.save`` state
            dict; the settings (architecture, shape, input size and normalisation) go to the same
            path with the suffix ``.json`` (``encoder.json`` for ``encoder.safetensors``).
        dtype: floating-point tensors are cast to it (None: kept).
        source: the file a checkpoint dict was read from, for messages.

    Returns:
        (the tensors written, a one-line architecture description).

    Raises:
        ValueError: one line naming ``checkpoint`` when it holds no U-Net encoder.
    """
    ckpt = checkpoint if isinstance(checkpoint, Mapping) else load_checkpoint(checkpoint)  # read once
    state, source = read_state_dict(ckpt, source or (None if isinstance(checkpoint, Mapping) else str(checkpoint)))
    state = strip_wrappers(state)
    enc = {k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v).contiguous()
           for k, v in state.items() if k.startswith("down.")}
    if not enc:
        raise ValueError(f"{source}: holds no U-Net encoder (down.*)")
    config = ckpt.get("config") if isinstance(ckpt, dict) and isinstance(ckpt.get("config"), dict) else {}
    layout = unet_layout(enc, config)
    # the input convention: config["input"] of a fine-tuning checkpoint, config["data"] of a pre-training
    section = next((s for s in (config.get("input"), config.get("data")) if isinstance(s, Mapping)), {})
    size = section.get("size") or section.get("img_size")
    mean, std = section.get("mean"), section.get("std")
    if not mean or not std:
        mean, std = TransformConfig(size=int(size or 224), channels=layout["in_chans"]).stats()
    meta = {"architecture": "vasomim.models.unet.UNet", "part": "encoder (down blocks)", **layout,
            "input_size": size, "mean": [float(m) for m in mean], "std": [float(s) for s in std]}
    out_path = write_tensors(enc, out_path, "vasomim UNet encoder (down.*)")
    out_path.with_suffix(".json").write_text(json.dumps(meta, indent=2) + "\n")
    arch = (f"U-Net encoder, base {layout['base_channels']} channels, {layout['levels']} levels, "
            f"{layout['norm']} norm, {layout['in_chans']} channel(s)")
    return enc, arch


def unet_shipped_encoder(checkpoint: str | Path | Mapping) -> bool:
    """Whether ``vasomim ship --kind encoder`` should take ``checkpoint``'s U-Net encoder."""
    return is_unet_state(strip_wrappers(read_state_dict(checkpoint)[0]))
