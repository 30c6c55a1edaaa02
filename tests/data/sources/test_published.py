"""Published counts: the registry, the comparison `mpma data prepare` prints and records, --strict,
the test-set identity of a fine-tuning run and how `mpma report` shows it."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from tests import fixtures_releases as fx
from mpma.cli.data import main
from mpma.data.sources.adapters import ADAPTERS
from mpma.data.sources.adapters.vqa import SlakeAdapter
from mpma.data.sources.identity import describe_identity
from mpma.data.sources.identity import test_set_identity as identity_of
from mpma.data.sources.prepare import PrepareError, prepare
from mpma.data.sources.published import TOTAL, Published, compare

DOCS = Path(__file__).resolve().parents[3] / "docs" / "datasets.md"


def test_registry_has_counts_source_and_docs() -> None:
    docs = DOCS.read_text(encoding="utf-8")
    for name, cls in ADAPTERS.items():
        if name == "generic":
            assert cls.published == ()
            continue
        assert cls.published, f"{name} has no published counts"
        for entry in cls.published:
            assert entry.source and entry.counts
            for key, count in entry.counts.items():
                assert f"{count:,}" in docs, f"{name} {key} {count:,} not cited in datasets.md"
    verified = {"vqa-rad": {"train": 3064, "test": 451},
                "slake": {"train": 4919, "val": 1053, "test": 1061},
                "vqa-med-2019": {"train": 12792, "val": 2000, "test": 500},
                "medpix": {TOTAL: 2050}}
    for name, counts in verified.items():
        entry = ADAPTERS[name].published[0]
        assert dict(entry.counts) == counts and not entry.unverified
    assert ADAPTERS["slake"].published[0].conditions == {"language": "en"}


def test_published_rejects_bad_keys() -> None:
    with pytest.raises(ValueError, match="published count key 'dev'"):
        Published({"dev": 1}, source="x")
    with pytest.raises(ValueError, match="unverified"):
        Published({"test": 1}, source="x", unverified=("train",))


def test_compare_explains_each_difference() -> None:
    entry = Published({"train+val": 10, "test": 5, TOTAL: 16}, source="paper",
                      unverified=("test",), note="read the paper")
    rejected = Counter({("train", "empty answer"): 2, ("test", "image missing"): 1,
                        (None, "malformed entry"): 1})
    excluded = Counter({("val", "q_lang zh"): 3})
    [result] = compare([entry], {}, {"train": 4, "val": 1, "test": 3}, rejected, excluded)
    train_val, test, total = result.checks
    assert train_val.explanation() == (
        "5 differs from the published 10 by -5: rejected 2 (empty answer 2); excluded by "
        "option 3 (q_lang zh 3)")
    assert test.explanation() == (
        "3 differs from the published 5 by -2: rejected 1 (image missing 1); the release read "
        "here has 1 fewer entries than published (1 rejects whose split is unknown may belong "
        "here: malformed entry 1) (published count unverified)")
    assert total.explanation().startswith("8 differs from the published 16 by -8: rejected 4")
    assert [c.key for c in result.differences(verified_only=True)] == ["train+val", TOTAL]
    lines = result.lines()
    assert lines[0] == "published counts (records; paper):"
    assert lines[-1] == "  note: read the paper"
    info = result.to_dict()
    assert info["compared"] and info["matches"] is False
    assert info["counts"]["test"]["unsplit_rejects"] == {"malformed entry": 1}


def test_compare_condition_not_met() -> None:
    entry = Published({"test": 5}, source="paper", conditions={"language": "en"})
    [result] = compare([entry], {"language": "zh"}, {"test": 2}, {}, {})
    assert not result.compared and result.to_dict()["matches"] is None
    assert result.lines() == ["published counts not compared: paper gives them for language=en; "
                              "this run does not meet language=en (this run: zh)"]


def _small_slake_counts(monkeypatch: pytest.MonkeyPatch, counts: dict) -> None:
    entry = Published(counts, unit="English QA pairs", conditions={"language": "en"},
                      source="a small paper")
    monkeypatch.setattr(SlakeAdapter, "published", (entry,))


def test_prepare_reports_difference_with_reasons(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture) -> None:
    """fx.slake: train 2 English (one with an empty image file) + 1 Chinese, val 1, test 2
    (a blank answer, a malformed entry)."""
    _small_slake_counts(monkeypatch, {"train": 3, "val": 1, "test": 2})
    src, out = fx.slake(tmp_path / "src"), tmp_path / "out"
    assert main(["prepare", "slake", "--src", str(src), "--out", str(out), "--workers", "0",
                 "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "published counts (English QA pairs, language=en; a small paper):" in text
    assert ("train  1 differs from the published 3 by -2: rejected 1 (image file empty 1); "
            "excluded by option 1 (q_lang zh 1)") in text
    assert "val    1 matches the published 1" in text
    assert ("test   0 differs from the published 2 by -2: rejected 2 (empty answer 1, "
            "malformed entry 1)") in text
    info = json.loads((out / "prepare.json").read_text())
    assert info["matches_published"] is False and info["settings"]["language"] == "en"
    [published] = info["published"]
    assert published["counts"]["val"]["matches"] is True
    assert published["counts"]["test"]["rejected"] == {"empty answer": 1, "malformed entry": 1}
    assert published["counts"]["train"]["excluded"] == {"q_lang zh": 1}


def test_prepare_matching_counts_say_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _small_slake_counts(monkeypatch, {"train": 1, "val": 1})
    result = prepare("slake", fx.slake(tmp_path / "src"), tmp_path / "out", workers=0,
                     progress=False)
    assert result.matches_published is True
    assert ("  published counts: matches the published 1 / 1 (train / val English QA pairs, "
            "language=en; a small paper)") in result.summary()


def test_real_registry_small_release_and_strict(tmp_path: Path) -> None:
    """A 3-question VQA-RAD release against the real published 3,064 / 451."""
    src = tmp_path / "src"
    entry = {"image_name": "a.jpg", "answer": "None", "answer_type": "OPEN",
             "question_type": "PRES", "question": "Any disease?"}
    src.mkdir()
    (src / "trainset.json").write_text(json.dumps([{**entry, "qid": 1}, {**entry, "qid": 2}]))
    (src / "testset.json").write_text(json.dumps([{**entry, "qid": 3}]))
    fx.jpeg(src / "images" / "a.jpg")
    result = prepare("vqa-rad", src, tmp_path / "out", workers=0, progress=False)
    summary = result.summary()
    assert ("test   1 differs from the published 451 by -450: the release read here has 450 "
            "fewer entries than published") in summary
    with pytest.raises(PrepareError, match="(?s)--strict: the kept records differ.*train  2 "
                                           "differs from the published 3,064"):
        prepare("vqa-rad", src, tmp_path / "strict", strict=True, workers=0, progress=False)
    assert not (tmp_path / "strict" / "manifest.jsonl").exists()


def test_strict_ignores_unverified_and_uncompared(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    entry = Published({"train": 99}, source="memory", conditions={"language": "en"},
                      unverified=("train",))
    monkeypatch.setattr(SlakeAdapter, "published", (entry,))
    src = fx.slake(tmp_path / "src")
    (src / "test.json").write_text("[]")
    (src / "train.json").write_text(json.dumps(json.loads((src / "train.json").read_text())[:1]))
    result = prepare("slake", src, tmp_path / "a", strict=True, workers=0, progress=False)
    assert "(published count unverified)" in result.summary()
    result = prepare("slake", src, tmp_path / "b", strict=True, options={"language": "all"},
                     workers=0, progress=False)
    assert result.matches_published is None and "not compared" in result.summary()


def test_settings_carry_release_facts(tmp_path: Path) -> None:
    assert ADAPTERS["iu-xray"]().settings(fx.iu_r2gen(tmp_path / "r"))["layout"] == "r2gen"
    assert ADAPTERS["iu-xray"]().settings(fx.iu_openi(tmp_path / "o"))["layout"] == "openi"
    assert ADAPTERS["rsna-pneumonia"]().settings(fx.rsna(tmp_path / "k"))["stage"] == "stage_2"
    assert ADAPTERS["chexpert"]().settings(fx.chexpert(tmp_path / "c"))["test_labels"] is False


# ------------------------------------------------------------------------ test-set identity


def test_identity_vqa_rad_and_synthrad() -> None:
    same = identity_of("vqa-rad:/data/vqa_rad", {"train": 2758, "val": 306, "test": 451})
    assert same["dataset"] == "vqa-rad" and same["published"] == 451 and same["matches"] is True
    assert describe_identity(same) == "vqa-rad test, 451 records = the published 451"
    short = identity_of("vqa-rad:/data/vqa_rad", {"test": 440})
    assert describe_identity(short) == ("vqa-rad test, 440 records, NOT the published 451 (-11): "
                                        "not comparable with papers")
    synth = identity_of("synthrad", {"test": 600})
    assert synth["published"] is None and synth["matches"] is None
    assert "no published count to compare (generated data" in describe_identity(synth)
    assert describe_identity(None).startswith("test-set identity not recorded")


def test_identity_from_prepared_manifest(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = fx.slake(tmp_path / "src")
    prepare("slake", src, tmp_path / "out", workers=0, progress=False)
    manifest = str(tmp_path / "out" / "manifest.jsonl")
    identity = identity_of(manifest, {"train": 1, "val": 1, "test": 1})
    assert identity["dataset"] == "slake" and identity["published"] == 1061
    assert identity["matches"] is False and identity["conditions"] == {"language": "en"}
    assert identity_of(f"manifest:{manifest}", {"test": 1061})["matches"] is True
    prepare("slake", src, tmp_path / "zh", options={"language": "zh"}, workers=0, progress=False)
    other = identity_of(str(tmp_path / "zh" / "manifest.jsonl"), {"test": 3})
    assert other["published"] is None and "language=en (this run: zh)" in other["note"]
    # prepared before published counts were recorded: the registry decides
    old = {"dataset": "slake", "options": {"language": "en"}}
    assert identity_of(manifest, {"test": 5}, prepare_info=old)["published"] == 1061
    lone = tmp_path / "lone" / "m.jsonl"
    assert "no prepare.json" in identity_of(str(lone), {"test": 5})["note"]
    medpix = identity_of(manifest, {"test": 84}, prepare_info={
        "dataset": "medpix", "options": {}})
    assert medpix["published"] is None and "no official test split" in medpix["note"]


def _finetune_run(folder: Path, identity: dict | None) -> Path:
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"task": "vqa", "init": "scratch"}))
    (folder / "backbone.json").write_text("{}")
    (folder / "task.json").write_text(json.dumps({"split_sizes": {"test": 440}}))
    metrics = {"best_epoch": 1, "epochs": 1, "test": {"accuracy": 0.5, "open_accuracy": 0.25}}
    if identity is not None:
        metrics["test_set"] = identity
    (folder / "metrics.json").write_text(json.dumps(metrics))
    return folder


def test_report_marks_test_set_beside_numbers(tmp_path: Path) -> None:
    from mpma.viz.report import write_report

    identity = identity_of("vqa-rad:/x", {"test": 440})
    _, md = write_report(_finetune_run(tmp_path / "run", identity), examples=0)
    text = md.read_text()
    assert "| metric | test: vqa-rad test, 440 records, NOT the published 451 (-11)" in text
    assert "| accuracy | 0.5 |" in text
    _, md = write_report(_finetune_run(tmp_path / "old", None), examples=0)
    assert "| metric | test: test-set identity not recorded" in md.read_text()


def test_layout_lists_counts_and_summary_shows_only_compared(tmp_path: Path,
                                                            capsys: pytest.CaptureFixture) -> None:
    assert main(["prepare", "slake", "--layout"]) == 0
    assert "train 4,919 / val 1,053 / test 1,061 English QA pairs [language=en]" in \
        capsys.readouterr().out
    summary = prepare("slake", fx.slake(tmp_path / "src"), tmp_path / "out", workers=0,
                      progress=False).summary()
    assert "test   0 differs from the published 1,061 by -1,061: rejected 2" in summary
    assert "not compared" not in summary  # the language=all counts do not apply to this run
    table = tmp_path / "own"
    fx.write_csv(table / "t.csv", ["image", "text"], [["a.jpg", "None"]])
    summary = prepare("generic", table, tmp_path / "g", options={"text_column": "text"},
                      workers=0, progress=False).summary()
    assert "published counts: none registered for this dataset" in summary
