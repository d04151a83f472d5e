"""The synthetic angiogram generator: deterministic, masks that match the images, dataset writer, CLI."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from vasomim.data.io import read_image, read_mask
from vasomim.data.synthetic import SynthConfig, synthesize, synthesize_batch, write_dataset

SEEDS = range(10)


@pytest.fixture(scope="module")
def samples():
    """Ten 128-pixel images with default settings, shared by the tests that only read them."""
    return [synthesize(seed, 128) for seed in SEEDS]


def test_output_types_and_shapes():
    for size in (64, 200, 256):
        image, mask = synthesize(3, size)
        assert image.shape == mask.shape == (size, size)
        assert image.dtype == np.uint8 and mask.dtype == bool


def test_same_seed_same_output_different_seed_different_output():
    a_img, a_mask = synthesize(7, 96)
    b_img, b_mask = synthesize(7, 96)
    c_img, c_mask = synthesize(8, 96)
    assert np.array_equal(a_img, b_img) and np.array_equal(a_mask, b_mask)
    assert not np.array_equal(a_img, c_img)
    assert not np.array_equal(a_mask, c_mask)


def test_config_size_is_used_when_size_is_not_given():
    image, mask = synthesize(1, config=SynthConfig(size=80))
    assert image.shape == mask.shape == (80, 80)


def test_batch_matches_single_images():
    images, masks = synthesize_batch([4, 5], 64)
    assert images.shape == (2, 64, 64) and masks.shape == (2, 64, 64)
    for k, seed in enumerate((4, 5)):
        image, mask = synthesize(seed, 64)
        assert np.array_equal(images[k], image) and np.array_equal(masks[k], mask)


def test_every_mask_is_non_empty_and_vessel_fraction_is_sane(samples):
    fractions = np.array([mask.mean() for _, mask in samples])
    assert fractions.min() > 0.005, fractions
    assert fractions.max() < 0.3, fractions
    assert 0.03 < fractions.mean() < 0.2, fractions


def test_mask_is_darker_than_the_ring_just_outside_it(samples):
    """Vessels are darker than their immediate surroundings: the mask lies on the dark tubes."""
    for seed, (image, mask) in zip(SEEDS, samples):
        ring = ndimage.binary_dilation(mask, iterations=3) & ~mask
        inside, outside = image[mask].astype(float).mean(), image[ring].astype(float).mean()
        assert inside < outside - 5, (seed, inside, outside)


def test_shifted_mask_does_not_match_the_image(samples):
    """The contrast check above fails for a mask that is off the vessels (it can fail)."""
    darker = 0
    for image, mask in samples:
        shifted = np.roll(mask, (9, 9), axis=(0, 1))
        ring = ndimage.binary_dilation(shifted, iterations=3) & ~shifted
        darker += image[shifted].astype(float).mean() < image[ring].astype(float).mean() - 5
    assert darker <= 2


def test_each_tree_is_one_connected_piece():
    """With one tree the largest 8-connected component holds nearly all vessel pixels."""
    config = SynthConfig(n_trees=(1, 1), collimator=False)
    for seed in SEEDS:
        mask = synthesize(seed, 128, config)[1]
        labels, n = ndimage.label(mask, structure=np.ones((3, 3)))
        largest = np.bincount(labels.ravel())[1:].max()
        assert largest >= 0.9 * mask.sum(), (seed, n, largest / mask.sum())


def test_catheter_is_drawn_but_not_labelled():
    changed = 0
    for seed in SEEDS:
        with_img, with_mask = synthesize(seed, 128, SynthConfig(catheter=True))
        without_img, without_mask = synthesize(seed, 128, SynthConfig(catheter=False))
        assert np.array_equal(with_mask, without_mask), seed
        darker = without_img.astype(int) - with_img.astype(int)
        changed += (darker > 10).sum() > 20
    assert changed >= 3  # the catheter is visible (darker) in a good share of the images


def test_collimated_region_is_dark_and_unlabelled():
    for seed in SEEDS:
        image, mask = synthesize(seed, 128, SynthConfig(collimator=True))
        open_image, open_mask = synthesize(seed, 128, SynthConfig(collimator=False))
        assert not (mask & ~open_mask).any(), seed  # the collimator only removes vessel pixels
        very_dark = image < 0.5 * open_image.astype(float)
        assert very_dark.mean() > 0.02, seed
        assert not (mask & ndimage.binary_erosion(very_dark, iterations=2)).any(), seed


def test_write_dataset_writes_readable_pairs_and_resumes(tmp_path, monkeypatch):
    paths = write_dataset(tmp_path, count=3, size=64, seed=5, progress=False)
    assert [p.name for p in paths] == ["synth_0000.png", "synth_0001.png", "synth_0002.png"]
    for i, path in enumerate(paths):
        image = read_image(path)
        mask = read_mask(tmp_path / "masks" / path.name, expected_shape=image.shape)
        expected_image, expected_mask = synthesize(5 + i, 64)
        assert np.array_equal(np.rint(image * 255).astype(np.uint8), expected_image)
        assert np.array_equal(mask, expected_mask)

    # A pair with a missing half is redone; complete pairs are left alone.
    stamps = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*.png")}
    (tmp_path / "masks" / "synth_0001.png").unlink()
    assert write_dataset(tmp_path, count=3, size=64, seed=5, progress=False) == paths
    assert sorted(tmp_path.rglob("*.png")) == sorted(stamps)
    for name in ("synth_0000.png", "synth_0002.png"):
        for sub in ("images", "masks"):
            assert (tmp_path / sub / name).stat().st_mtime_ns == stamps[tmp_path / sub / name]
    assert np.array_equal(read_mask(tmp_path / "masks" / "synth_0001.png"), synthesize(6, 64)[1])

    # Once everything is there, a second call generates nothing at all.
    def fail(*args, **kwargs):
        raise AssertionError("write_dataset regenerated an existing pair")

    monkeypatch.setattr("vasomim.data.synthetic.synthesize", fail)
    assert write_dataset(tmp_path, count=3, size=64, seed=5, progress=False) == paths
    assert not [p for p in tmp_path.rglob("*") if p.is_file() and p.suffix != ".png"]


def test_cli_synth(tmp_path, capsys):
    from vasomim.cli import main

    out = tmp_path / "synth"
    assert main(["synth", str(out), "--count", "3", "--size", "64", "--no-catheter"]) == 0
    images = sorted((out / "images").glob("*.png"))
    masks = sorted((out / "masks").glob("*.png"))
    assert [p.name for p in images] == [p.name for p in masks] == [f"synth_{i:04d}.png" for i in range(3)]
    expected_image, expected_mask = synthesize(0, 64, SynthConfig(catheter=False))
    assert np.array_equal(read_mask(masks[0]), expected_mask)
    assert np.array_equal(np.rint(read_image(images[0]) * 255).astype(np.uint8), expected_image)
    assert main(["synth", str(out), "--count", "1", "--size", "8"]) == 2
    assert "--size" in capsys.readouterr().err


def test_synth_cli_preset_writes_the_realistic_generator(tmp_path):
    from vasomim.cli import main
    from vasomim.data.io import read_mask
    from vasomim.data.synthetic import SynthConfig

    assert main(["synth", str(tmp_path / "r"), "--count", "2", "--size", "64", "--seed", "3", "--preset", "realistic"]) == 0
    img = np.asarray(Image.open(tmp_path / "r" / "images" / "synth_0001.png"))
    expected, mask = synthesize(seed=4, size=64, config=SynthConfig.realistic(size=64))
    np.testing.assert_array_equal(img, expected)
    np.testing.assert_array_equal(read_mask(tmp_path / "r" / "masks" / "synth_0001.png"), mask)
    classic, _ = synthesize(seed=4, size=64)
    assert not np.array_equal(img, classic)
