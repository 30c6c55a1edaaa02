"""Tests for mpma.data.sources.vqa_rad on a synthetic layout and on the real release files."""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

import pytest

from mpma.data.sources.vqa_rad import VQARadError, answer_vocabulary, load_vqa_rad

# ../shared/data/vqa_rad next to the repository (see shared/data/README.md); overridable.
REAL_ROOT = Path(os.environ.get(
    "MPMA_VQA_RAD_ROOT", Path(__file__).resolve().parents[4] / "shared" / "data" / "vqa_rad"))


def _entry(qid: int, image: str, answer: object, answer_type: str, **extra: object) -> dict:
    return {"qid": qid, "image_name": image, "image_organ": "HEAD", "answer": answer,
            "answer_type": answer_type, "question_type": "pres", "question": f" Q{qid}? ",
            "phrase_type": "freeform", **extra}


def _make_layout(root: Path, train: list[dict], test: list[dict], images: list[str]) -> Path:
    (root / "images").mkdir(parents=True)
    for name in images:
        (root / "images" / name).write_bytes(b"jpg")
    (root / "trainset.json").write_text(json.dumps(train), encoding="utf-8")
    (root / "testset.json").write_text(json.dumps(test), encoding="utf-8")
    return root


def test_synthetic_layout_quirks(tmp_path: Path) -> None:
    root = _make_layout(
        tmp_path / "vqa",
        train=[_entry(1, "a.jpg", "Yes", "CLOSED "), _entry(2, "a.jpg", 4, "OPEN")],
        test=[_entry(3, "b.jpg", "Not sure.", "OPEN")],
        images=["a.jpg", "b.jpg"],
    )
    splits = load_vqa_rad(root)
    first, second = splits["train"]
    assert first.id == "1" and first.answer_type == "CLOSED" and first.answer == "yes"
    assert first.meta["raw_answer"] == "Yes" and first.meta["raw_answer_type"] == "CLOSED "
    assert first.question == "Q1?" and first.question_type == "PRES"
    assert Path(first.image).is_absolute() and Path(first.image).is_file()
    assert second.answer == "4" and second.meta["raw_answer"] == 4
    assert splits["test"][0].answer == "not sure" and splits["test"][0].split == "test"
    assert answer_vocabulary(splits["train"] + splits["test"]) == ["4", "not sure", "yes"]


def test_missing_root_and_files(tmp_path: Path) -> None:
    with pytest.raises(VQARadError, match="trainset.json.*testset.json.*images"):
        load_vqa_rad(tmp_path / "absent")
    (tmp_path / "partial").mkdir()
    (tmp_path / "partial" / "trainset.json").write_text("[]", encoding="utf-8")
    with pytest.raises(VQARadError, match=r"missing testset\.json, images"):
        load_vqa_rad(tmp_path / "partial")


def test_missing_images_are_listed(tmp_path: Path) -> None:
    train = [_entry(i, f"img{i}.jpg", "yes", "CLOSED") for i in range(8)]
    root = _make_layout(tmp_path / "vqa", train, [], images=["img0.jpg"])
    with pytest.raises(VQARadError) as info:
        load_vqa_rad(root)
    message = str(info.value)
    assert "7 of 8 referenced images are missing" in message
    assert "img1.jpg" in message and "and 2 more" in message
    assert len(load_vqa_rad(root, check_images=False)["train"]) == 8


def test_malformed_entries(tmp_path: Path) -> None:
    bad = _entry(5, "a.jpg", "yes", "CLOSED")
    del bad["question"]
    root = _make_layout(tmp_path / "v1", [bad], [], images=["a.jpg"])
    expected = r"trainset\.json: entry 0 \(qid 5\): missing field 'question'"
    with pytest.raises(VQARadError, match=expected):
        load_vqa_rad(root)
    root = _make_layout(tmp_path / "v2", [_entry(1, "a.jpg", "x", "OPEN")],
                        [_entry(1, "a.jpg", "y", "OPEN")], images=["a.jpg"])
    with pytest.raises(VQARadError, match="qid 1 repeats"):
        load_vqa_rad(root)
    root = _make_layout(tmp_path / "v3", [_entry(1, "a.jpg", "x", "MAYBE")], [], images=["a.jpg"])
    with pytest.raises(VQARadError, match="answer_type"):
        load_vqa_rad(root)


@pytest.fixture(scope="module")
def real_splits() -> dict:
    if not (REAL_ROOT / "trainset.json").is_file():
        pytest.skip(f"real VQA-RAD files not found at {REAL_ROOT} (shared data folder absent)")
    return load_vqa_rad(REAL_ROOT)


def test_real_counts(real_splits: dict) -> None:
    train, test = real_splits["train"], real_splits["test"]
    assert len(train) == 3064 and len(test) == 451
    assert Counter(r.answer_type for r in train) == {"CLOSED": 1823, "OPEN": 1241}
    assert Counter(r.answer_type for r in test) == {"CLOSED": 272, "OPEN": 179}
    assert len({r.id for r in train + test}) == 3064 + 451


def test_real_images_resolve(real_splits: dict) -> None:
    records = real_splits["train"] + real_splits["test"]
    images = {r.image for r in records}
    assert all(Path(p).is_absolute() and Path(p).is_file() for p in images)
    assert len(images) == 314
    # the split is by question: every test image also appears in train
    assert {r.image for r in real_splits["test"]} <= {r.image for r in real_splits["train"]}


def test_real_answer_vocabulary(real_splits: dict) -> None:
    train, test = real_splits["train"], real_splits["test"]
    raw_lower = {str(r.meta["raw_answer"]).lower() for r in train + test}
    assert len(raw_lower) == 517  # the README's count: lower-casing only
    # normalize_answer also drops trailing periods, merging "not sure."/"not sure" and
    # "csf is white."/"csf is white": 517 - 2 = 515
    assert len(answer_vocabulary(train + test)) == 515
    train_vocab = set(answer_vocabulary(train))
    assert sum(r.answer not in train_vocab for r in test) == 47
    assert sum(r.answer not in train_vocab for r in test if r.answer_type == "OPEN") == 41
