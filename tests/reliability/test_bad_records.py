"""A record that fails to load never stops a training run (issue 13, item 8): pre-training skips it
(also from a DataLoader worker), fine-tuning leaves its examples out; each is listed in the run's
``rejects.jsonl`` with its id (or image) and reason and counted as ``bad_records`` in ``summary.json``
/ ``metrics.json``. Past ``data.max_bad_fraction`` the run stops naming the first ten. Good data
gives the very same batches as before."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from mpma.cli import main
from mpma.config import ConfigError, FinetuneConfig, load_config
from mpma.data.bad_records import BadRecords, TooManyBadRecords, allowed_bad, check_fraction
from mpma.data.pairs import ManifestPairs, PairCollator
from mpma.data.sampling import EpochBatches, iterate_batches
from mpma.data.synthrad import write_synthrad
from mpma.pipelines.finetuning import finetune_config, run_finetune
from mpma.pipelines.pretraining import run_pretraining

LIMIT = "1100"  # MPMA_MAX_IMAGE_PIXELS of these tests: the 32x32 images pass, a 48x48 one is "too large"


@pytest.fixture(autouse=True)
def pixel_limit(monkeypatch):
    monkeypatch.setenv("MPMA_MAX_IMAGE_PIXELS", LIMIT)


def spoil(folder: Path, cases: list[str]) -> dict[str, str]:
    """Break the images of synthrad ``cases``: corrupt, missing, too large (in turn); returns {case: reason}."""
    reasons = {}
    for i, case in enumerate(cases):
        path = folder / "images" / f"{case}.png"  # every manifest of the case uses it
        kind = ("image does not decode", "image missing", "image too large")[i % 3]
        if kind == "image does not decode":
            path.write_bytes(b"not an image")
        elif kind == "image missing":
            path.unlink()
        else:
            Image.fromarray(np.zeros((48, 48), dtype=np.uint8)).save(path)
        reasons[case] = kind
    return reasons


@pytest.fixture
def synth(tmp_path) -> Path:
    write_synthrad(tmp_path / "synth", n=60, image_size=32)  # 48 train, 6 val, 6 test cases
    return tmp_path / "synth"


def pretrain_config(micro_config, tokenizer_dir, manifest: Path, *overrides: str):
    return micro_config(f"data.dataset={manifest}", "optim.steps=6", "optim.warmup_steps=1", "run.log_every=1",
                        "run.checkpoint_every=6", "run.threads=1", f"text.tokenizer={tokenizer_dir}", *overrides)


def rejects_of(run: Path) -> dict[str, dict]:
    return {row["id"]: row for row in map(json.loads, (run / "rejects.jsonl").read_text().splitlines())}


@pytest.mark.parametrize("workers", [0, 1])
def test_pretraining_skips_bad_records_and_lists_them(synth, micro_config, tokenizer_dir, tmp_path, workers):
    reasons = spoil(synth, ["train_000003", "train_000010", "train_000020", "val_000001"])
    config = pretrain_config(micro_config, tokenizer_dir, synth / "pretrain.jsonl", "data.max_bad_fraction=0.1",
                             f"data.num_workers={workers}")
    summary = run_pretraining(config, tmp_path / "run", progress=False)  # one epoch: every record drawn
    assert summary["bad_records"] == 4
    rows = rejects_of(tmp_path / "run")
    assert {k: r["reason"] for k, r in rows.items()} == reasons
    assert rows["val_000001"]["split"] == "held-out" and rows["train_000003"]["image"].endswith("train_000003.png")
    assert "train_000020" in rows["train_000020"]["detail"] and "48 x 48" in rows["train_000020"]["detail"]
    assert summary["retrieval"]["n_pairs"] == 5  # the bad held-out pair is left out of the retrieval check
    logged = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [row["step"] for row in logged if "loss" in row] == list(range(1, 7))


def test_a_resumed_run_with_bad_records_replays_exactly(synth, micro_config, tokenizer_dir, tmp_path):
    """Smaller batches keep their places in the stream: resuming from step 3 gives the uninterrupted run."""
    spoil(synth, ["train_000003", "train_000010", "val_000001"])
    config = pretrain_config(micro_config, tokenizer_dir, synth / "pretrain.jsonl", "data.max_bad_fraction=0.1",
                             "run.checkpoint_every=3")
    whole = run_pretraining(config, tmp_path / "whole", progress=False)
    shutil.copytree(tmp_path / "whole", tmp_path / "resumed")
    last = sorted((tmp_path / "resumed" / "checkpoints").glob("step_*"))[-1].name
    shutil.rmtree(tmp_path / "resumed" / "checkpoints" / last)  # as if killed after step 3's checkpoint
    (tmp_path / "resumed" / "summary.json").unlink()
    resumed = run_pretraining(None, tmp_path / "resumed", resume=True, progress=False)
    assert resumed["losses"] == whole["losses"] and resumed["bad_records"] == whole["bad_records"] == 3
    logs = [(tmp_path / run / "log.jsonl").read_text().splitlines() for run in ("whole", "resumed")]
    assert [{k: v for k, v in json.loads(line).items() if k != "samples_per_s"} for line in logs[0]] == \
        [{k: v for k, v in json.loads(line).items() if k != "samples_per_s"} for line in logs[1]]
    weights = [load_file(str(tmp_path / run / "checkpoints" / last / "model.safetensors")) for run in ("whole", "resumed")]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    assert len(rejects_of(tmp_path / "resumed")) == 3  # listed once, not again by the replayed steps


def test_pretraining_stops_past_the_bad_fraction_naming_them(synth, micro_config, micro_overrides, tokenizer_dir,
                                                            tmp_path, capsys):
    spoil(synth, ["train_000003", "train_000010", "train_000020"])
    config = pretrain_config(micro_config, tokenizer_dir, synth / "pretrain.jsonl")  # default 0.001: one tolerated
    with pytest.raises(TooManyBadRecords, match=r"2 of 54 training records failed to load.*train_0000") as error:
        run_pretraining(config, tmp_path / "run", progress=False)
    assert "data.max_bad_fraction=0.001" in str(error.value) and "rejects.jsonl" in str(error.value)
    assert len(rejects_of(tmp_path / "run")) == 2
    code = main(["pretrain", "--out", str(tmp_path / "cli"), "--no-progress", *micro_overrides, "optim.steps=6",
                 f"text.tokenizer={tokenizer_dir}", f"data.dataset={synth / 'pretrain.jsonl'}", "run.threads=1"])
    assert code == 2 and "failed to load" in capsys.readouterr().err  # the CLI: an error line, no traceback


def test_finetuning_leaves_out_examples_whose_image_fails(synth, finetune_preset, tmp_path):
    reasons = spoil(synth, ["val_000002", "train_000004", "test_000001"])
    questions = sum(1 for line in (synth / "vqa.jsonl").read_text().splitlines()
                    if json.loads(line)["image"].removeprefix("images/").removesuffix(".png") in reasons)
    common = ["finetune", "vqa", "--data", str(synth / "vqa.jsonl"), "--no-progress", f"preset={finetune_preset}",
              "epochs=1", "data.batch_size=16", "run.threads=1", "head.train_fit=false"]
    assert main([*common, "--out", str(tmp_path / "run"), "data.max_bad_fraction=0.1"]) == 0
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["bad_records"] == questions
    rows = {Path(k).stem: r for k, r in rejects_of(tmp_path / "run").items()}
    assert {k: r["reason"] for k, r in rows.items()} == reasons
    assert sum(sum(r["examples"].values()) for r in rows.values()) == questions
    assert "too large" in rows["test_000001"]["detail"] and "test_000001.png" in rows["test_000001"]["detail"]
    config = finetune_config("vqa", "scratch", str(synth / "vqa.jsonl"), None,
                             [f"preset={finetune_preset}", "epochs=1", "run.threads=1", "data.max_bad_fraction=0"])
    with pytest.raises(TooManyBadRecords, match=r"3 of \d+ images failed to load.*data.max_bad_fraction=0 "):
        run_finetune(config, tmp_path / "strict", progress=False)
    assert len(rejects_of(tmp_path / "strict")) == 3  # listed before the run stops


def test_good_data_gives_the_same_batches(synth, tokenizer):
    """Nothing bad: the filtered stream is the unfiltered one, tensor for tensor (and has no "bad" key)."""
    def batches(filtered: bool):
        dataset = ManifestPairs(synth / "pretrain.jsonl", "train", 32, train=True, seed=3)
        stream = iterate_batches(dataset, PairCollator(tokenizer, 40), EpochBatches(len(dataset), 8, seed=3))
        stream = BadRecords(len(dataset), 0.0).filter(stream) if filtered else stream
        return [next(stream) for _ in range(8)]

    for plain, filtered in zip(batches(False), batches(True)):
        assert plain.keys() == filtered.keys() and "bad" not in filtered
        assert all(torch.equal(plain[k], filtered[k]) for k in plain)


def test_a_batch_of_bad_records_only_is_skipped(tmp_path):
    bad = BadRecords(total=100, max_fraction=0.05, path=tmp_path / "rejects.jsonl")
    rows = [{"id": f"r{i}", "image": f"r{i}.png", "reason": "image missing", "detail": "-"} for i in range(3)]
    good = {"images": torch.zeros(1, 3, 2, 2), "bad": rows[2:]}
    out = list(bad.filter(iter([{"bad": rows[:2]}, good, {"images": torch.ones(2, 3, 2, 2), "bad": rows[:1]}])))
    assert len(out) == 2 and all("bad" not in batch for batch in out)
    assert bad.count == 3 and len((tmp_path / "rejects.jsonl").read_text().splitlines()) == 3  # r0 listed once


def test_the_allowed_number_and_the_message():
    assert [allowed_bad(n, 0.001) for n in (10, 1000, 5999)] == [1, 1, 5]
    assert allowed_bad(10**6, 0.0) == 0
    rows = [{"id": f"r{i}", "reason": "image missing", "detail": f"r{i}.png not found"} for i in range(12)]
    with pytest.raises(TooManyBadRecords) as error:
        check_fraction(rows, 100, 0.05)
    message = str(error.value)
    assert message.startswith("12 of 100 records failed to load, more than data.max_bad_fraction=0.05 allows (5)")
    assert "r9 (image missing: r9.png not found)" in message and "r10 (" not in message and "and 2 more" in message


@pytest.mark.parametrize("value", ["1", "1.5", "-0.1"])
def test_max_bad_fraction_is_checked(value):
    with pytest.raises(ConfigError, match=r"data.max_bad_fraction: expected a value in \[0, 1\)"):
        load_config("tiny", [f"data.max_bad_fraction={value}"])
    with pytest.raises(ConfigError, match=r"data.max_bad_fraction: expected a value in \[0, 1\)"):
        load_config(None, [f"data.max_bad_fraction={value}"], cls=FinetuneConfig)
    assert load_config("tiny", ["data.max_bad_fraction=0"]).data.max_bad_fraction == 0  # 0: stop at the first
