"""torch Datasets over sources: sample dicts, DataLoader batching, reproducible seeding, bad files."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from vasomim.data.datasets import PretrainDataset, SegmentationDataset, sample_rng
from vasomim.data.io import ImageReadError
from vasomim.data.sources import AnatomySource, FolderSource
from vasomim.data.transforms import TransformConfig, build_transform


@pytest.fixture
def tree(tmp_path):
    rng = np.random.default_rng(0)
    for i in range(6):
        image = (rng.random((40, 50)) * 255).astype(np.uint8)
        mask = np.zeros((40, 50), np.uint8)
        mask[5 + i : 15 + i, 10:30] = 255
        (tmp_path / "images").mkdir(exist_ok=True)
        (tmp_path / "masks").mkdir(exist_ok=True)
        Image.fromarray(image).save(tmp_path / "images" / f"im{i}.png")
        Image.fromarray(mask).save(tmp_path / "masks" / f"im{i}.png")
    return tmp_path


def test_segmentation_samples_and_batches(tree):
    src = FolderSource(tree / "images", tree / "masks")
    ds = SegmentationDataset(src.items, build_transform(TransformConfig(size=32, channels=3)), require_masks=True)
    s = ds[2]
    assert set(s) == {"image", "mask", "index", "id"} and s["index"] == 2 and s["id"] == "im2.png"
    assert s["image"].shape == (3, 32, 32) and s["mask"].shape == (1, 32, 32) and s["mask"].dtype == torch.float32
    batch = next(iter(DataLoader(ds, batch_size=4)))
    assert batch["image"].shape == (4, 3, 32, 32) and batch["id"] == ["im0.png", "im1.png", "im2.png", "im3.png"]
    # without a transform: the image as read, (1, H, W) in [0, 1]
    raw = SegmentationDataset(src)[0]
    assert raw["image"].shape == (1, 40, 50) and 0 <= raw["image"].min() and raw["image"].max() <= 1
    np.testing.assert_array_equal(raw["mask"][0].numpy(), src[0].load_mask().astype(np.float32))
    unlabelled = SegmentationDataset(FolderSource(tree / "images"))
    assert "mask" not in unlabelled[0]
    with pytest.raises(ValueError, match="6 of 6 items have no mask"):
        SegmentationDataset(FolderSource(tree / "images"), require_masks=True)


def epoch(ds, workers, seed):
    torch.manual_seed(seed)
    loader = DataLoader(ds, batch_size=3, num_workers=workers, shuffle=True)
    return [b for b in loader]


def test_seeding_is_reproducible_and_epochs_differ(tree):
    ds = SegmentationDataset(FolderSource(tree / "images", tree / "masks"), build_transform(TransformConfig(size=24)))
    a, b = epoch(ds, 0, 1), epoch(ds, 0, 1)
    for x, y in zip(a, b):
        assert torch.equal(x["image"], y["image"]) and torch.equal(x["mask"], y["mask"])
    torch.manual_seed(1)
    loader = DataLoader(ds, batch_size=6, num_workers=0)
    e1, e2 = next(iter(loader)), next(iter(loader))
    assert not torch.equal(e1["image"], e2["image"])  # a new epoch draws new crops
    w1, w2 = epoch(ds, 2, 3), epoch(ds, 2, 3)
    for x, y in zip(w1, w2):
        assert torch.equal(x["image"], y["image"]) and x["id"] == y["id"]
    assert pickle.loads(pickle.dumps(ds))[0]["image"].shape == (1, 24, 24)  # spawn-safe


def test_sample_rng_follows_torch_seed():
    torch.manual_seed(0)
    a = sample_rng(4).random(3)
    torch.manual_seed(0)
    np.testing.assert_array_equal(a, sample_rng(4).random(3))
    assert not np.array_equal(a, sample_rng(4).random(3))


def test_pretrain_dataset_crops_anatomy_with_the_image(tree):
    manifest = [
        {"file": f"im{i}.png", "status": "ok", "mask": f"im{i}.png", "vessel_fraction": 0.08, "threshold": 1.0}
        for i in range(6)
    ]
    (tree / "masks" / "manifest.jsonl").write_text("\n".join(json.dumps(r) for r in manifest))
    src = AnatomySource(tree / "images", tree / "masks")
    cfg = TransformConfig(size=40, scale=(1.0, 1.0), ratio=(1.25, 1.25), hflip=0.0)  # the whole image
    ds = PretrainDataset(src, build_transform(cfg))
    s = ds[1]
    assert set(s) == {"image", "anatomy", "index", "id"} and s["anatomy"].shape == (1, 40, 40)
    expected = np.asarray(Image.fromarray(src[1].load_mask()).resize((40, 40), Image.NEAREST))
    np.testing.assert_array_equal(s["anatomy"][0].numpy(), expected.astype(np.float32))
    with pytest.raises(ValueError, match="no anatomy mask"):
        PretrainDataset(FolderSource(tree / "images"))
    bare = PretrainDataset(FolderSource(tree / "images"), build_transform(cfg), require_anatomy=False)
    assert bare[0]["anatomy"].sum() == 0 and bare[0]["anatomy"].shape == (1, 40, 40)


def test_bad_file_raises_a_named_error(tree):
    (tree / "images" / "im3.png").write_bytes((tree / "images" / "im3.png").read_bytes()[:100])
    ds = SegmentationDataset(FolderSource(tree / "images", tree / "masks"))
    with pytest.raises(ImageReadError, match=r"im3\.png: corrupt or truncated"):
        ds[3]
