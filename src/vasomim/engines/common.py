"""Shared pieces of the trainers: distributed set-up, checkpoints, RNG state, schedules, logs."""

from __future__ import annotations

import json
import logging
import math
import os
import random
import socket
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from vasomim.data.io import atomic_file


class FolderInUse(RuntimeError):
    """Another live process holds the folder (see :func:`claim`)."""


#: The marker :func:`claim` leaves in a folder while a process works in it.
IN_USE = ".in_use.json"


def folder_holder(folder: str | os.PathLike) -> dict | None:
    """Who holds ``folder`` (``{"pid", "host", "since"}``), or None when nobody alive does.

    A marker left by a process of this host that no longer runs, or one that cannot be read, is
    stale: it counts as free. A marker of another host cannot be checked and counts as held.
    """
    try:
        holder = json.loads((Path(folder) / IN_USE).read_text())
        pid, host = int(holder["pid"]), str(holder["host"])
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError):
        return None  # cut short by a crash: stale
    if host != socket.gethostname():
        return holder
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass  # alive, another user's
    return holder


def _create_exclusive(source: Path, target: Path) -> None:
    """``target`` with ``source``'s content, or FileExistsError if it exists: a hard link, which
    never shows a half-written file; where links are not supported, an exclusive create."""
    try:
        os.link(source, target)
    except FileExistsError:
        raise
    except OSError:
        fd = os.open(target, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        with os.fdopen(fd, "w") as fh:
            fh.write(source.read_text())


@contextmanager
def claim(folder: str | os.PathLike):
    """Hold ``folder`` for this process while the block runs, so that two jobs never train into it.

    The marker (:data:`IN_USE`: pid, host, start time) is created atomically (written aside, then
    hard-linked into place, which fails if one exists) and removed at the end. A stale marker (its
    process is gone) is taken over.

    Raises:
        FolderInUse: one line naming the folder and the live process (pid, host, since) that holds it.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    marker = folder / IN_USE
    me = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%d %H:%M:%S")}
    aside = folder / f".in_use.{os.getpid()}.tmp"
    aside.write_text(json.dumps(me))
    try:
        for _ in range(3):
            try:
                _create_exclusive(aside, marker)
                break
            except FileExistsError:
                holder = folder_holder(folder)
                if holder is not None:
                    raise FolderInUse(f"{folder}: in use by process {holder.get('pid')} on {holder.get('host')} "
                                      f"since {holder.get('since')} (another job); if that process is gone, "
                                      f"delete {marker}") from None
                marker.unlink(missing_ok=True)  # stale
        else:
            raise FolderInUse(f"{folder}: could not take over the stale {marker}")
    finally:
        aside.unlink(missing_ok=True)
    try:
        yield
    finally:
        try:
            if json.loads(marker.read_text()) == me:
                marker.unlink()
        except (OSError, ValueError):
            pass


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands in a (possibly single-process) run.

    Attributes:
        rank: global rank (0 when not distributed).
        world_size: number of processes (1 when not distributed).
        local_rank: rank on this node; selects the GPU.
        device: the device this process computes on.
        is_main: rank 0, the process that logs and writes checkpoints.
    """

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    is_main: bool

    @property
    def distributed(self) -> bool:
        """More than one process takes part."""
        return self.world_size > 1


def init_distributed(device: str | None = None) -> DistInfo:
    """Join the process group that torchrun describes in the environment, if any.

    Reads RANK, WORLD_SIZE and LOCAL_RANK (set by torchrun, with MASTER_ADDR/MASTER_PORT for the
    `env://` rendezvous). With WORLD_SIZE > 1 it initialises the default group: nccl on CUDA,
    gloo on CPU. Otherwise nothing is initialised.

    Args:
        device: "cpu" or "cuda" to force a device type; None picks CUDA when available.

    Returns:
        DistInfo for this process.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() if device is None else device == "cuda"
    if use_cuda:
        torch.cuda.set_device(local_rank)
        dev = torch.device("cuda", local_rank)
    else:
        dev = torch.device("cpu")
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(
            backend="nccl" if use_cuda else "gloo",
            init_method="env://",
            rank=rank,
            world_size=world_size,
        )
    return DistInfo(rank, world_size, local_rank, dev, rank == 0)


def cleanup_distributed() -> None:
    """Leave the process group, if one was initialised."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def reduce_mean(value: torch.Tensor) -> torch.Tensor:
    """Average a tensor over all processes (identity when not distributed)."""
    if not (dist.is_available() and dist.is_initialized()):
        return value
    out = value.detach().clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out / dist.get_world_size()


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """`torch.save` to a temporary file next to `path`, then rename it over `path`.

    A reader never sees a half-written file, and a crash leaves the previous file intact
    (:func:`vasomim.data.io.atomic_file`).
    """
    with atomic_file(path, durable=True) as fh:
        torch.save(obj, fh)


def rng_state() -> dict[str, Any]:
    """Capture the Python, NumPy (global) and torch (CPU and CUDA) random states.

    Returns:
        a dict of lists, ints, floats and tensors only, so it survives
        `torch.load(weights_only=True)`.
    """
    version, internal, gauss_next = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": [version, list(internal), gauss_next],
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss),
                  float(cached)],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore random states captured by `rng_state` (CUDA only when present on both sides)."""
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@contextmanager
def kept_rng_state():
    """Run the block, then put every random stream (`rng_state`) back as the block found it.

    For side work inside a training loop (scoring, logging pictures) that may draw random numbers,
    for example a DataLoader taking its base seed from the global torch generator: without it, how
    often that work runs would change the training draws that follow.
    """
    state = rng_state()
    try:
        yield
    finally:
        set_rng_state(state)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy (global) and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def cosine_lr(
    step: int, total_steps: int, warmup_steps: int, base_lr: float, min_lr: float = 0.0
) -> float:
    """Learning rate at `step`: linear warm-up from 0, then a half-cycle cosine to `min_lr`.

    Args:
        step: current optimisation step (0-based; fractional epochs work too).
        total_steps: steps in the whole run.
        warmup_steps: steps of linear warm-up.
        base_lr: peak learning rate, reached at the end of the warm-up.
        min_lr: final learning rate.

    Returns:
        the learning rate (min_lr after total_steps).
    """
    if step < warmup_steps:
        return base_lr * step / warmup_steps
    decay_steps = max(total_steps - warmup_steps, 1)
    progress = min((step - warmup_steps) / decay_steps, 1.0)
    return min_lr + (base_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


NO_DECAY_NAMES = ("pos_embed", "cls_token", "mask_token")


def param_groups_weight_decay(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Split trainable parameters into a decayed and a non-decayed optimizer group.

    No weight decay on biases, norm weights and other 1-D parameters, nor on position
    embeddings and class/mask tokens (names ending in pos_embed, cls_token, mask_token; MAE's
    rule). Frozen parameters are left out.

    Args:
        model: the module to optimise.
        weight_decay: decay of the first group.

    Returns:
        [{"params": decayed, "weight_decay": weight_decay},
         {"params": not_decayed, "weight_decay": 0.0}]
    """
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        leaf = name.rsplit(".", 1)[-1]
        if param.ndim <= 1 or name.endswith(".bias") or leaf.endswith(NO_DECAY_NAMES):
            no_decay.append(param)
        else:
            decay.append(param)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def tensorboard_writer(enabled: bool, log_dir: str | os.PathLike, who: str):
    """A context manager giving a TensorBoard ``SummaryWriter`` in `log_dir`, or None.

    None when `enabled` is false, or when the optional ``tensorboard`` package is missing (then
    with a warning naming the extra that installs it): the run goes on either way.
    """
    if not enabled:
        return nullcontext(None)
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        logging.getLogger(__name__).warning(
            f"[{who}] tensorboard is not installed; TensorBoard logging skipped (pip install 'vasomim[tensorboard]')")
        return nullcontext(None)
    return SummaryWriter(str(log_dir))


def write_scalars(writer: Any, prefix: str, record: dict[str, Any], step: int) -> None:
    """Add a log record's numbers (not ``epoch``/``step``) to a TensorBoard writer as ``prefix/key``."""
    if writer is None:
        return
    for key, value in record.items():
        if key not in ("epoch", "step") and isinstance(value, (int, float)) and not isinstance(value, bool):
            writer.add_scalar(f"{prefix}/{key}", value, step)


class JsonlLogger:
    """Append one JSON object per line to a file, flushed after every line.

    Args:
        path: log file; parent folders are created; an existing file is appended to (so a
            resumed run continues its log).
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = open(self.path, "a", encoding="utf-8")

    def log(self, record: dict[str, Any]) -> None:
        """Write `record` (tensors of one element and NumPy scalars become numbers)."""
        self._fh.write(json.dumps(record, default=_to_json) + "\n")
        self._fh.flush()

    def close(self) -> None:
        """Close the file."""
        self._fh.close()

    def __enter__(self) -> JsonlLogger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _to_json(value: Any) -> Any:
    if isinstance(value, (torch.Tensor, np.generic)):
        return value.item()
    raise TypeError(f"cannot log a {type(value).__name__} as JSON")
