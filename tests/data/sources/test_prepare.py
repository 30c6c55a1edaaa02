"""prepare() on the real files in ../shared/data, strict mode, resume, DICOM, and the CLI."""

from __future__ import annotations

import csv
import json
import os
import shutil
from pathlib import Path

import pytest

from tests import fixtures_releases as fx
from mpma.cli.data import main
from mpma.data.image import load_image, to_tensor
from mpma.data.sources.prepare import PrepareError, prepare
from mpma.data.records import read_manifest
from mpma.data.sources.validate import check_image, validate_manifest

DATA = Path(os.environ.get("MPMA_SHARED_DATA", Path(__file__).resolve().parents[4] / "shared" / "data"))


def _needs(name: str) -> Path:
    path = DATA / name
    if not path.is_dir():
        pytest.skip(f"real data {path} is absent (see shared/data/README.md)")
    return path


def _lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines()]


def test_real_vqa_rad(tmp_path: Path) -> None:
    result = prepare("vqa-rad", _needs("vqa_rad"), tmp_path, workers=2, progress=False)
    assert result.splits == {"train": 3064, "test": 451} and not result.rejected
    assert result.decoded == 314  # each distinct image decoded once, not once per question
    assert result.matches_published is True
    assert "published counts: matches the published 3,064 / 451 (train / test" in result.summary()
    records = read_manifest(tmp_path / "manifest.jsonl", "vqa")
    assert all((tmp_path / r.image).is_file() for r in records[:50])


def _fake_roco(tmp_path: Path, images: int) -> tuple[Path, list[str]]:
    real = _needs("roco") / "data" / "test" / "radiology"
    base = tmp_path / "roco" / "data" / "test" / "radiology"
    base.mkdir(parents=True)
    for name in ("captions.txt", "licences.txt"):
        (base / name).symlink_to(real / name)
    with (real / "licences.txt").open(encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    kept = []
    for row in rows[:images]:
        fx.jpeg(base / "images" / row["PMC_ID"], size=(64, 48))
        kept.append(row["ROCO_ID"])
    return tmp_path / "roco", kept


def test_real_roco_captions_without_images_are_all_rejected(tmp_path: Path) -> None:
    src, _ = _fake_roco(tmp_path, images=0)
    result = prepare("roco", src, tmp_path / "out", workers=2, progress=False)
    assert result.total == 8179 and result.kept == 0
    assert result.rejected == {"image missing": 8179} and result.decoded == 0
    assert len(_lines(tmp_path / "out" / "rejects.jsonl")) == 8179


def test_real_roco_with_a_few_images_keeps_only_those(tmp_path: Path) -> None:
    src, kept = _fake_roco(tmp_path, images=4)
    result = prepare("roco", src, tmp_path / "out", workers=2, progress=False)
    assert [r["id"] for r in _lines(tmp_path / "out" / "manifest.jsonl")] == kept
    assert result.rejected == {"image missing": 8175} and result.splits == {"test": 4}


def test_real_covid_cxr_generic_csv(tmp_path: Path) -> None:
    options = {"file": "metadata.csv", "image_column": "filename", "image_root": "images",
               "text_column": "clinical_notes"}
    result = prepare("generic", _needs("covid_cxr"), tmp_path, options=options, workers=2,
                     progress=False)
    assert result.total == 438 and result.kept == 346
    assert result.rejected == {"empty text": 92}
    # every kept row's image was decoded (5 images are shared by two rows)
    assert result.decoded == len({r["image"] for r in _lines(tmp_path / "manifest.jsonl")}) == 341
    assert validate_manifest(tmp_path / "manifest.jsonl", progress=False).kept == 346


def test_real_dicom_decodes_like_a_jpeg(tmp_path: Path) -> None:
    path = fx.dicom(tmp_path / "ct.dcm")
    tensor = to_tensor(load_image(path), 32)
    assert tensor.shape == (3, 32, 32)
    check = check_image(str(path), pack_size=16)
    assert check.ok and (check.width, check.height) == (128, 128) and check.data[:2] == b"\xff\xd8"


def test_strict_fails_and_writes_rejects_only(tmp_path: Path) -> None:
    src = fx.slake(tmp_path / "src")
    with pytest.raises(PrepareError, match=r"--strict: 2 record\(s\) rejected.*rejects.jsonl"):
        prepare("slake", src, tmp_path / "out", strict=True, workers=0, progress=False)
    assert not (tmp_path / "out" / "manifest.jsonl").exists()
    assert len(_lines(tmp_path / "out" / "rejects.jsonl")) == 2  # failed before decoding


def test_other_dataset_in_out_is_refused(tmp_path: Path) -> None:
    prepare("slake", fx.slake(tmp_path / "s"), tmp_path / "out", workers=0, progress=False)
    with pytest.raises(PrepareError, match="holds a prepared 'slake'"):
        prepare("melinda", fx.melinda(tmp_path / "m"), tmp_path / "out", progress=False)


def _many(src: Path, n: int) -> dict:
    rows = []
    for i in range(n):
        fx.jpeg(src / "images" / f"{i}.jpg", size=(30, 30), value=i)
        rows.append([f"{i}.jpg", f"report {i}", "train" if i % 4 else "val"])
    fx.write_csv(src / "t.csv", ["image", "report", "split"], rows)
    return {"image_root": "images", "text_column": "report", "split_column": "split"}


def test_rerun_resumes_without_duplicates(tmp_path: Path) -> None:
    options = _many(tmp_path / "src", 40)
    args = dict(options=options, workers=0, progress=False)
    first = prepare("generic", tmp_path / "src", tmp_path / "plain", **args)
    again = prepare("generic", tmp_path / "src", tmp_path / "plain", **args)
    assert first.decoded == 40 and again.decoded == 0 and again.kept == 40  # image cache
    assert (tmp_path / "plain" / "manifest.jsonl").read_text().count("\n") == 40

    out = tmp_path / "packed"
    full = prepare("generic", tmp_path / "src", out, pack=True, shard_mb=0.004, **args)
    assert len(full.shards) > 3
    manifest = (out / "manifest.jsonl").read_text()
    # simulate a kill while packing: index and manifest not written, last shard half-written
    last = max(full.shards, key=lambda s: s.file)
    os.replace(out / "shards" / last.file, out / "shards" / f"{last.file}.tmp")
    for name in ("shards/index.json", "manifest.jsonl"):
        (out / name).unlink()
    resumed = prepare("generic", tmp_path / "src", out, pack=True, shard_mb=0.004, **args)
    assert resumed.decoded == last.records  # only the lost shard's images again
    assert (out / "manifest.jsonl").read_text() == manifest
    ids = [r["id"] for s in resumed.shards for r in _shard_ids(out / "shards" / s.file)]
    assert sorted(ids) == sorted(f"row{i}" for i in range(1, 41))  # each exactly once
    other = prepare("generic", tmp_path / "src", out, pack=True, image_size=8, **args)
    assert other.decoded == 40  # another image size: old shards are not reused


def _shard_ids(path: Path) -> list[dict]:
    from mpma.data.shards import shard_records

    return list(shard_records(path))


def test_pool_path_matches_in_process(tmp_path: Path) -> None:
    options = _many(tmp_path / "src", 40)
    fx.corrupt(tmp_path / "src" / "images" / "3.jpg")
    pooled = prepare("generic", tmp_path / "src", tmp_path / "a", options=options, workers=2,
                     progress=False)
    local = prepare("generic", tmp_path / "src", tmp_path / "b", options=options, workers=0,
                    progress=False)
    assert pooled.rejected == local.rejected == {"image does not decode": 1}
    assert (tmp_path / "a" / "manifest.jsonl").read_text() == \
        (tmp_path / "b" / "manifest.jsonl").read_text().replace("/b/", "/a/")


def test_cli_prepare_validate_stats(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    src = fx.chexpert(tmp_path / "src")
    out = tmp_path / "out"
    assert main(["prepare", "chexpert", "--src", str(src), "--out", str(out), "-o",
                 "uncertain=zeros", "--no-progress", "--workers", "0"]) == 0
    text = capsys.readouterr().out
    assert "kept 3, rejected 1" in text and "unknown label value" in text
    assert main(["stats", str(out / "manifest.jsonl")]) == 0
    assert "labels [train]: Cardiomegaly 1" in capsys.readouterr().out
    assert main(["validate", str(out / "manifest.jsonl"), "--no-progress"]) == 0
    assert "3 ok, 0 with problems" in capsys.readouterr().out
    shutil.rmtree(src / "train")
    with (out / "manifest.jsonl").open("a") as handle:
        handle.write('{"id": "x", "labels": "oops", "split": "train"}\n')
    assert main(["validate", str(out / "manifest.jsonl"), "--no-progress",
                 "--rejects", str(tmp_path / "bad.jsonl")]) == 1
    text = capsys.readouterr().out
    assert "3 with problems" in text and "image missing" in text and "invalid record" in text
    assert main(["prepare", "chexpert", "--src", str(tmp_path / "nope"), "--out", str(out)]) == 2
    assert "expected the chexpert release" in capsys.readouterr().err
    assert main(["prepare", "slake", "--layout"]) == 0
    assert "imgs/<folder>/source.jpg" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["prepare", "--help"])
    assert "rsna-pneumonia" in capsys.readouterr().out
