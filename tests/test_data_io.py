"""Reading images and masks: every mode and mask convention, and the named errors."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from PIL import Image

from vasomim.data.io import ImageReadError, image_info, read_image, read_mask, write_png_atomic


def save(path, array, mode=None, **kw):
    img = Image.fromarray(array) if mode is None else Image.fromarray(array).convert(mode)
    img.save(path, **kw)
    return path


def test_8bit_gray_is_divided_by_255(tmp_path):
    arr = np.arange(256, dtype=np.uint8).reshape(16, 16)
    out = read_image(save(tmp_path / "a.png", arr))
    assert out.dtype == np.float32 and out.shape == (16, 16)
    np.testing.assert_array_equal(out, arr.astype(np.float32) / 255)


def test_16bit_png_is_divided_by_65535_not_stretched(tmp_path):
    arr = np.array([[0, 1000, 4095], [32768, 60000, 65535]], dtype=np.uint16)
    p = save(tmp_path / "a16.png", arr)
    assert Image.open(p).mode == "I;16"
    np.testing.assert_allclose(read_image(p), arr / 65535.0, rtol=0, atol=1e-7)
    # 12-bit data in a 16-bit container stays dark: the rule never rescales by the image's range
    small = np.array([[0, 2048], [4095, 100]], dtype=np.uint16)
    assert read_image(save(tmp_path / "b16.png", small)).max() == pytest.approx(4095 / 65535)


def test_colour_modes_become_luminance(tmp_path):
    rgb = np.zeros((4, 6, 3), dtype=np.uint8)
    rgb[..., 0] = 255  # pure red -> L = 299 * 255 / 1000 = 76.2 -> 76
    rgb[1, :] = (10, 200, 30)
    expected = np.asarray(Image.fromarray(rgb).convert("L"), dtype=np.float32) / 255
    assert expected[0, 0] == pytest.approx(76 / 255)
    np.testing.assert_array_equal(read_image(save(tmp_path / "rgb.png", rgb)), expected)
    rgba = np.concatenate([rgb, np.zeros((4, 6, 1), np.uint8)], axis=2)  # fully transparent: alpha ignored
    np.testing.assert_array_equal(read_image(save(tmp_path / "rgba.png", rgba)), expected)
    pal = Image.fromarray(rgb).convert("P", palette=Image.ADAPTIVE, colors=4)
    pal.save(tmp_path / "p.png")
    assert Image.open(tmp_path / "p.png").mode == "P"
    np.testing.assert_array_equal(read_image(tmp_path / "p.png"), expected)
    np.testing.assert_array_equal(read_image(save(tmp_path / "rgb.bmp", rgb)), expected)


def test_one_bit_image(tmp_path):
    arr = np.eye(5, dtype=bool)
    out = read_image(save(tmp_path / "b.png", arr))
    np.testing.assert_array_equal(out, arr.astype(np.float32))


def test_truncated_zero_byte_missing_and_garbage_files_name_the_file(tmp_path):
    good = save(tmp_path / "good.png", (np.random.default_rng(0).random((64, 64)) * 255).astype(np.uint8))
    data = good.read_bytes()
    (tmp_path / "trunc.png").write_bytes(data[: len(data) // 2])
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "text.png").write_text("not an image")
    cases = {
        "trunc.png": "corrupt or truncated",
        "empty.png": "empty file (0 bytes)",
        "missing.png": "file not found",
        "text.png": "not a readable image",
    }
    for name, reason in cases.items():
        with pytest.raises(ImageReadError) as info:
            read_image(tmp_path / name)
        msg = str(info.value)
        assert msg.startswith(str(tmp_path / name) + ": ") and reason in msg and "\n" not in msg
        assert info.value.reason and info.value.path == str(tmp_path / name)
    with pytest.raises(ImageReadError, match="truncated"):
        read_mask(tmp_path / "trunc.png")


def test_error_survives_pickling_and_worker_style_reraise():
    err = ImageReadError("/x/a.png", "corrupt\nor truncated")
    assert str(err) == "/x/a.png: corrupt or truncated"
    back = pickle.loads(pickle.dumps(err))
    assert str(back) == str(err) and back.reason == err.reason
    assert str(ImageReadError("whole message")) == "whole message"  # how DataLoader re-raises


@pytest.mark.parametrize(
    "values, expected",
    [
        ([0, 255, 0, 255], [0, 1, 0, 1]),  # 0/255
        ([0, 1, 1, 0], [0, 1, 1, 0]),  # 0/1 (would be empty under a >=128 rule)
        ([0, 3, 127, 128, 200, 255], [0, 0, 0, 1, 1, 1]),  # >=128 with stray values
        ([0, 0, 0, 0], [0, 0, 0, 0]),  # empty mask
    ],
)
def test_mask_conventions(tmp_path, values, expected):
    arr = np.array([values], dtype=np.uint8)
    np.testing.assert_array_equal(read_mask(save(tmp_path / "m.png", arr)), np.array([expected], dtype=bool))


def test_bool_16bit_and_gray_rgb_masks(tmp_path):
    m = np.zeros((5, 7), dtype=bool)
    m[1:3, 2:6] = True
    p = save(tmp_path / "bit.png", m)
    assert Image.open(p).mode == "1"
    np.testing.assert_array_equal(read_mask(p), m)
    np.testing.assert_array_equal(read_mask(save(tmp_path / "m16.png", m.astype(np.uint16) * 65535)), m)
    gray_rgb = np.repeat((m * 255).astype(np.uint8)[..., None], 3, axis=2)
    np.testing.assert_array_equal(read_mask(save(tmp_path / "grayrgb.png", gray_rgb)), m)
    np.testing.assert_array_equal(read_mask(save(tmp_path / "m.tif", (m * 255).astype(np.uint8))), m)


def test_colour_masks_are_refused(tmp_path):
    rgb = np.zeros((4, 4, 3), dtype=np.uint8)
    rgb[1, 1] = (255, 0, 0)
    with pytest.raises(ImageReadError, match=r"rgb\.png: mask is a colour \(RGB\) image"):
        read_mask(save(tmp_path / "rgb.png", rgb))
    Image.fromarray(rgb).convert("P", palette=Image.ADAPTIVE, colors=2).save(tmp_path / "pal.png")
    with pytest.raises(ImageReadError, match="palette"):
        read_mask(tmp_path / "pal.png")


def test_mask_size_mismatch(tmp_path):
    p = save(tmp_path / "m.png", np.zeros((4, 5), np.uint8))
    assert read_mask(p, expected_shape=(4, 5)).shape == (4, 5)
    with pytest.raises(ImageReadError, match=r"m\.png: mask size 5x4 differs from its image 6x4"):
        read_mask(p, expected_shape=(4, 6))


def test_label_maps(tmp_path):
    p = save(tmp_path / "lab.png", np.array([[0, 1, 2, 3]], dtype=np.uint8))
    np.testing.assert_array_equal(read_mask(p, labels=[1, 2]), [[False, True, True, False]])
    np.testing.assert_array_equal(read_mask(p), [[False, False, False, False]])  # binary rule: max 3 -> >=128


def test_multi_frame_raster_and_frame_ids(tmp_path):
    frames = [Image.fromarray(np.full((3, 4), v, np.uint8)) for v in (10, 20, 30)]
    p = tmp_path / "stack.tif"
    frames[0].save(p, save_all=True, append_images=frames[1:])
    assert read_image(p)[0, 0] == pytest.approx(10 / 255)  # first frame by default
    assert read_image(f"{p}#f002")[0, 0] == pytest.approx(30 / 255)
    with pytest.raises(ImageReadError, match="frame 5 requested but the file has 3"):
        read_image(f"{p}#f005")
    info = image_info(p)
    assert (info.width, info.height, info.frames, info.format, info.mode) == (4, 3, 3, "TIFF", "L")


def test_write_png_atomic_round_trip(tmp_path):
    m = np.zeros((6, 6), bool)
    m[2:4] = True
    write_png_atomic(tmp_path / "sub" / "m.png", m)
    np.testing.assert_array_equal(read_mask(tmp_path / "sub" / "m.png"), m)
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["m.png"]
