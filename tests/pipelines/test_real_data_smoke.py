"""Micro end-to-end run of the real-data path, through the command line: a MedPix-layout release is
prepared and mixed with a second manifest for pre-training (tokenizer over the VQA-RAD train
questions too), then VQA is fine-tuned on a VQA-RAD-layout release with the real-data recipe."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from mpma.cli import main
from tests.data.sources.test_medpix import medpix_release

# the micro model on the tiny_real preset (32 px, patch 8)
MICRO_REAL = [
    "vision.image_size=32", "vision.patch_size=8", "vision.width=32", "vision.depth=1", "vision.heads=2",
    "text.width=32", "text.depth=1", "text.heads=2", "text.intermediate=64", "text.vocab_size=300",
    "fusion.width=32", "fusion.depth=1", "fusion.heads=2", "fusion.memory_slots=4",
    "decoder.width=16", "decoder.depth=1", "decoder.heads=2", "objectives.align_dim=16",
    "data.batch_size=4", "optim.steps=4", "optim.warmup_steps=1", "run.log_every=1", "run.checkpoint_every=4",
]
# Words that appear only in the VQA-RAD questions: the pre-training tokenizer must still know them.
QUESTION_WORDS = ["hydronephrosis", "pneumoperitoneum", "hemidiaphragm"]


def vqa_rad_release(root: Path, images: list[Path]) -> Path:
    """A VQA-RAD layout (trainset.json, testset.json, images/) over the given RGB/grayscale images."""
    (root / "images").mkdir(parents=True)
    names = []
    for i, source in enumerate(images):
        name = f"synpic9{i:04d}.jpg"
        image = Image.open(source).convert("RGB") if i % 2 else Image.open(source)  # RGB and grayscale both
        image.save(root / "images" / name)
        names.append(name)
    rng = np.random.default_rng(0)

    def entry(qid: int) -> dict:
        closed = qid % 2 == 0
        word = QUESTION_WORDS[qid % len(QUESTION_WORDS)]
        return {"qid": qid, "image_name": names[qid % len(names)], "image_organ": "ABD",
                "question": f"Is there {word} in image {qid % len(names)}?" if closed else f"What organ shows {word}?",
                "answer": ["Yes", "no"][int(rng.integers(2))] if closed else ["kidney", "liver", "None"][qid % 3],
                "answer_type": "CLOSED" if closed else "OPEN", "question_type": "PRES", "phrase_type": "freeform"}

    (root / "trainset.json").write_text(json.dumps([entry(q) for q in range(40)]))
    (root / "testset.json").write_text(json.dumps([entry(q) for q in range(40, 52)]))
    return root


@pytest.mark.slow
def test_prepare_pretrain_on_a_mixture_then_finetune_vqa(tmp_path):
    medpix = medpix_release(tmp_path / "medpix")
    prepared = tmp_path / "prepared"
    assert main(["data", "prepare", "medpix", "--src", str(medpix), "--out", str(prepared), "--no-progress"]) == 0
    manifest = prepared / "manifest.jsonl"
    rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    assert rows and all(r["split"] in ("train", "val", "test") for r in rows)
    for row in rows:  # the fixture's cases hash to few splits: pre-train on every record
        row["split"] = "train"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    vqa = vqa_rad_release(tmp_path / "vqa_rad", sorted((medpix / "images").glob("*.jpg")))

    run_dir = tmp_path / "pretrain"
    assert main(["pretrain", "--config", "tiny_real", "--out", str(run_dir), "--no-progress", *MICRO_REAL,
                 f"data.sources=[{manifest}@3,synthrad@1]", "data.train_size=16", "run.eval_size=8",
                 f"text.tokenizer_corpora=[vqa-rad:{vqa}]"]) == 0
    losses = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    assert len(losses) == 4 and all(np.isfinite(row["loss"]) for row in losses)

    out = tmp_path / "vqa"
    assert main(["finetune", "vqa", "--config", "finetune/vqa_real", "--init", str(run_dir), "--data", f"vqa-rad:{vqa}",
                 "--out", str(out), "--no-progress", "epochs=2", "data.batch_size=8"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["tokenizer_coverage"]["rate"] == 0.0  # the question words were in the tokenizer's corpora
    assert metrics["tokenizer_coverage"]["tokens_per_word"] < 1.5
    for key in ("test", "train_fit", "test_shuffled_images"):
        assert 0.0 <= metrics[key]["overall"] <= 1.0, key
    assert metrics["test_set"]["records"] == 12 and metrics["test_set"]["matches"] is False  # not the published 451
    config = json.loads((out / "config.json").read_text())
    assert config["head"]["pool"] == "mean" and config["optim"]["head_lr_mult"] == 10.0  # the recipe was applied


@pytest.mark.slow
def test_the_vqa_recipe_runs_unchanged_on_a_prepared_manifest(tmp_path):
    """No dataset-name branch: the recipe fine-tunes from a manifest written by an adapter (as SLAKE or
    VQA-Med-2019 would be), and the test-set identity comes from that manifest's prepare.json."""
    medpix = medpix_release(tmp_path / "medpix")
    vqa = vqa_rad_release(tmp_path / "vqa_rad", sorted((medpix / "images").glob("*.jpg")))
    prepared = tmp_path / "prepared"
    assert main(["data", "prepare", "vqa-rad", "--src", str(vqa), "--out", str(prepared), "--no-progress"]) == 0
    preset = tmp_path / "micro_real.yaml"  # the micro model on tiny_real, as a preset file for a scratch backbone
    sections: dict[str, dict] = {}
    for override in MICRO_REAL:
        key, value = override.split("=")
        section, name = key.split(".")
        if section in ("vision", "text", "fusion", "decoder"):
            sections.setdefault(section, {})[name] = int(value)
    preset.write_text(yaml.safe_dump({"base": "tiny_real", **sections}))
    out = tmp_path / "vqa"
    assert main(["finetune", "vqa", "--config", "finetune/vqa_real", "--data", str(prepared / "manifest.jsonl"),
                 "--out", str(out), "--no-progress", "epochs=1", "data.batch_size=8", f"preset={preset}"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["split_sizes"]["test"] == 12 and 0.0 <= metrics["test"]["overall"] <= 1.0
    assert metrics["test_set"]["records"] == 12
