"""Neural networks of the VasoMIM pipeline.

Submodules are imported explicitly where they are needed, so that importing one model does not
pull in the others:

- `vasomim.models.vit`: ViT size registry and fixed 2-D sin-cos position embeddings.
- `vasomim.models.mae`: the masked autoencoder (ViT encoder + MAE decoder).
- `vasomim.models.unext`: UNeXt-S, the frozen segmentor of the anatomical consistency loss.
"""
