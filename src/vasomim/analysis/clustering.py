"""How well patch embeddings separate vessel-containing from background-only patches (Table 4).

1. :func:`patch_embeddings`: run the encoder on full, unmasked images and keep one token per
   patch (the class token and any other leading tokens are dropped; for a masked U-Net, one
   vector of its coarsest level per 16-pixel cell, see :func:`mae_encoder_forward`); label each
   patch 1 when its anatomy mask has vessel pixels in it (``f_i > 0`` of Eq. 2), else 0.
2. :func:`clustering_scores`: scikit-learn's silhouette score (higher is better, in [-1, 1]; the
   paper reports it x 10^-2), Calinski-Harabasz index (higher is better) and Davies-Bouldin index
   (lower is better), with the two labels as the clusters.
3. :func:`umap_scores`: the same scores on a 2-D UMAP projection (as the paper does), when the
   optional ``umap-learn`` is installed (``pip install vasomim[umap]``); otherwise ``None`` and
   the reason.
4. :func:`plot_embedding_scatter`: the 2-D projection (UMAP, else PCA), coloured by label.

Cost: the silhouette needs all pairwise distances (O(M^2)); it is computed on a random subset of
at most ``max_silhouette`` = 5000 points drawn with a fixed seed (scikit-learn's ``sample_size``
and ``random_state``), so repeated runs give the same number. The other two indices are O(M) and
use every point. UMAP and the scatter plot use a fixed-seed subset of at most ``max_points``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from vasomim.analysis.report import pyplot, save_figure, write_json

MAX_SILHOUETTE = 5000
MAX_POINTS = 5000
VESSEL_COLOUR = "#d55e00"
BACKGROUND_COLOUR = "#0072b2"


def mae_encoder_forward(model) -> Callable:
    """``images -> tokens`` for a pre-trained masked autoencoder, every patch visible.

    * :class:`~vasomim.models.mae.MaskedAutoencoderViT`: the encoder output, class token first.
    * :class:`~vasomim.models.unet_mim.MaskedUNet`: the coarsest encoder level (the bottleneck,
      1 / ``patch_size`` of the input), one feature vector per ``patch_size``-pixel cell, row by
      row: the U-Net's analogue of a ViT patch token.

    Returns:
        a function mapping (B, C, H, W) images to (B, T, D) tokens whose last N are the patches
        in row-major order ((B, 1 + N, D) for the ViT, (B, N, D) for the U-Net), to pass to
        :func:`patch_embeddings`.
    """
    import torch

    from vasomim.models.unet_mim import MaskedUNet

    if isinstance(model, MaskedUNet):
        def cell_features(images: torch.Tensor) -> torch.Tensor:
            p = model.patch_size
            visible = images.new_ones(images.shape[0], 1, images.shape[-2] // p, images.shape[-1] // p)
            return model.encode(images, visible)[-1].flatten(2).transpose(1, 2)

        return cell_features

    def patch_tokens(images: torch.Tensor) -> torch.Tensor:
        ids_keep = torch.arange(model.num_patches, device=images.device).expand(images.shape[0], -1)
        return model.forward_encoder(images, ids_keep)

    return patch_tokens


def patch_embeddings(
    encoder_forward: Callable,
    images,
    anatomy_masks,
    patch: int,
    batch_size: int = 32,
) -> tuple[np.ndarray, np.ndarray]:
    """Patch tokens of full images and their vessel / background labels.

    Args:
        encoder_forward: maps (b, C, H, W) images to (b, T, D) tokens with T >= N patches; the
            last N tokens are the patches in row-major order (a leading class token, or any other
            leading tokens, are dropped). See :func:`mae_encoder_forward`.
        images: (B, C, H, W) float tensor in the encoder's input convention (normalised).
        anatomy_masks: (B, 1, H, W) or (B, H, W) vessel masks (bool or float).
        patch: patch side P of the encoder.
        batch_size: images per forward pass (run under ``torch.no_grad``).

    Returns:
        emb: (B*N, D) float32 embeddings, image by image, patches row by row.
        labels: (B*N,) int64, 1 for vessel-containing patches, 0 for background-only.
    """
    import torch

    from vasomim.masking import patch_distribution

    n = (images.shape[-2] // patch) * (images.shape[-1] // patch)
    chunks = []
    with torch.no_grad():
        for start in range(0, images.shape[0], batch_size):
            tokens = encoder_forward(images[start : start + batch_size])
            if tokens.dim() != 3 or tokens.shape[1] < n:
                raise ValueError(f"encoder returned shape {tuple(tokens.shape)}; expected (b, >= {n}, D) tokens")
            chunks.append(tokens[:, tokens.shape[1] - n :].float().cpu())
    emb = torch.cat(chunks).reshape(-1, chunks[0].shape[-1]).numpy()
    labels = (patch_distribution(anatomy_masks, patch) > 0).reshape(-1).to(torch.int64).numpy()
    return emb, labels


def _check(emb: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    emb, labels = np.asarray(emb, dtype=np.float64), np.asarray(labels).astype(np.int64).ravel()
    if emb.ndim != 2 or emb.shape[0] != labels.shape[0]:
        raise ValueError(f"embeddings {emb.shape} and labels {labels.shape} do not match")
    if np.unique(labels).size < 2:
        raise ValueError("clustering scores need both vessel-containing and background-only patches")
    return emb, labels


def clustering_scores(
    emb: np.ndarray, labels: np.ndarray, max_silhouette: int = MAX_SILHOUETTE, seed: int = 0
) -> dict[str, float]:
    """Silhouette, Calinski-Harabasz and Davies-Bouldin scores of the labels as clusters.

    Args:
        emb: (M, D) embeddings.
        labels: (M,) cluster labels (1 vessel-containing, 0 background-only); both must occur.
        max_silhouette: silhouette on a random subset of this many points when M is larger
            (scikit-learn ``sample_size``), drawn with ``seed``.
        seed: seed of that subset.

    Returns:
        ``silhouette``, ``calinski_harabasz``, ``davies_bouldin``, plus ``n``, ``n_vessel``,
        ``n_background`` and ``silhouette_n`` (points the silhouette used).
    """
    from sklearn.metrics import calinski_harabasz_score, davies_bouldin_score, silhouette_score

    emb, labels = _check(emb, labels)
    sample = min(len(labels), max_silhouette)
    silhouette = silhouette_score(
        emb, labels, sample_size=sample if sample < len(labels) else None, random_state=seed
    )
    return {
        "silhouette": float(silhouette),
        "calinski_harabasz": float(calinski_harabasz_score(emb, labels)),
        "davies_bouldin": float(davies_bouldin_score(emb, labels)),
        "n": int(len(labels)),
        "n_vessel": int(labels.sum()),
        "n_background": int((labels == 0).sum()),
        "silhouette_n": int(sample),
    }


def subsample(n: int, max_points: int, seed: int = 0) -> np.ndarray:
    """Sorted indices of a fixed-seed random subset of ``range(n)`` of at most ``max_points``."""
    if n <= max_points:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=max_points, replace=False))


def umap_available() -> str | None:
    """None when umap-learn can be imported, else the reason it cannot."""
    try:
        import umap  # noqa: F401
    except ImportError as exc:
        return f"umap-learn is not installed (pip install 'vasomim[umap]'): {exc}"
    return None


def project_2d(
    emb: np.ndarray, method: str = "auto", seed: int = 0, n_neighbors: int = 15, min_dist: float = 0.1
) -> tuple[np.ndarray, str]:
    """2-D projection of embeddings with UMAP or PCA.

    Args:
        emb: (M, D) embeddings.
        method: ``"umap"``, ``"pca"`` or ``"auto"`` (UMAP when installed, else PCA).
        seed: random state of UMAP.
        n_neighbors: UMAP neighbourhood size.
        min_dist: UMAP minimum distance.

    Returns:
        (M, 2) coordinates and the method used.

    Raises:
        ImportError: ``method="umap"`` without umap-learn.
    """
    emb = np.asarray(emb, dtype=np.float32)
    if method not in ("auto", "umap", "pca"):
        raise ValueError(f"unknown projection method {method!r}")
    reason = umap_available() if method != "pca" else "PCA asked for"
    if method == "umap" and reason:
        raise ImportError(reason)
    if reason is None:
        import umap

        reducer = umap.UMAP(n_components=2, n_neighbors=n_neighbors, min_dist=min_dist, random_state=seed)
        return np.asarray(reducer.fit_transform(emb)), "umap"
    from sklearn.decomposition import PCA

    return PCA(n_components=2, random_state=seed).fit_transform(emb), "pca"


def umap_scores(
    emb: np.ndarray,
    labels: np.ndarray,
    seed: int = 0,
    max_points: int = MAX_POINTS,
    n_neighbors: int = 15,
    min_dist: float = 0.1,
) -> tuple[dict[str, float] | None, str | None]:
    """:func:`clustering_scores` on a 2-D UMAP projection (the paper's Table 4 protocol).

    Args:
        emb: (M, D) embeddings.
        labels: (M,) 0/1 labels.
        seed: seed of the subset and of UMAP.
        max_points: project a fixed-seed random subset of at most this many points.
        n_neighbors: UMAP neighbourhood size.
        min_dist: UMAP minimum distance.

    Returns:
        ``(scores, None)``, or ``(None, reason)`` when umap-learn is not installed.
    """
    reason = umap_available()
    if reason:
        return None, reason
    emb, labels = _check(emb, labels)
    keep = subsample(len(labels), max_points, seed)
    xy, _ = project_2d(emb[keep], "umap", seed, n_neighbors, min_dist)
    return clustering_scores(xy, labels[keep], seed=seed), None


def _project_panels(
    panels: Mapping[str, tuple[np.ndarray, np.ndarray]], method: str, seed: int, max_points: int
) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], str]:
    """Per panel, a fixed-seed subset projected to 2-D: ``({label: (xy, labels)}, method used)``."""
    projected, used = {}, "pca"
    for label, (emb, labels) in panels.items():
        emb, labels = _check(emb, labels)
        keep = subsample(len(labels), max_points, seed)
        xy, used = project_2d(emb[keep], method, seed)
        projected[label] = (xy, labels[keep])
    return projected, used


def _scatter(projected: Mapping[str, tuple[np.ndarray, np.ndarray]], method: str, out_png: str | os.PathLike) -> None:
    plt = pyplot()
    fig, axes = plt.subplots(1, len(projected), figsize=(4.6 * len(projected), 4.4), squeeze=False, constrained_layout=True)
    for ax, (label, (xy, lab)) in zip(axes[0], projected.items()):
        size = float(np.clip(4000 / len(lab), 3, 20))  # visible dots for small sets, no blobs for large
        for value, colour, name in ((0, BACKGROUND_COLOUR, "background-only"), (1, VESSEL_COLOUR, "vessel-containing")):
            pts = xy[lab == value]
            ax.scatter(pts[:, 0], pts[:, 1], s=size, alpha=0.5, c=colour, label=f"{name} ({len(pts)})", linewidths=0)
        ax.set_title(label, fontsize=10)
        ax.set_xlabel(f"{method.upper()} 1")
        ax.set_ylabel(f"{method.upper()} 2")
        ax.legend(fontsize=8, markerscale=3)
    save_figure(fig, out_png)


def plot_embedding_scatter(
    panels: Mapping[str, tuple[np.ndarray, np.ndarray]],
    out_png: str | os.PathLike,
    method: str = "auto",
    seed: int = 0,
    max_points: int = MAX_POINTS,
) -> dict[str, Any]:
    """Scatter plots of 2-D projected patch embeddings, vessel-containing vs background-only.

    Args:
        panels: ``{model label: (emb (M, D), labels (M,))}``, one panel each.
        out_png: figure path; ``{"method", "n_plotted"}`` is written beside it as ``.json``.
        method: ``"auto"`` (UMAP if installed, else PCA), ``"umap"`` or ``"pca"``.
        seed: seed of the subset and the projection.
        max_points: plot a fixed-seed random subset of at most this many points per panel.

    Returns:
        ``{"method": "umap" | "pca", "n_plotted": {label: count}}``.
    """
    projected, used = _project_panels(panels, method, seed, max_points)
    _scatter(projected, used, out_png)
    result = {"method": used, "n_plotted": {label: int(len(lab)) for label, (_, lab) in projected.items()}}
    write_json(Path(out_png).with_suffix(".json"), result)
    return result


def clustering_analysis(
    embeddings: Mapping[str, tuple[np.ndarray, np.ndarray]],
    out_png: str | os.PathLike,
    seed: int = 0,
    max_silhouette: int = MAX_SILHOUETTE,
    max_points: int = MAX_POINTS,
) -> dict[str, Any]:
    """Table 4 for one or more models: scores on the embeddings and on UMAP, plus the scatter plot.

    The 2-D projection is computed once per model (UMAP when installed, else PCA) and serves both
    the UMAP scores and the scatter plot.

    Args:
        embeddings: ``{model label: (emb, labels)}`` from :func:`patch_embeddings`.
        out_png: scatter-plot path; all numbers are written beside it as ``.json``.
        seed: seed of every subset and projection.
        max_silhouette: see :func:`clustering_scores`.
        max_points: points per model in the projection (fixed-seed subset).

    Returns:
        ``{"models": {label: {"embedding": scores, "umap": scores | None}}, "umap_reason":
        None | str, "scatter": {"method", "n_plotted"}}``.
    """
    projected, used = _project_panels(embeddings, "auto", seed, max_points)
    models = {
        label: {
            "embedding": clustering_scores(emb, labels, max_silhouette, seed),
            "umap": clustering_scores(*projected[label], seed=seed) if used == "umap" else None,
        }
        for label, (emb, labels) in embeddings.items()
    }
    _scatter(projected, used, out_png)
    scatter = {"method": used, "n_plotted": {label: int(len(lab)) for label, (_, lab) in projected.items()}}
    result = {"models": models, "umap_reason": umap_available(), "scatter": scatter}
    write_json(Path(out_png).with_suffix(".json"), result)
    return result


def scores_rows(result: Mapping[str, Any]) -> list[dict[str, str]]:
    """Display rows of :func:`clustering_analysis` in the paper's Table 4 units (SS x 10^-2)."""
    rows = []
    for label, r in result["models"].items():
        for space in ("embedding", "umap"):
            s = r[space]
            if s is None:
                continue
            rows.append({
                "model": label,
                "space": "UMAP 2-D" if space == "umap" else "embedding",
                "SS (×10⁻²) ↑": f"{100 * s['silhouette']:.2f}",
                "CHI ↑": f"{s['calinski_harabasz']:.2f}",
                "DBI ↓": f"{s['davies_bouldin']:.2f}",
                "patches (vessel / background)": f"{s['n_vessel']} / {s['n_background']}",
            })
    return rows
