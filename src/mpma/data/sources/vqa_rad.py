"""Loader for the original VQA-RAD release (Lau et al., Scientific Data 2018).

Expected layout (the MEVF / MICCAI-2019 split used by M3AE and most Med-VQA papers)::

    <root>/trainset.json   # list of {qid, image_name, image_organ, answer, answer_type,
    <root>/testset.json    #          question_type, question, phrase_type}
    <root>/images/*.jpg

Output records carry ABSOLUTE image paths, ``id = str(qid)`` (qids are unique across both
splits in the release; a repeat is an error), ``answer = normalize_answer(raw answer)`` and
the raw values in ``meta``. The quirks of the release are handled: answer types with trailing
spaces (``"CLOSED "``), answers in mixed case or stored as JSON integers, question types in
mixed case (normalised with strip + upper; typos such as ``"ATRIB"`` are kept as is).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from mpma.data.records import VQARecord, normalize_answer

SPLIT_FILES: dict[str, str] = {"train": "trainset.json", "test": "testset.json"}
IMAGE_DIR = "images"
REQUIRED_FIELDS: tuple[str, ...] = ("qid", "image_name", "question", "answer", "answer_type")
_LAYOUT = (
    "expected the original VQA-RAD layout: <root>/trainset.json, <root>/testset.json and "
    "<root>/images/*.jpg"
)


class VQARadError(ValueError):
    """The VQA-RAD folder is missing, incomplete or inconsistent."""


def read_entries(path: Path) -> list:
    """The JSON list of a split file (``trainset.json`` / ``testset.json``).

    Raises:
        VQARadError: the file cannot be read, is not JSON or not a list.
    """
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise VQARadError(f"{path}: not valid JSON (line {exc.lineno}: {exc.msg})") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise VQARadError(f"{path}: cannot read ({exc})") from exc
    if not isinstance(raw, list):
        raise VQARadError(f"{path}: expected a JSON list of questions, got {type(raw).__name__}")
    return raw


def entry_fields(item: Any, split: str, image_dir: Path, where: str) -> dict[str, Any]:
    """The :class:`VQARecord` fields of one release entry, before the record's own checks.

    ``question`` is the raw value and ``answer`` the normalised one (``None`` for a JSON ``null``).

    Raises:
        VQARadError: not an object, a required field missing, or an answer that is neither text nor
            a number (the message starts with ``where``).
    """
    if not isinstance(item, dict):
        raise VQARadError(f"{where}: expected an object, got {type(item).__name__}")
    if "qid" in item:
        where += f" (qid {item['qid']})"
    missing = [name for name in REQUIRED_FIELDS if name not in item]
    if missing:
        raise VQARadError(f"{where}: missing field {', '.join(repr(m) for m in missing)}")
    raw_answer: Any = item["answer"]
    if raw_answer is not None and (isinstance(raw_answer, bool) or not isinstance(raw_answer, (str, int, float))):
        raise VQARadError(f"{where}: answer must be text or a number, got {raw_answer!r}")
    meta = {key: value for key, value in item.items()
            if key not in ("question", "answer", "answer_type", "question_type")}
    meta["raw_answer"] = raw_answer
    meta["raw_answer_type"] = item["answer_type"]
    if "question_type" in item:
        meta["raw_question_type"] = item["question_type"]
    return {"id": str(item["qid"]), "image": str(image_dir / str(item["image_name"])),
            "question": item["question"], "answer": None if raw_answer is None else normalize_answer(str(raw_answer)),
            "answer_type": str(item["answer_type"]), "split": split,
            "question_type": str(item.get("question_type", "")).strip().upper(), "meta": meta}


def _read_split(path: Path, split: str, image_dir: Path) -> list[VQARecord]:
    records: list[VQARecord] = []
    for index, item in enumerate(read_entries(path)):
        where = f"{path}: entry {index}"
        fields = entry_fields(item, split, image_dir, where)
        try:
            record = VQARecord(**{**fields, "question": str(fields["question"]).strip()})
        except (TypeError, ValueError) as exc:
            raise VQARadError(f"{where} (qid {item['qid']}): {exc}") from None
        records.append(record)
    return records


def load_vqa_rad(
    root: str | os.PathLike[str], *, check_images: bool = True
) -> dict[str, list[VQARecord]]:
    """Load VQA-RAD's train and test splits from the original release files.

    Args:
        root: Folder holding ``trainset.json``, ``testset.json`` and ``images/``.
        check_images: Verify that every referenced image file exists.

    Returns:
        ``{"train": [...], "test": [...]}`` (3,064 and 451 records for the standard release),
        in file order; ``image`` fields are absolute paths.

    Raises:
        VQARadError: Missing folder or file (message shows the expected layout), malformed
            JSON or entry (names file, entry index and qid), duplicate qid, or missing images
            (names the first few and the count).
    """
    root = Path(root).expanduser().absolute()
    if not root.is_dir():
        raise VQARadError(f"VQA-RAD folder not found: {root}; {_LAYOUT}")
    missing_files = [name for name in (*SPLIT_FILES.values(), IMAGE_DIR)
                     if not (root / name).exists()]
    if missing_files:
        raise VQARadError(f"{root}: missing {', '.join(missing_files)}; {_LAYOUT}")
    image_dir = root / IMAGE_DIR
    splits = {split: _read_split(root / name, split, image_dir)
              for split, name in SPLIT_FILES.items()}

    first_seen: dict[str, str] = {}
    for split, records in splits.items():
        for record in records:
            if record.id in first_seen:
                raise VQARadError(
                    f"{root / SPLIT_FILES[split]}: qid {record.id} repeats "
                    f"(also in {SPLIT_FILES[first_seen[record.id]]}); qids must be unique"
                )
            first_seen[record.id] = split

    if check_images:
        referenced = sorted({Path(r.image).name for recs in splits.values() for r in recs})
        absent = [name for name in referenced if not (image_dir / name).is_file()]
        if absent:
            shown = ", ".join(absent[:5])
            more = f" and {len(absent) - 5} more" if len(absent) > 5 else ""
            raise VQARadError(
                f"{image_dir}: {len(absent)} of {len(referenced)} referenced images are "
                f"missing: {shown}{more}; restore them from the VQA-RAD release"
            )
    return splits


def answer_vocabulary(records: list[VQARecord]) -> list[str]:
    """Sorted distinct (normalised) answers of ``records``.

    Args:
        records: VQA records, e.g. ``splits["train"]`` for a train-only vocabulary or
            ``splits["train"] + splits["test"]`` for M3AE's convention.

    Returns:
        Sorted list of distinct answers.
    """
    return sorted({normalize_answer(r.answer) for r in records})
