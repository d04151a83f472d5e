"""What the anatomy-guided masking does, seen from the outside (the paper's Fig. 3).

- :func:`vessel_share_curves` / :func:`plot_vessel_share` (Fig. 3a): per pre-training run, the
  share of vessel-containing patches among the masked patches at every epoch, read from the run's
  ``log.jsonl``, next to the share among *all* patches (what random masking masks in expectation).
- :func:`masking_frequency_map` / :func:`plot_masking_frequency` (Fig. 3b): for one image, how
  often each patch is masked over E simulated epochs, drawn with the real sampler
  (:func:`vasomim.masking.guided_mask`) and the real schedule (:func:`vasomim.masking.beta_at`).

A pre-training run folder holds ``log.jsonl`` (one JSON object per epoch, with at least ``epoch``,
``vessel_share_masked`` and ``vessel_share_all``) and ``config.json`` (``name``,
``masking.mask_ratio``, ``masking.beta_0``, ``masking.beta_E``, ``consistency.weight``; every key
optional).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from vasomim.analysis.report import pyplot, save_figure, write_json

SHARE_KEYS = ("vessel_share_masked", "vessel_share_all")


# ------------------------------------------------------------------------------ Fig. 3a


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """Records of a JSON-lines file; a torn last line (an interrupted write) is ignored.

    Raises:
        FileNotFoundError: no such file.
        ValueError: a malformed line other than the last, naming the file and line.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such log file")
    lines = path.read_text(encoding="utf-8").splitlines()
    records = []
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            if i == len(lines):
                break
            raise ValueError(f"{path}:{i}: not a JSON line ({exc.msg})") from None
        if isinstance(record, dict):
            records.append(record)
    return records


def run_summary(run_dir: str | os.PathLike) -> dict[str, Any]:
    """Name and masking settings of a pre-training run, from its ``config.json`` (missing keys: None).

    Returns:
        dict with ``name`` (config name, else the folder name), ``mask_ratio``, ``beta_0``,
        ``beta_E``, ``cons_weight``.
    """
    run_dir = Path(run_dir)
    config: dict = {}
    if (run_dir / "config.json").is_file():
        config = json.loads((run_dir / "config.json").read_text(encoding="utf-8"))
    masking = config.get("masking") or {}
    consistency = config.get("consistency") or {}
    return {
        "name": config.get("name") or run_dir.resolve().name,
        "mask_ratio": masking.get("mask_ratio"),
        "beta_0": masking.get("beta_0"),
        "beta_E": masking.get("beta_E"),
        "cons_weight": consistency.get("weight"),
    }


def vessel_share_curves(run_dirs: Mapping[str, str | os.PathLike] | Sequence[str | os.PathLike]) -> dict[str, dict]:
    """Read the vessel-share curves of pre-training runs from their logs.

    Args:
        run_dirs: ``{label: run folder}``, or a list of run folders (labelled by the config's
            ``name``, else the folder name; repeated names get ``#2``, ``#3``).

    Returns:
        ``{label: {"run_dir", "config": run_summary(...), "epoch": [...],
        "vessel_share_masked": [...], "vessel_share_all": [...]}}``, epochs ascending. A resumed
        run that logged an epoch twice keeps the last record; records without the two shares are
        skipped.

    Raises:
        ValueError: a run whose log has no record with both shares.
    """
    if not isinstance(run_dirs, Mapping):
        labelled: dict[str, str | os.PathLike] = {}
        for d in run_dirs:
            base = run_summary(d)["name"]
            label, k = base, 1
            while label in labelled:
                k += 1
                label = f"{base}#{k}"
            labelled[label] = d
        run_dirs = labelled
    curves = {}
    for label, run_dir in run_dirs.items():
        run_dir = Path(run_dir)
        by_epoch = {
            int(r["epoch"]): r
            for r in read_jsonl(run_dir / "log.jsonl")
            if "epoch" in r and all(isinstance(r.get(k), (int, float)) for k in SHARE_KEYS)
        }
        if not by_epoch:
            raise ValueError(f"{run_dir / 'log.jsonl'}: no record with epoch, {SHARE_KEYS[0]} and {SHARE_KEYS[1]}")
        epochs = sorted(by_epoch)
        curves[label] = {
            "run_dir": str(run_dir),
            "config": run_summary(run_dir),
            "epoch": epochs,
            **{k: [float(by_epoch[e][k]) for e in epochs] for k in SHARE_KEYS},
        }
    return curves


def share_summary(curves: Mapping[str, dict]) -> dict[str, dict[str, float]]:
    """Per run: mean over epochs and last-epoch value of both shares, and their ratio (masked / all)."""
    out = {}
    for label, c in curves.items():
        masked, everything = np.asarray(c["vessel_share_masked"]), np.asarray(c["vessel_share_all"])
        out[label] = {
            "mean_masked": float(masked.mean()),
            "mean_all": float(everything.mean()),
            "final_masked": float(masked[-1]),
            "final_all": float(everything[-1]),
            "enrichment": float(masked.mean() / everything.mean()) if everything.mean() > 0 else float("nan"),
        }
    return out


def plot_vessel_share(curves: Mapping[str, dict], out_png: str | os.PathLike, title: str | None = None) -> dict:
    """Fig. 3a: share of vessel-containing patches among the masked ones, per epoch and run.

    One solid line per run; one dashed line for the random expectation, the share of
    vessel-containing patches among all patches averaged over the runs at each epoch (random
    masking masks each patch with the same probability, so it masks that share in expectation).
    Writes ``out_png`` and the numbers to the same path with ``.json``.

    Args:
        curves: output of :func:`vessel_share_curves`.
        out_png: figure path.
        title: figure title (default: none).

    Returns:
        ``{"curves": curves, "random_expectation": {"epoch", "share"}, "summary": share_summary}``.
    """
    if not curves:
        raise ValueError("plot_vessel_share: no runs")
    plt = pyplot()
    epochs = sorted({e for c in curves.values() for e in c["epoch"]})
    index = {e: i for i, e in enumerate(epochs)}
    pooled = np.full((len(curves), len(epochs)), np.nan)
    for row, c in enumerate(curves.values()):
        pooled[row, [index[e] for e in c["epoch"]]] = c["vessel_share_all"]
    expectation = np.nanmean(pooled, axis=0)

    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for label, c in curves.items():
        cfg = c["config"]
        detail = f" (β {cfg['beta_0']}→{cfg['beta_E']})" if cfg.get("beta_0") is not None else ""
        ax.plot(c["epoch"], 100 * np.asarray(c["vessel_share_masked"]), lw=2, label=f"{label}{detail}")
    ax.plot(epochs, 100 * expectation, "k--", lw=1.3, label="random expectation (all patches)")
    ax.set_xlabel("epoch")
    ax.set_ylabel("vessel-containing patches among masked (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title)
    save_figure(fig, out_png)
    result = {
        "curves": dict(curves),
        "random_expectation": {"epoch": epochs, "share": expectation},
        "summary": share_summary(curves),
    }
    write_json(Path(out_png).with_suffix(".json"), result)
    return result


# ------------------------------------------------------------------------------ Fig. 3b


def beta_per_epoch(epochs: int, beta_0: float, beta_E: float) -> np.ndarray:
    """beta_e = beta_0 + ((e + 1) / E)(beta_E - beta_0) for epochs e = 0..E-1 (Eq. 3, as the trainer applies it)."""
    from vasomim.masking import epoch_beta

    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    return np.array([epoch_beta(e, epochs, beta_0, beta_E) for e in range(epochs)])


def masking_frequency_map(
    anatomy_mask: np.ndarray,
    patch: int,
    mask_ratio: float,
    beta_schedule: tuple[float, float],
    epochs: int,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """How often each patch of one image is masked over ``epochs`` simulated epochs (Fig. 3b).

    Every epoch draws one mask with :func:`vasomim.masking.guided_mask` at that epoch's beta
    (:func:`beta_per_epoch`). Epochs whose beta gives the same number of guided patches are drawn
    as one batch, so the simulation costs one sampler call per distinct count, not per epoch.

    Args:
        anatomy_mask: (H, W) bool vessel mask; H and W divisible by ``patch``.
        patch: patch side P.
        mask_ratio: gamma.
        beta_schedule: ``(beta_0, beta_E)``; ``(0, 0)`` is random masking (the MAE baseline).
        epochs: E, number of simulated epochs.
        seed: seed of the sampler's generator.

    Returns:
        freq: (H/P, W/P) float, the share of epochs in which each patch was masked,
        (1/E) sum_j 1[patch i masked in epoch j].
        vessel_patches: (H/P, W/P) bool, patches that contain vessel pixels.
    """
    import torch

    from vasomim.masking import guided_mask, mask_counts, patch_distribution

    mask = np.asarray(anatomy_mask)
    if mask.ndim != 2:
        raise ValueError(f"anatomy_mask must be 2-D, got shape {mask.shape}")
    f = patch_distribution(torch.from_numpy(mask.astype(bool))[None, None], patch)  # (1, N)
    grid = (mask.shape[0] // patch, mask.shape[1] // patch)
    betas = beta_per_epoch(epochs, *beta_schedule)
    guided_counts = np.array([mask_counts(f.shape[1], mask_ratio, b)[2] for b in betas])
    gen = torch.Generator().manual_seed(int(seed))
    counts = torch.zeros(f.shape[1], dtype=torch.float64)
    for n_guided in np.unique(guided_counts):
        group = np.flatnonzero(guided_counts == n_guided)
        *_, masked = guided_mask(f.expand(len(group), -1), mask_ratio, float(betas[group[0]]), gen)
        counts += masked.sum(0, dtype=torch.float64)
    freq = (counts / epochs).reshape(grid).numpy()
    return freq, (f[0] > 0).reshape(grid).numpy()


def frequency_stats(freq: np.ndarray, vessel_patches: np.ndarray) -> dict[str, float]:
    """Mean masking frequency on vessel-containing and on background-only patches, and their ratio."""
    vessel = float(freq[vessel_patches].mean()) if vessel_patches.any() else float("nan")
    background = float(freq[~vessel_patches].mean()) if (~vessel_patches).any() else float("nan")
    return {
        "mean_vessel": vessel,
        "mean_background": background,
        "ratio": vessel / background if background > 0 else float("nan"),
        "vessel_patches": int(vessel_patches.sum()),
        "patches": int(vessel_patches.size),
    }


def plot_masking_frequency(
    image: np.ndarray,
    freq_guided: np.ndarray,
    freq_random: np.ndarray,
    out_png: str | os.PathLike,
    vessel_patches: np.ndarray | None = None,
    labels: tuple[str, str] = ("anatomy-guided", "random"),
    settings: Mapping[str, Any] | None = None,
) -> dict:
    """Fig. 3b: the image, then the guided and the random masking frequency over it (one colour scale).

    Writes ``out_png`` and the numbers (both maps, and :func:`frequency_stats` when
    ``vessel_patches`` is given) to the same path with ``.json``.

    Args:
        image: (H, W) gray image in [0, 1], H and W multiples of the maps' grid.
        freq_guided: (gh, gw) masking frequency with guidance.
        freq_random: (gh, gw) masking frequency without guidance.
        out_png: figure path.
        vessel_patches: (gh, gw) bool, outlined on the image panel and used for the statistics.
        labels: titles of the two heat-map panels.
        settings: recorded in the JSON as is (e.g. ratio, schedule, epochs, seed).

    Returns:
        dict with ``guided`` and ``random`` (``freq`` and, with ``vessel_patches``, their stats).
    """
    image = np.asarray(image, dtype=np.float32)
    if freq_guided.shape != freq_random.shape:
        raise ValueError(f"frequency maps differ in shape: {freq_guided.shape} vs {freq_random.shape}")
    gh, gw = freq_guided.shape
    if image.shape[0] % gh or image.shape[1] % gw:
        raise ValueError(f"image {image.shape} is not a multiple of the {gh}x{gw} patch grid")
    ph, pw = image.shape[0] // gh, image.shape[1] // gw
    plt = pyplot()
    vmax = max(float(freq_guided.max()), float(freq_random.max()), 1e-9)
    extent = (0, image.shape[1], image.shape[0], 0)
    fig, axes = plt.subplots(1, 3, figsize=(12, 4.3), constrained_layout=True)
    axes[0].imshow(image, cmap="gray", vmin=0, vmax=1)
    axes[0].set_title("image" + (" (vessel-containing patches outlined)" if vessel_patches is not None else ""), fontsize=9)
    if vessel_patches is not None:
        axes[0].contour(
            np.kron(vessel_patches.astype(float), np.ones((ph, pw))), levels=[0.5], colors=["#e69f00"], linewidths=0.8
        )
    heat = None
    for ax, freq, label in zip(axes[1:], (freq_guided, freq_random), labels):
        ax.imshow(image, cmap="gray", vmin=0, vmax=1)
        heat = ax.imshow(freq, cmap="inferno", vmin=0, vmax=vmax, alpha=0.6, extent=extent, interpolation="nearest")
        ax.set_title(f"{label}: patch masking frequency", fontsize=9)
    for ax in axes:
        ax.set_axis_off()
    fig.colorbar(heat, ax=axes[1:], shrink=0.85, label="share of epochs masked")
    save_figure(fig, out_png)
    result: dict[str, Any] = {"settings": dict(settings or {})}
    for key, freq in (("guided", freq_guided), ("random", freq_random)):
        result[key] = {"freq": freq}
        if vessel_patches is not None:
            result[key]["stats"] = frequency_stats(freq, vessel_patches)
    if vessel_patches is not None:
        result["vessel_patches"] = vessel_patches
    write_json(Path(out_png).with_suffix(".json"), result)
    return result


def masking_map_analysis(
    image: np.ndarray,
    anatomy_mask: np.ndarray,
    out_png: str | os.PathLike,
    patch: int = 16,
    mask_ratio: float = 0.5,
    beta_schedule: tuple[float, float] = (0.0, 0.5),
    epochs: int = 800,
    seed: int = 0,
) -> dict:
    """Fig. 3b end to end: guided (``beta_schedule``) vs random (beta 0) frequency maps, plotted.

    Args:
        image: (H, W) gray image in [0, 1].
        anatomy_mask: (H, W) bool vessel mask; H and W divisible by ``patch``.
        out_png: figure path (numbers beside it as ``.json``).
        patch: patch side.
        mask_ratio: gamma.
        beta_schedule: (beta_0, beta_E) of the guided run.
        epochs: simulated epochs.
        seed: sampler seed (the same for both runs).

    Returns:
        the dict of :func:`plot_masking_frequency`.
    """
    guided, vessel = masking_frequency_map(anatomy_mask, patch, mask_ratio, beta_schedule, epochs, seed)
    random, _ = masking_frequency_map(anatomy_mask, patch, mask_ratio, (0.0, 0.0), epochs, seed)
    settings = {"patch": patch, "mask_ratio": mask_ratio, "beta_0": beta_schedule[0], "beta_E": beta_schedule[1],
                "epochs": epochs, "seed": seed}
    b0, be = beta_schedule
    return plot_masking_frequency(
        image, guided, random, out_png, vessel, labels=(f"guided (β {b0:g}→{be:g})", "random (β 0)"), settings=settings
    )
