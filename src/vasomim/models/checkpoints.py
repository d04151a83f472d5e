"""Checkpoints: project conventions, loading a ViT encoder from any flavour, export to timm.

Conventions
-----------
Every checkpoint vasomim writes is a ``dict`` that ``torch.load(path, map_location="cpu",
weights_only=True)`` reads back (tensors, plain Python containers and scalars only):

``model``
    the state dict (MAE convention);
``config``
    the run's configuration as plain data (dicts, lists, str, int, float, bool, None);
``optimizer``, ``epoch``, ``step``, ``rng``, ``best_metric`` (optional)
    what a resume or a model-selection step needs.

The encoder of every vasomim model uses timm's ``VisionTransformer`` parameter names
(``cls_token``, ``pos_embed``, ``patch_embed.proj.*``, ``blocks.{i}.*``, ``norm.*``): at the top
level of a pre-training (MAE) state dict, under ``encoder.`` in a segmentation
(:class:`~vasomim.models.segmentation.ViTUNet`) state dict.

Loading
-------
:func:`load_encoder_weights` fills a ViTUNet's encoder from

(a) a vasomim pre-training checkpoint (``model`` = the MAE state dict, plus ``config``);
(b) an original MAE / VasoMIM checkpoint (``model`` with encoder keys and ``decoder_*``,
    ``mask_token`` that are dropped);
(c) a timm ViT checkpoint: a plain state dict in ``.pth`` or ``.safetensors`` (``head.*``,
    ``fc_norm.*`` dropped);
(d) a vasomim segmentation checkpoint (``model`` with ``encoder.*`` keys; the decoder is dropped);
(e) any of these saved from a DDP (``module.``) or ``torch.compile`` (``_orig_mod.``) wrapper.

Two adaptations make checkpoints fit the model:

* position embeddings on another patch grid are resampled bicubically (``align_corners=False``,
  no anti-aliasing, the MAE fine-tuning convention); the class-token embedding is kept as is;
* a patch embedding for another number of input channels is converted so that a gray image gives
  the same tokens either way: 3 -> 1 sums the weights over the channels (``W·[x, x, x] =
  (ΣW)·x``), 1 -> 3 repeats them and divides by 3.
"""

from __future__ import annotations

import logging
import math
import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "ENCODER_KEYS",
    "LoadReport",
    "adapt_patch_embed",
    "encoder_state_dict",
    "export_encoder",
    "interpolate_pos_embed",
    "load_checkpoint",
    "load_encoder_weights",
    "read_state_dict",
]

log = logging.getLogger(__name__)

#: Key names (exact or prefix ending in ".") of a timm ViT encoder's parameters.
ENCODER_KEYS = ("cls_token", "pos_embed", "reg_token", "dist_token", "patch_embed.", "blocks.",
                "norm_pre.", "norm.")

#: Wrapper prefixes stripped from every key: DDP and torch.compile.
WRAPPER_PREFIXES = ("module.", "_orig_mod.")

ENCODER_PREFIX = "encoder."


@dataclass
class LoadReport:
    """What :func:`load_encoder_weights` did, key by key.

    Attributes
    ----------
    source:
        The file (or ``"<state dict>"``) the weights came from.
    loaded:
        Encoder keys copied into the model.
    missing:
        Encoder keys of the model that the checkpoint lacks (left at their current values).
    unexpected:
        Checkpoint keys not loaded (decoder, head, keys the model does not have).
    adapted:
        One line per converted tensor (position-embedding grid, patch-embedding channels).
    """

    source: str
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    adapted: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        lines = [f"{self.source}: loaded {len(self.loaded)} encoder tensors"]
        lines += [f"  adapted {a}" for a in self.adapted]
        if self.missing:
            lines.append(f"  missing ({len(self.missing)}): {', '.join(self.missing)}")
        if self.unexpected:
            lines.append(f"  not loaded ({len(self.unexpected)}): {', '.join(self.unexpected)}")
        return "\n".join(lines)


def _strip_wrappers(key: str) -> str:
    stripped = True
    while stripped:
        stripped = False
        for prefix in WRAPPER_PREFIXES:
            if key.startswith(prefix):
                key, stripped = key[len(prefix):], True
    return key


_UNSAFE = re.compile(r"Unsupported global: GLOBAL (\S+)")
_FILE_KINDS = ((b"\x89PNG", "a PNG image"), (b"\xff\xd8\xff", "a JPEG image"), (b"BM", "a BMP image"),
               (b"II*\x00", "a TIFF image"), (b"MM\x00*", "a TIFF image"), (b"PK\x03\x04", "a damaged zip archive"),
               (b"\x93NUMPY", "a NumPy array file"))


def _what_file(path: Path) -> str:
    """A few words on what `path` is, from its first bytes (for 'not a checkpoint' messages)."""
    with open(path, "rb") as fh:
        head = fh.read(132)
    if not head:
        return "an empty file"
    if head[128:132] == b"DICM":
        return "a DICOM file"
    for magic, kind in _FILE_KINDS:
        if head.startswith(magic):
            return kind
    return "not a PyTorch or safetensors file"


def load_checkpoint(path: str | Path) -> object:
    """What a checkpoint file holds, read safely: ``.safetensors``, or ``torch.load(weights_only=True)``.

    Every failure is one line naming the file: a missing file, a file that is no checkpoint (an
    image, a damaged archive, ...) or one that holds Python objects that loading would have to
    run. Such a file is refused, never loaded another way.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file is not a checkpoint, or not a safe one.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint file")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except Exception as exc:
            reason = " ".join(str(exc).split())[:160] or type(exc).__name__
            raise ValueError(f"{path}: not a safetensors checkpoint ({reason})") from None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        unsafe = _UNSAFE.search(str(exc))
        if unsafe:
            raise ValueError(f"{path}: refused: the checkpoint holds Python objects ({unsafe.group(1)}) that loading "
                             "would run; vasomim loads checkpoints of tensors and plain data only") from None
        raise ValueError(f"{path}: not a checkpoint ({_what_file(path)})") from None
    except (RuntimeError, EOFError, ValueError, OSError) as exc:
        kind = _what_file(path)
        detail = "damaged or truncated" if kind == "a damaged zip archive" else kind
        raise ValueError(f"{path}: not a checkpoint ({detail}; {type(exc).__name__})") from None


def read_state_dict(path_or_state: str | Path | Mapping) -> tuple[dict[str, torch.Tensor], str]:
    """Read a state dict from a file or a dict, unwrapping ``model`` / ``state_dict``.

    Parameters
    ----------
    path_or_state:
        A ``.safetensors`` file, a file ``torch.load`` reads with ``weights_only=True``, a
        checkpoint dict or a plain state dict.

    Returns
    -------
    ``(state_dict, source)``: the tensors by name, and the file name (or ``"<state dict>"``) to
    use in messages.

    Raises
    ------
    FileNotFoundError, ValueError:
        naming the file, when it does not exist, cannot be read or holds no state dict.
    """
    if isinstance(path_or_state, Mapping):
        obj, source = path_or_state, "<state dict>"
    else:
        source = str(path_or_state)
        obj = load_checkpoint(path_or_state)
    for wrapper in ("model", "state_dict"):
        if isinstance(obj, Mapping) and isinstance(obj.get(wrapper), Mapping):
            obj = obj[wrapper]
            break
    if not isinstance(obj, Mapping):
        raise ValueError(f"{source}: holds a {type(obj).__name__}, not a state dict")
    # half-precision files (shipped weights) are read back as float32
    state = {k: v.float() if v.dtype in (torch.float16, torch.bfloat16) else v
             for k, v in obj.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
    if not state:
        raise ValueError(f"{source}: holds no tensors (keys: {list(obj)[:8]})")
    return state, source


def encoder_state_dict(
    state: Mapping[str, torch.Tensor],
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Split a state dict of any supported flavour into encoder tensors (timm names) and the rest.

    Wrapper prefixes (``module.``, ``_orig_mod.``) are stripped. If any key starts with
    ``encoder.`` (a segmentation checkpoint), exactly those keys form the encoder; otherwise the
    keys named in :data:`ENCODER_KEYS` do.

    Parameters
    ----------
    state:
        A flat state dict.

    Returns
    -------
    ``(encoder, others)``: encoder tensors by timm name, and the names of the other keys.
    """
    state = {_strip_wrappers(k): v for k, v in state.items()}
    if any(k.startswith(ENCODER_PREFIX) for k in state):
        names = {k: k[len(ENCODER_PREFIX):] for k in state if k.startswith(ENCODER_PREFIX)}
    else:
        names = {k: k for k in state
                 if any(k == p or (p.endswith(".") and k.startswith(p)) for p in ENCODER_KEYS)}
    encoder = {timm_name: state[k] for k, timm_name in names.items()}
    return encoder, [k for k in state if k not in names]


def interpolate_pos_embed(
    pos_embed: torch.Tensor, grid: tuple[int, int], num_prefix_tokens: int = 1
) -> torch.Tensor:
    """Resample position embeddings ``(1, prefix + g*g, D)`` to a ``grid = (H, W)`` patch grid.

    The checkpoint grid is taken as square. The prefix (class-token) embeddings are kept; the grid
    part is resampled with bicubic interpolation, ``align_corners=False`` and no anti-aliasing
    (as MAE fine-tuning does), computed in float32 and returned in the input dtype.

    Parameters
    ----------
    pos_embed:
        Position embeddings of the checkpoint.
    grid:
        Target ``(rows, cols)`` of patches.
    num_prefix_tokens:
        Leading non-spatial tokens (1 for the class token).
    """
    n = pos_embed.shape[1] - num_prefix_tokens
    side = math.isqrt(n)
    if side * side != n:
        raise ValueError(f"pos_embed with {n} grid tokens is not a square grid")
    prefix, tokens = pos_embed[:, :num_prefix_tokens], pos_embed[:, num_prefix_tokens:]
    dim = tokens.shape[-1]
    tokens = tokens.float().reshape(1, side, side, dim).permute(0, 3, 1, 2)
    tokens = F.interpolate(tokens, size=tuple(grid), mode="bicubic", align_corners=False)
    tokens = tokens.permute(0, 2, 3, 1).reshape(1, -1, dim).to(pos_embed.dtype)
    return torch.cat([prefix, tokens], dim=1)


def adapt_patch_embed(weight: torch.Tensor, in_chans: int) -> torch.Tensor:
    """Convert a patch-embedding kernel ``(D, C, p, p)`` to ``in_chans`` input channels.

    3 -> 1 sums over the channels; 1 -> 3 repeats and divides by 3. Either way a gray image
    (replicated to 3 channels where needed) gives the same tokens as before.

    Parameters
    ----------
    weight:
        The ``patch_embed.proj.weight`` tensor.
    in_chans:
        Target number of input channels.
    """
    have = weight.shape[1]
    if have == in_chans:
        return weight
    if have == 3 and in_chans == 1:
        return weight.sum(dim=1, keepdim=True)
    if have == 1 and in_chans == 3:
        return weight.repeat(1, 3, 1, 1) / 3
    raise ValueError(f"cannot convert a patch embedding from {have} to {in_chans} input channels")


def _adapt_to(model: nn.Module, matched: dict[str, torch.Tensor],
              target: Mapping[str, torch.Tensor]) -> list[str]:
    """Resample ``pos_embed`` and convert ``patch_embed`` channels in place; describe each."""
    notes = []
    if "pos_embed" in matched and matched["pos_embed"].shape != target["pos_embed"].shape:
        grid = tuple(model.encoder.patch_embed.grid_size)
        prefix = model.encoder.num_prefix_tokens
        old = math.isqrt(matched["pos_embed"].shape[1] - prefix)
        matched["pos_embed"] = interpolate_pos_embed(matched["pos_embed"], grid, prefix)
        notes.append(f"pos_embed: grid {old}x{old} -> {grid[0]}x{grid[1]} (bicubic)")
    key = "patch_embed.proj.weight"
    if key in matched and matched[key].shape[1] != target[key].shape[1]:
        have, want = matched[key].shape[1], target[key].shape[1]
        matched[key] = adapt_patch_embed(matched[key], want)
        how = "summed" if want < have else "repeated / 3"
        notes.append(f"{key}: {have} -> {want} input channels ({how})")
    return notes


def load_encoder_weights(
    model: nn.Module, path_or_state: str | Path | Mapping, strict_encoder: bool = True
) -> LoadReport:
    """Load ViT encoder weights of any supported flavour into ``model.encoder``.

    See the module docstring for the flavours and the adaptations. Every loaded, missing and
    unexpected key is reported by name (missing keys as a warning, the rest at info level).

    Parameters
    ----------
    model:
        A :class:`~vasomim.models.segmentation.ViTUNet` (anything with a timm ViT ``encoder``).
    path_or_state:
        Checkpoint file (``.pth``/``.pt``/``.safetensors``) or an already loaded dict.
    strict_encoder:
        If True, an encoder key of the model that the checkpoint lacks is an error; if False it is
        reported and keeps its current value.

    Returns
    -------
    :class:`LoadReport`.

    Raises
    ------
    ValueError:
        naming the source, when no key matches the encoder, when a tensor has an incompatible
        shape, or (``strict_encoder``) when encoder keys are missing.
    """
    state, source = read_state_dict(path_or_state)
    encoder, others = encoder_state_dict(state)
    target = model.encoder.state_dict()
    matched = {k: v for k, v in encoder.items() if k in target}
    if not matched:
        raise ValueError(
            f"{source}: no ViT encoder weights found; none of its {len(state)} keys "
            f"(e.g. {', '.join(list(state)[:5])}) matches an encoder key such as "
            "cls_token, patch_embed.proj.weight, blocks.0.attn.qkv.weight"
        )
    report = LoadReport(source=source,
                        unexpected=others + [k for k in encoder if k not in target])
    try:
        report.adapted = _adapt_to(model, matched, target)
    except ValueError as exc:
        raise ValueError(f"{source}: {exc}") from exc
    wrong = [f"{k} {tuple(v.shape)} vs model {tuple(target[k].shape)}"
             for k, v in matched.items() if v.shape != target[k].shape]
    if wrong:
        raise ValueError(f"{source}: encoder shapes do not match the model: {'; '.join(wrong)}")
    report.missing = [k for k in target if k not in matched]
    if report.missing and strict_encoder:
        raise ValueError(f"{source}: checkpoint lacks encoder keys: {', '.join(report.missing)} "
                         "(pass strict_encoder=False to load the rest)")
    model.encoder.load_state_dict(matched, strict=False)
    report.loaded = list(matched)
    log.info("%s", report)
    if report.missing:
        log.warning("%s: encoder keys not in the checkpoint, left as they were: %s",
                    source, ", ".join(report.missing))
    return report


def export_encoder(
    checkpoint_path_or_model: str | Path | Mapping | nn.Module,
    out_path: str | Path,
    in_chans: int | None = 3,
    dtype: torch.dtype | None = None,
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

    Parameters
    ----------
    checkpoint_path_or_model:
        A checkpoint of any flavour :func:`load_encoder_weights` accepts (file or dict), a
        :class:`~vasomim.models.segmentation.ViTUNet`, or a timm ``VisionTransformer``.
    out_path:
        Destination; ``.safetensors`` writes safetensors, any other suffix a ``torch.save`` file
        holding the plain state dict.
    in_chans:
        Input channels of the exported patch embedding (3 or 1); None keeps the encoder's own.
    dtype:
        Convert the floating-point tensors (``torch.float16`` for shipping); None keeps them.

    Returns
    -------
    The path written.
    """
    if isinstance(checkpoint_path_or_model, nn.Module):
        module = getattr(checkpoint_path_or_model, "encoder", checkpoint_path_or_model)
        state, source = module.state_dict(), type(module).__name__
    else:
        state, source = read_state_dict(checkpoint_path_or_model)
    encoder, _ = encoder_state_dict(state)
    if "patch_embed.proj.weight" not in encoder:
        raise ValueError(f"{source}: no ViT encoder (patch_embed.proj.weight) to export")
    if in_chans is not None:
        encoder["patch_embed.proj.weight"] = adapt_patch_embed(encoder["patch_embed.proj.weight"],
                                                               in_chans)
    tensors = _cast({k: v.detach().to("cpu").contiguous().clone() for k, v in encoder.items()}, dtype)
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(tensors, str(out), metadata={"format": "pt", "naming": "timm VisionTransformer"})
    else:
        torch.save(tensors, out)
    return out


# ----------------------------------------------------------------------------- standard exports


def encoder_pretrained_cfg(architecture: str, config: Mapping | None, in_chans: int,
                           grid: int) -> dict:
    """timm ``pretrained_cfg`` of an exported encoder: how its inputs were normalised in training.

    ``mean``/``std`` come from the checkpoint's input convention (``config["input"]`` of a
    fine-tuned model, ``config["data"]`` of a pre-training run; the gray or ImageNet defaults
    otherwise), repeated to ``in_chans`` values when a gray model is exported for 3 channels.
    ``input_size`` is the training square (``grid * 16`` when the config does not say), and
    ``crop_pct=1.0``: the whole image, no centre crop.
    """
    from vasomim.data.transforms import TransformConfig

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
    import json

    from safetensors.torch import save_file

    from vasomim.inference import MODEL_FORMAT

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tensors = _cast({k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}, dtype)
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    meta = {"format": MODEL_FORMAT, "version": 1, "network": dict(config["network"]),
            "input": dict(config["input"])}
    (out / "config.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return out


def export_onnx(model: nn.Module, spec: Mapping, out_path: str | Path, opset: int = 17) -> Path:
    """Write the segmentation network as ONNX: ``image (B, C, H, W)`` normalised -> ``logits (B, 1, H, W)``.

    Batch, height and width are dynamic; H and W must be multiples of the network's grid (16 for
    the ViT U-Net), as for the torch model. Needs the ``onnx`` extra.
    """
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    model = model.eval().to("cpu")
    size = int(spec["size"])
    # traced at a size other than the training grid, so that the position-embedding resampling
    # (skipped by a Python branch at the training size) is part of the graph for every size
    dummy = torch.zeros(1, int(spec["channels"]), size + 16, size + 32)
    axes = {0: "batch", 2: "height", 3: "width"}
    with torch.no_grad():
        torch.onnx.export(model, (dummy,), str(out), input_names=["image"],
                          output_names=["logits"], dynamic_axes={"image": axes, "logits": axes},
                          opset_version=opset, dynamo=False)
    return out
