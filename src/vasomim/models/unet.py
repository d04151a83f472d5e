"""The plain convolutional U-Net (Ronneberger et al. 2015): the ``unet`` baseline arm.

Also home of the convolution blocks shared with the ViT U-Net decoder
(:mod:`vasomim.models.segmentation`): ``(Conv 3x3 -> norm -> ReLU) x 2``.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["ConvBlock", "UNet", "UpBlock", "make_norm"]

NORMS = ("batch", "group", "instance")


def make_norm(kind: str, channels: int) -> nn.Module:
    """A 2-D normalisation layer.

    Args:
        kind: ``"batch"`` (BatchNorm2d), ``"group"`` (GroupNorm with 8 groups, or fewer when the
            channel count is not divisible by 8) or ``"instance"`` (affine InstanceNorm2d).
        channels: Number of feature channels.
    """
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "group":
        groups = next(g for g in (8, 4, 2, 1) if channels % g == 0)
        return nn.GroupNorm(groups, channels)
    if kind == "instance":
        return nn.InstanceNorm2d(channels, affine=True)
    raise ValueError(f"unknown norm {kind!r}; choose one of {NORMS}")


class ConvBlock(nn.Sequential):
    """``(Conv 3x3 -> norm -> ReLU) x 2``; the convolutions have no bias (the norm has one).

    Args:
        in_channels, out_channels: Channels in and out.
        norm: Normalisation kind, see :func:`make_norm`.
    """

    def __init__(self, in_channels: int, out_channels: int, norm: str = "batch") -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
            make_norm(norm, out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
            make_norm(norm, out_channels),
            nn.ReLU(inplace=True),
        )


class UpBlock(nn.Module):
    """Upsample by 2, concatenate the skip features, then a :class:`ConvBlock`.

    Args:
        in_channels: Channels of the coarser input.
        skip_channels: Channels of the skip features at the finer resolution.
        out_channels: Channels out.
        mode: ``"transpose"``: a 2x2 stride-2 transposed convolution to ``out_channels``;
            ``"bilinear"``: bilinear upsampling that keeps ``in_channels``.
        norm: Normalisation kind, see :func:`make_norm`.
    """

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int,
                 mode: str = "transpose", norm: str = "batch") -> None:
        super().__init__()
        if mode == "transpose":
            self.up = nn.ConvTranspose2d(in_channels, out_channels, 2, stride=2)
            up_channels = out_channels
        elif mode == "bilinear":
            self.up = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False)
            up_channels = in_channels
        else:
            raise ValueError(f"unknown upsampling {mode!r}; choose 'transpose' or 'bilinear'")
        self.conv = ConvBlock(up_channels + skip_channels, out_channels, norm)

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None) -> torch.Tensor:
        """Features at twice the resolution of ``x`` (the resolution of ``skip``; ``None`` when
        ``skip_channels`` is 0)."""
        up = self.up(x)
        return self.conv(up if skip is None else torch.cat([up, skip], dim=1))


class UNet(nn.Module):
    """U-Net with ``levels`` 2x down-sampling steps and a 1-channel logit head.

    Channels double at each level: with ``base_channels=16, levels=4`` the encoder has
    16, 32, 64, 128 channels at 1/1 .. 1/8 and the bottleneck 256 at 1/16. Inputs must have
    height and width divisible by ``2**levels``.

    Args:
        in_chans: Image channels (1 for grayscale angiograms).
        base_channels: Channels of the full-resolution level.
        levels: Number of max-pool down-sampling steps (and of up-sampling steps).
        up: ``"transpose"`` (2x2 transposed convolution halving the channels) or ``"bilinear"`` (see
            :class:`UpBlock`).
        norm: Normalisation kind, see :func:`make_norm`.
    """

    def __init__(self, in_chans: int = 1, base_channels: int = 16, levels: int = 4,
                 up: str = "transpose", norm: str = "batch") -> None:
        super().__init__()
        if levels < 1:
            raise ValueError(f"levels must be >= 1, got {levels}")
        self.levels = levels
        widths = [base_channels * 2**i for i in range(levels + 1)]
        self.down = nn.ModuleList(
            [ConvBlock(in_chans, widths[0], norm)]
            + [ConvBlock(widths[i], widths[i + 1], norm) for i in range(levels)]
        )
        self.pool = nn.MaxPool2d(2)
        self.up = nn.ModuleList(
            UpBlock(widths[i + 1], widths[i], widths[i], up, norm) for i in reversed(range(levels))
        )
        self.head = nn.Conv2d(widths[0], 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, 1, H, W)`` for images ``(B, in_chans, H, W)``."""
        factor = 2**self.levels
        if x.shape[-2] % factor or x.shape[-1] % factor:
            raise ValueError(
                f"input size {tuple(x.shape[-2:])} is not divisible by {factor} (2**levels)"
            )
        skips = []
        for i, block in enumerate(self.down):
            x = block(x if i == 0 else self.pool(x))
            skips.append(x)
        x = skips.pop()
        for up in self.up:
            x = up(x, skips.pop())
        return self.head(x)
