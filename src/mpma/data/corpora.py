"""Tokenizer corpora: the texts a tokenizer is trained on (``mpma tokenizer train``,
``text.tokenizer_corpora``) or measured on (``mpma tokenizer coverage``), read from plain-text
files, JSONL manifests, VQA-RAD's ``trainset.json`` or ROCO's ``captions.txt``."""

from __future__ import annotations

import json
import re
from pathlib import Path

from mpma.data.jsonl import read_jsonl

CORPUS_PREFIXES = ("roco", "vqa-rad")  # ``PREFIX:PATH`` corpus specs; anything else is a path


def read_corpus(path: str | Path) -> list[str]:
    """Lines of text from a plain-text file, or the ``text`` fields of a JSONL manifest.

    Raises:
        FileNotFoundError: naming the path.
        ValueError: a JSONL line without a text field, naming path and line.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"corpus not found: {path} (pass a .txt file or a JSONL manifest)")
    texts = []
    if path.suffix in (".jsonl", ".json"):
        for number, record in read_jsonl(path):
            fields = [record[k] for k in ("text", "question", "caption") if isinstance(record.get(k), str)]
            if not fields:
                raise ValueError(f"{path}:{number}: no 'text', 'question' or 'caption' field")
            texts.extend(fields)
        return texts
    with path.open(encoding="utf-8") as handle:
        for line in handle:
            line = line.rstrip("\n")
            if "\t" in line:  # ROCO-style "ID<TAB>caption"
                line = line.split("\t", 1)[1]
            if line.strip():
                texts.append(line.strip())
    return texts


class CorpusError(ValueError):
    """A tokenizer corpus holds no usable text or is malformed (the message names the file)."""


_ID_FIELD = re.compile(r"[A-Za-z0-9_.:/#-]+")  # the first tab-separated field of an "ID<TAB>text" line


def parse_corpus_spec(spec: str) -> tuple[str, Path]:
    """``"roco:PATH"`` / ``"vqa-rad:PATH"`` -> (prefix, path); any other spec -> ("file", path).

    A spec that names an existing path is a path even if it contains a colon.
    """
    prefix, sep, rest = spec.partition(":")
    if sep and prefix in CORPUS_PREFIXES and not Path(spec).exists():
        return prefix, Path(rest).expanduser()
    return "file", Path(spec).expanduser()


def _read_text_file(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise CorpusError(f"{path}: cannot read ({error})") from error


def _line_texts(path: Path, roco: bool) -> list[str]:
    """One text per non-blank line; ``ID<TAB>text`` lines keep the text (``roco``: every line must)."""
    texts = []
    for number, line in enumerate(_read_text_file(path).splitlines(), start=1):
        if "\t" in line:
            head, tail = line.split("\t", 1)
            line = tail if roco or _ID_FIELD.fullmatch(head.strip()) else line.replace("\t", " ")
        elif roco and line.strip():
            raise CorpusError(f"{path}:{number}: expected a ROCO caption line 'ROCO_ID<TAB>caption'")
        if line.strip():
            texts.append(line.strip())
    return texts


def _json_list_texts(path: Path, allow_test: bool = False) -> list[str]:
    """The ``question`` (else ``text`` / ``caption``) of each object of a JSON list (VQA-RAD's trainset.json)."""
    if path.name == "testset.json" and not allow_test:
        raise CorpusError(f"{path}: this is VQA-RAD's test split; a tokenizer must never be built on test "
                          "questions (pass trainset.json or vqa-rad:FOLDER, which reads trainset.json only; "
                          "`mpma tokenizer coverage --all-splits` may measure it)")
    try:
        items = json.loads(_read_text_file(path))
    except json.JSONDecodeError as error:
        raise CorpusError(f"{path}: not valid JSON (line {error.lineno}: {error.msg})") from None
    if not isinstance(items, list):
        raise CorpusError(f"{path}: expected a JSON list of objects (VQA-RAD's trainset.json), "
                          f"got {type(items).__name__}")
    texts = []
    for index, item in enumerate(items):
        text = next((item[k] for k in ("question", "text", "caption") if isinstance(item, dict)
                     and isinstance(item.get(k), str)), None)
        if text is None:
            raise CorpusError(f"{path}: entry {index}: expected an object with a 'question', 'text' or "
                              "'caption' string")
        if text.strip():
            texts.append(text.strip())
    return texts


def _manifest_texts(path: Path, train_only: bool) -> list[str]:
    """Texts of a JSONL manifest, its kind told by the first record: VQA (``question``) -> questions;
    pre-training / classification -> ``text`` (or ``caption``) and ``text_pair``. With ``train_only``
    records whose ``split`` is not "train" are skipped (records without a split are kept)."""
    rows = read_jsonl(path)  # ManifestError (a ValueError) names path and line
    vqa = bool(rows) and "question" in rows[0][1]
    classification = bool(rows) and ("labels" in rows[0][1] or "label" in rows[0][1])
    texts, skipped = [], 0
    for number, record in rows:
        if train_only and str(record.get("split", "train")) != "train":
            skipped += 1
            continue
        keys = ("question",) if vqa else ("text", "text_pair") if "text" in record else ("caption",)
        fields = [record[k].strip() for k in keys if isinstance(record.get(k), str) and record[k].strip()]
        if not fields and not classification:  # an image-only classification record has no text
            raise CorpusError(f"{path}:{number}: no {' or '.join(repr(k) for k in keys)} text in this record")
        texts.extend(fields)
    if not texts and skipped:
        raise CorpusError(f"{path}: no record of the 'train' split ({skipped} records of other splits are never "
                          "used to build a tokenizer)")
    return texts


def corpus_texts(spec: str, train_only: bool = True) -> list[str]:
    """The texts of one tokenizer corpus spec (``text.tokenizer_corpora`` entries, ``mpma tokenizer coverage``).

    Specs:
        ``PATH.jsonl`` (or a prepare folder holding ``manifest.jsonl``): a manifest; VQA -> questions,
        pre-training -> ``text``, classification -> ``text`` and ``text_pair``; train split only.
        ``PATH.json``: a JSON list of objects with a ``question`` (VQA-RAD's ``trainset.json``).
        ``vqa-rad:PATH``: the questions of ``PATH/trainset.json`` (VQA-RAD's train split, never the test).
        ``roco:PATH``: ROCO ``captions.txt`` lines (``ROCO_ID<TAB>caption``); a folder: every ``captions.txt``
        below it.
        any other file: one text per line; ``ID<TAB>text`` lines keep the text after the tab.

    Args:
        spec: One of the above.
        train_only: Skip manifest records of other splits and refuse ``testset.json``; False for
            measuring coverage (never for building a tokenizer).

    Raises:
        FileNotFoundError: The path does not exist.
        CorpusError / ManifestError (ValueErrors): Unreadable or malformed, or no text at all.
    """
    prefix, path = parse_corpus_spec(spec)
    if not path.exists():
        raise FileNotFoundError(f"corpus not found: {path}")
    if prefix == "roco":
        files = sorted(path.rglob("captions.txt")) if path.is_dir() else [path]
        if not files:
            raise CorpusError(f"{path}: no captions.txt below this folder (ROCO: data/<split>/radiology/captions.txt)")
        texts = [t for file in files for t in _line_texts(file, roco=True)]
    elif prefix == "vqa-rad":
        file = path / "trainset.json" if path.is_dir() else path
        if not file.is_file():
            raise FileNotFoundError(f"{path}: no trainset.json (the VQA-RAD release folder holds trainset.json, "
                                    "testset.json and images/)")
        texts = _json_list_texts(file)
    elif path.is_dir():
        if not (path / "manifest.jsonl").is_file():
            raise FileNotFoundError(f"{path}: a folder corpus must hold manifest.jsonl (or use roco:/vqa-rad:)")
        texts = _manifest_texts(path / "manifest.jsonl", train_only)
    elif path.suffix == ".jsonl":
        texts = _manifest_texts(path, train_only)
    elif path.suffix == ".json":
        texts = _json_list_texts(path, allow_test=not train_only)
    else:
        texts = _line_texts(path, roco=False)
    if not texts:
        raise CorpusError(f"{path}: no text found")
    return texts
