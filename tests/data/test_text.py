"""Tokenizer training/loading (``mpma tokenizer train``), corpus reading and batch tokenisation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mpma.cli import main
from mpma.data.corpora import read_corpus
from mpma.data.text import cached_tokenizer, load_tokenizer, tokenize, train_tokenizer

REPORTS = [
    "Small nodule in the right upper zone.",
    "No pleural effusion. The heart is enlarged.",
    "Large pneumothorax on the left side; no consolidation.",
    "Cardiomegaly. Opacity in the left lower zone.",
    "Normal chest radiograph with no acute findings.",
] * 20


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("corpus") / "reports.txt"
    path.write_text("\n".join(REPORTS) + "\n", encoding="utf-8")
    return path


def test_cli_trains_a_tokenizer_that_autotokenizer_loads(corpus: Path, tmp_path, capsys) -> None:
    from transformers import AutoTokenizer

    out = tmp_path / "tok"
    assert main(["tokenizer", "train", "--corpus", str(corpus), "--out", str(out), "--vocab-size", "200"]) == 0
    assert "trained a WordPiece tokenizer" in capsys.readouterr().out
    tokenizer = AutoTokenizer.from_pretrained(str(out), local_files_only=True)
    assert 30 < len(tokenizer) <= 200
    for token in ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"):
        assert token in tokenizer.get_vocab()
    assert tokenizer.mask_token == "[MASK]" and tokenizer.pad_token == "[PAD]"
    text = "small nodule in the right upper zone"
    ids = tokenizer(text)["input_ids"]
    assert ids[0] == tokenizer.cls_token_id and ids[-1] == tokenizer.sep_token_id
    assert tokenizer.unk_token_id not in ids
    assert tokenizer.decode(ids, skip_special_tokens=True) == text
    # lower-cased by default, and punctuation survives as its own tokens
    mixed = tokenizer("No pleural effusion.")["input_ids"]
    assert tokenizer.decode(mixed, skip_special_tokens=True).replace(" .", ".") == "no pleural effusion."
    # pairs follow the BERT template
    pair = tokenizer("no effusion", "left side")
    assert pair["input_ids"].count(tokenizer.sep_token_id) == 2
    # the library loader agrees
    assert load_tokenizer(out).get_vocab() == tokenizer.get_vocab()


def test_cased_tokenizer_keeps_case(corpus: Path, tmp_path) -> None:
    out = tmp_path / "cased"
    assert main(["tokenizer", "train", "--corpus", str(corpus), "--out", str(out), "--vocab-size", "200",
                 "--cased"]) == 0
    tokenizer = load_tokenizer(out)
    assert tokenizer.decode(tokenizer("Cardiomegaly")["input_ids"], skip_special_tokens=True) == "Cardiomegaly"


def test_jsonl_manifest_corpus(tmp_path) -> None:
    from mpma.data.synthrad import write_synthrad

    paths = write_synthrad(tmp_path / "synth", n=30, image_size=32)
    texts = read_corpus(paths["pretrain"])
    records = [json.loads(line) for line in paths["pretrain"].read_text().splitlines()]
    assert texts == [r["text"] for r in records]
    vqa = read_corpus(paths["vqa"])  # question-only manifests work too
    assert vqa and all(isinstance(t, str) and t for t in vqa)
    out = tmp_path / "tok"
    assert main(["tokenizer", "train", "--corpus", str(paths["pretrain"]), "--out", str(out),
                 "--vocab-size", "300"]) == 0
    tokenizer = load_tokenizer(out)
    ids = tokenizer(texts[0])["input_ids"]
    assert tokenizer.unk_token_id not in ids


def test_plain_text_corpus_handles_tabs_and_blank_lines(tmp_path) -> None:
    path = tmp_path / "captions.txt"
    path.write_text("ROCO_001\tCT of the chest.\n\n   \nplain line\n", encoding="utf-8")
    assert read_corpus(path) == ["CT of the chest.", "plain line"]


def test_missing_corpus_is_a_clear_error(tmp_path, capsys) -> None:
    missing = tmp_path / "nope.txt"
    assert main(["tokenizer", "train", "--corpus", str(missing), "--out", str(tmp_path / "tok")]) == 2
    err = capsys.readouterr().err
    assert "corpus not found" in err and str(missing) in err
    assert not (tmp_path / "tok").exists()


def test_bad_manifest_lines_name_the_line(tmp_path, capsys) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"text": "ok"}) + "\n" + json.dumps({"id": 3}) + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad.jsonl:2: no 'text'"):
        read_corpus(path)
    path.write_text("{not json\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad.jsonl:1: not valid JSON"):
        read_corpus(path)
    assert main(["tokenizer", "train", "--corpus", str(path), "--out", str(tmp_path / "tok")]) == 2
    assert "bad.jsonl:1" in capsys.readouterr().err


def test_empty_corpus_is_an_error(tmp_path) -> None:
    path = tmp_path / "empty.txt"
    path.write_text("\n\n", encoding="utf-8")
    with pytest.raises(SystemExit, match="no text"):
        main(["tokenizer", "train", "--corpus", str(path), "--out", str(tmp_path / "tok")])


def test_training_into_an_existing_folder_writes_the_new_tokenizer(corpus: Path, tmp_path) -> None:
    out = tmp_path / "tok"
    out.mkdir()  # e.g. created by the user beforehand
    (out / "README.md").write_text("my notes")
    assert main(["tokenizer", "train", "--corpus", str(corpus), "--out", str(out), "--vocab-size", "200"]) == 0
    assert load_tokenizer(out).tokenize("zebra") != ["zebra"]
    other = tmp_path / "zoo.txt"
    other.write_text("zebra giraffe\n" * 10, encoding="utf-8")
    assert main(["tokenizer", "train", "--corpus", str(other), "--out", str(out), "--vocab-size", "200"]) == 0
    assert load_tokenizer(out).tokenize("zebra") == ["zebra"]  # retrained, not the stale copy
    assert (out / "README.md").read_text() == "my notes"  # unrelated files are left alone
    assert not list(tmp_path.glob("*.tmp*"))


def test_load_tokenizer_missing_folder_says_what_to_pass(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="text.tokenizer") as info:
        load_tokenizer(tmp_path / "nothing")
    assert "mpma tokenizer train" in str(info.value)


def test_cached_tokenizer_trains_once(tmp_path, mpma_cache) -> None:
    calls = []

    def texts():
        calls.append(1)
        return REPORTS

    first = cached_tokenizer("unit-test", texts, vocab_size=150)
    second = cached_tokenizer("unit-test", texts, vocab_size=150)
    assert calls == [1]
    assert first.get_vocab() == second.get_vocab()
    assert any(p.name.startswith("unit-test-150") for p in (mpma_cache / "tokenizers").iterdir())
    cached_tokenizer("unit-test", texts, vocab_size=120)  # another size is another cache entry
    assert calls == [1, 1]


def test_tokenize_batch_fields(tokenizer) -> None:
    texts = ["small nodule in the right upper zone", "no effusion", "cardiomegaly " * 40]
    batch = tokenize(tokenizer, texts, max_length=16)
    b, t = batch["input_ids"].shape
    assert b == 3 and t == 16  # padded to the longest, truncated at max_length
    for key in ("attention_mask", "special_tokens_mask", "word_ids"):
        assert batch[key].shape == (b, t)
    padding = batch["attention_mask"] == 0
    assert padding[1].any() and not padding[2].any()
    assert (batch["input_ids"][padding] == tokenizer.pad_token_id).all()
    assert (batch["special_tokens_mask"][padding] == 1).all()  # padding counts as special (never masked)
    cls_sep = (batch["input_ids"] == tokenizer.cls_token_id) | (batch["input_ids"] == tokenizer.sep_token_id)
    assert (batch["special_tokens_mask"][cls_sep] == 1).all()
    assert torch.equal(batch["word_ids"] < 0, batch["special_tokens_mask"] == 1)
    # word ids count words from 0 in each sequence
    assert batch["word_ids"][0, 1].item() == 0


def test_train_tokenizer_returns_a_loaded_tokenizer(tmp_path) -> None:
    tokenizer = train_tokenizer(REPORTS, tmp_path / "t", vocab_size=150)
    assert tokenizer.mask_token_id is not None and tokenizer.pad_token_id == 0
    assert (tmp_path / "t" / "tokenizer.json").exists()


@pytest.mark.parametrize("max_length", [6, 7, 40])
def test_insert_answer_slot_puts_one_mask_before_each_sep(max_length) -> None:
    """head.pool=slot: [MASK] goes before each row's [SEP]; rows grow by one token up to max_length, and a
    row that is already max_length long gives its last word up for the slot."""
    from mpma.data.text import insert_answer_slot

    cls, sep, mask, pad = 101, 102, 103, 0
    ids = torch.tensor([[cls, 5, 6, sep, pad, pad], [cls, 7, sep, pad, pad, pad], [cls, 1, 2, 3, 4, sep]])
    new_ids, new_mask, slot = insert_answer_slot(ids, (ids != pad).long(), mask, pad, max_length)
    grows = max_length > 6
    assert new_ids.shape == new_mask.shape == (3, 7 if grows else 6)
    assert slot.tolist() == [3, 2, 5 if grows else 4]
    assert new_ids[0, :5].tolist() == [cls, 5, 6, mask, sep] and new_ids[1, :4].tolist() == [cls, 7, mask, sep]
    assert new_ids[2].tolist()[-3:] == ([4, mask, sep] if grows else [3, mask, sep])  # the full row lost word 4
    assert new_mask.sum(1).tolist() == [5, 4, 7 if grows else 6]
    assert (new_ids[new_mask == 0] == pad).all()
    assert (new_ids[torch.arange(3), slot] == mask).all()
    with pytest.raises(ValueError, match=r"\[CLS\] \.\.\. \[SEP\]"):
        insert_answer_slot(ids[:, :1], torch.ones(3, 1, dtype=torch.long), mask, pad, max_length)


def test_encode_with_answer_slot_uses_the_tokenizers_mask(tokenizer) -> None:
    from mpma.data.text import encode_with_answer_slot

    plain = tokenize(tokenizer, ["is there a nodule?", "which side?"], max_length=16)
    slotted = encode_with_answer_slot(tokenizer, ["is there a nodule?", "which side?"], max_length=16)
    rows = torch.arange(2)
    assert (slotted["input_ids"][rows, slotted["answer_slot"]] == tokenizer.mask_token_id).all()
    assert (slotted["input_ids"][rows, slotted["answer_slot"] + 1] == tokenizer.sep_token_id).all()
    assert torch.equal(slotted["attention_mask"].sum(1), plain["attention_mask"].sum(1) + 1)
