"""Synthetic vs real angiograms: intensity, vessel width, tortuosity and noise spectrum, side by side.

Real frames: the 55 of ``../shared/data`` (15 unlabelled 512x512 + 40 CIMAT 300x300) and, with
``--arcade N``, N evenly spaced ARCADE frames of ``../shared/arcade/unlabelled-256``.  Every real
frame is brought to 256x256 with a box (area) filter, the filter the ARCADE copy was made with;
synthetic frames are generated at 256.  Vessel masks come from the ``fov`` anatomy recipe on every
frame, real and synthetic alike (border 10 px at 256, the study's 20 px at 512 scaled), so the
segmentation's own bias is the same on both sides; for the synthetic sets the same statistics on
their exact masks are printed as well.  Statistics and distances: ``vasomim.data.realism``.

Columns: ``old`` = the generator's classic settings (``SynthConfig()``, what ``vasomim synth`` and
the demo make), ``new`` = ``SynthConfig.realistic()`` (the ``synthetic`` source's default).  The
distance rows compare each column with the 55 real frames pooled; the ``CIMAT vs XCA`` column gives
the distance between the two real subsets, a scale for what "as close as two real datasets" means.

    python benchmarks/synth_realism.py                    # 100 synthetic frames per setting
    python benchmarks/synth_realism.py --count 200 --arcade 200 --json realism.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from PIL import Image

from vasomim.anatomy import extract_anatomy
from vasomim.data import realism
from vasomim.data.io import IMAGE_SUFFIXES, read_image
from vasomim.data.synthetic import SynthConfig, synthesize

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT / ".." / "shared"
SIZE = 256
BORDER = 10  # the study's 20 px at 512, scaled to 256


def _to_256(x: np.ndarray) -> np.ndarray:
    """A [0, 1] frame as 0-255 float at 256x256 (box filter; no change at 256)."""
    img = Image.fromarray(x.astype(np.float32), mode="F")
    if img.size != (SIZE, SIZE):
        img = img.resize((SIZE, SIZE), Image.BOX)
    return np.asarray(img, dtype=np.float64) * 255.0


def real_frames(folder: Path, every: int = 1, limit: int | None = None) -> list[np.ndarray]:
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)[::every][:limit]
    return [_to_256(read_image(p)) for p in files]


def stats_of(frames: list[np.ndarray], masks: list[np.ndarray] | None = None) -> dict:
    """Pooled statistics with fov anatomy masks (or the given masks)."""
    per = []
    for k, img in enumerate(frames):
        mask = masks[k] if masks is not None else extract_anatomy(img, recipe="fov", border=BORDER)
        per.append(realism.frame_stats(img, mask))
    return realism.pool(per)


def synth_set(config: SynthConfig, count: int, seed0: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    pairs = [synthesize(seed0 + i, SIZE, config) for i in range(count)]
    return [p[0].astype(np.float64) for p in pairs], [p[1] for p in pairs]


def speed(config: SynthConfig, size: int, n: int) -> float:
    """Median milliseconds per image over ``n`` seeds (after one warm-up)."""
    synthesize(10_000, size, config)
    times = []
    for i in range(n):
        t0 = time.perf_counter()
        synthesize(20_000 + i, size, config)
        times.append(time.perf_counter() - t0)
    return 1000.0 * float(np.median(times))


def _fmt(v: float, digits: int = 3) -> str:
    return "n/a" if v != v else f"{v:.{digits}f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--count", type=int, default=100, help="synthetic frames per setting")
    ap.add_argument("--seed", type=int, default=0, help="seed of the first synthetic frame")
    ap.add_argument("--arcade", type=int, default=0, help="also N ARCADE frames (evenly spaced), 0: none")
    ap.add_argument("--speed-n", type=int, default=20, help="images timed per size and setting")
    ap.add_argument("--json", type=Path, help="write every figure here")
    args = ap.parse_args()

    data = SHARED / "data"
    if not data.is_dir():
        raise SystemExit(f"{data}: real frames not found")
    t0 = time.perf_counter()
    xca = real_frames(data / "xca-unlabeled")
    cimat = real_frames(data / "cimat-coronary" / "images")
    sets = {"real (55)": stats_of(xca + cimat), "CIMAT (40)": stats_of(cimat), "XCA (15)": stats_of(xca)}
    arcade_dir = SHARED / "arcade" / "unlabelled-256"
    if args.arcade and arcade_dir.is_dir():
        n_all = len([p for p in arcade_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES])
        sets[f"ARCADE ({args.arcade})"] = stats_of(real_frames(arcade_dir, max(1, n_all // args.arcade), args.arcade))
    configs = {"old": SynthConfig(), "new": SynthConfig.realistic()}
    exact = {}
    for name, cfg in configs.items():
        frames, masks = synth_set(cfg, args.count, args.seed)
        sets[f"{name} synth"] = stats_of(frames)
        exact[name] = stats_of(frames, masks)
    print(f"# statistics computed in {time.perf_counter() - t0:.0f} s")

    ref = sets["real (55)"]
    cols = list(sets)
    desc = {c: realism.describe(sets[c]) for c in cols}
    dist = {c: realism.compare(sets[c], ref) for c in cols}
    dist["CIMAT vs XCA"] = realism.compare(sets["CIMAT (40)"], sets["XCA (15)"])
    rows = [
        ("vessel fraction (fov mask)", lambda c: _fmt(desc[c]["vessel_fraction"])),
        ("width median / p90 (px)", lambda c: f"{desc[c]['width']['median']:.1f} / {desc[c]['width']['p90']:.1f}"),
        ("tortuosity median / p90", lambda c: f"{desc[c]['tortuosity']['median']:.3f} / {desc[c]['tortuosity']['p90']:.3f}"),
        ("branches (chord >= 10 px) / frame", lambda c: f"{desc[c]['tortuosity']['n'] / len(sets[c]['vessel_fraction']):.1f}"),
        ("high-pass residual std", lambda c: _fmt(desc[c]["residual_std"], 4)),
        ("PSD near Nyquist / mid band", lambda c: _fmt(desc[c]["psd_hi_mid"], 2)),
    ]
    dist_rows = [
        ("intensity W1 to real (55)", "intensity_w1", 4),
        ("intensity hist. intersection", "intensity_hi", 3),
        ("width W1 to real (px)", "width_w1", 2),
        ("tortuosity W1 to real", "tortuosity_w1", 3),
        ("noise PSD RMS diff. (dB)", "psd_db_rms", 2),
    ]
    header = ["statistic", *cols, "CIMAT vs XCA"]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for label, fn in rows:
        print("| " + " | ".join([label, *[fn(c) for c in cols], ""]) + " |")
    for label, key, digits in dist_rows:
        cells = ["" if c == "real (55)" else _fmt(dist[c][key], digits) for c in cols]
        print("| " + " | ".join([label, *cells, _fmt(dist["CIMAT vs XCA"][key], digits)]) + " |")

    print("\n# synthetic sets, statistics on their exact masks")
    print("| setting | vessel fraction | width median / p90 | tortuosity median / p90 | width W1 | tortuosity W1 |")
    print("|---|---|---|---|---|---|")
    for name, pooled in exact.items():
        d, c = realism.describe(pooled), realism.compare(pooled, ref)
        print(f"| {name} | {d['vessel_fraction']:.3f} | {d['width']['median']:.1f} / {d['width']['p90']:.1f} | "
              f"{d['tortuosity']['median']:.3f} / {d['tortuosity']['p90']:.3f} | {c['width_w1']:.2f} | "
              f"{c['tortuosity_w1']:.3f} |")

    print("\n# generator speed (median ms/image, one process)")
    timing = {name: {size: speed(cfg, size, args.speed_n) for size in (256, 512)} for name, cfg in configs.items()}
    print("| setting | 256 px | 512 px |\n|---|---|---|")
    for name, t in timing.items():
        print(f"| {name} | {t[256]:.1f} | {t[512]:.1f} |")

    if args.json:
        out = {"describe": desc, "distance_to_real55": dist, "exact_masks": {
            n: {"describe": realism.describe(p), "distance": realism.compare(p, ref)} for n, p in exact.items()},
            "speed_ms": timing, "count": args.count, "arcade": args.arcade}
        args.json.write_text(json.dumps(out, indent=2, default=float))


if __name__ == "__main__":
    main()
