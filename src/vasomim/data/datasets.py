"""torch Datasets over source items: one sample is read, transformed and returned per index.

Nothing is loaded up front: a dataset holds the list of :class:`~vasomim.data.sources.Item` (a few
hundred bytes each) and reads the files of one sample in ``__getitem__``, opening and closing them
there, so it works the same in the main process and in DataLoader workers (no shared file handles).

Samples are dicts that the default ``collate_fn`` batches:

* :class:`SegmentationDataset`: ``image`` FloatTensor ``(C, H, W)``, ``mask`` FloatTensor
  ``(1, H, W)`` of 0/1 (only when the item has a mask), ``index`` int, ``id`` str.
* :class:`PretrainDataset`: ``image``, ``anatomy`` FloatTensor ``(1, H, W)`` of 0/1 (the vessel
  mask that drives anatomy-guided masking, cropped and flipped with the image), ``index``, ``id``.

Bad files at training time raise :class:`~vasomim.data.io.ImageReadError` (from a worker it
reaches the main process as a DataLoader error naming the file).  Training data is meant to be
checked first with ``vasomim data check``, which lists every failing file at once.

Items may be generated rather than read (:class:`~vasomim.data.sources.synthetic.SyntheticItem`,
deterministic per seed and index); a mixed source (``share`` in a data spec,
:class:`~vasomim.data.sources.synthetic.MixSource`) lists some items several times, so that every
epoch draws each source at its share.

Randomness: each sample draws its transform generator from :func:`sample_rng`, seeded from
torch's generator of the current process.  DataLoader workers have that generator seeded from the
loader's base seed and the worker id, so a run is reproducible given ``torch.manual_seed`` (or the
loader's ``generator``) and the number of workers, and epochs differ from each other.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from vasomim.data.sources import Item

__all__ = ["SegmentationDataset", "PretrainDataset", "sample_rng", "to_tensors"]

# (image, mask | None, rng) -> (image tensor, mask tensor | None)
Transform = Callable[..., tuple]


def sample_rng(index: int) -> np.random.Generator:
    """A numpy generator for sample ``index``, drawn from the current process's torch generator.

    Args:
        index: The sample index (mixed into the seed so that neighbouring samples never share a
            stream).
    """
    seed = int(torch.randint(0, 2**62, (1,)).item())
    return np.random.default_rng([seed, index])


def to_tensors(
    image: np.ndarray, mask: np.ndarray | None = None, rng: np.random.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The identity transform: image ``(1, H, W)`` in ``[0, 1]``, mask ``(1, H, W)`` of 0/1."""
    out_mask = torch.from_numpy(mask[None].astype(np.float32)) if mask is not None else None
    return torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)[None]), out_mask


class _ItemDataset(Dataset):
    def __init__(self, items: Sequence[Item], transform: Transform | None):
        self.items = list(items)
        self.transform = transform if transform is not None else to_tensors

    def __len__(self) -> int:
        return len(self.items)

    def _load(self, index: int) -> tuple[Item, torch.Tensor, torch.Tensor | None]:
        item = self.items[index]
        if hasattr(item, "load_pair"):  # generated items make image and mask in one go
            image, mask = item.load_pair()
        else:
            image = item.load_image()
            mask = item.load_mask(image.shape) if item.has_mask else None
        image_t, mask_t = self.transform(image, mask, sample_rng(index))
        return item, image_t, mask_t


class SegmentationDataset(_ItemDataset):
    """Images with their vessel masks (when the items have them) for fine-tuning and evaluation.

    Args:
        items: Items of a source (or the source itself).
        transform: ``(image, mask | None, rng) -> (tensor, tensor | None)``, e.g.
            :func:`~vasomim.data.transforms.build_transform`; ``None``: :func:`to_tensors`.
        require_masks: Refuse, at construction, items without a mask (supervised training).
    """

    def __init__(self, items: Sequence[Item], transform: Transform | None = None, require_masks: bool = False):
        super().__init__(items, transform)
        if require_masks:
            missing = [it.id for it in self.items if not it.has_mask]
            if missing:
                raise ValueError(f"{len(missing)} of {len(self.items)} items have no mask (first: {missing[0]})")

    def __getitem__(self, index: int) -> dict:
        item, image, mask = self._load(index)
        sample = {"image": image, "index": index, "id": item.id}
        if mask is not None:
            sample["mask"] = mask
        return sample


class PretrainDataset(_ItemDataset):
    """Images with their anatomy masks for VasoMIM pre-training.

    Args:
        items: Items whose mask is the anatomy mask (an
            :class:`~vasomim.data.sources.AnatomySource`).
        transform: As for :class:`SegmentationDataset`; the anatomy mask follows the image's crop
            and flip.
        require_anatomy: Refuse, at construction, items without an anatomy mask.  With ``False``
            such items get an all-zero mask, for which anatomy-guided masking falls back to random
            masking.
    """

    def __init__(self, items: Sequence[Item], transform: Transform | None = None, require_anatomy: bool = True):
        super().__init__(items, transform)
        if require_anatomy:
            missing = [it.id for it in self.items if not it.has_mask]
            if missing:
                raise ValueError(
                    f"{len(missing)} of {len(self.items)} items have no anatomy mask (first: {missing[0]}); "
                    "run `vasomim anatomy` and use the anatomy source, or pass require_anatomy=False"
                )

    def __getitem__(self, index: int) -> dict:
        item, image, anatomy = self._load(index)
        if anatomy is None:
            anatomy = torch.zeros((1, *image.shape[-2:]), dtype=torch.float32)
        return {"image": image, "anatomy": anatomy, "index": index, "id": item.id}
