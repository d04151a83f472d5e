"""Neural networks of the VasoMIM pipeline.

Submodules are imported explicitly where they are needed, so that importing one model does not
pull in the others:

- `vasomim.models.vit`: ViT size registry and fixed 2-D sin-cos position embeddings.
- `vasomim.models.mae`: the masked autoencoder (ViT encoder + MAE decoder) for pre-training.
- `vasomim.models.unext`: UNeXt-S, the frozen segmentor of the anatomical consistency loss.
- `vasomim.models.segmentation`: the ViT encoder with a U-Net-style decoder for fine-tuning.
- `vasomim.models.unet`: the plain convolutional U-Net baseline.
- `vasomim.models.checkpoints`: checkpoint conventions, encoder loading, the one checkpoint -> network loader.
- `vasomim.models.export`: the encoder for timm, the network as a folder or ONNX.
"""
