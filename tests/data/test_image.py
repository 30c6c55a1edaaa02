"""Tests for mpma.data.image: decoding (PNG, JPEG, DICOM), errors and tensor transforms."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mpma.data.image import CLIP_MEAN, CLIP_STD, ImageError, ImageTransform, load_image, to_tensor


def _ramp(height: int = 6, width: int = 8) -> np.ndarray:
    return (np.arange(height * width).reshape(height, width) * 5).astype(np.uint8)


def _write_dicom(
    path: Path, raw: np.ndarray, *, photometric: str = "MONOCHROME2",
    slope: float = 2.0, intercept: float = -1000.0,
    window: tuple[float, float] | None = (0.0, 2001.0),
) -> Path:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "CT"
    ds.Rows, ds.Columns = raw.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
    ds.PixelRepresentation = 0
    ds.RescaleSlope = slope
    ds.RescaleIntercept = intercept
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    ds.PixelData = raw.astype("<u2").tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


_RAW = np.array([[0, 250, 500, 750, 1000], [1000, 750, 500, 250, 0]], dtype=np.uint16)
# rescaled: raw * 2 - 1000 → -1000, -500, 0, 500, 1000; window C=0, W=2001 (DICOM linear):
# y = ((x + 0.5) / 2000 + 0.5) * 255 clipped → 0, 64, 128, 191, 255
_WINDOWED = np.array([[0, 64, 128, 191, 255], [255, 191, 128, 64, 0]], dtype=np.uint8)


def test_png_8bit_gray_and_rgb(tmp_path: Path) -> None:
    gray = _ramp()
    Image.fromarray(gray).save(tmp_path / "g.png")
    out = load_image(tmp_path / "g.png")
    assert out.dtype == np.uint8 and out.shape == (6, 8)
    np.testing.assert_array_equal(out, gray)

    rgba = np.zeros((4, 5, 4), dtype=np.uint8)
    rgba[..., 0], rgba[..., 3] = 200, 255
    Image.fromarray(rgba).save(tmp_path / "c.png")
    out = load_image(tmp_path / "c.png")
    assert out.shape == (4, 5, 3)
    assert (out[..., 0] == 200).all() and (out[..., 1:] == 0).all()


def test_png_16bit_uses_actual_range(tmp_path: Path) -> None:
    values = np.linspace(0, 4095, 40).round().astype(np.uint16).reshape(5, 8)
    Image.fromarray(values).save(tmp_path / "d.png")
    out = load_image(tmp_path / "d.png")
    assert out.dtype == np.uint8 and out.shape == (5, 8)
    assert out.min() == 0 and out.max() == 255
    expected = np.round(values.astype(np.float64) * 255.0 / 4095.0).astype(np.uint8)
    np.testing.assert_array_equal(out, expected)


def test_jpeg(tmp_path: Path) -> None:
    rgb = np.zeros((16, 16, 3), dtype=np.uint8)
    rgb[..., 0] = np.linspace(0, 255, 16, dtype=np.uint8)[None, :]
    rgb[..., 2] = 90
    Image.fromarray(rgb).save(tmp_path / "a.jpg", quality=95)
    out = load_image(tmp_path / "a.jpg")
    assert out.shape == (16, 16, 3) and out.dtype == np.uint8
    assert np.abs(out.astype(int) - rgb.astype(int)).mean() < 4
    Image.fromarray(_ramp()).save(tmp_path / "g.jpeg")
    assert load_image(tmp_path / "g.jpeg").shape == (6, 8)


def test_dicom_rescale_and_window(tmp_path: Path) -> None:
    path = _write_dicom(tmp_path / "ct.dcm", _RAW)
    np.testing.assert_array_equal(load_image(path), _WINDOWED)
    # dispatch by the DICM magic, whatever the extension
    other = _write_dicom(tmp_path / "ct.bin", _RAW)
    np.testing.assert_array_equal(load_image(other), _WINDOWED)


def test_dicom_monochrome1_and_no_window(tmp_path: Path) -> None:
    inverted = _write_dicom(tmp_path / "m1.dcm", _RAW, photometric="MONOCHROME1")
    np.testing.assert_array_equal(load_image(inverted), 255 - _WINDOWED)
    plain = _write_dicom(tmp_path / "nw.dcm", _RAW, window=None)
    expected = np.round(_RAW.astype(np.float64) * 255.0 / 1000.0).astype(np.uint8)  # min–max
    np.testing.assert_array_equal(load_image(plain), expected)


def test_error_messages_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match=r"missing_scan\.png.*not found"):
        load_image(tmp_path / "missing_scan.png")
    (tmp_path / "empty_scan.png").write_bytes(b"")
    with pytest.raises(ImageError, match=r"empty_scan\.png.*empty"):
        load_image(tmp_path / "empty_scan.png")
    (tmp_path / "garbage_scan.png").write_bytes(b"this is not an image at all" * 10)
    with pytest.raises(ImageError, match=r"garbage_scan\.png.*cannot decode"):
        load_image(tmp_path / "garbage_scan.png")
    (tmp_path / "garbage_scan.dcm").write_bytes(b"\x00" * 50)
    with pytest.raises(ImageError, match=r"garbage_scan\.dcm"):
        load_image(tmp_path / "garbage_scan.dcm")


def test_to_tensor_shapes_and_normalisation() -> None:
    gray = np.full((10, 7), 128, dtype=np.uint8)
    out = to_tensor(gray, 12)
    assert out.shape == (3, 12, 12) and out.dtype == torch.float32
    for c in range(3):
        expected = (128 / 255 - CLIP_MEAN[c]) / CLIP_STD[c]
        assert torch.allclose(out[c], torch.full((12, 12), expected), atol=1e-5)
    rgba = np.zeros((5, 5, 4), dtype=np.uint8)
    rgba[..., 3] = 255
    plain = to_tensor(rgba, 5, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    assert plain.shape == (3, 5, 5) and float(plain.abs().max()) == 0.0
    with pytest.raises(TypeError, match="uint8"):
        to_tensor(gray.astype(np.float32), 12)


def test_transform_eval_matches_to_tensor_and_train_is_seeded() -> None:
    image = np.random.default_rng(0).integers(0, 256, (40, 50, 3), dtype=np.uint8)
    assert torch.equal(ImageTransform(size=16)(image), to_tensor(image, 16))
    train = ImageTransform(size=16, train=True)
    assert train.hflip_prob == 0.0 and train.crop_scale == (0.8, 1.0)
    a = train(image, np.random.default_rng(7))
    b = train(image, np.random.default_rng(7))
    c = train(image, np.random.default_rng(8))
    assert a.shape == (3, 16, 16) and torch.equal(a, b) and not torch.equal(a, c)


def test_transform_flip() -> None:
    image = np.random.default_rng(1).integers(0, 256, (12, 12), dtype=np.uint8)
    flip = ImageTransform(size=12, train=True, crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0),
                          hflip_prob=1.0)
    out = flip(image, np.random.default_rng(0))
    assert torch.equal(out, to_tensor(np.ascontiguousarray(image[:, ::-1]), 12))
    with pytest.raises(ValueError, match="hflip_prob"):
        ImageTransform(hflip_prob=1.5)
