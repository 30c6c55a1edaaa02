"""Decompression bombs are refused from their header (issue 13, item 9): a 140 KB PNG declaring
12000 x 12000 pixels is never decoded by ``load_image``, ``mpma data validate`` or ``mpma predict``
(which stays far below 1 GB); the limit (64 megapixels) can be raised with ``MPMA_MAX_IMAGE_PIXELS``."""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
from PIL import ImageFile

from mpma.cli import main
from mpma.data.image import MAX_IMAGE_PIXELS, ImageError, ImageTooLargeError, load_image, max_image_pixels
from tests.reliability.micro_folders import save_micro_models, write_image


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def bomb_png(path: Path, side: int = 12000) -> Path:
    """A genuine grayscale PNG of ``side`` x ``side`` black pixels: 144 MB decoded, ~140 KB on disk."""
    compressor = zlib.compressobj(9)
    row = b"\x00" * (side + 1)  # filter byte + pixels
    data = b"".join(compressor.compress(row) for _ in range(side)) + compressor.flush()
    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", data) + _chunk(b"IEND", b""))
    return path


@pytest.fixture(scope="module")
def bomb(tmp_path_factory) -> Path:
    return bomb_png(tmp_path_factory.mktemp("bomb") / "bomb.png")


@pytest.fixture
def no_decoding(monkeypatch):
    """Fail the test if PIL decodes any pixel."""
    def load(self):
        raise AssertionError("PIL decoded pixels of an image that should have been refused")

    monkeypatch.setattr(ImageFile.ImageFile, "load", load)


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_a_bomb_is_refused_before_decoding(bomb, no_decoding):
    assert bomb.stat().st_size < 200_000
    with pytest.raises(ImageTooLargeError) as error:
        load_image(bomb)
    message = str(error.value)
    assert str(bomb) in message and "12000 x 12000" in message and "limit of 64 megapixels" in message
    assert "MPMA_MAX_IMAGE_PIXELS" in message
    assert isinstance(error.value, ImageError)  # every caller that handles a bad image handles this one


def test_the_limit_is_a_parameter_and_an_environment_variable(tmp_path, monkeypatch):
    image = write_image(tmp_path / "small.png", size=40)  # 1,600 pixels
    assert max_image_pixels() == MAX_IMAGE_PIXELS == 64_000_000
    with pytest.raises(ImageTooLargeError, match="40 x 40 pixels"):
        load_image(image, max_pixels=1000)
    monkeypatch.setenv("MPMA_MAX_IMAGE_PIXELS", "1000")
    with pytest.raises(ImageTooLargeError, match="limit of 0.001 megapixels"):
        load_image(image)
    monkeypatch.setenv("MPMA_MAX_IMAGE_PIXELS", "2e3")
    assert load_image(image).shape == (40, 40)
    monkeypatch.setenv("MPMA_MAX_IMAGE_PIXELS", "lots")
    with pytest.raises(ValueError, match="MPMA_MAX_IMAGE_PIXELS='lots'"):
        load_image(image)


def test_a_dicom_declaring_a_huge_image_is_refused_from_its_header(tmp_path, no_decoding):
    import pydicom
    from pydicom.data import get_testdata_file

    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.Rows = ds.Columns = 9000  # the pixel data does not match: decoding it would fail, reading it is refused
    ds.save_as(tmp_path / "huge.dcm")
    with pytest.raises(ImageTooLargeError, match=r"huge\.dcm: image too large: it declares 9000 x 9000"):
        load_image(tmp_path / "huge.dcm")


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_validate_rejects_a_bomb_as_too_large(bomb, tmp_path, capsys, no_decoding):
    shutil.copy(bomb, tmp_path / "bomb.png")
    records = [{"id": "bomb", "image": "bomb.png", "text": "a chest", "split": "train"}]
    (tmp_path / "m.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    rejects = tmp_path / "rejects.jsonl"
    code = main(["data", "validate", str(tmp_path / "m.jsonl"), "--rejects", str(rejects), "--no-progress",
                 "--workers", "0"])
    assert code == 1
    row = json.loads(rejects.read_text())
    assert row["id"] == "bomb" and row["reason"] == "image too large" and "12000 x 12000" in row["detail"]
    assert "image too large" in capsys.readouterr().out


def test_predict_refuses_a_bomb_and_stays_under_1_gb(bomb, tmp_path_factory, micro_config, tokenizer, mpma_env):
    model = save_micro_models(tmp_path_factory.mktemp("bomb-models"), micro_config, tokenizer)["vqa"]
    folder = bomb.parent
    write_image(folder / "ok.png")
    records = [{"id": "bomb", "image": "bomb.png", "question": "Is it?"},
               {"id": "ok", "image": "ok.png", "question": "Is it?"}]
    (folder / "q.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    script = ("import json, resource, sys\nfrom mpma.cli import main\n"
              f"single = main(['predict', 'vqa', '--model', {str(model)!r}, '--image', {str(bomb)!r}, "
              "'--question', 'Is it?', '--device', 'cpu'])\n"
              f"batch = main(['predict', 'vqa', '--model', {str(model)!r}, '--manifest', {str(folder / 'q.jsonl')!r}, "
              f"'--out', {str(folder / 'answers.jsonl')!r}, '--device', 'cpu'])\n"
              "print(json.dumps({'single': single, 'batch': batch, "
              "'peak_kb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                          env={**mpma_env, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["single"] == 2 and "image too large" in done.stderr  # refused with a clear error
    assert result["batch"] == 1  # the bomb is an error row, the other record is answered
    rows = [json.loads(line) for line in (folder / "answers.jsonl").read_text().splitlines()]
    assert "image too large" in rows[0]["error"] and "answer" in rows[1]
    assert result["peak_kb"] < 1_000_000, f"peak memory {result['peak_kb'] / 1e6:.2f} GB"
