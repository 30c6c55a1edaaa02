"""Downstream data built for a task: VQA validation is held out by image, never by question."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mpma.config import TaskDataConfig
from mpma.tasks.base import get_task
from mpma.tasks.data import build_task_data, held_out_split


def vqa_manifest(folder: Path, images: int = 20, questions_per_image: int = 4) -> Path:
    """A VQA manifest with train and test splits only (validation comes out of train)."""
    rows = []
    for i in range(images):
        split = "test" if i >= images - 4 else "train"
        for q in range(questions_per_image):
            rows.append({"id": f"{i}-{q}", "image": f"img{i}.png", "question": f"question {q} about {i}?",
                         "answer": "yes" if q % 2 else "no", "answer_type": "CLOSED", "split": split})
    path = folder / "vqa.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_vqa_validation_from_a_manifest_is_held_out_by_image(tmp_path, seed):
    manifest = vqa_manifest(tmp_path)
    data = build_task_data(get_task("vqa"), TaskDataConfig(dataset=str(manifest), val_fraction=0.25, seed=seed), 32)
    train_images = {e["image"] for e in data.splits["train"]}
    val_images = {e["image"] for e in data.splits["val"]}
    assert val_images and not train_images & val_images
    assert len(val_images) == 4  # 25% of the 16 train images, with all their questions
    assert len(data.splits["val"]) == 16 and len(data.splits["train"]) == 48


def test_val_fraction_zero_holds_nothing_out_and_keeps_a_dataset_validation_split(tmp_path):
    manifest = vqa_manifest(tmp_path)
    data = build_task_data(get_task("vqa"), TaskDataConfig(dataset=str(manifest), val_fraction=0.0), 32)
    assert data.splits["val"] == [] and len(data.splits["train"]) == 64  # all 16 train images, 4 questions each
    rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    rows[0]["split"] = "val"  # a dataset's own validation split is not made by val_fraction: it stays
    manifest.write_text("".join(json.dumps(row) + "\n" for row in rows))
    data = build_task_data(get_task("vqa"), TaskDataConfig(dataset=str(manifest), val_fraction=0.0), 32)
    assert len(data.splits["val"]) == 1 and len(data.splits["train"]) == 63


def test_held_out_split_without_groups_splits_examples():
    examples = [{"group": i // 4, "n": i} for i in range(40)]
    train, val = held_out_split(examples, 0.25, seed=0)
    assert len(val) == 10 and len(train) == 30
    assert {e["group"] for e in train} & {e["group"] for e in val}  # by example, groups are cut
    train, val = held_out_split(examples, 0.25, seed=0, group_key="group")
    assert not {e["group"] for e in train} & {e["group"] for e in val}


REAL_VQA_RAD = Path(__file__).resolve().parents[3] / "shared" / "data" / "vqa_rad"


@pytest.mark.skipif(not (REAL_VQA_RAD / "trainset.json").is_file(), reason="needs ../shared/data/vqa_rad")
def test_real_vqa_rad_validation_images_are_never_trained_on():
    data = build_task_data(get_task("vqa"), TaskDataConfig(dataset=f"vqa-rad:{REAL_VQA_RAD}"), 32)
    train_images = {e["image"] for e in data.splits["train"]}
    val_images = {e["image"] for e in data.splits["val"]}
    assert not train_images & val_images
    assert len(data.splits["train"]) + len(data.splits["val"]) == 3064 and len(data.splits["test"]) == 451
    assert 0.05 < len(val_images) / (len(train_images) + len(val_images)) < 0.15  # val_fraction 0.1 of the images
    test_images = {e["image"] for e in data.splits["test"]}
    assert test_images & val_images  # so the default hold-out hides some test images from training
    everything = build_task_data(get_task("vqa"), TaskDataConfig(dataset=f"vqa-rad:{REAL_VQA_RAD}", val_fraction=0.0), 32)
    assert len(everything.splits["train"]) == 3064 and not everything.splits["val"]
    assert test_images <= {e["image"] for e in everything.splits["train"]}  # every test image is a train image
