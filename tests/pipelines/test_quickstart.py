"""``mpma quickstart``: the whole pipeline (pre-train, VQA + retrieval from pre-trained and scratch, one table)."""

from __future__ import annotations

import json

import pytest

from mpma.cli import main
from mpma.pipelines import quickstart

MICRO_BUDGET = ["epochs=1", "data.train_size=24", "data.val_size=8", "data.test_size=12", "data.batch_size=8"]


@pytest.fixture()
def micro_budgets(monkeypatch):
    monkeypatch.setattr(quickstart, "QUICK_VQA", MICRO_BUDGET)
    monkeypatch.setattr(quickstart, "QUICK_RETRIEVAL", MICRO_BUDGET)


def test_quickstart_runs_every_stage_and_prints_one_table(tmp_path, capsys, micro_budgets, micro_overrides, tokenizer_dir):
    out = tmp_path / "quick"
    pretrain = [*micro_overrides, "optim.steps=3", "optim.warmup_steps=1", "run.checkpoint_every=3",
                "run.eval_size=16", f"text.tokenizer={tokenizer_dir}"]
    assert main(["quickstart", "--out", str(out), "--no-progress", *pretrain]) == 0
    printed = capsys.readouterr().out
    for row in ("VQA accuracy, overall", "VQA accuracy, open", "VQA accuracy, closed",
                "retrieval image->text R@1", "retrieval text->image R@5"):
        assert f"| {row} |" in printed
    assert (out / "results.md").read_text().strip() in printed
    for task in ("vqa", "retrieval"):
        pre, scratch = (json.loads((out / f"{task}-{init}" / "backbone.json").read_text())
                        for init in ("pretrained", "scratch"))
        # the scratch baseline is the pre-trained run's architecture (micro here, not the tiny preset)
        assert scratch["vision"] == pre["vision"] and scratch["fusion"] == pre["fusion"]
        assert scratch["vision"]["width"] == 32
        assert json.loads((out / f"{task}-scratch" / "config.json").read_text())["init"] == "scratch"
    # a second call finds every stage done and prints the same table without training again
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("*/metrics.json")}
    assert main(["quickstart", "--out", str(out), "--no-progress", *pretrain]) == 0
    assert "pre-training already done" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in out.glob("*/metrics.json")} == stamps
