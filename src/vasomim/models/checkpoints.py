"""Checkpoints: project conventions, loading a ViT encoder from any flavour, rebuilding whole networks.

Every checkpoint vasomim writes is a plain ``dict`` (``model``, ``config``, ...) that
``torch.load(weights_only=True)`` reads; :func:`load_encoder_weights` fills a ViTUNet's encoder
from vasomim, MAE/VasoMIM, timm and DDP/compile checkpoints. The conventions, the accepted
flavours and the two adaptations (position-embedding grid, input channels) are in
``docs/checkpoints.md``.
"""

from __future__ import annotations

import json
import logging
import math
import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import torch
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes
from timm.layers import resample_abs_pos_embed
from torch import nn

from vasomim.data.io import atomic_file
from vasomim.models.mae import MaskedAutoencoderViT
from vasomim.models.segmentation import build_segmentation_model
from vasomim.models.unext import UNeXt
from vasomim.models.vit import VIT_SIZES

__all__ = [
    "tensors_to_safetensors",
    "write_tensors",
    "ENCODER_KEYS",
    "KINDS",
    "LoadReport",
    "MODEL_FORMAT",
    "adapt_patch_embed",
    "checkpoint_kind",
    "load_checkpoint",
    "load_encoder_weights",
    "model_from_checkpoint",
    "read_state_dict",
    "split_encoder",
    "strip_wrappers",
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

    Attributes:
        source: The file (or ``"<state dict>"``) the weights came from.
        loaded: Encoder keys copied into the model.
        missing: Encoder keys of the model that the checkpoint lacks (left at their current values).
        unexpected: Checkpoint keys not loaded (decoder, head, keys the model does not have).
        adapted: One line per converted tensor (position-embedding grid, patch-embedding channels).
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


def strip_wrappers(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Keys without DDP (``module.``) and ``torch.compile`` (``_orig_mod.``) prefixes, in any nesting."""
    out = {}
    for key, value in state.items():
        while key.startswith(WRAPPER_PREFIXES):
            key = key.split(".", 1)[1]
        out[key] = value
    return out


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


def read_state_dict(path_or_state: str | Path | Mapping,
                    source: str | None = None) -> tuple[dict[str, torch.Tensor], str]:
    """Read a state dict from a file or a dict, unwrapping ``model`` / ``state_dict``.

    Args:
        path_or_state: A ``.safetensors`` file, a file ``torch.load`` reads with
            ``weights_only=True``, a checkpoint dict or a plain state dict.
        source: the name messages give a dict (the file it was read from); default
            ``"<state dict>"``.

    Returns:
        ``(state_dict, source)``: the tensors by name, and the file name (or ``"<state dict>"``) to
        use in messages.

    Raises:
        FileNotFoundError, ValueError: naming the file, when it does not exist, cannot be read or
            holds no state dict.
    """
    if isinstance(path_or_state, Mapping):
        obj, source = path_or_state, source or "<state dict>"
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


def tensors_to_safetensors(tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> bytes:
    """The safetensors file of ``tensors`` with ``metadata``, the same bytes on every call.

    The library writes the metadata entries in hash order, so two writes of the same tensors
    could differ in their header (and a re-shipped model would be a new binary to git). The
    header is emitted again here with the metadata sorted by key; the tensor entries, their
    offsets and the data are the library's own.
    """
    raw = safetensors_bytes(dict(tensors), metadata=dict(metadata))
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + n])
    header["__metadata__"] = dict(sorted(header.get("__metadata__", {}).items()))
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)  # the format pads the header to 8 bytes
    return len(text).to_bytes(8, "little") + text + raw[8 + n:]


def write_tensors(tensors: Mapping[str, torch.Tensor], path: str | Path, naming: str) -> Path:
    """Write a flat tensor dict: safetensors for a ``.safetensors`` path (``naming`` in its metadata;
    byte-reproducible, :func:`tensors_to_safetensors`), else ``torch.save``; the parent folder is
    created, and the file appears whole or not at all (written beside it, then renamed). Returns
    the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path) as fh:
        if path.suffix == ".safetensors":
            fh.write(tensors_to_safetensors(tensors, {"format": "pt", "naming": naming}))
        else:
            torch.save(dict(tensors), fh)
    return path


def split_encoder(
    state: Mapping[str, torch.Tensor],
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Split a state dict of any supported flavour into encoder tensors (timm names) and the rest.

    Wrapper prefixes (``module.``, ``_orig_mod.``) are stripped. If any key starts with
    ``encoder.`` (a segmentation checkpoint), exactly those keys form the encoder; otherwise the
    keys named in :data:`ENCODER_KEYS` do.

    Args:
        state: A flat state dict.

    Returns:
        ``(encoder, others)``: encoder tensors by timm name, and the names of the other keys.
    """
    state = strip_wrappers(state)
    if any(k.startswith(ENCODER_PREFIX) for k in state):
        names = {k: k[len(ENCODER_PREFIX):] for k in state if k.startswith(ENCODER_PREFIX)}
    else:
        names = {k: k for k in state
                 if any(k == p or (p.endswith(".") and k.startswith(p)) for p in ENCODER_KEYS)}
    encoder = {timm_name: state[k] for k, timm_name in names.items()}
    return encoder, [k for k in state if k not in names]


def adapt_patch_embed(weight: torch.Tensor, in_chans: int) -> torch.Tensor:
    """Convert a patch-embedding kernel ``(D, C, p, p)`` to ``in_chans`` input channels.

    3 -> 1 sums over the channels; 1 -> 3 repeats and divides by 3. Either way a gray image
    (replicated to 3 channels where needed) gives the same tokens as before.

    Args:
        weight: The ``patch_embed.proj.weight`` tensor.
        in_chans: Target number of input channels.
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
        n = matched["pos_embed"].shape[1] - prefix
        old = math.isqrt(n)
        if old * old != n:
            raise ValueError(f"pos_embed with {n} grid tokens is not a square grid")
        # bicubic, align_corners=False, no anti-aliasing (the MAE fine-tuning convention), in float32
        matched["pos_embed"] = resample_abs_pos_embed(matched["pos_embed"], list(grid), num_prefix_tokens=prefix,
                                                      antialias=False)
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

    Args:
        model: A :class:`~vasomim.models.segmentation.ViTUNet` (anything with a timm ViT
            ``encoder``).
        path_or_state: Checkpoint file (``.pth``/``.pt``/``.safetensors``) or an already loaded
            dict.
        strict_encoder: If True, an encoder key of the model that the checkpoint lacks is an error;
            if False it is reported and keeps its current value.

    Returns:
        :class:`LoadReport`.

    Raises:
        ValueError: naming the source, when no key matches the encoder, when a tensor has an
            incompatible shape, or (``strict_encoder``) when encoder keys are missing.
    """
    state, source = read_state_dict(path_or_state)
    encoder, others = split_encoder(state)
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


# ----------------------------------------------------------------------------- whole networks

#: ``config.json`` ``format`` of an exported model folder.
MODEL_FORMAT = "vasomim-segmentation"

#: What :func:`model_from_checkpoint` rebuilds, and what it calls each kind in messages.
KINDS = {"segmentation": "a vasomim segmentation checkpoint (no config.network/input); use one written by "
                         "`vasomim finetune`",
         "mae": "an MAE checkpoint (no patch_embed.proj.weight / decoder_pred.weight, nor a masked U-Net's "
                "down.* / mask_tokens.* / rec_head.weight)",
         "segmentor": "a UNeXt-S segmentor checkpoint (no encoder1.weight / final.weight)"}


def checkpoint_kind(state: Mapping[str, torch.Tensor], config: Mapping | None) -> str | None:
    """Which network a checkpoint holds, from its keys (None when it is none of :data:`KINDS`).

    ``segmentation``: a config with ``network`` and ``input`` (``vasomim finetune``); ``mae``: an
    MAE state dict (encoder and ``decoder_pred``), or a masked U-Net's (``model.arch: unet``:
    ``down.*``, ``mask_tokens.*``, ``rec_head``); ``segmentor``: a UNeXt-S state dict.
    """
    if isinstance(config, Mapping) and "network" in config and "input" in config:
        return "segmentation"
    if "patch_embed.proj.weight" in state and "decoder_pred.weight" in state:
        return "mae"
    if "rec_head.weight" in state and "mask_tokens.0" in state and "down.0.0.weight" in state:
        return "mae"  # the masked U-Net (vasomim.models.unet_mim.MaskedUNet), called like the MAE
    if "encoder1.weight" in state and "final.weight" in state:
        return "segmentor"
    return None


def _read_model_folder(folder: Path) -> tuple[dict[str, torch.Tensor], dict]:
    """The weights and config of an exported model folder (``model.safetensors`` + ``config.json``)."""
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ValueError(f"{folder / 'config.json'}: cannot read the model config ({exc})") from None
    if not isinstance(config, dict) or config.get("format") != MODEL_FORMAT:
        raise ValueError(f"{folder / 'config.json'}: not a vasomim model config "
                         f"(format is not {MODEL_FORMAT!r})")
    try:
        state = load_file(str(folder / "model.safetensors"), device="cpu")
    except Exception as exc:
        raise ValueError(f"{folder / 'model.safetensors'}: cannot read the weights "
                         f"({type(exc).__name__}: {exc})") from None
    return state, config


def _mae(state: Mapping[str, torch.Tensor], config: Mapping, hints: Mapping, source: str) -> nn.Module:
    """The MAE of a pre-training state dict: shapes from the tensors, the rest from hints or config.

    Width, depth, patch, channels, grid and decoder come from the shapes; attention heads,
    ``norm_pix_loss`` and (for a grid that is not square) the image size from ``hints``, then the
    checkpoint's ``config["model"]`` / ``config["data"]``, then the ViT size table by width and
    MAE's 16 decoder heads.
    """
    mcfg = config.get("model") if isinstance(config.get("model"), Mapping) else {}
    data = config.get("data") if isinstance(config.get("data"), Mapping) else {}
    embed_dim, in_chans, patch, _ = state["patch_embed.proj.weight"].shape
    n_patches = state["pos_embed"].shape[1] - 1
    img_size = hints.get("img_size") or mcfg.get("img_size") or data.get("img_size")
    if img_size is None:
        side = round(n_patches**0.5)
        if side * side != n_patches:
            raise ValueError(f"{source}: {n_patches} patches is not a square grid; give --img-size")
        img_size = side * patch

    def count(prefix: str) -> int:
        return len({k[len(prefix):].split(".")[0] for k in state if k.startswith(prefix)})

    by_width = {d["embed_dim"]: d["num_heads"] for d in VIT_SIZES.values()}
    size_heads = VIT_SIZES.get(mcfg.get("size"), {}).get("num_heads")
    num_heads = hints.get("num_heads") or mcfg.get("num_heads") or size_heads or by_width.get(embed_dim)
    if num_heads is None:
        raise ValueError(f"{source}: cannot tell the encoder's attention heads (width {embed_dim}); give --num-heads")
    norm_pix = hints.get("norm_pix_loss")
    return MaskedAutoencoderViT(
        img_size=img_size, patch_size=patch, in_chans=in_chans, embed_dim=embed_dim,
        depth=count("blocks."), num_heads=num_heads,
        decoder_embed_dim=state["decoder_embed.weight"].shape[0], decoder_depth=count("decoder_blocks."),
        decoder_num_heads=hints.get("decoder_num_heads") or mcfg.get("decoder_num_heads") or 16,
        mlp_ratio=state["blocks.0.mlp.fc1.weight"].shape[0] / embed_dim,
        norm_pix_loss=bool(mcfg.get("norm_pix_loss", False)) if norm_pix is None else bool(norm_pix),
    )


def model_from_checkpoint(source: str | Path, kind: str | None = "segmentation",
                          hints: Mapping | None = None, loaded: object | None = None) -> tuple[nn.Module, dict]:
    """Rebuild a network from a checkpoint, in eval mode, from the config and shapes it carries.

    The one place that turns a checkpoint into a network (timm's ``checkpoint_filter_fn`` with
    ``build_model_with_cfg``): the file is read safely (:func:`load_checkpoint`), ``model`` /
    ``state_dict`` are unwrapped, DDP and ``torch.compile`` prefixes stripped, the kind recognised
    by its keys (:func:`checkpoint_kind`), and the network rebuilt:

    * ``segmentation``: :func:`~vasomim.models.segmentation.build_segmentation_model` of
      ``config["network"]``; also from an exported model folder (``model.safetensors`` +
      ``config.json``, no pickle);
    * ``mae``: the MAE of a pre-training checkpoint (:func:`_mae`; ``hints`` may give
      ``num_heads``, ``decoder_num_heads``, ``img_size``, ``norm_pix_loss``), or the
      :class:`~vasomim.models.unet_mim.MaskedUNet` of a ``model.arch: unet`` pre-training
      (``hints`` may give ``norm_pix_loss``; the shape comes from the weights, the norm from the
      config);
    * ``segmentor``: the UNeXt-S of the consistency loss (a published plain state dict or a
      ``vasomim train-segmentor`` checkpoint).

    Args:
        source: a checkpoint file, or an exported model folder.
        kind: the kind the caller needs (a checkpoint of another kind is refused); None takes
            whichever it is.
        hints: what the checkpoint does not say (MAE only).
        loaded: what :func:`load_checkpoint` already read from the file ``source`` (not read again).

    Returns:
        ``(model, config)``: the network with its weights, and the checkpoint's config (``{}``
        when it carries none); for a segmentation network ``config["network"]`` rebuilt it and
        ``config["input"]`` is its input convention.

    Raises:
        FileNotFoundError, ValueError: one line naming the file, when it is missing, unreadable,
            unsafe, of another kind, or when its weights do not fit the rebuilt network.
    """
    path = Path(source)
    if path.is_dir():
        state, config = _read_model_folder(path)
    else:
        # one line naming the file for a missing, foreign or unsafe file
        ckpt = loaded if loaded is not None else load_checkpoint(path)
        config = ckpt.get("config") if isinstance(ckpt, Mapping) else None
        try:
            state, _ = read_state_dict(ckpt)
        except ValueError:
            state = {}
    state, config = strip_wrappers(state), dict(config) if isinstance(config, Mapping) else {}
    found = checkpoint_kind(state, config)
    if found is None or (kind is not None and found != kind):
        what = KINDS.get(kind) if kind else "a vasomim model checkpoint (no segmentation config, MAE or UNeXt-S keys)"
        raise ValueError(f"{path}: not {what}")
    if found == "segmentation":
        model, fits = build_segmentation_model(**config["network"]), "the network in its config"
    elif found == "mae" and "rec_head.weight" in state:
        # unet_mim imports this module at its top: a real circle, so this import stays here
        from vasomim.models.unet_mim import masked_unet_from_state

        model, fits = masked_unet_from_state(state, config, hints, str(path)), "the rebuilt masked U-Net"
    elif found == "mae":
        model, fits = _mae(state, config, hints or {}, str(path)), "the rebuilt MAE"
    else:
        model, fits = UNeXt(), "a UNeXt-S segmentor"
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ValueError(f"{path}: weights do not fit {fits} ({str(exc).splitlines()[0]})") from None
    return model.eval(), config
