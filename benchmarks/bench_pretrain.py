"""VasoMIM pre-training costs, measured side by side in one run and printed as ratios.

Sections:
1. The masking share of a pre-training step: `vasomim.masking.guided_mask` at the step's batch
   against one whole step of the guided arm (section 2's first size), both back to back with warm
   caches; a per-sample Python loop as in the original code (torch.multinomial without
   replacement for the guided picks, a random permutation of the rest, argsort and a gather) is
   timed beside it for context. What counts is the step time: masking is a small share of it.
2. One pre-training step (forward, loss, backward, AdamW step) of the trainer's own code
   (`vasomim.engines.pretrain.mask_and_forward`), three arms at the same gamma, model and batch,
   timed interleaved: MAE (beta 0, reconstruction loss only, as `mae_vit_b16.yaml`), guided
   (beta, reconstruction only) and VasoMIM (beta and the consistency loss through a UNeXt-S).
   VasoMIM's extra cost = t_VasoMIM / t_MAE - 1, split into masking (guided - MAE) and
   consistency (VasoMIM - guided). Target: <= 25% of an MAE step. Then images/s and peak memory
   per arm (CPU: peak resident set of a fresh process per arm above its level after the imports;
   CUDA: torch.cuda.max_memory_allocated).
3. CPU precision, layout, compile and threads (`--sections cpu`): the trainer's step for ViT-Tiny,
   MAE and VasoMIM arms, at the CPU study's settings (128 px, decoder 128 x 2) and at 224 px
   (decoder 512 x 8), batch 16, under variants made of `+`-joined tokens: `fp32` (the trainer's
   CPU step before this section existed), `bf16` (torch.autocast("cpu", bfloat16) around the
   forward and the loss, as the trainer does on CUDA), `segbf16` (bf16 autocast inside the frozen
   segmentor only), `contig` (segmentor weights in the default layout instead of channels-last),
   `fused` (AdamW(fused=True)), `compile` (torch.compile of the MAE and the segmentor; compile time
   printed separately); each at every `--cpu-threads` count, all interleaved in one process.
   Correctness on the first call: rec and cons against fp32 on the same weights, batch and masks,
   and the cosine between the variants' and fp32's gradients.
4. CPU fine-tuning step (`--sections finetune`): the fine-tuning engine's step (ViT U-Net with
   ViT-Tiny, and the CNN U-Net), fp32 vs bf16 autocast in channels-last, and fp32 in the default
   (contiguous) layout, at every `--cpu-threads` count.
5. The CNN U-Net's pre-training step (`--sections unet`): the trainer's step for the masked U-Net
   (SparK-style, the study's `unet_mae` and `unet_vasomim` arms: 16 x 4 levels, batch norm, 128 px,
   batch 32), as it runs now (channels-last model and input; dense decoder norms run
   nn.BatchNorm2d itself on one process), the same in the default layout (`contig`), and the
   reference it replaced (default layout; every training-mode BatchNorm through the hand-written
   statistics, the path DDP still runs), interleaved, with the losses and the gradient cosine of the
   first call.

    python benchmarks/bench_pretrain.py --threads 1                      # CPU: tiny and small
    python benchmarks/bench_pretrain.py --batch-size 256 --img-size 224 --gamma 0.5 --beta 0.5
    python benchmarks/bench_pretrain.py --device cuda --size base --batch-size 256 --amp bf16
    python benchmarks/bench_pretrain.py --sections cpu --cpu-threads 1 2
    python benchmarks/bench_pretrain.py --sections unet --threads 1
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import time
from collections.abc import Callable

import torch

from vasomim.masking import guided_mask, mask_counts, patch_distribution

PATCH = 16


def loop_reference_mask(
    f: torch.Tensor, mask_ratio: float, beta: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-sample loop with the steps of the original VasoMIM code.

    For each image with vessels: count the positive patches, draw the guided ones with
    torch.multinomial (without replacement), shuffle the others with argsort(rand) and take the
    fill from them, then collect the visible patches; images without vessels get a randperm.
    Then, for the batch, ids_restore by argsort and the 0/1 mask by a gather, as there.

    Returns:
        ids_shuffle (B, N) = [visible..., masked...], ids_restore (B, N) and mask (B, N).
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
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    mask = torch.ones(b, n, device=dev)
    mask[:, : n - n_masked] = 0
    return ids_shuffle, ids_restore, torch.gather(mask, 1, ids_restore)


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
    times: dict[str, list[float]] = {name: [] for name in fns}
    for fn in fns.values():
        fn()
    for _ in range(repeats):
        for name, fn in fns.items():
            times[name].append(_timed_call(fn, device))
    return {name: statistics.median(ts) for name, ts in times.items()}


def _timed_call(fn: Callable[[], object], device: torch.device) -> float:
    """Wall time of one call of `fn`, with queued CUDA work finished before and after."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def bench_masking(args: argparse.Namespace) -> None:
    """Section 1: guided_mask's share of a pre-training step (guided arm), at the step's batch."""
    device = torch.device(args.device)
    batch, size = args.step_batch_size, args.size[0]
    f = patch_distribution(random_anatomy_masks(batch, args.img_size).to(device), PATCH)
    gen = torch.Generator().manual_seed(0)  # the masking draws on a CPU generator on every device
    t_mask = time_back_to_back(lambda: guided_mask(f, args.gamma, args.beta, gen), args.repeats, device)
    t_loop = time_back_to_back(lambda: loop_reference_mask(f, args.gamma, args.beta), args.repeats, device)
    step = build_step(size, "guided", args, device)
    for _ in range(args.warmup):
        step()
    t_step = time_back_to_back(step, args.step_repeats, device)
    share = (f > 0).float().mean().item()
    print(f"== masking share of a pre-training step on {device.type}: ViT-{size}, batch {batch}, N = {f.shape[1]}, "
          f"gamma {args.gamma}, beta {args.beta} ({share:.0%} of patches contain vessels)")
    print(f"     guided_mask                : {t_mask * 1e3:8.3f} ms   {t_mask / t_step:7.3%} of the step")
    print(f"     one step (guided arm)      : {t_step * 1e3:8.1f} ms")
    print(f"     per-sample loop (original) : {t_loop * 1e3:8.3f} ms   {t_loop / t_step:7.3%} of the step")


def time_back_to_back(fn: Callable[[], object], repeats: int, device: torch.device) -> float:
    """Median wall time of `fn` called `repeats` times in a row after one warm-up call."""
    fn()
    return statistics.median(_timed_call(fn, device) for _ in range(repeats))


ARMS = ("mae", "guided", "vasomim")


def build_step(size: str, arm: str, args: argparse.Namespace, device: torch.device) -> Callable[[], None]:
    """One training step of `arm` for a ViT `size`, as the trainer runs it, on fixed random inputs.

    Arms: `mae` (beta 0, no consistency loss), `guided` (beta = args.beta, no consistency loss),
    `vasomim` (beta and the consistency loss through a randomly initialised UNeXt-S: the cost does
    not depend on its weights). Everything else is the paper recipe: decoder 512-d x 8, AdamW.
    """
    from vasomim.engines.common import param_groups_weight_decay
    from vasomim.engines.pretrain import (ConsistencyConfig, DataConfig, MaskingConfig, ModelConfig,
                                          PretrainConfig, build_model, mask_and_forward)
    from vasomim.models.unext import UNeXt, frozen_for_inference

    beta = 0.0 if arm == "mae" else args.beta
    cfg = PretrainConfig(
        data=DataConfig(img_size=args.img_size),
        model=ModelConfig(size=size),
        masking=MaskingConfig(mask_ratio=args.gamma, beta_0=beta, beta_E=beta),
        consistency=ConsistencyConfig(weight=1.0 if arm == "vasomim" else 0.0),
        amp=args.amp,
    )
    torch.manual_seed(0)
    model = build_model(cfg).to(device)
    segmentor = frozen_for_inference(UNeXt().to(device)) if arm == "vasomim" else None
    optimizer = torch.optim.AdamW(param_groups_weight_decay(model, 0.05), lr=1e-4, betas=(0.9, 0.95))
    batch = args.step_batch_size
    gen = torch.Generator(device).manual_seed(0)
    imgs = torch.randn(batch, 1, args.img_size, args.img_size, generator=gen, device=device)
    anatomy = random_anatomy_masks(batch, args.img_size).to(device)
    mask_gen = torch.Generator().manual_seed(1)  # the trainer's masks draw on a CPU generator
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda" and args.amp == "bf16")

    def step() -> None:
        with autocast:
            out = mask_and_forward(model, segmentor, imgs, anatomy, cfg, beta, mask_gen)
        out["loss"].backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def _proc_status_mib(field: str) -> float:
    """A memory field of /proc/self/status (VmRSS, VmHWM), in MiB."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise KeyError(field)


def _peak_rss_growth(size: str, arm: str, args: argparse.Namespace, steps: int, queue) -> None:
    """In a fresh process: how far the resident set peaks above its level before the arm is built.

    The peak (VmHWM) is reset first (Linux: write 5 to /proc/self/clear_refs), so the import-time
    peak does not hide a smaller one.
    """
    # imports before the baseline
    import vasomim.engines.common  # noqa: F401
    import vasomim.engines.pretrain  # noqa: F401
    import vasomim.losses  # noqa: F401
    import vasomim.models.mae  # noqa: F401
    import vasomim.models.unext  # noqa: F401

    if args.threads:
        torch.set_num_threads(args.threads)
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")
    base = _proc_status_mib("VmRSS")
    step = build_step(size, arm, args, torch.device("cpu"))
    for _ in range(steps):
        step()
    queue.put(_proc_status_mib("VmHWM") - base)


def peak_memory_mib(size: str, arm: str, args: argparse.Namespace, device: torch.device, steps: int = 2) -> float:
    """Peak memory of `steps` training steps of an arm, in MiB.

    CUDA: torch.cuda.max_memory_allocated for the arm alone (model, optimizer state, activations).
    CPU (Linux): the peak resident set of a fresh process above its level after the imports, so
    that arms and sizes do not see each other's peaks or reuse each other's freed pages.
    """
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        step = build_step(size, arm, args, device)
        for _ in range(steps):
            step()
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device) - before
        del step
        return peak / 2**20
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_peak_rss_growth, args=(size, arm, args, steps, queue))
    proc.start()
    value = queue.get()
    proc.join()
    return value


def bench_step(args: argparse.Namespace) -> None:
    """Section 2: VasoMIM vs MAE step time, images/s and peak memory per ViT size."""
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # as the trainer
    batch = args.step_batch_size
    precision = "bf16 autocast" if device.type == "cuda" and args.amp == "bf16" else "fp32"
    print(f"\n== pre-training step on {device.type}: batch {batch}, {args.img_size} px, gamma {args.gamma}, "
          f"beta {args.beta}, decoder 512 x 8, {precision}; "
          f"{args.warmup} warm-up + {args.step_repeats} timed steps per arm, interleaved")
    for size in args.size:
        steps = {arm: build_step(size, arm, args, device) for arm in ARMS}
        for _ in range(args.warmup - 1):  # time_interleaved runs one more
            for step in steps.values():
                step()
        t = time_interleaved(steps, args.step_repeats, device)
        del steps
        memory = {arm: peak_memory_mib(size, arm, args, device) for arm in ARMS}
        extra = t["vasomim"] / t["mae"] - 1
        print(f"   ViT-{size}:")
        print(f"     {'arm':<28}{'ms/step':>10}{'img/s':>10}{'peak MiB':>11}")
        labels = {"mae": "MAE (random masking)", "guided": f"+ guided masking (beta {args.beta})",
                  "vasomim": "+ consistency loss = VasoMIM"}
        for arm in ARMS:
            print(f"     {labels[arm]:<28}{t[arm] * 1e3:>10.1f}{batch / t[arm]:>10.1f}{memory[arm]:>11.0f}")
        print(f"     VasoMIM extra cost: {extra:+.1%} of an MAE step (masking {t['guided'] / t['mae'] - 1:+.1%}, "
              f"consistency {(t['vasomim'] - t['guided']) / t['mae']:+.1%}); target <= +25%: "
              f"{'met' if extra <= 0.25 else 'NOT met'}")


# -- section 3: CPU precision, layout, compile and threads

CPU_CONFIGS = {  # img_size -> (decoder_embed_dim, decoder_depth, decoder_num_heads)
    128: (128, 2, 4),   # the CPU study's pre-training (examples/study_cimat.yaml, pretrain/tiny_cpu)
    224: (512, 8, 16),  # the paper's decoder, as section 2
}
CPU_TOKENS = ("fp32", "bf16", "segbf16", "contig", "fused", "compile")


class Bf16Segmentor(torch.nn.Module):
    """Runs a frozen segmentor under bf16 autocast and returns float32 logits."""

    def __init__(self, segmentor: torch.nn.Module) -> None:
        super().__init__()
        self.segmentor = segmentor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return self.segmentor(x).float()


def build_cpu_step(arm: str, variant: str, img_size: int, threads: int, args: argparse.Namespace) -> dict:
    """The trainer's CPU step for ViT-Tiny under `variant`, and its first call as a correctness check.

    The first call (forward, loss, backward, no optimizer step; it compiles under `compile`) runs
    on the initial weights (seed 0, the same for every variant) with the same batch and masks.

    Returns:
        `step` (a callable), `first_s` (seconds of the first call), `rec`, `cons` (its losses) and
        `grad` (the MAE's flattened gradient).
    """
    from vasomim.engines.common import param_groups_weight_decay
    from vasomim.engines.pretrain import (ConsistencyConfig, DataConfig, MaskingConfig, ModelConfig,
                                          PretrainConfig, build_model, mask_and_forward)
    from vasomim.models.unext import UNeXt, frozen_for_inference

    tokens = set(variant.split("+"))
    unknown = tokens - set(CPU_TOKENS)
    if unknown:
        raise SystemExit(f"--variants: unknown token(s) {sorted(unknown)}; use {', '.join(CPU_TOKENS)}")
    torch.set_num_threads(threads)
    dim, depth, heads = CPU_CONFIGS[img_size]
    beta = 0.0 if arm == "mae" else args.beta
    cfg = PretrainConfig(
        data=DataConfig(img_size=img_size),
        model=ModelConfig(size="tiny", decoder_embed_dim=dim, decoder_depth=depth, decoder_num_heads=heads),
        masking=MaskingConfig(mask_ratio=args.gamma, beta_0=beta, beta_E=beta),
        consistency=ConsistencyConfig(weight=1.0 if arm == "vasomim" else 0.0),
        amp="bf16" if "bf16" in tokens else "none",
    )
    torch.manual_seed(0)
    model = build_model(cfg)
    segmentor = frozen_for_inference(UNeXt()) if arm == "vasomim" else None
    if segmentor is not None and "contig" in tokens:
        segmentor = segmentor.to(memory_format=torch.contiguous_format)
    if segmentor is not None and "segbf16" in tokens:
        segmentor = Bf16Segmentor(segmentor)
    optimizer = torch.optim.AdamW(param_groups_weight_decay(model, 0.05), lr=1e-4, betas=(0.9, 0.95),
                                  fused=True if "fused" in tokens else None)
    run_model, run_segmentor = model, segmentor
    if "compile" in tokens:
        run_model = torch.compile(model)
        run_segmentor = torch.compile(segmentor) if segmentor is not None else None
    batch = args.step_batch_size
    data_gen = torch.Generator().manual_seed(0)
    imgs = torch.randn(batch, 1, img_size, img_size, generator=data_gen)
    anatomy = random_anatomy_masks(batch, img_size)
    mask_gen = torch.Generator().manual_seed(1)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled="bf16" in tokens)

    def forward_backward() -> dict[str, torch.Tensor]:
        with autocast:
            out = mask_and_forward(run_model, run_segmentor, imgs, anatomy, cfg, beta, mask_gen)
        out["loss"].backward()
        return out

    start = time.perf_counter()
    first = forward_backward()
    first_s = time.perf_counter() - start
    grad = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
    optimizer.zero_grad(set_to_none=True)

    def step() -> None:
        torch.set_num_threads(threads)
        forward_backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return {"step": step, "first_s": first_s, "rec": first["rec"].item(), "cons": first["cons"].item(),
            "grad": grad}


def time_interleaved_cpu(fns: dict[str, Callable[[], object]], repeats: int) -> tuple[dict, dict]:
    """Medians of the wall time and of the process CPU time of each function, calls interleaved.

    On a shared machine the CPU time of a 1-thread call counts the work, not the time the call
    waited for a core; with more threads it also counts their spinning, so read it at 1 thread.
    """
    wall: dict[str, list[float]] = {name: [] for name in fns}
    cpu: dict[str, list[float]] = {name: [] for name in fns}
    for fn in fns.values():
        fn()
    for _ in range(repeats):
        for name, fn in fns.items():
            w0, c0 = time.perf_counter(), time.process_time()
            fn()
            wall[name].append(time.perf_counter() - w0)
            cpu[name].append(time.process_time() - c0)
    return ({k: statistics.median(v) for k, v in wall.items()}, {k: statistics.median(v) for k, v in cpu.items()})


def _rel(a: float, b: float) -> float:
    return abs(a - b) / max(abs(b), 1e-12)


def bench_cpu(args: argparse.Namespace) -> None:
    """Section 3: img/s of the CPU variants against fp32 at the same thread count, interleaved."""
    threads = args.cpu_threads or [torch.get_num_threads()]
    variants = args.variants
    if "fp32" not in variants:
        variants = ["fp32", *variants]
    batch = args.step_batch_size
    for img_size in args.cpu_img_size:
        dim, depth, _ = CPU_CONFIGS[img_size]
        print(f"\n== CPU step variants, ViT-Tiny, {img_size} px, decoder {dim} x {depth}, batch {batch}, "
              f"gamma {args.gamma}, beta {args.beta} (VasoMIM arm); {args.warmup} warm-up + {args.step_repeats} "
              f"timed steps per variant, interleaved; threads {threads}")
        for arm in args.cpu_arms:
            built = {}
            for n in threads:
                for variant in variants:
                    if arm == "mae" and {"contig", "segbf16"} & set(variant.split("+")):
                        continue  # segmentor settings: the MAE arm has no segmentor
                    built[f"{variant}@{n}"] = build_cpu_step(arm, variant, img_size, n, args)
            for _ in range(args.warmup - 1):  # time_interleaved runs one more
                for b in built.values():
                    b["step"]()
            wall, cpu = time_interleaved_cpu({k: b["step"] for k, b in built.items()}, args.step_repeats)
            ref_key = f"fp32@{threads[0]}"  # correctness and the last ratio against it
            ref = built[ref_key]
            print(f"   {arm}:")
            print(f"     {'variant@threads':<24}{'ms/step':>8}{'img/s':>7}{'x fp32':>7}{'cpu ms':>8}{'x fp32':>7}"
                  f"{'x fp32@' + str(threads[0]):>9}{'1st call s':>11}{'rec rel':>9}{'cons rel':>9}{'grad cos':>10}")
            for key, b in built.items():
                n = key.rsplit("@", 1)[1]
                cos = torch.nn.functional.cosine_similarity(b["grad"].double(), ref["grad"].double(), dim=0).item()
                cons = f"{_rel(b['cons'], ref['cons']):9.1e}" if arm == "vasomim" else f"{'-':>9}"
                print(f"     {key:<24}{wall[key] * 1e3:>8.0f}{batch / wall[key]:>7.1f}{wall[f'fp32@{n}'] / wall[key]:>7.2f}"
                      f"{cpu[key] * 1e3:>8.0f}{cpu[f'fp32@{n}'] / cpu[key]:>7.2f}{wall[ref_key] / wall[key]:>9.2f}"
                      f"{b['first_s']:>11.1f}{_rel(b['rec'], ref['rec']):>9.1e}{cons}{cos:>10.6f}")
            del built


# -- section 5: the CNN U-Net's pre-training step


def _reference_dense_batch_norm(layer: torch.nn.BatchNorm2d, x: torch.Tensor) -> torch.Tensor:
    """Training-mode BatchNorm through the hand-written statistics (what every dense decoder norm
    of the masked U-Net ran before section 5): two-pass moments, then the running-stat update."""
    from vasomim.models.unet_mim import _moments

    c = x.shape[1]
    mean, var, count = _moments(x, torch.ones_like(x[:, :1]), (0, 2, 3), sync=False)
    scale = torch.rsqrt(var + layer.eps) * layer.weight.view(1, c, 1, 1)
    with torch.no_grad():
        layer.num_batches_tracked.add_(1)
        n = count.reshape(-1)[0]
        layer.running_mean.lerp_(mean.reshape(c), layer.momentum)
        layer.running_var.lerp_(var.reshape(c) * n / (n - 1).clamp_min(1), layer.momentum)
    return x * scale + (layer.bias.view(1, c, 1, 1) - mean * scale)


def build_unet_step(variant: str, args: argparse.Namespace) -> dict:
    """The trainer's U-Net pre-training step (VasoMIM arm with a random UNeXt-S) as `variant` runs it:
    ``now`` (channels-last, the engine's norms), ``contig`` (the engine's norms in the default layout) or
    ``reference`` (the default layout, hand-written norms)."""
    from vasomim.engines.pretrain import (ConsistencyConfig, DataConfig, MaskingConfig, ModelConfig,
                                          PretrainConfig, build_model, build_optimizer, mask_and_forward)
    from vasomim.models.unet_mim import MaskedUNet
    from vasomim.models.unext import UNeXt, frozen_for_inference

    size, batch = args.unet_img_size, args.unet_batch_size
    cfg = PretrainConfig(
        data=DataConfig(img_size=size),
        model=ModelConfig(arch="unet", base_channels=16, levels=4, norm="batch", patch_size=16),
        masking=MaskingConfig(mask_ratio=args.gamma, beta_0=args.beta, beta_E=args.beta),
        consistency=ConsistencyConfig(weight=1.0))
    torch.manual_seed(0)
    model = build_model(cfg)
    assert isinstance(model, MaskedUNet)
    layout = torch.channels_last if variant == "now" else torch.contiguous_format
    model = model.to(memory_format=layout)
    if variant == "reference":
        def block(blk, x, visible, _orig=model._block):
            if visible is not None:
                return _orig(blk, x, visible)
            for layer in blk:
                x = _reference_dense_batch_norm(layer, x) if isinstance(layer, torch.nn.BatchNorm2d) else layer(x)
            return x
        model._block = block
    segmentor = frozen_for_inference(UNeXt())
    optimizer = build_optimizer(model, cfg, 1e-4, torch.device("cpu"))
    gen = torch.Generator().manual_seed(0)
    imgs = torch.randn(batch, 1, size, size, generator=gen).contiguous(memory_format=layout)
    anatomy = random_anatomy_masks(batch, size)
    mask_gen = torch.Generator().manual_seed(1)

    def forward_backward() -> dict[str, torch.Tensor]:
        out = mask_and_forward(model, segmentor, imgs, anatomy, cfg, args.beta, mask_gen)
        out["loss"].backward()
        return out

    first = forward_backward()
    grad = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
    optimizer.zero_grad(set_to_none=True)

    def step() -> None:
        forward_backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return {"step": step, "rec": first["rec"].item(), "cons": first["cons"].item(), "grad": grad}


def bench_unet(args: argparse.Namespace) -> None:
    """Section 5: the masked U-Net's pre-training step, now against the reference it replaced."""
    size, batch = args.unet_img_size, args.unet_batch_size
    print(f"\n== CNN U-Net pre-training step (16 x 4, batch norm), {size} px, batch {batch}, gamma {args.gamma}, "
          f"beta {args.beta}, consistency on; {args.warmup} warm-up + {args.step_repeats} timed steps per variant, "
          f"interleaved; {torch.get_num_threads()} thread(s); CPU capability {torch.backends.cpu.get_cpu_capability()}")
    built = {v: build_unet_step(v, args) for v in ("reference", "now", "contig")}
    for _ in range(args.warmup - 1):
        for b in built.values():
            b["step"]()
    wall, cpu = time_interleaved_cpu({k: b["step"] for k, b in built.items()}, args.step_repeats)
    ref = built["reference"]
    print(f"     {'variant':<12}{'ms/step':>9}{'img/s':>7}{'x ref':>7}{'cpu ms':>8}{'x ref':>7}{'rec rel':>9}"
          f"{'cons rel':>9}{'grad cos':>10}")
    for key, b in built.items():
        cos = torch.nn.functional.cosine_similarity(b["grad"].double(), ref["grad"].double(), dim=0).item()
        print(f"     {key:<12}{wall[key] * 1e3:>9.0f}{batch / wall[key]:>7.1f}{wall['reference'] / wall[key]:>7.2f}"
              f"{cpu[key] * 1e3:>8.0f}{cpu['reference'] / cpu[key]:>7.2f}{_rel(b['rec'], ref['rec']):>9.1e}"
              f"{_rel(b['cons'], ref['cons']):>9.1e}{cos:>10.6f}")


def bench_finetune_cpu(args: argparse.Namespace) -> None:
    """Section 4: a fine-tuning step (forward, Dice + BCE, backward, AdamW) on CPU, by precision and layout.

    The fine-tuning engine's own network and loss, for the ViT U-Net (ViT-Tiny) and the CNN U-Net, in
    three variants: ``fp32`` and ``bf16`` in channels-last (model and input), ``contig`` in fp32 and
    the default (contiguous) layout. The bf16 variant runs the forward under
    torch.autocast("cpu", bfloat16) and the loss on float32 logits, as the engine does on CUDA.
    Every ratio is against ``fp32`` (channels-last) at the same thread count.
    """
    from vasomim.engines.finetune import FinetuneConfig, dice_bce_loss, network_config
    from vasomim.inference import build_network

    threads = args.cpu_threads or [torch.get_num_threads()]
    size, batch = args.ft_img_size, args.ft_batch_size
    print(f"\n== CPU fine-tuning step, {size} px, batch {batch}; {args.warmup} warm-up + {args.step_repeats} "
          f"timed steps per variant, interleaved; threads {threads}; CPU capability "
          f"{torch.backends.cpu.get_cpu_capability()}")
    gen = torch.Generator().manual_seed(0)
    x_contig = torch.randn(batch, 1, size, size, generator=gen)
    x_cl = x_contig.contiguous(memory_format=torch.channels_last)
    y = (torch.rand(batch, 1, size, size, generator=gen) > 0.9).float()
    variants = {"fp32": (False, torch.channels_last), "bf16": (True, torch.channels_last),
                "contig": (False, torch.contiguous_format)}
    variants = {k: v for k, v in variants.items() if k in args.ft_variants or k == "fp32"}
    for arch in ("vit_unet", "unet"):
        cfg = FinetuneConfig(data="unused", arch=arch, size="tiny", img_size=size)
        fns, first = {}, {}
        for n in threads:
            for name, (amp, layout) in variants.items():
                torch.manual_seed(0)
                model = build_network(network_config(cfg)).to(memory_format=layout)
                opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
                x = x_cl if layout is torch.channels_last else x_contig

                def step(model=model, opt=opt, amp=amp, n=n, x=x) -> float:
                    torch.set_num_threads(n)
                    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
                        logits = model(x)
                    loss = dice_bce_loss(logits.float(), y)
                    loss.backward()
                    opt.step()
                    opt.zero_grad(set_to_none=True)
                    return loss.item()

                key = f"{name}@{n}"
                first[key] = step()  # on the initial weights
                fns[key] = step
        for _ in range(args.warmup - 1):
            for fn in fns.values():
                fn()
        t = time_interleaved(fns, args.step_repeats, torch.device("cpu"))
        print(f"   {arch}:")
        for key in fns:
            n = key.rsplit("@", 1)[1]
            print(f"     {key:<10}{t[key] * 1e3:>9.0f} ms{batch / t[key]:>8.1f} img/s   x fp32@{n} "
                  f"{t[f'fp32@{n}'] / t[key]:5.2f}   first loss rel. to fp32 "
                  f"{_rel(first[key], first[f'fp32@{n}']):.1e}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--gamma", type=float, default=0.5, help="mask ratio")
    parser.add_argument("--beta", type=float, default=0.5, help="share of guided patches")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--sections", nargs="+", choices=("masking", "step", "cpu", "finetune", "unet"), default=["masking", "step"])
    parser.add_argument("--size", nargs="+", default=None,
                        help="ViT sizes of section 2 (default: tiny small on CPU, base on CUDA)")
    parser.add_argument("--step-batch-size", type=int, default=None,
                        help="batch of section 2 (default: 16 on CPU, --batch-size on CUDA)")
    parser.add_argument("--amp", choices=("bf16", "none"), default="bf16", help="autocast on CUDA")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per arm (section 2)")
    parser.add_argument("--step-repeats", type=int, default=5, help="timed steps per arm (sections 2, 3)")
    parser.add_argument("--variants", nargs="+", default=["fp32", "bf16", "segbf16", "contig", "fused"],
                        help=f"section 3: '+'-joined tokens of {', '.join(CPU_TOKENS)} (fp32 is always run)")
    parser.add_argument("--cpu-threads", nargs="+", type=int, default=None,
                        help="section 3: thread counts, interleaved (default: the current count)")
    parser.add_argument("--cpu-img-size", nargs="+", type=int, choices=sorted(CPU_CONFIGS), default=[128, 224],
                        help="section 3: configurations (128: decoder 128 x 2; 224: decoder 512 x 8)")
    parser.add_argument("--cpu-arms", nargs="+", choices=("mae", "vasomim"), default=["mae", "vasomim"],
                        help="section 3: arms")
    parser.add_argument("--ft-img-size", type=int, default=128, help="section 4: fine-tuning window")
    parser.add_argument("--ft-variants", nargs="+", choices=("fp32", "bf16", "contig"), default=["fp32", "bf16", "contig"],
                        help="section 4: variants (fp32, the reference, always runs; bf16 is ~10x slower without AVX512-BF16)")
    parser.add_argument("--ft-batch-size", type=int, default=4, help="section 4: fine-tuning batch")
    parser.add_argument("--unet-img-size", type=int, default=128, help="section 5: pre-training size")
    parser.add_argument("--unet-batch-size", type=int, default=32, help="section 5: pre-training batch")
    args = parser.parse_args()
    on_cuda = args.device.startswith("cuda")
    args.size = args.size or (["base"] if on_cuda else ["tiny", "small"])
    args.step_batch_size = args.step_batch_size or (args.batch_size if on_cuda else 16)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads"
          + (f", {torch.cuda.get_device_name(args.device)}" if on_cuda else ""))
    if "masking" in args.sections:
        bench_masking(args)
    if "step" in args.sections:
        bench_step(args)
    if "cpu" in args.sections:
        bench_cpu(args)
    if "finetune" in args.sections:
        bench_finetune_cpu(args)
    if "unet" in args.sections:
        bench_unet(args)


if __name__ == "__main__":
    main()
