"""Exports (``vasomim export``, ``vasomim ship``): a ViT encoder for timm with its ``pretrained_cfg``,
and the whole segmentation network as a pickle-free folder (:func:`vasomim.load_model`) or ONNX."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Mapping

import torch
from torch import nn

from vasomim.data.transforms import TransformConfig
from vasomim.data.io import atomic_file
from vasomim.models.checkpoints import (MODEL_FORMAT, adapt_patch_embed, read_state_dict, split_encoder,
                                         tensors_to_safetensors, write_tensors)

__all__ = ["encoder_pretrained_cfg", "export_encoder", "export_model_folder", "export_onnx"]


def export_encoder(
    checkpoint_path_or_model: str | Path | Mapping | nn.Module,
    out_path: str | Path,
    in_chans: int | None = 3,
    dtype: torch.dtype | None = None,
    source: str | None = None,
) -> Path:
    """Write a ViT encoder in timm naming to ``.safetensors`` (or ``.pth``) for ``timm``.

    The result loads with, e.g. for a ViT-B/16 encoder::

        timm.create_model("vit_base_patch16_224", pretrained=True, num_classes=0,
                          pretrained_cfg_overlay=dict(file="encoder.safetensors"))

    (use the timm name of the encoder's size, ``vit_tiny_patch16_224`` for tiny, and pass
    ``depth=`` / ``embed_dim=`` / ``num_heads=`` / ``img_size=`` for custom shapes). timm resamples
    the position embeddings itself when its ``img_size`` differs from the exported grid.

    Channels: by default the encoder is written with 3 input channels, the layout of every timm
    ViT, so it drops into standard models; a 1-channel (gray) encoder is converted by repeating
    its patch-embedding kernel and dividing by 3, so a gray image replicated to 3 channels gives
    exactly the tokens of the original model. ``timm.create_model(..., in_chans=1)`` sums the
    channels back and recovers the original kernel.

    Args:
        checkpoint_path_or_model: A checkpoint of any flavour :func:`load_encoder_weights` accepts
            (file or dict), a :class:`~vasomim.models.segmentation.ViTUNet`, or a timm
            ``VisionTransformer``.
        out_path: Destination; ``.safetensors`` writes safetensors, any other suffix a
            ``torch.save`` file holding the plain state dict.
        in_chans: Input channels of the exported patch embedding (3 or 1); None keeps the encoder's
            own.
        dtype: Convert the floating-point tensors (``torch.float16`` for shipping); None keeps them.
        source: the file a checkpoint dict was read from, for messages.

    Returns:
        The path written.
    """
    if isinstance(checkpoint_path_or_model, nn.Module):
        module = getattr(checkpoint_path_or_model, "encoder", checkpoint_path_or_model)
        state, source = module.state_dict(), type(module).__name__
    else:
        state, source = read_state_dict(checkpoint_path_or_model, source)
    encoder, _ = split_encoder(state)
    if "patch_embed.proj.weight" not in encoder:
        raise ValueError(f"{source}: no ViT encoder (patch_embed.proj.weight) to export")
    if in_chans is not None:
        encoder["patch_embed.proj.weight"] = adapt_patch_embed(encoder["patch_embed.proj.weight"],
                                                               in_chans)
    tensors = _cast({k: v.detach().to("cpu").contiguous().clone() for k, v in encoder.items()}, dtype)
    return write_tensors(tensors, out_path, "timm VisionTransformer")


def encoder_pretrained_cfg(architecture: str, config: Mapping | None, in_chans: int,
                           grid: int) -> dict:
    """timm ``pretrained_cfg`` of an exported encoder: how its inputs were normalised in training.

    ``mean``/``std`` come from the checkpoint's input convention (``config["input"]`` of a
    fine-tuned model, ``config["data"]`` of a pre-training run; the gray or ImageNet defaults
    otherwise), repeated to ``in_chans`` values when a gray model is exported for 3 channels.
    ``input_size`` is the training square (``grid * 16`` when the config does not say), and
    ``crop_pct=1.0``: the whole image, no centre crop.
    """
    config = config or {}
    section = config.get("input") or config.get("data") or {}
    size = section.get("size") or section.get("img_size") or grid * 16
    channels = int(section.get("channels") or section.get("in_chans") or 1)
    mean, std = section.get("mean"), section.get("std")
    if not mean or not std:
        mean, std = TransformConfig(size=int(size), channels=channels).stats()
    if len(mean) != in_chans:
        if len(mean) != 1:
            raise ValueError(f"cannot give {len(mean)}-channel statistics {list(mean)} to "
                             f"{in_chans} input channels")
        mean, std = list(mean) * in_chans, list(std) * in_chans
    return {"architecture": architecture, "mean": [float(m) for m in mean],
            "std": [float(s) for s in std], "input_size": [in_chans, int(size), int(size)],
            "crop_pct": 1.0, "crop_mode": "center", "interpolation": "bicubic", "num_classes": 0,
            "file": "encoder.safetensors"}


def _cast(tensors: dict[str, torch.Tensor], dtype: torch.dtype | None) -> dict[str, torch.Tensor]:
    if dtype is None:
        return tensors
    return {k: v.to(dtype) if v.is_floating_point() else v for k, v in tensors.items()}


def export_model_folder(model: nn.Module, config: Mapping, out_dir: str | Path,
                        dtype: torch.dtype | None = None) -> Path:
    """Write the whole segmentation network as ``model.safetensors`` + ``config.json`` (no pickle).

    ``config`` holds ``network`` (the architecture) and ``input`` (the input convention);
    :func:`vasomim.load_model` reads the folder back. ``dtype`` (e.g. ``torch.float16``, for
    shipping) converts the floating-point tensors; loading converts them back.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tensors = _cast({k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}, dtype)
    with atomic_file(out / "model.safetensors") as fh:
        fh.write(tensors_to_safetensors(tensors, {"format": "pt"}))
    meta = {"format": MODEL_FORMAT, "version": 1, "network": dict(config["network"]),
            "input": dict(config["input"])}
    (out / "config.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return out


def export_onnx(model: nn.Module, convention: Mapping, out_path: str | Path, opset: int = 17) -> Path:
    """Write the segmentation network as ONNX: ``image (B, C, H, W)`` normalised -> ``logits (B, 1, H, W)``.

    Batch, height and width are dynamic; H and W must be multiples of the network's grid (16 for
    the ViT U-Net), as for the torch model; ``convention`` is the checkpoint's input convention
    (``config["input"]``), whose size and channels shape the traced input. Needs the ``onnx`` extra.
    """
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    model = model.eval().to("cpu")
    size = int(convention["size"])
    # traced at a size other than the training grid, so that the position-embedding resampling
    # (skipped by a Python branch at the training size) is part of the graph for every size
    dummy = torch.zeros(1, int(convention["channels"]), size + 16, size + 32)
    axes = {0: "batch", 2: "height", 3: "width"}
    with torch.no_grad():
        torch.onnx.export(model, (dummy,), str(out), input_names=["image"],
                          output_names=["logits"], dynamic_axes={"image": axes, "logits": axes},
                          opset_version=opset, dynamo=False)
    return out
