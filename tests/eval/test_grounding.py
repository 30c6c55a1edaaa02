"""Grounding diagnostics: measured on a micro model, logged during pre-training, summarised and reported."""

from __future__ import annotations

import json

import pytest

from mpma.cli import main
from tests.data.test_pairs_mixture import write_manifest
from mpma.eval.grounding import CONTENT_WORDS, flat_grounding, grounding_report, mlm_image_gap
from mpma.hub import load_model

RUN = "data: {batch_size: 8, train_size: 64}\noptim: {steps: 6}\nrun: {log_every: 2, checkpoint_every: 3, eval_size: 32, grounding_every: 3}\n"


@pytest.fixture(scope="module")
def grounded_run(tmp_path_factory, micro_preset_text):
    folder = tmp_path_factory.mktemp("grounding")
    preset = folder / "micro.yaml"
    preset.write_text(micro_preset_text + RUN)
    assert main(["pretrain", "--config", str(preset), "--out", str(folder / "run"), "--no-progress"]) == 0
    return folder / "run"


def test_the_diagnostics_land_in_the_log_at_each_due_checkpoint(grounded_run):
    rows = [json.loads(line) for line in (grounded_run / "log.jsonl").read_text().splitlines()]
    grounding = [r for r in rows if "grounding" in r]
    assert [r["step"] for r in grounding] == [3, 6]
    for row in grounding:
        values = row["grounding"]
        assert {"pointing_local", "pointing_fusion", "pointing_chance", "mlm_own", "mlm_shuffled", "mlm_gap"} <= set(values)
        assert all(0 <= values[k] <= 1 for k in ("pointing_local", "pointing_fusion", "pointing_chance", "mlm_own"))
        assert values["mlm_gap"] == pytest.approx(values["mlm_own"] - values["mlm_shuffled"])


def test_the_summary_holds_the_last_steps_grounding_block(grounded_run):
    summary = json.loads((grounded_run / "summary.json").read_text())
    block = summary["grounding"]
    assert block["step"] == 6
    assert set(block["pointing_game"]) >= {"hit_rate", "chance"} and set(block["mlm_image_gap"]) >= {"own", "shuffled"}
    assert 0 < block["pointing_game"]["chance"] < 1 and block["mlm_image_gap"]["masked_words"] > 0
    last_logged = [json.loads(line) for line in (grounded_run / "log.jsonl").read_text().splitlines()][-1]
    assert flat_grounding(block) == last_logged["grounding"]  # measured once at the last checkpoint


def test_the_report_and_the_curves_show_grounding(grounded_run):
    assert main(["report", "--run", str(grounded_run), "--examples", "0"]) == 0
    text = next(grounded_run.rglob("report.md")).read_text()
    assert "Grounding at step 6" in text and "pointing game, GLA-local" in text
    assert "MLM accuracy per masked content word" in text
    from mpma.viz.curves import panel_names, read_log

    assert "grounding.pointing_local" in panel_names([read_log(grounded_run / "log.jsonl")])


def test_the_mlm_gap_uses_the_image_of_each_pair(grounded_run):
    loaded = load_model(grounded_run)
    gap = mlm_image_gap(loaded.backbone, loaded.tokenizer, loaded.config, n=32, batch_size=16)
    assert gap["masked_words"] >= 16 and gap["gap"] == pytest.approx(gap["own"] - gap["shuffled"])
    by_word = gap["by_word"]  # the per-word view adds up to the totals
    assert sum(c["n"] for c in by_word.values()) == gap["masked_words"]
    for name in ("own", "shuffled"):
        assert sum(c[name] * c["n"] for c in by_word.values()) == pytest.approx(gap[name] * gap["masked_words"])
    assert set(by_word) <= set(CONTENT_WORDS)
    report = grounding_report(loaded, pointing_cases=16, mlm_pairs=16)
    assert report["pointing_game"]["n"] > 0


def test_without_synthrad_truth_no_diagnostics_are_taken(tmp_path, micro_preset_text):
    """A manifest run has no boxes to point at: grounding_every is ignored, nothing is logged."""
    manifest = write_manifest(tmp_path / "data", n_train=16, n_val=8)
    preset = tmp_path / "micro.yaml"
    preset.write_text(micro_preset_text + RUN)
    run = tmp_path / "run"
    assert main(["pretrain", "--config", str(preset), "--out", str(run), "--no-progress", f"data.dataset={manifest}"]) == 0
    assert "grounding" not in (run / "log.jsonl").read_text()
    assert "grounding" not in json.loads((run / "summary.json").read_text())


@pytest.mark.parametrize("grounding_every, checkpoint_every, warned", [(200, 200, False), (400, 200, False),
                                                                     (200, 700, True), (3, 2, True)])
def test_grounding_taken_less_often_than_asked_is_a_warning(micro_config, grounding_every, checkpoint_every, warned):
    """The diagnostics run at checkpoints: a grounding_every that is not a multiple of checkpoint_every
    would silently thin them out (e.g. 200 and 700: only every 1,400 steps), so it warns with the fix."""
    import warnings

    from mpma.pipelines.pretraining import warn_sparse_grounding

    config = micro_config(f"run.grounding_every={grounding_every}", f"run.checkpoint_every={checkpoint_every}")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        warn_sparse_grounding(config)
    assert bool(caught) == warned
    if warned:
        import math

        assert f"every {math.lcm(grounding_every, checkpoint_every)} steps" in str(caught[0].message)
