"""Vision Transformer sizes and fixed 2-D sin-cos position embeddings.

The sizes are those of DeiT/timm (`vit_{tiny,small,base,large}_patch16_224`). The position
embedding follows the MAE reference (He et al. 2022) exactly, so that an MAE/timm checkpoint and
ours agree on which channel encodes which coordinate.
"""

from __future__ import annotations

import torch

VIT_SIZES: dict[str, dict[str, int]] = {
    "tiny": dict(embed_dim=192, depth=12, num_heads=3),
    "small": dict(embed_dim=384, depth=12, num_heads=6),
    "base": dict(embed_dim=768, depth=12, num_heads=12),
    "large": dict(embed_dim=1024, depth=24, num_heads=16),
}


def vit_dims(
    size: str = "base",
    *,
    embed_dim: int | None = None,
    depth: int | None = None,
    num_heads: int | None = None,
) -> dict[str, int]:
    """Resolve the encoder dimensions of a named ViT size, with optional custom values.

    Args:
        size: one of `VIT_SIZES` ("tiny", "small", "base", "large").
        embed_dim: token width; replaces the size's value when given.
        depth: number of transformer blocks; replaces the size's value when given.
        num_heads: attention heads; replaces the size's value when given.

    Returns:
        dict with keys `embed_dim`, `depth`, `num_heads`.

    Raises:
        ValueError: unknown size, or a width that the heads (or the 2-D sin-cos embedding, which
        needs a multiple of 4) cannot split.
    """
    if size not in VIT_SIZES:
        raise ValueError(f"unknown ViT size {size!r}; choose one of {sorted(VIT_SIZES)}")
    dims = dict(VIT_SIZES[size])
    for key, value in (("embed_dim", embed_dim), ("depth", depth), ("num_heads", num_heads)):
        if value is not None:
            dims[key] = int(value)
    if dims["embed_dim"] % dims["num_heads"]:
        raise ValueError(
            f"embed_dim {dims['embed_dim']} is not divisible by num_heads {dims['num_heads']}"
        )
    if dims["embed_dim"] % 4:
        raise ValueError(f"embed_dim {dims['embed_dim']} must be a multiple of 4 (2-D sin-cos)")
    return dims


def _sincos_1d(dim: int, positions: torch.Tensor) -> torch.Tensor:
    """Sin-cos embedding of 1-D positions: (M,) -> (M, dim); first half sines, second cosines."""
    omega = torch.arange(dim // 2, dtype=torch.float64) / (dim / 2.0)
    omega = 1.0 / 10000.0**omega
    angles = positions.to(torch.float64).reshape(-1, 1) * omega.reshape(1, -1)
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)


def sincos_pos_embed(
    embed_dim: int, grid_size: int | tuple[int, int], cls_token: bool = True
) -> torch.Tensor:
    """Fixed 2-D sin-cos position embedding of a patch grid (MAE layout).

    Patches are numbered row by row (the order of `patchify`). The first half of the channels
    encodes the column index, the second half the row index, as in the MAE reference.

    Args:
        embed_dim: embedding width, a multiple of 4.
        grid_size: patches per side, or (rows, columns).
        cls_token: prepend an all-zero row for the class token.

    Returns:
        float32 tensor of shape (rows*columns [+1], embed_dim).
    """
    if embed_dim % 4:
        raise ValueError(f"embed_dim {embed_dim} must be a multiple of 4")
    rows, cols = (grid_size, grid_size) if isinstance(grid_size, int) else grid_size
    row_idx, col_idx = torch.meshgrid(
        torch.arange(rows), torch.arange(cols), indexing="ij"
    )
    emb = torch.cat(
        [_sincos_1d(embed_dim // 2, col_idx), _sincos_1d(embed_dim // 2, row_idx)], dim=1
    )
    if cls_token:
        emb = torch.cat([torch.zeros(1, embed_dim, dtype=emb.dtype), emb], dim=0)
    return emb.float()
