"""VasoMIM pre-training costs, measured side by side in one run and printed as ratios.

Sections:
1. Anatomy-guided masking: `vasomim.masking.guided_mask` (vectorised over the batch) vs a
   per-sample Python loop as in the original code (torch.multinomial without replacement for the
   guided picks, a random permutation of the rest for the fill). Target: >= 50x.
2. (to come with the trainer) pre-training step time of VasoMIM vs MAE at the same gamma and
   configuration, images/s and peak memory.

    python benchmarks/bench_pretrain.py
    python benchmarks/bench_pretrain.py --batch-size 256 --img-size 224 --gamma 0.5 --beta 0.5
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from vasomim.masking import guided_mask, mask_counts, patch_distribution

PATCH = 16


def loop_reference_mask(
    f: torch.Tensor, mask_ratio: float, beta: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample loop with the steps of the original VasoMIM code.

    For each image with vessels: count the positive patches, draw the guided ones with
    torch.multinomial (without replacement), shuffle the others with argsort(rand) and take the
    fill from them, then collect the visible patches; images without vessels get a randperm.

    Returns:
        ids_shuffle (B, N) = [visible..., masked...] and ids_restore (B, N).
    """
    b, n = f.shape
    _, n_masked, n_guided = mask_counts(n, mask_ratio, beta)
    dev = f.device
    ids_shuffle = torch.zeros(b, n, dtype=torch.long, device=dev)
    all_idx = torch.arange(n, device=dev).unsqueeze(0).repeat(b, 1)
    has_vessels = f.sum(dim=1) > 0
    for i in has_vessels.nonzero(as_tuple=True)[0]:
        take = min(n_guided, int((f[i] > 0).sum().item()))
        if take > 0:
            guided = torch.multinomial(f[i], take, replacement=False)
        else:
            guided = torch.zeros(0, dtype=torch.long, device=dev)
        is_guided = torch.zeros(n, dtype=torch.bool, device=dev)
        is_guided[guided] = True
        others = all_idx[i][~is_guided]
        fill = others[torch.argsort(torch.rand(others.shape[0], device=dev))][: n_masked - take]
        masked = torch.cat([guided, fill])
        is_kept = torch.ones(n, dtype=torch.bool, device=dev)
        is_kept[masked] = False
        ids_shuffle[i] = torch.cat([all_idx[i][is_kept], masked])
    for i in (~has_vessels).nonzero(as_tuple=True)[0]:
        ids_shuffle[i] = torch.randperm(n, device=dev)
    return ids_shuffle, torch.argsort(ids_shuffle, dim=1)


def random_anatomy_masks(batch: int, size: int, seed: int = 0) -> torch.Tensor:
    """Sparse vessel-like masks: thin random lines; every 16th image has no vessels."""
    gen = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    masks = torch.zeros(batch, 1, size, size, dtype=torch.bool)
    for _ in range(4):
        angle = torch.rand(batch, 1, 1, generator=gen) * torch.pi
        offset = (torch.rand(batch, 1, 1, generator=gen) - 0.5) * size
        dist = (xx - size / 2) * torch.sin(angle) - (yy - size / 2) * torch.cos(angle) - offset
        masks[:, 0] |= dist.abs() < 1.5
    masks[::16] = False
    return masks


def time_interleaved(
    fns: dict[str, Callable[[], object]], repeats: int, device: torch.device
) -> dict[str, float]:
    """Median wall time in seconds of each function, calls interleaved so that both see the
    same machine load; one warm-up call each; CUDA work is waited for."""

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    times: dict[str, list[float]] = {name: [] for name in fns}
    for fn in fns.values():
        fn()
    for _ in range(repeats):
        for name, fn in fns.items():
            sync()
            start = time.perf_counter()
            fn()
            sync()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(ts) for name, ts in times.items()}


def bench_masking(args: argparse.Namespace) -> None:
    """Section 1: vectorised vs per-sample-loop guided masking."""
    device = torch.device(args.device)
    masks = random_anatomy_masks(args.batch_size, args.img_size).to(device)
    f = patch_distribution(masks, PATCH)
    n = f.shape[1]
    gen = torch.Generator(device).manual_seed(0)
    times = time_interleaved(
        {
            "vectorised": lambda: guided_mask(f, args.gamma, args.beta, gen),
            "loop": lambda: loop_reference_mask(f, args.gamma, args.beta),
        },
        args.repeats,
        device,
    )
    t_vec, t_loop = times["vectorised"], times["loop"]
    share = (f > 0).float().mean().item()
    print(f"== guided masking on {device.type}: batch {args.batch_size}, N = {n}, "
          f"gamma {args.gamma}, beta {args.beta} ({share:.0%} of patches contain vessels)")
    print(f"   per-sample loop : {t_loop * 1e3:8.2f} ms")
    print(f"   vectorised      : {t_vec * 1e3:8.2f} ms")
    print(f"   speed-up        : {t_loop / t_vec:8.1f}x  (target >= 50x)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--gamma", type=float, default=0.5, help="mask ratio")
    parser.add_argument("--beta", type=float, default=0.5, help="share of guided patches")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads")
    bench_masking(args)
    # Section 2 (VasoMIM vs MAE step time) is added here together with the trainer.


if __name__ == "__main__":
    main()
