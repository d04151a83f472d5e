"""timm's names for the ViT-*/16 sizes (no torch import: the CLI reads it for ``--help``)."""

#: embed_dim -> (timm model name, depth, heads) of the timm ViT-*/16 sizes.
TIMM_SIZES = {192: ("vit_tiny_patch16_224", 12, 3), 384: ("vit_small_patch16_224", 12, 6),
              768: ("vit_base_patch16_224", 12, 12), 1024: ("vit_large_patch16_224", 24, 16)}
