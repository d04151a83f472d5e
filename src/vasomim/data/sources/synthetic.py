"""Synthetic angiograms as a data source, generated on the fly, and corpora mixed at chosen shares.

``SyntheticSource(count, size=256, seed=0, preset="realistic", config=None)``
    ``count`` items; item ``i`` is :func:`~vasomim.data.synthetic.synthesize` with seed
    ``seed + i`` (the same image and mask that ``vasomim synth --seed SEED`` writes as file ``i``).
    Its mask is the generator's exact vessel mask, so as an anatomy source it needs no
    ``vasomim anatomy`` run.  Nothing is written: the pixels are made when a dataset reads the item
    (any process, any DataLoader worker), and an item is a few hundred bytes.
``MixSource(sources, shares)``
    Several sources in one epoch at chosen shares, by oversampling (see :func:`mix_counts`).
    Built by :func:`~vasomim.data.sources.load_source` when a source in a data spec has a
    ``share``::

        sources:
          - {type: anatomy, images: corpus, anatomy: runs/anatomy, name: real, share: 0.5}
          - {type: synthetic, count: 20000, size: 256, seed: 0, name: synth}

    Here every epoch holds 20,000 synthetic frames and 20,000 real slots: each real frame appears
    ``20000 / n_real`` times (each time with its own random crop and flip).  Items repeat, so a
    mixed source is for pre-training corpora, not for a labelled set that is split into folds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from vasomim.data.sources.base import Item, Source, summary
from vasomim.data.synthetic import MIN_SIZE, SynthConfig, synthesize

__all__ = ["SyntheticItem", "SyntheticSource", "MixSource", "mix_counts", "PRESETS"]

PRESETS = ("realistic", "classic")


@dataclass(frozen=True, slots=True)
class SyntheticItem(Item):
    """An item whose image and mask are generated from ``(seed, size, config)`` when read."""

    seed: int = 0
    size: int = 256
    config: SynthConfig | None = None

    @property
    def has_mask(self) -> bool:
        return True

    def _pair(self) -> tuple[np.ndarray, np.ndarray]:
        return synthesize(self.seed, self.size, self.config)

    def load_image(self) -> np.ndarray:
        """The image as float32 in ``[0, 1]``, as a PNG of it would read."""
        return self._pair()[0].astype(np.float32) / np.float32(255.0)

    def image_shape(self) -> tuple[int, int]:
        return self.size, self.size

    def load_mask(self, expected_shape: tuple[int, int] | None = None) -> np.ndarray:
        """The exact vessel mask (catheter and collimated region excluded)."""
        if expected_shape is not None and tuple(expected_shape) != (self.size, self.size):
            raise ValueError(f"{self.id}: synthetic mask is {self.size}x{self.size}, asked for "
                             f"{expected_shape[1]}x{expected_shape[0]}")
        return self._pair()[1]

    def load_pair(self) -> tuple[np.ndarray, np.ndarray]:
        """Image and mask from one generation (half the work of :meth:`load_image` + :meth:`load_mask`)."""
        image, mask = self._pair()
        return image.astype(np.float32) / np.float32(255.0), mask


def _config(preset: str, overrides: dict | None) -> SynthConfig:
    if preset not in PRESETS:
        raise ValueError(f"synthetic source: unknown preset {preset!r} (known: {', '.join(PRESETS)})")
    values = dict(overrides or {})
    unknown = sorted(set(values) - set(SynthConfig.__dataclass_fields__))
    if unknown:
        raise ValueError(f"synthetic source: unknown config key(s) {', '.join(unknown)}")
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
    return SynthConfig.realistic(**values) if preset == "realistic" else SynthConfig(**values)


class SyntheticSource(Source):
    """``count`` synthetic angiograms with exact vessel masks, generated when read.

    Args:
        count: Number of items.
        size: Image side in pixels (square).
        seed: Item ``i`` uses generator seed ``seed + i``.  Two synthetic sources in one corpus need
            seeds at least ``count`` apart, or they share images.
        preset: ``realistic`` (:meth:`SynthConfig.realistic`, the default) or ``classic``
            (``SynthConfig()``, the demo's images).
        config: :class:`~vasomim.data.synthetic.SynthConfig` fields that replace the preset's.
        name: See :class:`~vasomim.data.sources.Source`.
    """

    kind = "synthetic"

    def __init__(self, count: int, size: int = 256, seed: int = 0, preset: str = "realistic",
                 config: dict | None = None, name: str | None = None):
        super().__init__(name)
        if int(count) < 1:
            raise ValueError(f"synthetic source: count must be >= 1, got {count}")
        if int(size) < MIN_SIZE:
            raise ValueError(f"synthetic source: size must be at least {MIN_SIZE}, got {size}")
        if int(seed) < 0:
            raise ValueError(f"synthetic source: seed must be >= 0, got {seed}")
        self.count, self.size, self.seed = int(count), int(size), int(seed)
        self.preset = preset
        self.config = _config(preset, config)

    def describe(self) -> str:
        return (f"{super().describe()}: {self.count} generated {self.size}x{self.size} frames, "
                f"seeds {self.seed}..{self.seed + self.count - 1}, preset {self.preset}")

    def _list(self) -> tuple[list[Item], list[str]]:
        width = max(6, len(str(self.count - 1)))
        items = [
            SyntheticItem(f"synth_{i:0{width}d}", f"synthetic:seed={self.seed + i}", mask_size=(self.size, self.size),
                          seed=self.seed + i, size=self.size, config=self.config)
            for i in range(self.count)
        ]
        return items, []


# --------------------------------------------------------------------------------------------- mixing


def mix_counts(sizes: Sequence[int], shares: Sequence[float | None]) -> list[int]:
    """Slots per source in one epoch so that source ``k`` fills ``shares[k]`` of it.

    Sources without a share (``None``) form one group that takes the rest (``1 - sum(shares)``),
    split in proportion to their sizes.  The epoch is the smallest in which no group has fewer
    slots than items: ``N = max(group size / group share)``; a group gets ``round(share * N)``
    slots, so the group that sets ``N`` is read once per epoch and the others are oversampled.
    When every source has a share, the shares are weights (normalised to sum 1).

    Args:
        sizes: items per source (each >= 1).
        shares: share per source in (0, 1], or ``None``; when every source has one, positive
            weights.

    Returns:
        Slots per source, each at least its size.
    """
    if len(sizes) != len(shares) or not sizes:
        raise ValueError("mix: one share (or None) per source")
    if any(int(n) < 1 for n in sizes):
        raise ValueError(f"mix: every source needs at least one item, got sizes {list(sizes)}")
    given = [float(s) for s in shares if s is not None]
    free = [k for k, s in enumerate(shares) if s is None]
    if any(not 0 < s < float("inf") for s in given) or (free and any(s > 1 for s in given)):
        raise ValueError(f"mix: shares must be in (0, 1] (any positive weights when every source has one), got {given}")
    if free:
        rest = 1.0 - sum(given)
        if rest <= 1e-9:
            raise ValueError(f"mix: the shares given sum to {sum(given):g}, leaving nothing for the sources without one")
        n_free = sum(int(sizes[k]) for k in free)
        share = [float(s) if s is not None else rest * int(sizes[k]) / n_free for k, s in enumerate(shares)]
    else:
        total = sum(given)
        share = [s / total for s in given]
    epoch = max(int(n) / s for n, s in zip(sizes, share))
    # round, but never below a source's size (float error in n / s * s)
    return [max(int(n), int(round(s * epoch))) for n, s in zip(sizes, share)]


def _spread(items: list[Item], slots: int, rng: np.random.Generator) -> list[Item]:
    """``slots`` items: every item ``slots // n`` times, plus ``slots % n`` distinct ones once more."""
    n = len(items)
    reps, extra = divmod(slots, n)
    chosen = np.sort(rng.choice(n, size=extra, replace=False)) if extra else np.zeros(0, dtype=int)
    return items * reps + [items[i] for i in chosen]


class MixSource(Source):
    """Sources mixed at chosen shares of every epoch (see :func:`mix_counts`).

    Args:
        sources: The sources (their ids must be unique across them: give them names).
        shares: Share of each source, or ``None`` for the sources that take the rest.
        seed: Seed of the choice of which items of an oversampled source appear once more than the
            others (when its slots are not a multiple of its size).
        name: See :class:`~vasomim.data.sources.Source`.
    """

    kind = "mix"

    def __init__(self, sources: Sequence[Source], shares: Sequence[float | None], seed: int = 0,
                 name: str | None = None):
        super().__init__(name)
        if len(sources) != len(shares):
            raise ValueError("mix: one share (or None) per source")
        self.sources, self.shares, self.seed = list(sources), list(shares), seed

    def describe(self) -> str:
        parts = [f"{s.describe()} (share {'rest' if sh is None else f'{sh:g}'})" for s, sh in zip(self.sources, self.shares)]
        return "mix: " + "; ".join(parts)

    def slots(self) -> list[int]:
        """Slots of each source in one epoch."""
        return mix_counts([len(s.items) for s in self.sources], self.shares)

    def _list(self) -> tuple[list[Item], list[str]]:
        problems = [p for s in self.sources for p in s.problems]
        empty = [s.describe() for s in self.sources if not s.items]
        if empty:
            raise ValueError(summary("mix: sources without items", empty))
        ids = [it.id for s in self.sources for it in s.items]
        if len(set(ids)) != len(ids):
            raise ValueError("mix: item ids occur in more than one source (give each source a name)")
        rng = np.random.default_rng(self.seed)
        items: list[Item] = []
        for source, slots in zip(self.sources, self.slots()):
            items += _spread(list(source.items), slots, rng)
        return items, problems


def epoch_shares(items: Sequence[Item], prefixes: Sequence[str]) -> list[float]:
    """Share of ``items`` whose id starts with each prefix (e.g. each source's ``name/``)."""
    n = max(len(items), 1)
    return [sum(it.id.startswith(p) for it in items) / n for p in prefixes]

