"""``mpma predict`` and ``mpma convert --run`` end to end on a micro VQA model fine-tuned by ``mpma finetune``."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import torch

from mpma.cli import main

SMALL_DATA = ["data.train_size=16", "data.val_size=8", "data.test_size=8", "data.batch_size=8", "epochs=1"]


@pytest.fixture(scope="module")
def vqa_run(tmp_path_factory, micro_preset_text) -> Path:
    root = tmp_path_factory.mktemp("predict")
    preset = root / "micro.yaml"
    preset.write_text(micro_preset_text + "data: {train_size: 64}\n")  # the tokenizer is trained on 64 reports
    out = root / "vqa-run"
    assert main(["finetune", "vqa", "--out", str(out), "--no-progress", f"preset={preset}", *SMALL_DATA]) == 0
    return out


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth")
    assert main(["data", "synth", "--out", str(out), "--n", "3", "--image-size", "32"]) == 0
    (out / "images" / "broken.png").write_bytes(b"not an image")
    return out


def _json(capsys):
    return json.loads(capsys.readouterr().out)


def test_predict_vqa_single(vqa_run, synth, capsys):
    image = synth / "images" / "train_000000.png"
    assert main(["predict", "vqa", "--model", str(vqa_run), "--image", str(image), "--question", "Is there a nodule?",
                 "--top-k", "2"]) == 0
    result = _json(capsys)
    classes = json.loads((vqa_run / "task.json").read_text())["classes"]
    assert result["question"] == "Is there a nodule?" and len(result["answers"]) == 2
    assert all(a["answer"] in classes and 0 <= a["probability"] <= 1 for a in result["answers"])


def test_predict_vqa_manifest_reports_bad_records_and_goes_on(vqa_run, synth, tmp_path, capsys):
    records = [json.loads(line) for line in (synth / "vqa.jsonl").read_text().splitlines()][:3]
    records.insert(1, {"id": "bad", "image": "images/broken.png", "question": "Is there a nodule?"})
    manifest = synth / "predict.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in records))
    out = tmp_path / "answers.jsonl"
    assert main(["predict", "vqa", "--model", str(vqa_run), "--manifest", str(manifest), "--out", str(out),
                 "--batch-size", "2"]) == 1  # one record failed; the others were answered
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in rows] == [r["id"] for r in records]
    assert "broken.png: cannot decode image" in rows[1]["error"]
    assert "1 of 4 records failed" in capsys.readouterr().err
    for row, record in zip([rows[0], rows[2], rows[3]], [records[0], records[2], records[3]]):
        assert row["question"] == record["question"] and row["answer"] == row["answers"][0]["answer"]
    assert main(["predict", "vqa", "--model", str(vqa_run), "--image", str(synth / records[2]["image"]),
                 "--question", records[2]["question"]]) == 0
    single = _json(capsys)["answers"]
    assert single[0]["answer"] == rows[2]["answer"]
    assert abs(single[0]["probability"] - rows[2]["answers"][0]["probability"]) < 1e-5


def test_export_run_then_predict_from_the_folder(vqa_run, synth, tmp_path, capsys):
    folder = tmp_path / "exported"
    assert main(["convert", "--run", str(vqa_run), "--out", str(folder)]) == 0
    capsys.readouterr()
    card = (folder / "MODEL_CARD.md").read_text()
    assert "mpma vqa model" in card and "## Evaluation" in card and "overall" in card and "not for clinical decisions" in card
    image = str(synth / "images" / "train_000001.png")
    answers = []
    for model in (vqa_run, folder):
        assert main(["predict", "vqa", "--model", str(model), "--image", image, "--question", "Is there an effusion?"]) == 0
        answers.append(_json(capsys)["answers"])
    assert answers[0] == answers[1]


def test_predict_retrieve_and_zero_shot(vqa_run, synth, capsys):
    images = [str(p) for p in sorted((synth / "images").glob("train_*.png"))]
    assert main(["predict", "retrieve", "--model", str(vqa_run), "--query", "a nodule in the right lung",
                 "--images", *images, "--top-k", "2"]) == 0
    result = _json(capsys)
    assert result["direction"] == "t2i" and [r["rank"] for r in result["results"]] == [1, 2]
    assert {r["candidate"] for r in result["results"]} <= set(images)
    assert main(["predict", "retrieve", "--model", str(vqa_run), "--image", images[0], "--manifest",
                 str(synth / "pretrain.jsonl"), "--top-k", "3"]) == 0
    by_image = _json(capsys)
    assert by_image["direction"] == "i2t" and len(by_image["results"]) == 3 and "id" in by_image["results"][0]
    assert main(["predict", "zero-shot", "--model", str(vqa_run), "--image", images[0], "--labels", "nodule",
                 "effusion", "--template", "a radiograph with {label}"]) == 0
    probabilities = _json(capsys)["probabilities"]
    assert set(probabilities) == {"nodule", "effusion"} and abs(sum(probabilities.values()) - 1) < 1e-5


def test_predict_errors_are_clear(vqa_run, synth, capsys):
    assert main(["predict", "classify", "--model", str(vqa_run), "--image", str(synth / "images" / "train_000000.png")]) == 2
    assert "this model's task is vqa" in capsys.readouterr().err
    assert main(["predict", "vqa", "--model", str(vqa_run), "--image", str(synth / "images" / "broken.png"),
                 "--question", "x?"]) == 2
    assert "broken.png: cannot decode image" in capsys.readouterr().err
    assert main(["predict", "vqa", "--model", str(synth), "--image", "x.png", "--question", "x?"]) == 2
    assert "neither a model folder" in capsys.readouterr().err


def test_console_script_predicts(vqa_run, synth, venv_bin, mpma_env):
    """The installed ``mpma`` entry point, as a user runs it."""
    done = subprocess.run([str(venv_bin / "mpma"), "predict", "vqa", "--model", str(vqa_run), "--image",
                           str(synth / "images" / "train_000002.png"), "--question", "Is the heart enlarged?",
                           "--device", "cpu"], capture_output=True, text=True, env=mpma_env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["answers"]


def test_pretraining_run_exports_to_a_backbone_folder(tmp_path, synth, capsys, micro_preset_text):
    from safetensors.torch import load_file

    from mpma.engine.checkpoint import latest_checkpoint
    from mpma.hub import from_pretrained

    preset = tmp_path / "micro.yaml"
    preset.write_text(micro_preset_text + "optim: {steps: 2, warmup_steps: 1}\nrun: {checkpoint_every: 2, eval_size: 16}\n"
                      "data: {train_size: 64, batch_size: 8}\n")
    run = tmp_path / "pre"
    assert main(["pretrain", "--config", str(preset), "--out", str(run), "--no-progress"]) == 0
    assert main(["convert", "--run", str(run), "--out", str(tmp_path / "model")]) == 0
    loaded = from_pretrained(tmp_path / "model")
    assert loaded.task is None and loaded.backbone.mlm_head is not None  # pre-training heads are kept
    saved = load_file(str(latest_checkpoint(run) / "model.safetensors"))
    for key, value in loaded.backbone.state_dict().items():
        assert torch.equal(value, saved[key]), key
    assert "data `synthrad`, 2 steps" in (tmp_path / "model" / "MODEL_CARD.md").read_text()
    capsys.readouterr()
    image = str(synth / "images" / "train_000000.png")
    assert main(["predict", "zero-shot", "--model", str(run), "--image", image, "--labels", "a", "b"]) == 0
    assert set(_json(capsys)["probabilities"]) == {"a", "b"}
