"""Dataset sources: folder, ARCADE, nnU-Net, anatomy, concatenation, YAML specs, listing at scale."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
from PIL import Image

from conftest import shared_data
from vasomim.data.io import ImageReadError
from vasomim.data.sources import (
    AnatomySource,
    ArcadeSource,
    ConcatSource,
    FolderSource,
    NnUNetSource,
    decode_rle,
    load_source,
    rasterize_polygons,
)


def png(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def gray(h=6, w=8, value=100):
    return np.full((h, w), value, np.uint8)


def mask(h=6, w=8):
    m = np.zeros((h, w), np.uint8)
    m[1:3, 2:5] = 255
    return m


# ---------------------------------------------------------------------------------------- folder


def test_folder_source_pairs_by_stem_and_reports_strays(tmp_path):
    png(tmp_path / "img" / "a.png", gray())
    png(tmp_path / "img" / "sub" / "b.jpg", gray())
    png(tmp_path / "img" / "c.bmp", gray())  # no mask
    png(tmp_path / "img" / ".hidden.png", gray())
    (tmp_path / "img" / "._a.png").write_bytes(b"macOS fork")
    (tmp_path / "img" / "notes.txt").write_text("ignored")
    png(tmp_path / "gt" / "a_gt.png", mask())
    png(tmp_path / "gt" / "sub" / "b_gt.png", mask())
    png(tmp_path / "gt" / "z_gt.png", mask())  # no image
    png(tmp_path / "gt" / "a.png", mask())  # lacks the suffix: not a mask
    src = FolderSource(tmp_path / "img", tmp_path / "gt", mask_suffix="_gt")
    assert [it.id for it in src] == ["a.png", "c.bmp", "sub/b.jpg"]
    assert [it.has_mask for it in src] == [True, False, True]
    assert src[2].mask_path == str(tmp_path / "gt" / "sub" / "b_gt.png")
    np.testing.assert_array_equal(src[0].load_mask(), mask() > 0)  # shape from the image header
    assert src[0].load_image().shape == (6, 8)
    problems = "\n".join(src.problems)
    assert "1 images without a mask" in problems and "c.bmp" in problems
    assert "1 masks without an image" in problems and "z_gt.png" in problems


def test_folder_source_masks_in_the_same_or_a_nested_folder(tmp_path):
    png(tmp_path / "x.png", gray())
    png(tmp_path / "x_mask.png", mask())
    same = FolderSource(tmp_path, tmp_path, mask_suffix="_mask")
    assert [(it.id, it.mask_path.endswith("x_mask.png")) for it in same] == [("x.png", True)]
    with pytest.raises(ValueError, match="mask_suffix"):
        FolderSource(tmp_path, tmp_path)
    png(tmp_path / "n" / "y.png", gray())
    png(tmp_path / "n" / "masks" / "y.png", mask())
    nested = FolderSource(tmp_path / "n", tmp_path / "n" / "masks")
    assert [it.id for it in nested] == ["y.png"] and nested[0].has_mask


def test_mask_size_mismatch_names_the_mask(tmp_path):
    png(tmp_path / "images" / "a.png", gray(6, 8))
    png(tmp_path / "masks" / "a.png", mask(6, 7))
    item = load_source(tmp_path)[0]
    with pytest.raises(ImageReadError, match=r"masks/a\.png: mask size 7x6 differs from its image 8x6"):
        item.load_mask()


def test_listing_20k_empty_files_opens_none(tmp_path, monkeypatch):
    root = tmp_path / "big"
    for d in range(4):
        sub = root / f"d{d}"
        sub.mkdir(parents=True)
        for i in range(5000):
            (sub / f"f{i:05d}.png").touch()

    def no_decoding(*_a, **_k):
        raise AssertionError("listing must not open images")

    monkeypatch.setattr(Image, "open", no_decoding)
    t0 = time.perf_counter()
    src = load_source(root)
    items = src.items
    elapsed = time.perf_counter() - t0
    assert len(items) == 20000 and isinstance(src, FolderSource)
    assert items[0].id == "d0/f00000.png" and items[-1].id == "d3/f04999.png"
    print(f"listed {len(items)} files in {elapsed:.3f} s")


def test_real_angiograms_load_through_the_folder_source():
    cimat = shared_data("cimat-coronary")
    src = FolderSource(cimat / "images", cimat / "masks")
    assert len(src) == 40 and not src.problems
    for item in src:
        image = item.load_image()
        m = item.load_mask(image.shape)
        assert image.shape == (300, 300) and image.dtype == np.float32 and 0 <= image.min() < image.max() <= 1
        assert m.dtype == bool and 0.01 < m.mean() < 0.2
    xca = FolderSource(shared_data("xca-unlabeled"))
    assert len(xca) == 15 and {it.id.rsplit(".", 1)[1] for it in xca} == {"png", "jpg", "bmp"}
    for item in xca:
        image = item.load_image()
        assert image.shape == (512, 512) and image.dtype == np.float32
        assert 0 <= image.min() and image.max() <= 1 and image.std() > 0.02


# ---------------------------------------------------------------------------------------- arcade


def arcade_tree(tmp_path, width=10, height=8):
    png(tmp_path / "train" / "images" / "1.png", gray(height, width))
    png(tmp_path / "train" / "images" / "2.png", gray(height, width))
    coco = {
        "images": [
            {"id": 1, "file_name": "1.png", "width": width, "height": height},
            {"id": 2, "file_name": "2.png", "width": width, "height": height},
            {"id": 3, "file_name": "3.png", "width": width, "height": height},  # not on disk
        ],
        "categories": [{"id": 1, "name": "1"}, {"id": 5, "name": "5"}],
        "annotations": [
            # a rectangle: columns 2..5, rows 1..3
            {"id": 10, "image_id": 1, "category_id": 1, "segmentation": [[2, 1, 6, 1, 6, 4, 2, 4]]},
            # a triangle (9.5, 4.5), (9.5, 8.5), (5.5, 8.5): pixel centres with x + y >= 14, edge included
            {"id": 11, "image_id": 1, "category_id": 5, "segmentation": [[9.5, 4.5, 9.5, 8.5, 5.5, 8.5]]},
        ],
    }
    (tmp_path / "train" / "annotations").mkdir(parents=True)
    json_path = tmp_path / "train" / "annotations" / "train.json"
    json_path.write_text(json.dumps(coco))
    return json_path


EXPECTED_ARCADE = np.array(
    [
        # 0 1 2 3 4 5 6 7 8 9
        [0, 0, 0, 0, 0, 0, 0, 0, 0, 0],  # 0
        [0, 0, 1, 1, 1, 1, 0, 0, 0, 0],  # 1
        [0, 0, 1, 1, 1, 1, 0, 0, 0, 0],  # 2
        [0, 0, 1, 1, 1, 1, 0, 0, 0, 0],  # 3
        [0, 0, 0, 0, 0, 0, 0, 0, 0, 1],  # 4
        [0, 0, 0, 0, 0, 0, 0, 0, 1, 1],  # 5
        [0, 0, 0, 0, 0, 0, 0, 1, 1, 1],  # 6
        [0, 0, 0, 0, 0, 0, 1, 1, 1, 1],  # 7
    ],
    dtype=bool,
)


def test_arcade_two_polygons_against_a_hand_drawn_mask(tmp_path):
    json_path = arcade_tree(tmp_path)
    src = ArcadeSource(json_path, tmp_path / "train" / "images")
    assert [it.id for it in src] == ["1.png", "2.png"]
    np.testing.assert_array_equal(src[0].load_mask(), EXPECTED_ARCADE)
    assert not src[1].load_mask().any()  # no annotation: empty mask
    assert "3.png" in src.problems[0]
    # per-category choice, by name or id
    only_rect = ArcadeSource(json_path, tmp_path / "train" / "images", categories=["1"])
    np.testing.assert_array_equal(only_rect[0].load_mask(), np.pad(np.ones((3, 4), bool), ((1, 4), (2, 4))))
    only_tri = ArcadeSource(json_path, tmp_path / "train" / "images", categories=[5])
    np.testing.assert_array_equal(only_tri[0].load_mask(), EXPECTED_ARCADE & (np.arange(10) >= 6))
    with pytest.raises(ValueError, match="unknown categories stenosis"):
        ArcadeSource(json_path, tmp_path, categories=["stenosis"]).items
    # the layout is detected from the split folder
    detected = load_source(tmp_path / "train")
    assert isinstance(detected, ArcadeSource) and len(detected) == 2


def test_pixel_centre_rule():
    # corners on pixel edges: exactly the covered pixels; a polygon between centres: nothing
    np.testing.assert_array_equal(rasterize_polygons([[0, 0, 2, 0, 2, 1, 0, 1]], (2, 3)), [[1, 1, 0], [0, 0, 0]])
    assert not rasterize_polygons([[0.6, 0.6, 1.4, 0.6, 1.4, 1.4, 0.6, 1.4]], (3, 3)).any()
    assert rasterize_polygons([[0.5, 0.5, 1.5, 0.5, 1.5, 1.5]], (3, 3)).sum() == 3  # centres on the boundary count
    assert not rasterize_polygons([[1, 1, 2, 2]], (3, 3)).any()  # degenerate: no area


def test_arcade_size_mismatch(tmp_path):
    json_path = arcade_tree(tmp_path, width=10, height=8)
    png(tmp_path / "train" / "images" / "1.png", gray(8, 12))  # the image on disk is wider
    item = ArcadeSource(json_path, tmp_path / "train" / "images")[0]
    with pytest.raises(ImageReadError, match=r"train\.json: annotation size 10x8 for .*1\.png differs from the image 12x8"):
        item.load_mask()


# Reference strings: pycocotools 2.0 `mask.encode(np.asfortranarray(m))["counts"]` of the masks the
# tests build below (computed once with pycocotools, which vasomim does not depend on).
RLE_TINY = "326O"  # 3x4: pixels (0, 1), (1, 1), (2, 3)
RLE_BAND = ("43V10O010O01000O010O01000O010O01000O010O01000O010O01000O010O01000O010O0J2SONk04UOLi06VOJi08WOHh08XOHh08"
            "YOHf08[OHd08\\OHe06]OJc04^OLc02_ONn00O010O01000O010O010")  # 40x56, 265 pixels
RLE_BIG = "V_1:R9" + "0" * 687 + "Fn`V3"  # 300x700: columns 350.. plus rows 10..19 of columns 5..599


def _band_mask():
    yy, xx = np.mgrid[0:40, 0:56]
    return (np.abs(yy - 0.6 * xx - 5) < 1.5) | ((yy - 20) ** 2 + (xx - 40) ** 2 < 30)


def test_decode_rle_matches_masks_pycocotools_encoded():
    tiny = np.zeros((3, 4), bool)
    tiny[0, 1] = tiny[1, 1] = tiny[2, 3] = True
    np.testing.assert_array_equal(decode_rle(RLE_TINY, [3, 4]), tiny)
    band = _band_mask()
    assert band.sum() == 265
    np.testing.assert_array_equal(decode_rle(RLE_BAND, [40, 56]), band)  # multi-character and negative deltas
    big = np.zeros((300, 700), bool)
    big[:, 350:] = True
    big[10:20, 5:600] = True
    np.testing.assert_array_equal(decode_rle(RLE_BIG, [300, 700]), big)  # runs of 105,000 pixels
    # uncompressed run lengths, column-major, background first (worked by hand)
    np.testing.assert_array_equal(decode_rle([1, 2, 8, 1], [3, 4]), [[0, 0, 0, 0], [1, 0, 0, 0], [1, 0, 0, 1]])
    assert not decode_rle([12], [3, 4]).any() and decode_rle([0, 12], [3, 4]).all()


def test_decode_rle_rejects_malformed_input():
    with pytest.raises(ValueError, match="cover 11 pixels"):
        decode_rle([1, 2, 8], [3, 4])
    with pytest.raises(ValueError, match="non-negative"):
        decode_rle([5, -1, 8], [3, 4])
    with pytest.raises(ValueError, match="truncated"):
        decode_rle("32`", [3, 4])  # '`' = 48 + 0x30: the value goes on, but the string ends
    with pytest.raises(ValueError, match="outside"):
        decode_rle("32 6", [3, 4])


def test_arcade_rle_segmentations_join_the_polygons(tmp_path):
    json_path = arcade_tree(tmp_path, width=56, height=40)
    coco = json.loads(json_path.read_text())
    coco["annotations"].append({"id": 12, "image_id": 1, "category_id": 5, "iscrowd": 1,
                                "segmentation": {"size": [40, 56], "counts": RLE_BAND}})
    coco["annotations"].append({"id": 13, "image_id": 2, "category_id": 1, "iscrowd": 1,
                                "segmentation": {"size": [40, 56], "counts": [0, 40 * 56]}})
    json_path.write_text(json.dumps(coco))
    src = ArcadeSource(json_path, tmp_path / "train" / "images")
    polygons = rasterize_polygons([[2, 1, 6, 1, 6, 4, 2, 4], [9.5, 4.5, 9.5, 8.5, 5.5, 8.5]], (40, 56))
    np.testing.assert_array_equal(src[0].load_mask(), polygons | _band_mask())
    assert src[1].load_mask().all()
    only_rect = ArcadeSource(json_path, tmp_path / "train" / "images", categories=["1"])
    assert not (only_rect[0].load_mask() & ~polygons).any()  # the RLE's category is left out

    # an RLE that does not fit its image, or that is malformed, names the JSON and the annotation
    coco["annotations"][-1]["segmentation"] = {"size": [8, 10], "counts": [0, 80]}
    json_path.write_text(json.dumps(coco))
    with pytest.raises(ValueError, match=r"train\.json: annotation 13: RLE size 10x8 differs from its image's 56x40"):
        ArcadeSource(json_path, tmp_path / "train" / "images").items
    coco["annotations"][-1]["segmentation"] = {"size": [40, 56], "counts": [0, 7]}
    json_path.write_text(json.dumps(coco))
    item = ArcadeSource(json_path, tmp_path / "train" / "images")[1]
    with pytest.raises(ImageReadError, match=r"train\.json: RLE mask of .*2\.png: RLE runs cover 7 pixels"):
        item.load_mask()
    coco["annotations"][-1]["segmentation"] = "not a segmentation"
    json_path.write_text(json.dumps(coco))
    with pytest.raises(ValueError, match="annotation 13 has no polygon or RLE segmentation"):
        ArcadeSource(json_path, tmp_path / "train" / "images").items


# ---------------------------------------------------------------------------------------- nnU-Net


def nnunet_tree(root, dataset_json):
    (root).mkdir(parents=True)
    (root / "dataset.json").write_text(json.dumps(dataset_json))
    labels = np.zeros((6, 8), np.uint8)
    labels[1, 1:4] = 1  # vessel
    labels[4, 2:6] = 2  # catheter
    for case in ("xca_001", "xca_002"):
        png(root / "imagesTr" / f"{case}_0000.png", gray())
        png(root / "labelsTr" / f"{case}.png", labels)
    png(root / "imagesTr" / "xca_003_0000.png", gray())  # unlabelled
    return labels


def test_nnunet_v2_tree(tmp_path):
    root = tmp_path / "Dataset501_XCA"
    labels = nnunet_tree(root, {
        "channel_names": {"0": "X-ray"},
        "labels": {"background": 0, "vessel": 1, "catheter": 2},
        "numTraining": 3,
        "file_ending": ".png",
    })
    src = load_source(root)
    assert isinstance(src, NnUNetSource)
    assert [it.id for it in src] == ["xca_001", "xca_002", "xca_003"]
    assert src[0].image_path.endswith("imagesTr/xca_001_0000.png") and not src[2].has_mask
    np.testing.assert_array_equal(src[0].load_mask(), labels > 0)  # every non-background label
    vessel = NnUNetSource(root, labels=["vessel"])
    np.testing.assert_array_equal(vessel[1].load_mask(), labels == 1)
    assert any("xca_003" in p for p in src.problems)
    with pytest.raises(ValueError, match="unknown label 'stent'"):
        NnUNetSource(root, labels=["stent"]).items


def test_nnunet_v1_labels_and_nifti_refused(tmp_path):
    root = tmp_path / "Task501"
    labels = nnunet_tree(root, {"modality": {"0": "XA"}, "labels": {"0": "background", "1": "vessel", "2": "catheter"}})
    np.testing.assert_array_equal(NnUNetSource(root, labels=["vessel"])[0].load_mask(), labels == 1)
    nifti = tmp_path / "nifti"
    nifti.mkdir()
    (nifti / "imagesTr").mkdir()
    (nifti / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "vessel": 1}, "file_ending": ".nii.gz"}))
    with pytest.raises(ValueError, match="NIfTI"):
        NnUNetSource(nifti).items


# ---------------------------------------------------------------------------------------- anatomy


def test_anatomy_source_reads_the_manifest(tmp_path):
    png(tmp_path / "frames" / "a.png", gray())
    png(tmp_path / "frames" / "sub" / "b.png", gray())
    png(tmp_path / "anat" / "a.png", mask())
    png(tmp_path / "anat" / "sub" / "b.png", mask())
    lines = [
        {"file": "a.png", "status": "failed", "error": "a.png: transient"},
        {"file": "sub/b.png", "status": "ok", "mask": "sub/b.png", "vessel_fraction": 0.11, "threshold": 40.5},
        {"file": "a.png", "status": "ok", "mask": "a.png", "vessel_fraction": 0.12, "threshold": 41.0},  # later wins
        {"file": "c.png", "status": "failed", "error": "c.png: corrupt or truncated image"},
    ]
    text = "\n".join(json.dumps(x) for x in lines) + '\n{"file": "d.png", "sta'  # torn last line
    (tmp_path / "anat" / "manifest.jsonl").write_text(text)
    src = AnatomySource(tmp_path / "frames", tmp_path / "anat")
    assert [it.id for it in src] == ["a.png", "sub/b.png"]
    assert src[0].meta == {"vessel_fraction": 0.12, "threshold": 41.0}
    np.testing.assert_array_equal(src[1].load_mask(), mask() > 0)
    problems = "\n".join(src.problems)
    assert "c.png: corrupt" in problems and "manifest.jsonl:5" in problems
    with pytest.raises(ValueError, match="run `vasomim anatomy`"):
        AnatomySource(tmp_path / "frames", tmp_path / "frames").items


# ---------------------------------------------------------------------------------------- specs


def test_yaml_spec_concatenates_named_sources(tmp_path):
    png(tmp_path / "a" / "images" / "x.png", gray())
    png(tmp_path / "a" / "masks" / "x.png", mask())
    png(tmp_path / "b" / "x.png", gray())
    arcade_json = arcade_tree(tmp_path / "arc")
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        "sources:\n"
        "  - {type: folder, images: a/images, masks: a/masks, name: a}\n"
        "  - {type: folder, images: b, name: b}\n"
        f"  - {{type: arcade, json: {arcade_json.relative_to(tmp_path)}, images: arc/train/images, name: arc}}\n"
    )
    src = load_source(spec)
    assert isinstance(src, ConcatSource)
    assert [it.id for it in src] == ["a/x.png", "b/x.png", "arc/1.png", "arc/2.png"]
    assert src[0].has_mask and not src[1].has_mask
    np.testing.assert_array_equal(src[2].load_mask(), EXPECTED_ARCADE)
    # the same sources without names collide
    with pytest.raises(ValueError, match="x.png"):
        ConcatSource([FolderSource(tmp_path / "a" / "images"), FolderSource(tmp_path / "b")]).items


@pytest.mark.parametrize(
    "text, message",
    [
        ("sources:\n  - {type: folder, imgs: x}\n", "unknown key.*imgs"),
        ("sources:\n  - {type: folder, masks: x}\n", "needs key.*images"),
        ("sources:\n  - {type: kaggle, root: x}\n", "unknown source type 'kaggle'"),
        ("sources: []\n", "non-empty list"),
        ("sources: [\n", "invalid YAML"),
    ],
)
def test_bad_specs_say_what_is_wrong(tmp_path, text, message):
    spec = tmp_path / "spec.yaml"
    spec.write_text(text)
    with pytest.raises(ValueError, match=message) as info:
        load_source(spec)
    assert str(spec) in str(info.value) and "\n" not in str(info.value)


def test_directory_detection(tmp_path):
    png(tmp_path / "plain" / "a.png", gray())
    assert isinstance(load_source(tmp_path / "plain"), FolderSource)
    png(tmp_path / "paired" / "images" / "a.png", gray())
    png(tmp_path / "paired" / "masks" / "a.png", mask())
    paired = load_source(tmp_path / "paired")
    assert isinstance(paired, FolderSource) and paired[0].has_mask
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no images found"):
        load_source(tmp_path / "empty")
    with pytest.raises(FileNotFoundError):
        load_source(tmp_path / "nowhere")
    single = load_source({"type": "folder", "images": str(tmp_path / "plain")})
    assert [it.id for it in single] == ["a.png"]
