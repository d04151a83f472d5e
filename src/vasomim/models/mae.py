"""Masked autoencoder with a ViT encoder (He et al. 2022), masking supplied from outside.

The encoder's parameter names are timm's `VisionTransformer` names (`cls_token`, `pos_embed`,
`patch_embed.proj`, `blocks.{i}.*`, `norm`), so `mae_encoder_weights(model)` loads into
`timm.create_model("vit_base_patch16_224", num_classes=0)` and into our segmentation network. The
decoder uses the MAE names (`mask_token`, `decoder_embed`, `decoder_pos_embed`, `decoder_blocks`,
`decoder_norm`, `decoder_pred`).

Unlike the MAE reference, the model does not draw its own mask: the anatomy-guided sampler
(`vasomim.masking.guided_mask`) chooses which patches the encoder sees and passes `ids_keep` and
`ids_restore` in.
"""

from __future__ import annotations

from collections import OrderedDict
from functools import partial

import torch
from timm.layers import PatchEmbed
from timm.models.vision_transformer import Block
from torch import nn

from vasomim.models.vit import sincos_pos_embed, vit_dims

DECODER_PREFIXES = ("mask_token", "decoder_")


def patchify(imgs: torch.Tensor, patch_size: int) -> torch.Tensor:
    """Cut images into non-overlapping patches, row by row.

    Args:
        imgs: (B, C, H, W), H and W divisible by `patch_size`.
        patch_size: patch side P.

    Returns:
        (B, N, P*P*C) with N = (H/P)*(W/P); within a patch, pixels row-major, channels last
        (the MAE layout).
    """
    b, c, h, w = imgs.shape
    if h % patch_size or w % patch_size:
        raise ValueError(f"image size {h}x{w} is not divisible by the patch size {patch_size}")
    gh, gw = h // patch_size, w // patch_size
    x = imgs.reshape(b, c, gh, patch_size, gw, patch_size)
    x = torch.einsum("bchpwq->bhwpqc", x)
    return x.reshape(b, gh * gw, patch_size * patch_size * c)


def unpatchify(x: torch.Tensor, patch_size: int, grid: tuple[int, int]) -> torch.Tensor:
    """Inverse of `patchify`.

    Args:
        x: (B, N, P*P*C) patches.
        patch_size: patch side P.
        grid: (rows, columns) of the patch grid, rows*columns == N.

    Returns:
        (B, C, rows*P, columns*P) images.
    """
    b, n, d = x.shape
    gh, gw = grid
    if gh * gw != n:
        raise ValueError(f"grid {gh}x{gw} does not hold {n} patches")
    c = d // (patch_size * patch_size)
    x = x.reshape(b, gh, gw, patch_size, patch_size, c)
    x = torch.einsum("bhwpqc->bchpwq", x)
    return x.reshape(b, c, gh * patch_size, gw * patch_size)


class MaskedAutoencoderViT(nn.Module):
    """MAE: a ViT encoder over the visible patches and a light transformer decoder.

    Args:
        img_size: input side, or (height, width); divisible by `patch_size`.
        patch_size: patch side P (16 for the paper).
        in_chans: input channels (1 for grayscale angiograms, 3 for replicated gray).
        embed_dim: encoder width.
        depth: encoder blocks.
        num_heads: encoder attention heads.
        decoder_embed_dim: decoder width (512 in MAE).
        decoder_depth: decoder blocks (8 in MAE).
        decoder_num_heads: decoder attention heads (16 in MAE).
        mlp_ratio: hidden width of the block MLPs relative to the token width.
        norm_pix_loss: the reconstruction target is each patch normalised by its own mean and
            variance. Stored here for the trainer; the loss itself lives in `vasomim.losses`.
    """

    def __init__(
        self,
        img_size: int | tuple[int, int] = 224,
        patch_size: int = 16,
        in_chans: int = 1,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        decoder_embed_dim: int = 512,
        decoder_depth: int = 8,
        decoder_num_heads: int = 16,
        mlp_ratio: float = 4.0,
        norm_pix_loss: bool = False,
    ) -> None:
        super().__init__()
        norm_layer = partial(nn.LayerNorm, eps=1e-6)
        self.patch_size = patch_size
        self.in_chans = in_chans
        self.norm_pix_loss = norm_pix_loss

        # Encoder (timm VisionTransformer names).
        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim)
        self.grid_size: tuple[int, int] = tuple(self.patch_embed.grid_size)
        num_patches = self.patch_embed.num_patches
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(
            torch.zeros(1, num_patches + 1, embed_dim), requires_grad=False
        )
        self.blocks = nn.ModuleList(
            Block(embed_dim, num_heads, mlp_ratio, qkv_bias=True, norm_layer=norm_layer)
            for _ in range(depth)
        )
        self.norm = norm_layer(embed_dim)

        # Decoder (MAE names).
        self.decoder_embed = nn.Linear(embed_dim, decoder_embed_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_embed_dim))
        self.decoder_pos_embed = nn.Parameter(
            torch.zeros(1, num_patches + 1, decoder_embed_dim), requires_grad=False
        )
        self.decoder_blocks = nn.ModuleList(
            Block(
                decoder_embed_dim, decoder_num_heads, mlp_ratio, qkv_bias=True,
                norm_layer=norm_layer,
            )
            for _ in range(decoder_depth)
        )
        self.decoder_norm = norm_layer(decoder_embed_dim)
        self.decoder_pred = nn.Linear(decoder_embed_dim, patch_size * patch_size * in_chans)

        self._init_weights()

    def _init_weights(self) -> None:
        """MAE initialisation: sin-cos positions, xavier-uniform linears and patch projection."""
        self.pos_embed.data.copy_(sincos_pos_embed(self.pos_embed.shape[-1], self.grid_size)[None])
        self.decoder_pos_embed.data.copy_(
            sincos_pos_embed(self.decoder_pos_embed.shape[-1], self.grid_size)[None]
        )
        proj = self.patch_embed.proj.weight.data
        nn.init.xavier_uniform_(proj.view(proj.shape[0], -1))
        nn.init.normal_(self.cls_token, std=0.02)
        nn.init.normal_(self.mask_token, std=0.02)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    @property
    def num_patches(self) -> int:
        """Patches per image, N."""
        return self.grid_size[0] * self.grid_size[1]

    def patchify(self, imgs: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, N, P*P*C); see `patchify`."""
        return patchify(imgs, self.patch_size)

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        """(B, N, P*P*C) -> (B, C, H, W) on this model's patch grid; see `unpatchify`."""
        return unpatchify(x, self.patch_size, self.grid_size)

    def forward_encoder(self, imgs: torch.Tensor, ids_keep: torch.Tensor) -> torch.Tensor:
        """Encode the visible patches.

        Args:
            imgs: (B, C, H, W) input images.
            ids_keep: (B, K) indices of the visible patches (row-major patch numbering).

        Returns:
            latent (B, 1+K, embed_dim): the class token followed by the K visible tokens.
        """
        x = self.patch_embed(imgs) + self.pos_embed[:, 1:, :]
        x = torch.gather(x, 1, ids_keep.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
        cls = (self.cls_token + self.pos_embed[:, :1, :]).expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1)
        for block in self.blocks:
            x = block(x)
        return self.norm(x)

    def forward_decoder(self, latent: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        """Predict every patch from the visible tokens and mask tokens.

        Args:
            latent: (B, 1+K, embed_dim) encoder output.
            ids_restore: (B, N) position of each patch in the [kept..., masked...] ordering.

        Returns:
            (B, N, P*P*C) predicted pixels of all patches, in patch order.
        """
        x = self.decoder_embed(latent)
        b, n_tokens, d = x.shape
        n_masked = ids_restore.shape[1] + 1 - n_tokens
        seq = torch.cat([x[:, 1:, :], self.mask_token.expand(b, n_masked, -1)], dim=1)
        seq = torch.gather(seq, 1, ids_restore.unsqueeze(-1).expand(-1, -1, d))
        x = torch.cat([x[:, :1, :], seq], dim=1) + self.decoder_pos_embed
        for block in self.decoder_blocks:
            x = block(x)
        x = self.decoder_pred(self.decoder_norm(x))
        return x[:, 1:, :]

    def forward(
        self, imgs: torch.Tensor, ids_keep: torch.Tensor, ids_restore: torch.Tensor
    ) -> torch.Tensor:
        """Encode the visible patches of `imgs` and predict all patches: (B, N, P*P*C)."""
        return self.forward_decoder(self.forward_encoder(imgs, ids_keep), ids_restore)


def mae_vit(
    size: str = "tiny",
    img_size: int | tuple[int, int] = 224,
    in_chans: int = 1,
    decoder_embed_dim: int = 512,
    decoder_depth: int = 8,
    decoder_num_heads: int = 16,
    norm_pix_loss: bool = False,
    **overrides,
) -> MaskedAutoencoderViT:
    """Build an MAE from a ViT size name.

    Args:
        size: encoder size, a key of `vasomim.models.vit.VIT_SIZES`.
        img_size: input side or (height, width), divisible by the patch size.
        in_chans: input channels.
        decoder_embed_dim: decoder width.
        decoder_depth: decoder blocks.
        decoder_num_heads: decoder attention heads.
        norm_pix_loss: normalise each target patch by its own mean/variance.
        **overrides: `embed_dim`, `depth`, `num_heads` replace the size's values; `patch_size`
            (default 16) and `mlp_ratio` (default 4) are passed through.

    Returns:
        an initialised `MaskedAutoencoderViT`.
    """
    dims = vit_dims(
        size,
        embed_dim=overrides.pop("embed_dim", None),
        depth=overrides.pop("depth", None),
        num_heads=overrides.pop("num_heads", None),
    )
    return MaskedAutoencoderViT(
        img_size=img_size,
        in_chans=in_chans,
        decoder_embed_dim=decoder_embed_dim,
        decoder_depth=decoder_depth,
        decoder_num_heads=decoder_num_heads,
        norm_pix_loss=norm_pix_loss,
        **dims,
        **overrides,
    )


def mae_encoder_weights(model: MaskedAutoencoderViT) -> OrderedDict[str, torch.Tensor]:
    """The encoder's weights only, under timm `VisionTransformer` names.

    Args:
        model: an MAE (unwrapped, not a DDP wrapper).

    Returns:
        state dict without the decoder and mask token; loads into a timm ViT with
        `num_classes=0` and the same size, patch, image size and channels.
    """
    return OrderedDict(
        (key, value)
        for key, value in model.state_dict().items()
        if not key.startswith(DECODER_PREFIXES)
    )
