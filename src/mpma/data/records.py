"""Canonical record types and JSONL manifests.

Every downstream task reads one record form (see DESIGN §3):

* :class:`PretrainRecord` — an image paired with a report/caption;
* :class:`VQARecord` — an image, a question and its answer;
* :class:`ClassificationRecord` — an image and/or text(s) with zero or more labels.

A manifest is a UTF-8 JSON-lines file with one record object per line. Image paths in a
manifest are relative to the manifest's folder (absolute paths are accepted too); use
:func:`resolve_image` to turn them into absolute paths. Fields that are not part of the record
type are kept in ``meta``; a nested ``"meta"`` object is merged into ``meta`` as well, which is
how :func:`write_manifest` stores it, so a write/read round trip is exact. Blank lines are skipped.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

from mpma.data.jsonl import ManifestError, read_jsonl

ANSWER_TYPES: tuple[str, ...] = ("OPEN", "CLOSED")
ManifestKind = Literal["pretrain", "vqa", "classification"]


def normalize_answer(answer: str) -> str:
    """Normalise a free-text answer for comparison.

    Lower-cases, strips, collapses runs of whitespace to one space and removes trailing
    periods (``" Not  sure. "`` → ``"not sure"``).

    Args:
        answer: The answer text.

    Returns:
        The normalised answer.
    """
    text = " ".join(str(answer).lower().split())
    return text.rstrip(".").rstrip()


def _check_str(record: str, name: str, value: Any, *, allow_empty: bool = False) -> None:
    if not isinstance(value, str):
        raise TypeError(f"{record}.{name} must be a string, got {type(value).__name__}")
    if not allow_empty and not value.strip():
        raise ValueError(f"{record}.{name} must be a non-empty string")


def _check_meta(record: str, meta: Any) -> None:
    if not isinstance(meta, dict):
        raise TypeError(f"{record}.meta must be a dict, got {type(meta).__name__}")


@dataclass(frozen=True)
class PretrainRecord:
    """An image paired with its report or caption.

    Attributes:
        id: Unique identifier within a manifest.
        image: Image path (relative to the manifest folder, or absolute).
        text: Report/caption text; must not be blank.
        split: Split name, e.g. ``"train"``, ``"val"``, ``"test"``.
        meta: Free-form extra fields (not used for hashing).
    """

    id: str
    image: str
    text: str
    split: str
    meta: dict[str, Any] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        for name in ("id", "image", "text", "split"):
            _check_str("PretrainRecord", name, getattr(self, name))
        _check_meta("PretrainRecord", self.meta)


@dataclass(frozen=True)
class VQARecord:
    """A visual question with its answer.

    ``answer_type`` is normalised on construction (strip + upper) and must be ``"OPEN"`` or
    ``"CLOSED"``. ``answer`` is stored as given; compare answers with :func:`normalize_answer`.

    Attributes:
        id: Unique identifier within a manifest.
        image: Image path (relative to the manifest folder, or absolute).
        question: Question text; must not be blank.
        answer: Answer text; must not be blank.
        answer_type: ``"OPEN"`` or ``"CLOSED"``.
        split: Split name.
        question_type: Dataset-specific question category (may be empty).
        meta: Free-form extra fields (not used for hashing).
    """

    id: str
    image: str
    question: str
    answer: str
    answer_type: str
    split: str
    question_type: str = ""
    meta: dict[str, Any] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        for name in ("id", "image", "question", "answer", "answer_type", "split"):
            _check_str("VQARecord", name, getattr(self, name))
        _check_str("VQARecord", "question_type", self.question_type, allow_empty=True)
        _check_meta("VQARecord", self.meta)
        answer_type = self.answer_type.strip().upper()
        if answer_type not in ANSWER_TYPES:
            raise ValueError(
                f"VQARecord.answer_type must be 'OPEN' or 'CLOSED', got {self.answer_type!r}"
            )
        object.__setattr__(self, "answer_type", answer_type)


@dataclass(frozen=True)
class ClassificationRecord:
    """An image and/or text(s) with zero or more labels.

    Attributes:
        id: Unique identifier within a manifest.
        image: Image path, or ``None`` for text-only tasks.
        labels: Label names (multi-label; a single-label task uses one element). A list is
            converted to a tuple.
        split: Split name.
        text: Optional text (report, premise, ...).
        text_pair: Optional second text (hypothesis for NLI-style pairs).
        meta: Free-form extra fields (not used for hashing).
    """

    id: str
    image: str | None
    labels: tuple[str, ...]
    split: str
    text: str | None = None
    text_pair: str | None = None
    meta: dict[str, Any] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        name = "ClassificationRecord"
        _check_str(name, "id", self.id)
        _check_str(name, "split", self.split)
        for opt in ("image", "text", "text_pair"):
            if getattr(self, opt) is not None:
                _check_str(name, opt, getattr(self, opt))
        if self.image is None and self.text is None:
            raise ValueError(f"{name} needs an image or a text (both are missing)")
        if self.text_pair is not None and self.text is None:
            raise ValueError(f"{name}.text_pair is set but text is missing")
        if isinstance(self.labels, str) or not isinstance(self.labels, (list, tuple)):
            raise TypeError(
                f"{name}.labels must be a list/tuple of strings, got {type(self.labels).__name__}"
            )
        labels = tuple(self.labels)
        for label in labels:
            _check_str(name, "labels[]", label)
        _check_meta(name, self.meta)
        object.__setattr__(self, "labels", labels)


Record = Union[PretrainRecord, VQARecord, ClassificationRecord]

_KINDS: dict[str, type] = {
    "pretrain": PretrainRecord,
    "vqa": VQARecord,
    "classification": ClassificationRecord,
}


def _record_class(kind: str) -> type:
    try:
        return _KINDS[kind]
    except KeyError:
        raise ValueError(
            f"unknown manifest kind {kind!r}; expected one of {sorted(_KINDS)}"
        ) from None


def record_from_dict(data: Mapping[str, Any], kind: ManifestKind) -> Record:
    """Build a record from a decoded manifest object.

    Args:
        data: Mapping of field names to values; unknown keys go into ``meta``; nullable
            fields (``image``, ``text``, ``text_pair`` of a classification record) may be
            absent, meaning ``None``.
        kind: ``"pretrain"``, ``"vqa"`` or ``"classification"``.

    Returns:
        The record.

    Raises:
        ValueError: Unknown kind, missing required field (message contains
            ``missing field 'name'``) or an invalid value.
        TypeError: A field has the wrong type.
    """
    cls = _record_class(kind)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    # fields without a default; nullable ones (image of a text-only task) may be absent
    required = [
        n for n, f in fields.items()
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        and "None" not in str(f.type)
    ]
    missing = [n for n in required if n not in data]
    if missing:
        names = ", ".join(f"'{n}'" for n in missing)
        raise ValueError(f"missing field{'s' if len(missing) > 1 else ''} {names}")
    meta_in = data.get("meta", {})
    if not isinstance(meta_in, dict):
        raise TypeError(f"field 'meta' must be an object, got {type(meta_in).__name__}")
    meta = dict(meta_in)
    kwargs: dict[str, Any] = {n: None for n, f in fields.items() if "None" in str(f.type)}
    for key, value in data.items():
        if key == "meta":
            continue
        if key in fields:
            kwargs[key] = value
        elif key in meta:
            raise ValueError(f"field {key!r} appears both at top level and inside 'meta'")
        else:
            meta[key] = value
    return cls(**kwargs, meta=meta)


def record_to_dict(record: Record) -> dict[str, Any]:
    """Convert a record to a JSON-serialisable dict (``labels`` as a list, ``meta`` nested).

    ``None`` optional fields and an empty ``meta`` are omitted.

    Args:
        record: Any record type.

    Returns:
        The dict written to a manifest line.
    """
    if not isinstance(record, tuple(_KINDS.values())):
        raise TypeError(f"not a record: {type(record).__name__}")
    out: dict[str, Any] = {}
    for f in dataclasses.fields(record):
        value = getattr(record, f.name)
        if value is None or (f.name == "meta" and not value):
            continue
        out[f.name] = list(value) if isinstance(value, tuple) else value
    return out


def read_manifest(path: str | os.PathLike[str], kind: ManifestKind) -> list[Record]:
    """Read a JSONL manifest.

    Args:
        path: Manifest file.
        kind: ``"pretrain"``, ``"vqa"`` or ``"classification"``.

    Returns:
        The records, in file order.

    Raises:
        ManifestError: The file is missing or unreadable, a line is not a JSON object or not a
            valid record (``"path:line: what is wrong"``), or an id repeats (both lines named).
        ValueError: Unknown ``kind``.
    """
    _record_class(kind)
    path = Path(path)
    records: list[Record] = []
    seen: dict[str, int] = {}
    for lineno, data in read_jsonl(path):
        try:
            record = record_from_dict(data, kind)
        except (ValueError, TypeError) as exc:
            ident = f" (id {data['id']!r})" if "id" in data else ""
            raise ManifestError(f"{path}:{lineno}: invalid {kind} record{ident}: {exc}") from None
        if record.id in seen:
            raise ManifestError(
                f"{path}:{lineno}: duplicate id {record.id!r} "
                f"(first used at {path}:{seen[record.id]}); ids must be unique"
            )
        seen[record.id] = lineno
        records.append(record)
    return records


def write_manifest(path: str | os.PathLike[str], records: Iterable[Record]) -> Path:
    """Write records as a JSONL manifest, atomically (temp file in the same folder + rename).

    Image paths are written as stored in the records; make them relative to the manifest's
    folder first if the manifest should be relocatable. Parent folders are created.

    Args:
        path: Destination file.
        records: Records of a single type with unique ids.

    Returns:
        The manifest path.

    Raises:
        ManifestError: Mixed record types or duplicate ids (nothing is written).
        TypeError: An item is not a record.
    """
    path = Path(path)
    lines: list[str] = []
    seen: dict[str, int] = {}
    first_type: type | None = None
    for index, record in enumerate(records):
        data = record_to_dict(record)
        if first_type is None:
            first_type = type(record)
        elif type(record) is not first_type:
            raise ManifestError(
                f"{path}: record {index} is a {type(record).__name__} but record 0 is a "
                f"{first_type.__name__}; write one record type per manifest"
            )
        if record.id in seen:
            raise ManifestError(
                f"{path}: duplicate id {record.id!r} in records {seen[record.id]} and {index}"
            )
        seen[record.id] = index
        lines.append(json.dumps(data, ensure_ascii=False, sort_keys=False))
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as handle:
            for line in lines:
                handle.write(line + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return path


def resolve_image(manifest_path: str | os.PathLike[str], record: Record) -> Path:
    """Absolute path of a record's image.

    Args:
        manifest_path: The manifest the record came from (its folder is the base).
        record: A record with an image.

    Returns:
        ``record.image`` if absolute, else ``manifest folder / record.image``, made absolute
        (``~`` is not expanded; the file is not required to exist).

    Raises:
        ValueError: The record has no image.
    """
    image = getattr(record, "image", None)
    if image is None:
        raise ValueError(f"record {record.id!r} has no image")
    base = Path(manifest_path).absolute().parent
    return Path(os.path.normpath(base / image))

