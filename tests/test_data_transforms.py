"""Joint transforms: crop/flip alignment of image and mask, determinism, normalisation, config."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from vasomim.data.transforms import (
    GRAY_MEAN,
    GRAY_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    TransformConfig,
    build_transform,
    flat_margin,
    hflip,
    joint_random_resized_crop,
    normalize,
    photometric_jitter,
    random_flat_margin,
    random_hflip,
    random_resized_crop_params,
    resize,
)

H, W = 97, 131  # odd, non-square: off-by-one errors show


def coordinate_image():
    """Each pixel holds its own index y * W + x (exact in float32)."""
    return np.arange(H * W, dtype=np.float32).reshape(H, W)


def pattern(ys, xs):
    """A mask defined from coordinates alone, irregular enough that a shift of one pixel breaks it."""
    return ((ys * 7 + xs * 3) % 5 == 0) | ((ys * xs) % 11 == 3)


def test_crop_params_stay_inside_and_follow_the_rng():
    for seed in range(200):
        top, left, h, w = random_resized_crop_params(H, W, (0.2, 1.0), (3 / 4, 4 / 3), np.random.default_rng(seed))
        assert 0 <= top and 0 <= left and 0 < h and 0 < w and top + h <= H and left + w <= W
        assert 0.2 * H * W * 0.9 <= h * w <= H * W
    a = random_resized_crop_params(H, W, (0.2, 1.0), (3 / 4, 4 / 3), np.random.default_rng(5))
    assert a == random_resized_crop_params(H, W, (0.2, 1.0), (3 / 4, 4 / 3), np.random.default_rng(5))
    # impossible ratios fall back to the largest centred crop with a clamped ratio
    assert random_resized_crop_params(100, 400, (0.9, 1.0), (1.0, 1.0), np.random.default_rng(0)) == (0, 150, 100, 100)


@pytest.mark.parametrize("seed", range(8))
def test_every_mask_pixel_lands_on_its_image_pixel(seed):
    ys, xs = np.mgrid[0:H, 0:W]
    image, m = coordinate_image(), pattern(ys, xs)
    rng = np.random.default_rng(seed)
    out_size = (60, 45) if seed % 2 else 224  # shrink and enlarge
    img_c, mask_c = joint_random_resized_crop(image, m, out_size, (0.05, 1.0), (0.5, 2.0), rng, interpolation="nearest")
    img_c, mask_c = random_hflip(img_c, mask_c, 0.5, rng)
    src = img_c.astype(np.int64)
    np.testing.assert_array_equal(img_c, src)  # nearest copies source values exactly
    np.testing.assert_array_equal(mask_c, pattern(src // W, src % W))


def test_bicubic_image_follows_the_nearest_mask():
    """With the image bicubic, its value at a pixel is the sampled source position; the mask took the
    pixel containing that position."""
    ys, xs = np.mgrid[0:H, 0:W]
    for seed in range(6):
        rng_a, rng_b = np.random.default_rng(seed), np.random.default_rng(seed)
        x_img, x_par = joint_random_resized_crop(xs.astype(np.float32), xs % 2 == 1, 64, rng=rng_a)
        y_img, y_par = joint_random_resized_crop(ys.astype(np.float32), ys % 2 == 1, 64, rng=rng_b)
        inner = (slice(4, -4), slice(4, -4))  # away from the crop border, where the filter is truncated
        for val, par in ((x_img[inner], x_par[inner]), (y_img[inner], y_par[inner])):
            pos = val + 0.5  # continuous coordinate of the sampled point
            clear = np.abs(pos - np.round(pos)) > 1e-3
            np.testing.assert_array_equal(np.floor(pos)[clear].astype(int) % 2 == 1, par[clear])


def test_flip_and_resize():
    image, m = coordinate_image(), coordinate_image() % 3 == 0
    fi, fm = hflip(image, m)
    np.testing.assert_array_equal(fi[:, 0], image[:, -1])
    np.testing.assert_array_equal(fm, m[:, ::-1])
    assert random_hflip(image, m, 0.0, np.random.default_rng(0))[0] is image
    ri, rm = resize(image / image.max(), m, 50)
    assert ri.shape == rm.shape == (50, 50) and rm.dtype == bool and 0 <= ri.min() and ri.max() <= 1


def test_photometric_jitter_touches_the_image_only():
    rng = np.random.default_rng(0)
    image = np.random.default_rng(1).random((64, 64)).astype(np.float32)
    out = photometric_jitter(image, rng, 0.2, 0.3, (0.7, 1.4), 0.05)
    assert out.dtype == np.float32 and out.shape == image.shape and 0 <= out.min() and out.max() <= 1
    assert not np.allclose(out, image)
    cfg = TransformConfig(size=32, photometric=True, hflip=0.0, scale=(1.0, 1.0), ratio=(1.0, 1.0))
    m = np.zeros((64, 64), bool)
    m[10:20, 5:60] = True
    plain = build_transform(cfg.model_copy(update={"photometric": False}))
    x1, m1 = build_transform(cfg)(image, m, np.random.default_rng(3))
    x2, m2 = plain(image, m, np.random.default_rng(3))
    assert torch.equal(m1, m2) and not torch.allclose(x1, x2)


def test_build_transform_outputs_and_determinism():
    image = np.random.default_rng(0).random((120, 100)).astype(np.float32)
    m = image > 0.7
    t = build_transform(TransformConfig(size=48, photometric=True))
    x, y = t(image, m, np.random.default_rng(7))
    assert x.shape == (1, 48, 48) and x.dtype == torch.float32
    assert y.shape == (1, 48, 48) and set(y.unique().tolist()) <= {0.0, 1.0}
    x2, y2 = t(image, m, np.random.default_rng(7))
    assert torch.equal(x, x2) and torch.equal(y, y2)
    x3, _ = t(image, m, np.random.default_rng(8))
    assert not torch.equal(x, x3)
    xe, ye = build_transform(TransformConfig(size=48), train=False)(image, None)
    assert xe.shape == (1, 48, 48) and ye is None
    # un-normalised the crop stays in [0, 1] (bicubic overshoot clipped)
    assert (x * GRAY_STD[0] + GRAY_MEAN[0]).min() >= -1e-6


def test_normalisation_channels_and_stats():
    image = np.full((4, 4), 0.5, np.float32)
    one = normalize(image, GRAY_MEAN, GRAY_STD)
    assert one.shape == (1, 4, 4) and one[0, 0, 0].item() == pytest.approx((0.5 - 0.449) / 0.226)
    cfg3 = TransformConfig(size=4, channels=3)
    assert cfg3.stats() == (IMAGENET_MEAN, IMAGENET_STD)
    x, _ = build_transform(cfg3, train=False)(image)
    expected = (0.5 - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
    np.testing.assert_allclose(x[:, 0, 0].numpy(), expected, rtol=1e-5)
    custom = TransformConfig(size=4, mean=(0.5,), std=(0.25,))
    assert build_transform(custom, train=False)(image)[0].abs().max().item() == pytest.approx(0, abs=1e-6)


def test_config_validation():
    with pytest.raises(ValidationError, match="mean has 1 values for 3 channel"):
        TransformConfig(channels=3, mean=(0.5,))
    with pytest.raises(ValidationError):
        TransformConfig(channels=2)
    with pytest.raises(ValidationError, match="low <= high"):
        TransformConfig(scale=(0.9, 0.2))
    with pytest.raises(ValidationError):
        TransformConfig(hlfip=0.5)  # typo: unknown key


def _zoom_transform(size, base_scale, zoom=(1.0, 1.0), ratio=(1.0, 1.0)):
    cfg = TransformConfig(size=size, zoom=zoom, base_scale=base_scale, ratio=ratio, hflip=0.0,
                          mean=(0.0,), std=(1.0,))
    return build_transform(cfg, train=True)


@pytest.mark.parametrize("seed", range(6))
def test_native_zoom_crops_are_windows_of_the_image(seed):
    """base_scale 1, zoom 1: a size x size window cut at the image's own pixels, mask aligned."""
    ys, xs = np.mgrid[:H, :W]
    image = coordinate_image() / (H * W)
    mask = pattern(ys, xs)
    out, out_mask = _zoom_transform(64, 1.0)(image, mask, np.random.default_rng(seed))
    out, out_mask = out[0].numpy(), out_mask[0].numpy().astype(bool)
    index = np.rint(out * (H * W)).astype(int)
    top, left = divmod(int(index[0, 0]), W)
    np.testing.assert_array_equal(index, (ys * W + xs)[top:top + 64, left:left + 64])
    np.testing.assert_array_equal(out_mask, mask[top:top + 64, left:left + 64])


def test_zoom_crops_larger_than_the_image_pad_and_scale():
    image = coordinate_image() / (H * W)
    mask = np.ones((H, W), dtype=bool)
    # a 160-px window on a 97x131 image: centred, reflected image, background mask outside
    out, out_mask = _zoom_transform(160, 1.0)(image, mask, np.random.default_rng(0))
    m = out_mask[0].numpy().astype(bool)
    assert m.sum() == H * W and m[(160 - H) // 2, (160 - W) // 2] and not m[0, 0]
    ref = np.pad(image, ((31, 32), (14, 15)), mode="symmetric")
    np.testing.assert_allclose(out[0].numpy(), ref, atol=1e-6)
    # base_scale 0.5: the window covers 2x its size in image pixels (downsampled)
    top, left, ch, cw = _zoom_crop(32, 0.5)
    assert (ch, cw) == (64, 64)


def _zoom_crop(size, base_scale):
    from vasomim.data.transforms import zoom_crop_params

    return zoom_crop_params(H, W, size, base_scale, (1.0, 1.0), (1.0, 1.0), np.random.default_rng(0))


def test_flat_margin_bands_each_side_by_hand():
    image = coordinate_image()
    mask = np.ones((H, W), dtype=bool)
    rows, cols = np.mgrid[:H, :W]
    bands = {0: rows < 5, 1: rows >= H - 5, 2: cols < 5, 3: cols >= W - 5}
    for side, band in bands.items():
        out, out_mask = flat_margin(image, mask, side, 5, 0.25)
        assert np.all(out[band] == 0.25) and not out_mask[band].any()
        np.testing.assert_array_equal(out[~band], image[~band])
        assert out_mask[~band].all()
    assert image[0, 0] == 0 and mask.all()  # the inputs are not touched
    out, out_mask = flat_margin(image, None, 1, 0, 0.5)
    np.testing.assert_array_equal(out, image)
    assert out_mask is None


def test_random_flat_margin_draws_a_band_within_the_range_or_nothing():
    image = coordinate_image() / (H * W) + 2.0  # no pixel can equal a grey level in [0, 1]
    mask = np.ones((H, W), dtype=bool)
    widths = []
    for seed in range(40):
        out, out_mask = random_flat_margin(image, mask, 1.0, (0.1, 0.3), np.random.default_rng(seed))
        flat = out <= 1.0
        assert np.array_equal(flat, ~out_mask)  # the band is background in the mask
        rows, cols = flat.all(axis=1), flat.all(axis=0)
        if rows.any():  # a band of whole rows at the top or the bottom
            width, extent = rows.sum(), H
            assert rows[0] or rows[-1]
        else:
            width, extent = cols.sum(), W
            assert cols[0] or cols[-1]
        assert flat.sum() == width * (W if extent == H else H)
        assert round(0.1 * extent) <= width <= round(0.3 * extent)
        widths.append(width / extent)
    assert max(widths) - min(widths) > 0.1  # the width varies
    rng = np.random.default_rng(0)
    out, _ = random_flat_margin(image, mask, 0.0, (0.1, 0.3), rng)
    assert out is image and rng.random() == np.random.default_rng(0).random()  # p 0 draws nothing


def test_transform_with_margins_and_their_validation():
    cfg = TransformConfig(size=64, scale=(1.0, 1.0), ratio=(1.0, 1.0), hflip=0.0, margin=1.0)
    _, out_mask = build_transform(cfg)(coordinate_image() / (H * W), np.ones((H, W), bool),
                                       np.random.default_rng(3))
    m = out_mask[0].numpy().astype(bool)
    assert not m.all() and (not m[0].any() or not m[-1].any() or not m[:, 0].any() or not m[:, -1].any())
    for bad in ({"margin": 1.5}, {"margin_width": (0.3, 0.1)}, {"margin_width": (0.1, 1.0)}):
        with pytest.raises(ValidationError):
            TransformConfig(**bad)
