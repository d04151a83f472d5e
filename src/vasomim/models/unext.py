"""UNeXt-S (Valanarasu & Patel, MICCAI 2022), the segmentor S of the anatomical consistency loss.

Architecture (channels 8-16-32 | 64-128), parameter names as in the UNeXt reference so that the
segmentor published with the original VasoMIM code loads as is (253,920 state-dict values):

    encoder  conv3x3 -> BN -> maxpool/2 -> ReLU, three times (8, 16, 32 channels, 1/2 .. 1/8)
             tokenise (overlapping 3x3 conv, stride 2, LayerNorm) -> shifted-MLP block -> LN
             at 1/16 (64) and 1/32 (128, bottleneck)
    decoder  conv3x3 -> BN -> bilinear x2 -> ReLU, then add the skip of the same scale; the two
             deepest levels pass a shifted-MLP block and a LayerNorm, the last conv has no BN
    head     1x1 conv to one logit

The input convention travels with the model: three identical gray channels normalised with the
ImageNet mean and standard deviation (`to_segmentor_input`).
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

SEGMENTOR_MEAN = (0.485, 0.456, 0.406)
SEGMENTOR_STD = (0.229, 0.224, 0.225)


def to_segmentor_input(gray01: torch.Tensor) -> torch.Tensor:
    """Map [0, 1] images to the segmentor's input convention (differentiable).

    Args:
        gray01: (B, 1, H, W) grayscale in [0, 1] (replicated to three channels), or (B, 3, H, W)
            already replicated.

    Returns:
        (B, 3, H, W), each channel normalised with `SEGMENTOR_MEAN` / `SEGMENTOR_STD`.
    """
    if gray01.dim() != 4 or gray01.shape[1] not in (1, 3):
        raise ValueError(f"expected (B, 1 or 3, H, W), got shape {tuple(gray01.shape)}")
    x = gray01.expand(-1, 3, -1, -1)
    mean = torch.tensor(SEGMENTOR_MEAN, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(SEGMENTOR_STD, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


def _tokens_to_map(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """(B, H*W, C) tokens -> (B, C, H, W) feature map."""
    return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], h, w)


def _map_to_tokens(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) feature map -> (B, H*W, C) tokens."""
    return x.flatten(2).transpose(1, 2)


class DWConv(nn.Module):
    """Depth-wise 3x3 convolution applied to a token sequence laid out on an H x W grid."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        return _map_to_tokens(self.dwconv(_tokens_to_map(x, h, w)))


class ShiftedMLP(nn.Module):
    """Tokenised MLP with axial shifts (UNeXt's `shiftmlp`).

    The channels are split into `shift_size` groups, and group g is shifted by g - shift_size//2
    pixels (zeros enter at the border) along the height before `fc1`, and along the width before
    `fc2`; between them a depth-wise conv and GELU.

    Args:
        dim: token width (the hidden width equals it, UNeXt's mlp_ratio = 1).
        shift_size: number of channel groups / span of the shifts.
    """

    def __init__(self, dim: int, shift_size: int = 5) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, dim)
        self.dwconv = DWConv(dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(dim, dim)
        self.shift_size = shift_size

    def _shift(self, x: torch.Tensor, h: int, w: int, axis: int) -> torch.Tensor:
        """Shift channel groups of tokens along `axis` (2: height, 3: width) of the H x W map.

        Padding by shift_size//2 before rolling makes the wrapped-around values zeros, so this
        is a zero-filled shift. Groups are `torch.chunk`'s (sizes ceil(C/shift_size), last one
        smaller), as in the reference, which the published weights depend on.
        """
        pad = self.shift_size // 2
        fmap = F.pad(_tokens_to_map(x, h, w), (pad, pad, pad, pad))
        groups = torch.chunk(fmap, self.shift_size, dim=1)
        shifted = torch.cat(
            [torch.roll(g, s, axis) for g, s in zip(groups, range(-pad, pad + 1))], dim=1
        )
        return _map_to_tokens(shifted[:, :, pad : pad + h, pad : pad + w])

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        x = self.fc1(self._shift(x, h, w, axis=2))
        x = self.act(self.dwconv(x, h, w))
        return self.fc2(self._shift(x, h, w, axis=3))


class ShiftedBlock(nn.Module):
    """Residual shifted-MLP block: x + MLP(LN(x)) (UNeXt's `shiftedBlock`)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = ShiftedMLP(dim)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        return x + self.mlp(self.norm2(x), h, w)


class OverlapPatchEmbed(nn.Module):
    """Tokenise a feature map: 3x3 conv with stride 2, then LayerNorm over channels."""

    def __init__(self, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, 3, stride=2, padding=1)
        self.norm = nn.LayerNorm(embed_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, int, int]:
        x = self.proj(x)
        h, w = x.shape[-2:]
        return self.norm(_map_to_tokens(x)), h, w


class UNeXt(nn.Module):
    """UNeXt-S for binary vessel segmentation.

    Args:
        in_chans: input channels (3 for the published segmentor; see `to_segmentor_input`).
        num_classes: output channels (1 logit).

    Input H and W must be divisible by 32. Output: (B, num_classes, H, W) logits.
    """

    def __init__(self, in_chans: int = 3, num_classes: int = 1) -> None:
        super().__init__()
        c1, c2, c3, t1, t2 = 8, 16, 32, 64, 128
        self.encoder1 = nn.Conv2d(in_chans, c1, 3, padding=1)
        self.encoder2 = nn.Conv2d(c1, c2, 3, padding=1)
        self.encoder3 = nn.Conv2d(c2, c3, 3, padding=1)
        self.ebn1 = nn.BatchNorm2d(c1)
        self.ebn2 = nn.BatchNorm2d(c2)
        self.ebn3 = nn.BatchNorm2d(c3)

        self.patch_embed3 = OverlapPatchEmbed(c3, t1)
        self.patch_embed4 = OverlapPatchEmbed(t1, t2)
        self.block1 = nn.ModuleList([ShiftedBlock(t1)])
        self.block2 = nn.ModuleList([ShiftedBlock(t2)])
        self.norm3 = nn.LayerNorm(t1)
        self.norm4 = nn.LayerNorm(t2)

        self.decoder1 = nn.Conv2d(t2, t1, 3, padding=1)
        self.decoder2 = nn.Conv2d(t1, c3, 3, padding=1)
        self.decoder3 = nn.Conv2d(c3, c2, 3, padding=1)
        self.decoder4 = nn.Conv2d(c2, c1, 3, padding=1)
        self.decoder5 = nn.Conv2d(c1, c1, 3, padding=1)
        self.dbn1 = nn.BatchNorm2d(t1)
        self.dbn2 = nn.BatchNorm2d(c3)
        self.dbn3 = nn.BatchNorm2d(c2)
        self.dbn4 = nn.BatchNorm2d(c1)
        self.dblock1 = nn.ModuleList([ShiftedBlock(t1)])
        self.dblock2 = nn.ModuleList([ShiftedBlock(c3)])
        self.dnorm3 = nn.LayerNorm(t1)
        self.dnorm4 = nn.LayerNorm(c3)

        self.final = nn.Conv2d(c1, num_classes, 1)

    @staticmethod
    def _up(x: torch.Tensor) -> torch.Tensor:
        return F.relu(F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False))

    @staticmethod
    def _mlp_stage(
        x: torch.Tensor, blocks: nn.ModuleList, norm: nn.LayerNorm, h: int, w: int
    ) -> torch.Tensor:
        """Shifted-MLP blocks then LayerNorm on tokens; returns a (B, C, H, W) map."""
        for block in blocks:
            x = block(x, h, w)
        return _tokens_to_map(norm(x), h, w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_chans, H, W) -> (B, num_classes, H, W) logits; H, W divisible by 32."""
        if x.shape[-2] % 32 or x.shape[-1] % 32:
            raise ValueError(f"UNeXt needs H and W divisible by 32, got {tuple(x.shape[-2:])}")
        skip1 = F.relu(F.max_pool2d(self.ebn1(self.encoder1(x)), 2))
        skip2 = F.relu(F.max_pool2d(self.ebn2(self.encoder2(skip1)), 2))
        skip3 = F.relu(F.max_pool2d(self.ebn3(self.encoder3(skip2)), 2))

        tokens, h, w = self.patch_embed3(skip3)
        skip4 = self._mlp_stage(tokens, self.block1, self.norm3, h, w)
        tokens, h, w = self.patch_embed4(skip4)
        out = self._mlp_stage(tokens, self.block2, self.norm4, h, w)

        out = self._up(self.dbn1(self.decoder1(out))) + skip4
        h, w = out.shape[-2:]
        out = self._mlp_stage(_map_to_tokens(out), self.dblock1, self.dnorm3, h, w)
        out = self._up(self.dbn2(self.decoder2(out))) + skip3
        h, w = out.shape[-2:]
        out = self._mlp_stage(_map_to_tokens(out), self.dblock2, self.dnorm4, h, w)
        out = self._up(self.dbn3(self.decoder3(out))) + skip2
        out = self._up(self.dbn4(self.decoder4(out))) + skip1
        out = self._up(self.decoder5(out))
        return self.final(out)


# (conv, BatchNorm after it) pairs of UNeXt-S; decoder5 has no BatchNorm.
_CONV_BN_PAIRS = (
    ("encoder1", "ebn1"), ("encoder2", "ebn2"), ("encoder3", "ebn3"),
    ("decoder1", "dbn1"), ("decoder2", "dbn2"), ("decoder3", "dbn3"), ("decoder4", "dbn4"),
)


def frozen_for_inference(model: UNeXt) -> UNeXt:
    """A frozen copy of a UNeXt for fast inference and input gradients (the consistency loss).

    Each BatchNorm is folded into the convolution before it with its running statistics
    (`torch.nn.utils.fusion.fuse_conv_bn_eval`; exact in real arithmetic, float32 rounding
    aside) and replaced by an identity, the convolution weights are stored channels-last (the
    layout oneDNN and cuDNN convolutions run fastest in), the copy is put in eval mode and its
    parameters stop requiring gradients. Gradients still flow to the input. On a 2-core CPU this
    makes the consistency term's forward + backward of a 16 x 224^2 batch ~1.8x faster.

    The copy is for running only: its state dict has no BatchNorm entries, so save the original.
    """
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    fused = copy.deepcopy(model).eval()
    for conv_name, bn_name in _CONV_BN_PAIRS:
        setattr(fused, conv_name, fuse_conv_bn_eval(getattr(fused, conv_name), getattr(fused, bn_name)))
        setattr(fused, bn_name, nn.Identity())
    fused.requires_grad_(False)
    return fused.to(memory_format=torch.channels_last)
