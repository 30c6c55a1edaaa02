"""Tokenizer coverage: the [UNK] report, tokenizer corpora (``text.tokenizer_corpora``), the coverage
recorded by every fine-tune and ``mpma tokenizer coverage``."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest

from mpma.cli import main
from mpma.config import ConfigError
from mpma.data.corpora import CorpusError, corpus_texts
from mpma.data.text import (
    TokenizerCoverageWarning,
    coverage_warning,
    load_tokenizer,
    train_tokenizer,
    unknown_token_rate,
)
from tests.data.test_text import REPORTS as TEXT_REPORTS

REPORTS = TEXT_REPORTS[:50]  # the five reports of test_text, ten times each
# A WordPiece tokenizer spells any word whose characters it has seen, and every printable ASCII
# character is in its alphabet: an unknown word needs a character outside ASCII.
UNSEEN = "ωμεγα"
OTHER_UNSEEN = "ψι"


@pytest.fixture(scope="module")
def reports_tokenizer_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tok") / "reports"
    train_tokenizer(REPORTS, out, vocab_size=200)
    return out


@pytest.fixture(scope="module")
def reports_tokenizer(reports_tokenizer_dir):
    return load_tokenizer(reports_tokenizer_dir)


# ----------------------------------------------------------------------------- the report


def test_a_covered_text_has_no_unknown_tokens(reports_tokenizer):
    report = unknown_token_rate(reports_tokenizer, REPORTS[:5])
    assert report["unk_tokens"] == 0 and report["rate"] == 0.0 and report["texts_with_unk"] == 0
    assert report["top_unknown_words"] == [] and report["texts"] == 5
    assert report["tokens"] >= report["words"] > 0


def test_words_outside_the_training_text_are_counted_unknown(reports_tokenizer):
    texts = [f"The {UNSEEN} is enlarged.", f"{UNSEEN.capitalize()} and {UNSEEN}; {OTHER_UNSEEN}.", "No pleural effusion."]
    report = unknown_token_rate(reports_tokenizer, texts)
    assert report["unk_tokens"] == 4 and report["texts_with_unk"] == 2 and report["texts"] == 3
    assert report["top_unknown_words"] == [(UNSEEN, 3), (OTHER_UNSEEN, 1)]  # normalised (lower-cased), most frequent first
    assert report["distinct_unknown_words"] == 2
    assert report["rate"] == pytest.approx(4 / report["tokens"])
    assert unknown_token_rate(reports_tokenizer, [])["rate"] == 0.0


class _Slow:
    """A tokenizer without offsets (``is_fast`` False), like a Python-only one."""

    is_fast = False
    do_lower_case = True

    def __init__(self, fast) -> None:
        self.fast, self.unk_token_id = fast, fast.unk_token_id

    def __call__(self, text: str, add_special_tokens: bool = True) -> dict:
        return self.fast(text, add_special_tokens=add_special_tokens)


def test_the_slow_tokenizer_fallback_agrees(reports_tokenizer):
    slow = _Slow(reports_tokenizer)
    texts = [f"the {UNSEEN} is enlarged", f"no {UNSEEN} {OTHER_UNSEEN}", "normal chest radiograph"]
    fast, fallback = unknown_token_rate(reports_tokenizer, texts), unknown_token_rate(slow, texts)
    for key in ("unk_tokens", "tokens", "texts_with_unk", "top_unknown_words"):
        assert fast[key] == fallback[key], key


def test_coverage_warning_names_rate_words_and_remedy(reports_tokenizer):
    report = unknown_token_rate(reports_tokenizer, [f"{UNSEEN} nodule"])
    message = coverage_warning(report, "the vqa training text")
    assert f"{report['rate']:.1%}" in message and repr(UNSEEN) in message and "text.tokenizer_corpora" in message
    assert coverage_warning(unknown_token_rate(reports_tokenizer, REPORTS), "x") is None


# ----------------------------------------------------------------------------- corpora


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_corpus_specs(tmp_path):
    pretrain = _jsonl(tmp_path / "pretrain.jsonl", [
        {"id": "a", "image": "a.png", "text": "train caption", "split": "train"},
        {"id": "b", "image": "b.png", "text": "test caption", "split": "test"}])
    assert corpus_texts(str(pretrain)) == ["train caption"]  # a tokenizer never sees other splits
    assert corpus_texts(str(pretrain), train_only=False) == ["train caption", "test caption"]
    vqa = _jsonl(tmp_path / "vqa.jsonl", [{"id": "a", "image": "a.png", "question": "is it big?", "answer": "yes",
                                           "answer_type": "CLOSED", "split": "train"}])
    assert corpus_texts(str(vqa)) == ["is it big?"]
    cls = _jsonl(tmp_path / "cls.jsonl", [{"id": "a", "text": "premise", "text_pair": "hypothesis", "labels": ["x"]},
                                          {"id": "b", "image": "b.png", "labels": ["y"]}])  # image-only: no text
    assert corpus_texts(str(cls)) == ["premise", "hypothesis"]
    folder = tmp_path / "prepared"
    folder.mkdir()
    (folder / "manifest.jsonl").write_text(pretrain.read_text())
    assert corpus_texts(str(folder)) == ["train caption"]
    text = tmp_path / "lines.txt"
    text.write_text("ROCO_00001\t Axial MRI.\n\nfree text\twith a tab\nplain line\n")
    assert corpus_texts(str(text)) == ["Axial MRI.", "free text with a tab", "plain line"]
    roco = tmp_path / "roco" / "test" / "radiology"
    roco.mkdir(parents=True)
    (roco / "captions.txt").write_text("ROCO_00001\t Axial MRI.\nROCO_00006\t Coronal CT.\n")
    assert corpus_texts(f"roco:{roco / 'captions.txt'}") == ["Axial MRI.", "Coronal CT."]
    assert corpus_texts(f"roco:{tmp_path / 'roco'}") == ["Axial MRI.", "Coronal CT."]  # every captions.txt below
    (roco / "captions.txt").write_text("no tab here\n")
    with pytest.raises(CorpusError, match=r"captions.txt:1: expected a ROCO caption line"):
        corpus_texts(f"roco:{roco / 'captions.txt'}")


def test_vqa_rad_corpus_reads_train_questions_only(tmp_path):
    rad = tmp_path / "vqa_rad"
    rad.mkdir()
    (rad / "trainset.json").write_text(json.dumps([{"qid": 1, "question": "Is the aorta dilated?", "answer": "no"}]))
    (rad / "testset.json").write_text(json.dumps([{"qid": 2, "question": "Secret test question?", "answer": "x"}]))
    assert corpus_texts(f"vqa-rad:{rad}") == ["Is the aorta dilated?"]
    assert corpus_texts(str(rad / "trainset.json")) == ["Is the aorta dilated?"]
    for spec in (str(rad / "testset.json"), f"vqa-rad:{rad / 'testset.json'}"):
        with pytest.raises(CorpusError, match="test split"):
            corpus_texts(spec)
    assert corpus_texts(str(rad / "testset.json"), train_only=False) == ["Secret test question?"]  # measuring only


def test_bad_corpora_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="corpus not found"):
        corpus_texts(str(tmp_path / "missing.txt"))
    with pytest.raises(FileNotFoundError, match="trainset.json"):
        corpus_texts(f"vqa-rad:{tmp_path}")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\nnot json\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2: not valid JSON"):
        corpus_texts(str(bad))
    no_text = _jsonl(tmp_path / "no_text.jsonl", [{"id": "a", "image": "a.png", "split": "train"}])
    with pytest.raises(CorpusError, match=r"no_text.jsonl:1: no 'caption' text"):
        corpus_texts(str(no_text))
    test_only = _jsonl(tmp_path / "test_only.jsonl", [{"id": "a", "text": "t", "split": "test"}])
    with pytest.raises(CorpusError, match="no record of the 'train' split"):
        corpus_texts(str(test_only))
    (tmp_path / "empty.txt").write_text("\n\n")
    with pytest.raises(CorpusError, match="no text found"):
        corpus_texts(str(tmp_path / "empty.txt"))


# ----------------------------------------------------------------------------- text.tokenizer_corpora


def _pretrain_tokenizer(micro_config, *overrides: str):
    from mpma.pipelines.pretraining import build_pretrain_data, build_tokenizer

    config = micro_config("data.train_size=64", "text.vocab_size=300", *overrides)
    return build_tokenizer(config, build_pretrain_data(config))


def test_tokenizer_corpora_teach_the_pretraining_tokenizer_downstream_words(tmp_path, micro_config):
    downstream = [f"Is the {UNSEEN} visible?", "Which lobe shows the bulky mass?", f"{OTHER_UNSEEN}: vague kink?"]
    plain = _pretrain_tokenizer(micro_config)
    before = unknown_token_rate(plain, downstream)
    assert before["unk_tokens"] > 0 and UNSEEN in dict(before["top_unknown_words"])
    text = tmp_path / "questions.txt"
    text.write_text("\n".join(downstream[:2]) + "\n")
    manifest = _jsonl(tmp_path / "vqa.jsonl", [{"id": "q", "image": "q.png", "question": downstream[2], "answer": "x",
                                                "answer_type": "OPEN", "split": "train"}])
    corpora = f"text.tokenizer_corpora=[{text}, {manifest}]"
    mixed = _pretrain_tokenizer(micro_config, corpora)
    assert unknown_token_rate(mixed, downstream)["unk_tokens"] == 0
    # the run's own texts are still covered
    from mpma.data.synthrad import SynthRad

    reports = SynthRad(64, seed=0, image_size=32).reports()
    assert unknown_token_rate(mixed, reports)["unk_tokens"] == 0
    # the cache is keyed on the corpora's texts: same texts -> same tokenizer; new texts -> a new one
    assert Path(mixed.name_or_path) != Path(plain.name_or_path)
    assert Path(_pretrain_tokenizer(micro_config, corpora).name_or_path) == Path(mixed.name_or_path)
    text.write_text("\n".join(downstream[:2]) + "\nanother question\n")
    assert Path(_pretrain_tokenizer(micro_config, corpora).name_or_path) != Path(mixed.name_or_path)


def test_bad_tokenizer_corpora_name_the_entry(tmp_path, micro_config):
    missing = tmp_path / "missing.jsonl"
    with pytest.raises(FileNotFoundError, match=r"text.tokenizer_corpora\[0\] .*missing.jsonl"):
        _pretrain_tokenizer(micro_config, f"text.tokenizer_corpora=[{missing}]")
    (tmp_path / "ok.txt").write_text("a line\n")
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(ConfigError, match=r"text.tokenizer_corpora\[1\] .*empty.txt.*no text found"):
        _pretrain_tokenizer(micro_config, f"text.tokenizer_corpora=[{tmp_path / 'ok.txt'}, {tmp_path / 'empty.txt'}]")
    for value, match in (("['']", "empty corpus"), ("[a.txt, a.txt]", "listed twice"), ("['roco:']", "empty corpus")):
        with pytest.raises(ConfigError, match=match):
            micro_config(f"text.tokenizer_corpora={value}")
    with pytest.raises(ConfigError, match="bring their own tokenizer"):
        micro_config("text.tokenizer_corpora=[a.txt]", "text.tokenizer=somewhere")


# ----------------------------------------------------------------------------- fine-tuning and CLI


def test_finetune_records_tokenizer_coverage_and_warns(tmp_path, micro_preset_text, reports_tokenizer_dir, monkeypatch):
    from mpma.pipelines.finetuning import FinetuneRun, finetune_config, run_finetune

    # synthrad questions are plain ASCII (never [UNK]): give the task some words the tokenizer cannot spell
    real_texts = FinetuneRun.training_texts
    monkeypatch.setattr(FinetuneRun, "training_texts", lambda run: real_texts(run) + [f"{UNSEEN} {OTHER_UNSEEN}"] * 40)

    (tmp_path / "micro.yaml").write_text(micro_preset_text)
    preset = tmp_path / "micro_reports_tokenizer.yaml"  # a backbone whose tokenizer knows the five REPORTS only
    preset.write_text(f"base: {tmp_path / 'micro.yaml'}\ntext: {{tokenizer: {reports_tokenizer_dir}}}\n")
    config = finetune_config("vqa", "scratch", None, None, [f"preset={preset}", "epochs=0", "data.train_size=24",
                                                              "data.val_size=8", "data.test_size=12"])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = run_finetune(config, tmp_path / "run", progress=False)
    coverage = json.loads((tmp_path / "run" / "metrics.json").read_text())["tokenizer_coverage"]
    assert coverage == json.loads(json.dumps(result["tokenizer_coverage"]))
    assert coverage["texts"] > 0 and coverage["rate"] > 0.01 and coverage["top_unknown_words"]
    assert json.loads((tmp_path / "run" / "task.json").read_text())["tokenizer_coverage"] == coverage
    messages = [str(w.message) for w in caught if issubclass(w.category, TokenizerCoverageWarning)]
    assert len(messages) == 1 and "vqa training text" in messages[0] and "text.tokenizer_corpora" in messages[0]


def test_cli_tokenizer_coverage(tmp_path, reports_tokenizer_dir, capsys):
    corpus = tmp_path / "questions.txt"
    corpus.write_text(f"is the {UNSEEN} enlarged\nno pleural effusion.\n")
    assert main(["tokenizer", "coverage", "--tokenizer", str(reports_tokenizer_dir), "--corpus", str(corpus)]) == 0
    out = capsys.readouterr().out
    assert f"{corpus}: " in out and "[UNK]" in out and f"{UNSEEN} (1)" in out
    assert main(["tokenizer", "coverage", "--tokenizer", str(reports_tokenizer_dir), "--corpus", str(corpus),
                 "--json"]) == 0
    report = json.loads(capsys.readouterr().out)[str(corpus)]
    assert report["texts"] == 2 and report["top_unknown_words"][0][0] == UNSEEN
    assert main(["tokenizer", "coverage", "--tokenizer", str(reports_tokenizer_dir), "--corpus",
                 str(tmp_path / "missing.txt")]) == 2
    assert "corpus not found" in capsys.readouterr().err
