"""DICOM: multi-frame cines, MONOCHROME1 inversion, windows and VOI LUTs, against hand-computed values."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from vasomim.data.dicom import apply_window, frame_id, read_dicom_frames, split_frame_id
from vasomim.data.io import ImageReadError, image_info, read_image
from vasomim.data.sources import DicomSource

pydicom = pytest.importorskip("pydicom", reason="pydicom (the 'dicom' extra) is not installed")

XA_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.12.1"  # X-Ray Angiographic Image Storage


def write_dicom(path, frames: np.ndarray, photometric="MONOCHROME2", bits_stored=16, big_endian=False, **elements):
    """A minimal XA file holding ``frames`` (F, H, W) as unsigned 16-bit stored values."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = XA_SOP_CLASS
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRBigEndian if big_endian else ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = XA_SOP_CLASS
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "XA"
    n, h, w = frames.shape
    ds.Rows, ds.Columns = h, w
    if n > 1:
        ds.NumberOfFrames = n
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, bits_stored, bits_stored - 1, 0
    for key, value in elements.items():
        setattr(ds, key, value)
    ds.PixelData = frames.astype(">u2" if big_endian else "<u2").tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    save_dicom(ds, path)
    return path


def save_dicom(ds, path) -> None:
    """Write a dataset with its file meta (pydicom >= 3)."""
    ds.save_as(path, enforce_file_format=True)


# stored values around the window C=2048, W=1000 (LINEAR: 0 at x <= 1548, 1 above 2547)
VALUES = np.array([[0, 1547, 1548, 2048], [2300, 2547, 2548, 4095]], dtype=np.uint16)
# (x - 2047.5) / 999 + 0.5, clipped, then MONOCHROME1 -> 1 - v
WINDOWED = np.array([[0, 0, 0, 0.5 / 999 + 0.5], [252.5 / 999 + 0.5, 1, 1, 1]])
EXPECTED_M1 = 1 - WINDOWED


def test_multiframe_monochrome1_window(tmp_path):
    frames = np.stack([VALUES, VALUES, np.full_like(VALUES, 2300)])
    p = write_dicom(tmp_path / "cine.dcm", frames, "MONOCHROME1", 12, WindowCenter=2048, WindowWidth=1000)
    out = read_dicom_frames(p)
    assert len(out) == 3 and all(f.dtype == np.float32 and f.shape == (2, 4) for f in out)
    np.testing.assert_allclose(out[0], EXPECTED_M1, atol=1e-6)
    np.testing.assert_allclose(out[2], np.full((2, 4), 1 - (252.5 / 999 + 0.5)), atol=1e-6)
    # the same frames through read_image with frame ids
    np.testing.assert_array_equal(read_image(frame_id(p, 1)), out[1])
    np.testing.assert_array_equal(read_image(f"{p}#f002"), out[2])
    with pytest.raises(ImageReadError, match=r"multi-frame DICOM \(3 frames\).*cine\.dcm#f000"):
        read_image(p)
    with pytest.raises(ImageReadError, match="frame 3 requested but the file has 3"):
        read_image(f"{p}#f003")
    info = image_info(f"{p}#f001")
    assert (info.width, info.height, info.frames, info.mode, info.format) == (4, 2, 3, "MONOCHROME1 12-bit", "DICOM")


def test_no_window_uses_the_container_range(tmp_path):
    frame = VALUES[None]
    m2 = write_dicom(tmp_path / "m2.dcm", frame, "MONOCHROME2", 12)
    np.testing.assert_allclose(read_image(m2), VALUES / 4095.0, atol=1e-6)  # single frame: no id needed
    m1 = write_dicom(tmp_path / "m1.dcm", frame, "MONOCHROME1", 12)
    np.testing.assert_allclose(read_image(m1), 1 - VALUES / 4095.0, atol=1e-6)
    # a rescale maps the container range too, so slope/intercept alone change nothing
    rs = write_dicom(tmp_path / "rs.dcm", frame, "MONOCHROME2", 12, RescaleSlope=2, RescaleIntercept=-1024)
    np.testing.assert_allclose(read_image(rs), VALUES / 4095.0, atol=1e-6)
    # ... but it does move the modality values a window applies to: y = 2x - 1024, window on y
    rw = write_dicom(tmp_path / "rw.dcm", frame, "MONOCHROME2", 12, RescaleSlope=2, RescaleIntercept=-1024,
                     WindowCenter=3072, WindowWidth=2000)
    y = 2.0 * VALUES - 1024
    np.testing.assert_allclose(read_image(rw), np.clip((y - 3071.5) / 1999 + 0.5, 0, 1), atol=1e-6)


def test_voi_lut_sequence(tmp_path):
    from pydicom.dataset import Dataset

    values = np.array([[999, 1000, 1001], [1002, 1003, 5000]], dtype=np.uint16)
    for vr, data in (("US", [0, 85, 170, 255]), ("OW", np.array([0, 85, 170, 255], "<u2").tobytes())):
        lut = Dataset()
        lut.add_new(0x00283002, "US", [4, 1000, 8])  # LUT Descriptor: 4 entries from 1000, 8 bits
        lut.add_new(0x00283006, vr, data)  # LUT Data
        p = write_dicom(tmp_path / f"lut_{vr}.dcm", values[None], "MONOCHROME2", 16, VOILUTSequence=[lut])
        np.testing.assert_allclose(read_image(p), [[0, 0, 85 / 255], [170 / 255, 1, 1]], atol=1e-6)


def modality_lut(data, vr: str, big_endian: bool = False):
    """A Modality LUT Sequence item: ``data`` maps stored values 1000, 1001, ... to 12-bit values."""
    from pydicom.dataset import Dataset

    item = Dataset()
    item.add_new(0x00283002, "US", [len(data), 1000, 12])  # LUT Descriptor: entries, first mapped, bits
    item.add_new(0x00283004, "LO", "XA")  # Modality LUT Type
    raw = np.asarray(data, ">u2" if big_endian else "<u2").tobytes()
    item.add_new(0x00283006, vr, list(data) if vr == "US" else raw)  # LUT Data
    return item


def test_modality_lut_sequence(tmp_path):
    values = np.array([[999, 1000, 1001], [1002, 1003, 5000]], dtype=np.uint16)
    lut = [0, 1000, 3000, 4095]  # below the first entry: the first value; above the last: the last
    y = np.array([[0, 0, 1000], [3000, 4095, 4095]], dtype=np.float64)
    for vr, big_endian in (("US", False), ("OW", False), ("OW", True)):
        name = f"mlut_{vr}_{'be' if big_endian else 'le'}"
        # no window: the LUT's 12-bit output range maps onto [0, 1]
        p = write_dicom(tmp_path / f"{name}.dcm", values[None], "MONOCHROME2", 16, big_endian,
                        ModalityLUTSequence=[modality_lut(lut, vr, big_endian)])
        np.testing.assert_allclose(read_image(p), y / 4095, atol=1e-6, err_msg=name)
        # a window applies to the LUT's output, and MONOCHROME1 is inverted after it
        p = write_dicom(tmp_path / f"{name}_w.dcm", values[None], "MONOCHROME1", 16, big_endian,
                        ModalityLUTSequence=[modality_lut(lut, vr, big_endian)], WindowCenter=2000, WindowWidth=2001)
        np.testing.assert_allclose(read_image(p), 1 - np.clip((y - 1999.5) / 2000 + 0.5, 0, 1), atol=1e-6,
                                   err_msg=name)


def test_big_endian_voi_lut(tmp_path):
    from pydicom.dataset import Dataset

    values = np.array([[999, 1000, 1001], [1002, 1003, 5000]], dtype=np.uint16)
    lut = Dataset()
    lut.add_new(0x00283002, "US", [4, 1000, 8])
    lut.add_new(0x00283006, "OW", np.array([0, 85, 170, 255], ">u2").tobytes())
    p = write_dicom(tmp_path / "lut_be.dcm", values[None], "MONOCHROME2", 16, True, VOILUTSequence=[lut])
    np.testing.assert_allclose(read_image(p), [[0, 0, 85 / 255], [170 / 255, 1, 1]], atol=1e-6)


def test_window_functions():
    x = np.array([0.0, 40.0, 50.0, 60.0, 100.0])
    np.testing.assert_allclose(apply_window(x, 50, 21, "LINEAR"), [0, 0.5 - 9.5 / 20, 0.525, 1, 1], atol=1e-6)
    np.testing.assert_allclose(apply_window(x, 50, 20, "LINEAR_EXACT"), [0, 0, 0.5, 1, 1], atol=1e-6)
    np.testing.assert_allclose(apply_window(x, 50, 20, "SIGMOID"), 1 / (1 + np.exp(-4 * (x - 50) / 20)), atol=1e-6)
    with pytest.raises(ValueError, match="width"):
        apply_window(x, 50, 0.5)


def test_frame_id_round_trip():
    assert frame_id("a/b.dcm", 12) == "a/b.dcm#f012"
    assert split_frame_id("a/b.dcm#f012") == ("a/b.dcm", 12)
    assert split_frame_id("a/b#c.png") == ("a/b#c.png", None)


def test_dicom_source_lists_every_frame(tmp_path):
    write_dicom(tmp_path / "p1" / "run1.dcm", np.stack([VALUES] * 3), "MONOCHROME1", 12)
    write_dicom(tmp_path / "p2" / "IM0001", VALUES[None], "MONOCHROME2", 12)  # no suffix, DICM preamble
    (tmp_path / "p2" / "broken.dcm").write_bytes(b"\0" * 300)
    (tmp_path / "p2" / "notes.txt").write_text("ignored")
    src = DicomSource(tmp_path)
    ids = [it.id for it in src]
    assert ids == ["p1/run1.dcm#f000", "p1/run1.dcm#f001", "p1/run1.dcm#f002", "p2/IM0001#f000"]
    assert len(src.problems) == 1 and "p2/broken.dcm" in src.problems[0]
    np.testing.assert_allclose(src[1].load_image(), 1 - VALUES / 4095.0, atol=1e-6)
    assert src[3].load_image().shape == (2, 4)


def test_missing_pydicom_gives_a_clear_error(tmp_path, monkeypatch):
    p = write_dicom(tmp_path / "a.dcm", VALUES[None], "MONOCHROME2", 12)
    monkeypatch.setitem(sys.modules, "pydicom", None)
    with pytest.raises(ImageReadError, match=r"a\.dcm: reading DICOM needs pydicom: pip install 'vasomim\[dicom\]'"):
        read_image(p)
    with pytest.raises(ImageReadError, match="needs pydicom"):
        DicomSource(tmp_path).items
