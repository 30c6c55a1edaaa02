"""Tests for mpma.data.records: record validation and JSONL manifests."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mpma.data.records import (
    ClassificationRecord,
    ManifestError,
    PretrainRecord,
    VQARecord,
    normalize_answer,
    read_manifest,
    record_from_dict,
    resolve_image,
    write_manifest,
)


def _write_lines(path: Path, objects: list[object]) -> Path:
    path.write_text("".join(json.dumps(o) + "\n" for o in objects), encoding="utf-8")
    return path


def test_normalize_answer() -> None:
    assert normalize_answer("  Yes ") == "yes"
    assert normalize_answer("Not  sure.") == "not sure"
    assert normalize_answer("CSF is white.") == "csf is white"
    assert normalize_answer("left\tlung\n") == "left lung"
    assert normalize_answer("3.5") == "3.5"


def test_answer_type_normalised_and_validated() -> None:
    rec = VQARecord("q1", "a.jpg", "Is it?", "Yes", "CLOSED ", "train")
    assert rec.answer_type == "CLOSED"
    assert rec.answer == "Yes"  # answer text is kept
    assert VQARecord("q2", "a.jpg", "What?", "x", " open", "test").answer_type == "OPEN"
    with pytest.raises(ValueError, match="OPEN"):
        VQARecord("q3", "a.jpg", "What?", "x", "yes/no", "test")


def test_record_validation() -> None:
    with pytest.raises(ValueError, match="text"):
        PretrainRecord("a", "x.png", "   ", "train")
    with pytest.raises(TypeError, match="id"):
        PretrainRecord(3, "x.png", "t", "train")  # type: ignore[arg-type]
    rec = ClassificationRecord("c", "x.png", ["a", "b"], "train")  # type: ignore[arg-type]
    assert rec.labels == ("a", "b")
    hash(rec)  # meta is excluded from the hash
    with pytest.raises(TypeError, match="labels"):
        ClassificationRecord("c", "x.png", "a", "train")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="image or a text"):
        ClassificationRecord("c", None, (), "train")


def test_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "m.jsonl"
    records = [
        PretrainRecord("1", "img/a.png", "No acute findings.", "train", {"source": "x"}),
        PretrainRecord("2", "img/b.png", "Left effusion. ünïcode", "val"),
    ]
    write_manifest(path, records)
    assert read_manifest(path, "pretrain") == records
    assert not list(path.parent.glob("*.tmp")), "temporary file left behind"

    vqa = [VQARecord("v", "i.jpg", "Q?", "Yes", "closed", "test", "PRES", {"organ": "HEAD"})]
    write_manifest(tmp_path / "v.jsonl", vqa)
    assert read_manifest(tmp_path / "v.jsonl", "vqa") == vqa

    cls = [
        ClassificationRecord("c1", None, ("entailment",), "train", text="a", text_pair="b"),
        ClassificationRecord("c2", "x.png", (), "train"),
    ]
    write_manifest(tmp_path / "c.jsonl", cls)
    assert read_manifest(tmp_path / "c.jsonl", "classification") == cls


def test_unknown_fields_go_to_meta(tmp_path: Path) -> None:
    path = _write_lines(tmp_path / "m.jsonl", [
        {"id": "a", "image": "a.png", "text": "t", "split": "train", "organ": "CHEST",
         "meta": {"k": 1}},
    ])
    (rec,) = read_manifest(path, "pretrain")
    assert rec.meta == {"k": 1, "organ": "CHEST"}
    with pytest.raises(ValueError, match="both at top level"):
        record_from_dict({"id": "a", "image": "a", "text": "t", "split": "s", "k": 2,
                          "meta": {"k": 1}}, "pretrain")


def test_malformed_line_names_path_line_and_field(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(
        json.dumps({"id": "a", "image": "a.png", "text": "t", "split": "train"}) + "\n"
        "\n"
        + json.dumps({"id": "b", "image": "b.png", "split": "train"}) + "\n",
        encoding="utf-8",
    )
    with pytest.raises(ManifestError) as info:
        read_manifest(path, "pretrain")
    message = str(info.value)
    assert f"{path}:3:" in message
    assert "missing field 'text'" in message

    path.write_text('{"id": "a", "image": \n', encoding="utf-8")
    with pytest.raises(ManifestError, match=r"bad\.jsonl:1: not valid JSON"):
        read_manifest(path, "pretrain")
    path.write_text("[1, 2]\n", encoding="utf-8")
    with pytest.raises(ManifestError, match="expected a JSON object"):
        read_manifest(path, "pretrain")


def test_duplicate_ids_name_both_lines(tmp_path: Path) -> None:
    row = {"id": "dup", "image": "a.png", "text": "t", "split": "train"}
    other = {**row, "id": "other"}
    path = _write_lines(tmp_path / "d.jsonl", [row, other, row])
    with pytest.raises(ManifestError) as info:
        read_manifest(path, "pretrain")
    message = str(info.value)
    assert f"{path}:3:" in message and f"{path}:1" in message and "'dup'" in message

    rec = PretrainRecord("x", "a.png", "t", "train")
    with pytest.raises(ManifestError, match="duplicate id 'x'"):
        write_manifest(tmp_path / "w.jsonl", [rec, rec])
    assert not (tmp_path / "w.jsonl").exists()


def test_missing_manifest_and_bad_kind(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="nope.jsonl"):
        read_manifest(tmp_path / "nope.jsonl", "pretrain")
    with pytest.raises(ValueError, match="unknown manifest kind"):
        read_manifest(tmp_path / "nope.jsonl", "captions")  # type: ignore[arg-type]


def test_mixed_types_rejected(tmp_path: Path) -> None:
    a = PretrainRecord("a", "a.png", "t", "train")
    b = VQARecord("b", "a.png", "q", "x", "OPEN", "train")
    with pytest.raises(ManifestError, match="one record type"):
        write_manifest(tmp_path / "m.jsonl", [a, b])


def test_resolve_image(tmp_path: Path) -> None:
    manifest = tmp_path / "data" / "m.jsonl"
    rec = PretrainRecord("a", "../imgs/a.png", "t", "train")
    assert resolve_image(manifest, rec) == tmp_path / "imgs" / "a.png"
    absolute = PretrainRecord("b", str(tmp_path / "z.png"), "t", "train")
    assert resolve_image(manifest, absolute) == tmp_path / "z.png"
    with pytest.raises(ValueError, match="no image"):
        resolve_image(manifest, ClassificationRecord("c", None, (), "train", text="t"))
