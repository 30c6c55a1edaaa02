"""The diagnostic benchmark scripts run on a micro pre-training run (their figures are not asserted)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_mlm_image_dependence_masks_one_content_word_per_report(micro_run):
    result = _script("mlm_image_dependence").masked_word_accuracy(str(micro_run), n=24, batch_size=8)
    assert 20 <= result["masked words"] <= 24  # normal reports still name "no ..." words
    assert 0.0 <= result["own image"] <= 1.0 and 0.0 <= result["shuffled image"] <= 1.0


def test_real_vqa_summarises_seeds_and_refuses_a_missing_shared_folder(tmp_path, monkeypatch, capsys):
    import pytest

    real_vqa = _script("real_vqa")
    assert real_vqa.mean_sd([40.0, 50.0, 60.0]) == {"mean": 50.0, "sd": 10.0, "values": [40.0, 50.0, 60.0]}
    entry = {key: real_vqa.mean_sd([50.0, 52.0]) for key in ("overall", "open", "closed", "shuffled_overall")}
    table = real_vqa.markdown_table({"mpma": {**entry, "shuffled_drop": 0.0}})
    assert "| mpma | 51.0 ± 1.4 |" in table and table.rstrip().endswith("| 2 |")
    monkeypatch.setattr("sys.argv", ["real_vqa.py", "--shared", str(tmp_path), "--out", str(tmp_path / "out")])
    with pytest.raises(SystemExit):
        real_vqa.main()
    assert "medpix" in capsys.readouterr().err


def test_vqa_fit_trains_every_path_of_a_micro_model(tmp_path, micro_preset_text):
    preset = tmp_path / "micro.yaml"
    preset.write_text(micro_preset_text)
    vqa_fit = _script("vqa_fit")
    for path in vqa_fit.PATHS:
        result = vqa_fit.fit(path, "synthrad", steps=2, lr=1e-3, preset=str(preset), batch_size=8,
                             overrides=["fusion.memory_slots=0"] if path == "fusion" else [],
                             data_overrides=("data.train_size=8", "data.val_size=4", "data.test_size=4"))
        assert result["path"] == path and 0.0 <= result["train_accuracy_last_30_steps"] <= 1.0


def test_real_vqa_budget_fine_tunes_from_every_kept_checkpoint(tmp_path, monkeypatch):
    """The budget curve: one pre-training run, a fine-tune per checkpoint (every --every steps) and
    from scratch, summarised per row. The mpma command line is stubbed: only the plan is tested."""
    import json

    budget = _script("real_vqa_budget")  # it puts benchmarks/ on sys.path to share real_vqa's helpers
    calls = []

    def fake_mpma(*args, log):
        calls.append(args)
        out = Path(args[args.index("--out") + 1])
        out.mkdir(parents=True, exist_ok=True)
        if args[0] == "pretrain":
            (out / "summary.json").write_text("{}")
        else:
            test = {"overall": 0.5, "open": 0.3, "closed": 0.6}
            (out / "metrics.json").write_text(json.dumps({"test": test, "test_shuffled_images": {"overall": 0.45},
                                                          "train_fit": {"overall": 0.9}, "best_epoch": 3}))

    monkeypatch.setattr(budget, "mpma", fake_mpma)
    monkeypatch.setattr(budget, "prepare_data", lambda shared, out: {"medpix": tmp_path / "m.jsonl",
                                                                       "covid_cxr": tmp_path / "c.jsonl"})
    monkeypatch.setattr("sys.argv", ["real_vqa_budget.py", "--shared", str(tmp_path), "--out", str(tmp_path / "out"),
                                     "--steps", "1000", "--every", "500", "--seeds", "2"])
    budget.main()
    pretrain = [c for c in calls if c[0] == "pretrain"]
    assert len(pretrain) == 1 and "run.keep_checkpoints=0" in pretrain[0] and "run.checkpoint_every=500" in pretrain[0]
    inits = sorted({c[c.index("--init") + 1] for c in calls if c[0] == "finetune"})
    assert inits == sorted(["scratch", *(str(tmp_path / "out" / "pretrain-mpma" / "checkpoints" / f"step_{s:08d}")
                                         for s in (500, 1000))])
    report = json.loads((tmp_path / "out" / "real_vqa_budget.json").read_text())
    assert set(report["vqa_rad"]) == {"scratch", "mpma_step500", "mpma_step1000"}
    assert report["vqa_rad"]["scratch"]["overall"]["mean"] == 50.0 and report["vqa_rad"]["scratch"]["shuffled_drop"] == 5.0
