"""Vessel segmentation networks: a ViT encoder with a U-Net-style convolutional decoder.

:class:`ViTUNet` follows UNETR (Hatamizadeh et al. 2022) in 2-D:

* the encoder is a timm ``VisionTransformer`` (patch 16, class token, parameter names of timm and
  MAE, so pre-trained checkpoints load by name; see :mod:`vasomim.models.checkpoints`);
* four token maps are tapped from several encoder depths, reshaped to the 1/16 grid and brought
  to 1/16, 1/8, 1/4 and 1/2 of the input by 0, 1, 2 and 3 steps of
  (2x2 transposed convolution -> 3x3 convolution -> norm -> ReLU); the deepest tap goes through
  the encoder's final LayerNorm first, as in the ViT's own output;
* a small convolutional stem on the image gives skips at 1/1 and (by default) 1/2 and 1/4, where
  the thin vessels are still resolved;
* the decoder climbs 1/16 -> 1/8 -> 1/4 -> 1/2 -> 1/1 with a transposed convolution, the
  concatenated skips and ``(Conv 3x3 -> norm -> ReLU) x 2`` per step, and a 1x1 convolution gives
  one logit per pixel.

Inputs of any size divisible by 16 are accepted; for a size other than ``img_size`` the position
embeddings are resampled on the fly to the input's patch grid (:class:`GridViT`: bicubic, no
anti-aliasing, as checkpoints are resampled on loading with timm's ``resample_abs_pos_embed``,
and an operator that ONNX exports).
:func:`param_groups_lrd` builds optimizer parameter groups with layer-wise lr decay.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from vasomim.models.unet import ConvBlock, UNet, UpBlock, make_norm
from vasomim.models.vit import VIT_SIZES, vit_dims

__all__ = [
    "GridViT",
    "PATCH_SIZE",
    "VIT_SIZES",
    "ViTUNet",
    "build_segmentation_model",
    "default_taps",
    "layer_id",
    "param_groups_lrd",
]

PATCH_SIZE = 16

#: Names of the encoder's token parameters (no weight decay, layer 0 for lr decay).
TOKEN_PARAMS = ("cls_token", "pos_embed", "reg_token", "dist_token")


def default_taps(depth: int) -> tuple[int, int, int, int]:
    """Evenly spaced tap blocks ``ceil(depth * k / 4)`` for k = 1..4 (12 -> 3, 6, 9, 12).

    Args:
        depth: Number of encoder blocks. For ``depth < 4`` blocks are tapped more than once (2 -> 1,
            1, 2, 2).
    """
    return tuple(-(-depth * k // 4) for k in range(1, 5))  # type: ignore[return-value]


class GridViT(VisionTransformer):
    """timm's ``VisionTransformer`` whose position embeddings follow any patch grid.

    timm's own resampling (``dynamic_img_size``) is anti-aliased, which ONNX cannot export; here the
    grid part is resampled bicubically without anti-aliasing (identical when the grid grows, the
    MAE convention when it shrinks). At the training grid nothing is resampled. Parameter names
    are timm's, so checkpoints load unchanged.
    """

    def _pos_embed(self, x: torch.Tensor) -> torch.Tensor:
        if not self.dynamic_img_size or self.no_embed_class or self.reg_token is not None:
            return super()._pos_embed(x)
        b, h, w, c = x.shape
        pos = self.pos_embed
        gh, gw = self.patch_embed.grid_size
        if (h, w) != (gh, gw):
            n = self.num_prefix_tokens
            grid = pos[:, n:].reshape(1, gh, gw, c).permute(0, 3, 1, 2).float()
            grid = F.interpolate(grid, size=(h, w), mode="bicubic", align_corners=False)
            pos = torch.cat([pos[:, :n], grid.permute(0, 2, 3, 1).reshape(1, h * w, c).to(pos.dtype)], 1)
        x = torch.cat([self.cls_token.expand(b, -1, -1), x.reshape(b, h * w, c)], dim=1) + pos
        return self.pos_drop(x)


def _up_step(in_channels: int, out_channels: int, norm: str) -> nn.Sequential:
    """2x upsampling: transposed conv 2x2 stride 2, then Conv 3x3 -> norm -> ReLU."""
    return nn.Sequential(
        nn.ConvTranspose2d(in_channels, out_channels, 2, stride=2),
        nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
        make_norm(norm, out_channels),
        nn.ReLU(inplace=True),
    )


class ViTUNet(nn.Module):
    """ViT encoder + U-Net-style convolutional decoder, one logit per pixel.

    Args:
        size: Encoder size, a key of :data:`VIT_SIZES` (``tiny``, ``small``, ``base``, ``large``).
        img_size: Training input size (square int or ``(H, W)``), divisible by 16; sets the grid of
            the learned position embeddings. Other sizes divisible by 16 work at run time.
        in_chans: Image channels (1 for grayscale angiograms, 3 for replicated gray / RGB).
        embed_dim, depth, num_heads: Override the size's encoder dimensions.
        taps: Four 1-based block numbers whose outputs feed the decoder at 1/2, 1/4, 1/8 and 1/16
            (non-decreasing, each in ``1..depth``; block ``k`` means the tokens after the k-th
            transformer block). Default :func:`default_taps`. Blocks after the last tap are not run.
        stem_levels: Convolutional stem skips: 0 = none (every skip comes from the encoder; the
            decoder cannot bypass it), 1 = full resolution only, 2 = also 1/2, 3 = also 1/4.
        decoder_channels: Decoder widths at 1/16, 1/8, 1/4, 1/2 and 1/1. The stem uses the widths of
            its levels.
        norm: Decoder normalisation, see :func:`vasomim.models.unet.make_norm`.
        drop_path_rate: Stochastic depth of the encoder blocks.
    """

    def __init__(
        self,
        size: str = "tiny",
        img_size: int | Sequence[int] = 224,
        in_chans: int = 1,
        *,
        embed_dim: int | None = None,
        depth: int | None = None,
        num_heads: int | None = None,
        taps: Sequence[int] | None = None,
        stem_levels: int = 3,
        decoder_channels: Sequence[int] = (256, 128, 64, 32, 16),
        norm: str = "batch",
        drop_path_rate: float = 0.0,
    ) -> None:
        super().__init__()
        dims = vit_dims(size, embed_dim=embed_dim, depth=depth, num_heads=num_heads)
        img_hw = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        if len(img_hw) != 2 or any(s % PATCH_SIZE for s in img_hw):
            raise ValueError(f"img_size {img_size} must be divisible by {PATCH_SIZE}")
        taps = tuple(int(t) for t in (taps if taps is not None else default_taps(dims["depth"])))
        if (len(taps) != 4 or any(b < a for a, b in zip(taps, taps[1:]))
                or taps[0] < 1 or taps[-1] > dims["depth"]):
            raise ValueError(
                f"taps must be 4 non-decreasing block numbers in 1..{dims['depth']}, got {taps}"
            )
        if stem_levels not in (0, 1, 2, 3):
            raise ValueError(f"stem_levels must be 0, 1, 2 or 3, got {stem_levels}")
        if len(decoder_channels) != 5:
            raise ValueError(f"decoder_channels needs 5 widths (1/16..1/1), got {decoder_channels}")

        self.taps = taps
        self.stem_levels = stem_levels
        self.encoder = GridViT(
            img_size=img_hw,
            patch_size=PATCH_SIZE,
            in_chans=in_chans,
            num_classes=0,
            global_pool="",
            class_token=True,
            dynamic_img_size=True,
            drop_path_rate=drop_path_rate,
            **dims,
        )
        d = dims["embed_dim"]
        c16, c8, c4, c2, c1 = (int(c) for c in decoder_channels)
        # Encoder features brought to their decoder resolution.
        self.bottleneck = ConvBlock(d, c16, norm)
        self.proj8 = _up_step(d, c8, norm)
        self.proj4 = nn.Sequential(_up_step(d, c4, norm), _up_step(c4, c4, norm))
        self.proj2 = nn.Sequential(_up_step(d, c2, norm), _up_step(c2, c2, norm),
                                   _up_step(c2, c2, norm))
        # Convolutional stem on the image: 1/1, then optionally 1/2 and 1/4.
        stem_widths = (c1, c2, c4)[:stem_levels]
        self.stem = nn.ModuleList(
            ConvBlock(in_chans if i == 0 else stem_widths[i - 1], w, norm)
            for i, w in enumerate(stem_widths)
        )
        self.pool = nn.MaxPool2d(2)
        self.up8 = UpBlock(c16, c8, c8, "transpose", norm)
        self.up4 = UpBlock(c8, c4 * (2 if stem_levels >= 3 else 1), c4, "transpose", norm)
        self.up2 = UpBlock(c4, c2 * (2 if stem_levels >= 2 else 1), c2, "transpose", norm)
        self.up1 = UpBlock(c2, c1 if stem_levels >= 1 else 0, c1, "transpose", norm)
        self.head = nn.Conv2d(c1, 1, 1)

    @property
    def embed_dim(self) -> int:
        """Token width of the encoder."""
        return self.encoder.embed_dim

    @property
    def depth(self) -> int:
        """Number of encoder blocks."""
        return len(self.encoder.blocks)

    def encoder_param_names(self) -> list[str]:
        """Names (as in ``named_parameters()``) of the encoder's parameters."""
        return [f"encoder.{n}" for n, _ in self.encoder.named_parameters()]

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Token maps ``(B, D, H/16, W/16)`` at the four taps, shallowest first.

        The deepest map has the encoder's final LayerNorm applied.
        """
        blocks = sorted(set(self.taps))
        feats = self.encoder.forward_intermediates(
            x, indices=[b - 1 for b in blocks], norm=False, stop_early=True,
            output_fmt="NCHW", intermediates_only=True,
        )
        by_block = dict(zip(blocks, feats))
        out = [by_block[t] for t in self.taps]
        out[-1] = self.encoder.norm(out[-1].permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, 1, H, W)`` for images ``(B, in_chans, H, W)``, H and W divisible by 16."""
        if x.shape[-2] % PATCH_SIZE or x.shape[-1] % PATCH_SIZE:
            raise ValueError(
                f"input size {tuple(x.shape[-2:])} is not divisible by the patch size {PATCH_SIZE}"
            )
        z2, z4, z8, z16 = self.encode(x)
        stem = []
        for i, block in enumerate(self.stem):
            stem.append(block(x if i == 0 else self.pool(stem[-1])))
        skip4 = [self.proj4(z4)] + stem[2:3]
        skip2 = [self.proj2(z2)] + stem[1:2]
        y = self.up8(self.bottleneck(z16), self.proj8(z8))
        y = self.up4(y, torch.cat(skip4, dim=1))
        y = self.up2(y, torch.cat(skip2, dim=1))
        y = self.up1(y, stem[0] if stem else None)
        return self.head(y)


def layer_id(name: str, num_layers: int) -> int:
    """Layer index of a parameter for layer-wise lr decay (MAE/BEiT convention).

    Encoder tokens and patch embedding are layer 0, ``encoder.blocks.i`` is layer ``i + 1`` and
    everything else (the encoder's final norm, the whole decoder) is layer ``num_layers``.

    Args:
        name: Parameter name as in ``model.named_parameters()``.
        num_layers: Number of encoder blocks + 1.
    """
    if not name.startswith("encoder."):
        return num_layers
    sub = name[len("encoder."):]
    if sub in TOKEN_PARAMS or sub.startswith("patch_embed."):
        return 0
    if sub.startswith("blocks."):
        return int(sub.split(".")[1]) + 1
    return num_layers


def unet_layer_id(name: str, num_layers: int) -> int:
    """Layer index of a CNN :class:`~vasomim.models.unet.UNet` parameter for layer-wise lr decay.

    The encoder's conv block ``down.i`` (``i = 0`` at full resolution, ``num_layers - 1`` the
    bottleneck) is layer ``i``; the decoder (``up.*``) and the head are layer ``num_layers``. The
    coarser an encoder block, the closer its lr to the decoder's, as in a ViT where the patch
    embedding moves least.

    Args:
        name: Parameter name as in ``model.named_parameters()``.
        num_layers: Number of encoder blocks (``levels + 1``).
    """
    if name.startswith("down."):
        return int(name.split(".")[1])
    return num_layers


def param_groups_lrd(
    model: nn.Module, base_lr: float, weight_decay: float, layer_decay: float = 1.0
) -> list[dict]:
    """Optimizer parameter groups with layer-wise lr decay and no decay on norms/biases/tokens.

    A parameter in layer ``l`` (see :func:`layer_id`) gets ``lr = base_lr * layer_decay **
    (num_layers - l)``, so the decoder and the encoder's final norm get ``base_lr`` and the patch
    embedding the smallest lr. In a CNN :class:`~vasomim.models.unet.UNet` the layers are the
    encoder's conv blocks (see :func:`unet_layer_id`): the full-resolution block gets the smallest
    lr, the bottleneck ``base_lr * layer_decay`` and the decoder ``base_lr``, so a pre-trained
    encoder moves less than the decoder trained from zero. One-dimensional parameters (norm
    weights, biases) and the encoder's tokens get no weight decay. Frozen parameters are left out.
    A model with neither kind of encoder gets the full lr everywhere.

    Args:
        model: A :class:`ViTUNet` (or any module; see above).
        base_lr: Learning rate of the top layer.
        weight_decay: Weight decay of the decayed groups.
        layer_decay: Per-layer lr factor; 1.0 disables layer-wise decay.

    Returns:
        A list of dicts with ``params``, ``lr``, ``lr_scale`` (for schedulers that rescale a base
        lr), ``weight_decay`` and ``name``, ready for ``torch.optim.AdamW``.
    """
    blocks = getattr(getattr(model, "encoder", None), "blocks", None)
    down = getattr(model, "down", None)
    if blocks is not None:
        num_layers, layer_of = len(blocks) + 1, layer_id
    elif isinstance(down, nn.ModuleList):
        num_layers, layer_of = len(down), unet_layer_id
    else:
        num_layers, layer_of = 1, (lambda name, n: n)
    groups: dict[str, dict] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        lid = layer_of(name, num_layers)
        no_decay = param.ndim == 1 or name.split(".")[-1] in TOKEN_PARAMS
        key = f"layer_{lid}_{'no_decay' if no_decay else 'decay'}"
        if key not in groups:
            scale = layer_decay ** (num_layers - lid)
            groups[key] = dict(params=[], lr=base_lr * scale, lr_scale=scale,
                               weight_decay=0.0 if no_decay else weight_decay, name=key)
        groups[key]["params"].append(param)
    return list(groups.values())


def build_segmentation_model(
    arch: str = "vit_unet", size: str = "tiny", img_size: int | Sequence[int] = 224,
    in_chans: int = 1, **kwargs
) -> nn.Module:
    """Build a segmentation network by name.

    Args:
        arch: ``"vit_unet"`` (:class:`ViTUNet`) or ``"unet"`` (:class:`~vasomim.models.unet.UNet`).
        size: ViT size for ``vit_unet``. The fully convolutional ``unet`` takes its width from
            ``base_channels`` and accepts only the default here.
        img_size: Training input size for ``vit_unet`` (position-embedding grid); ``unet`` has none.
        in_chans: Image channels.
        kwargs: Further constructor arguments of the chosen class.
    """
    if arch == "vit_unet":
        return ViTUNet(size=size, img_size=img_size, in_chans=in_chans, **kwargs)
    if arch == "unet":
        if size != "tiny":
            raise ValueError(f"unet has no size {size!r}; set base_channels/levels instead")
        return UNet(in_chans=in_chans, **kwargs)
    raise ValueError(f"unknown segmentation arch {arch!r}; choose 'vit_unet' or 'unet'")
