"""Shared pieces of the dataset adapters: the item an adapter yields, the adapter base class,
layout checks and small parsing helpers.

An adapter reads ONE original release layout and yields :class:`Item` objects in release order.
An item is either a candidate record (``record`` set) or a parse-time reject (``reason`` set:
empty text, malformed row, unknown label, ...) or a record excluded on purpose by an option
(``excluded=True``, e.g. a Chinese SLAKE question). Adapters never decode images: image checks,
id uniqueness, rejects and packing happen in :mod:`mpma.data.sources.prepare`.

Blank means missing: only a missing field, ``null`` or an empty / whitespace-only string is blank.
"None", "null", "NA", "0", "no" and numbers are values (SLAKE's answer to "What diseases are
included in the picture?" is "None").
"""

from __future__ import annotations

import csv
import dataclasses
import gzip
import hashlib
import io
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from mpma.data.records import (
    ClassificationRecord,
    ManifestKind,
    PretrainRecord,
    Record,
    VQARecord,
)
from mpma.data.sources.published import Published

# Split names of every manifest; release-specific names are mapped onto these.
SPLITS: tuple[str, ...] = ("train", "val", "test")
_SPLIT_ALIASES = {"train": "train", "training": "train", "val": "val", "valid": "val",
                  "validate": "val", "validation": "val", "dev": "val", "test": "test"}


class LayoutError(ValueError):
    """``--src`` is missing or does not look like the expected release (message shows the layout)."""


@dataclass(frozen=True)
class Item:
    """One entry of a release, as read by an adapter.

    Attributes:
        id: Record id (for a malformed row: ``"<file>:<line>"``).
        source: Where it came from, ``"<file>:<line>"`` or ``"<file>"`` (relative to ``--src``).
        record: The candidate record, or ``None`` when rejected or excluded.
        reason: Short, countable rejection reason (``"empty text"``), ``None`` when kept.
        detail: Human-readable detail of the reason (names the field/value).
        excluded: The entry was left out on purpose by an option (counted, not a reject).
        split: Split of a rejected or excluded entry when the adapter knows it (a record carries
            its own); lets ``prepare`` explain a split's difference from its published count.
    """

    id: str
    source: str
    record: Record | None = None
    reason: str | None = None
    detail: str = ""
    excluded: bool = False
    split: str | None = None


def normalize_split(name: str, where: str) -> str:
    """Map a release's split name (``validate``, ``dev``, ``Valid`` ...) to train/val/test.

    Raises:
        ValueError: Unknown split name (message names ``where``).
    """
    try:
        return _SPLIT_ALIASES[str(name).strip().lower()]
    except KeyError:
        raise ValueError(f"{where}: unknown split {name!r}; expected one of "
                         f"{sorted(_SPLIT_ALIASES)}") from None


def hash_split(key: str, val_fraction: float, test_fraction: float, salt: str = "") -> str:
    """Deterministic split of ``key`` (e.g. a patient id) from a hash, stable across machines.

    Grouping by patient/paper keeps every image of one key in the same split.
    """
    digest = hashlib.sha1(f"{salt}{key}".encode("utf-8")).digest()
    u = int.from_bytes(digest[:8], "big") / 2.0 ** 64
    if u < test_fraction:
        return "test"
    if u < test_fraction + val_fraction:
        return "val"
    return "train"


def is_missing(value: Any) -> bool:
    """``None`` (JSON ``null``, a key absent from ``.get``) or a float NaN: no value at all."""
    return value is None or (isinstance(value, float) and math.isnan(value))


def clean_text(value: Any) -> str:
    """Text with whitespace runs collapsed to one space; ``""`` only for a missing value.

    A spelling is never a blank: ``"None"``, ``"null"``, ``"NA"``, ``"0"``, ``"no"`` and numbers
    (``0`` -> ``"0"``) are kept as written. Only ``None``, a float NaN and an empty or
    whitespace-only string give ``""``.
    """
    if is_missing(value):
        return ""
    return " ".join(str(value).split())


def open_text(path: Path) -> io.TextIOBase:
    """Open a UTF-8 text file, transparently un-gzipping ``*.gz`` (BOM tolerated)."""
    if path.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8-sig", newline="")
    return path.open(encoding="utf-8-sig", newline="")


def read_csv(path: Path, required: tuple[str, ...] = (), delimiter: str = ",") -> Iterator[
        tuple[int, dict[str, str]]]:
    """Rows of a CSV file as ``(line number, row)``; checks the header first.

    Raises:
        LayoutError: A required column is missing (names the file and the columns found).
    """
    with open_text(path) as handle:
        reader = csv.DictReader(handle, delimiter=delimiter)
        header = reader.fieldnames or []
        missing = [c for c in required if c not in header]
        if missing:
            raise LayoutError(f"{path}: missing column(s) {', '.join(map(repr, missing))}; "
                              f"found {header}")
        for row in reader:
            yield reader.line_num, {k: (v if v is not None else "") for k, v in row.items()
                                    if k is not None}


def first_existing(src: Path, *candidates: str) -> Path | None:
    """The first of ``src / candidate`` that exists, else ``None``."""
    for name in candidates:
        if (src / name).exists():
            return src / name
    return None


_EMPTY_REASONS = {"text": "empty text", "question": "empty question", "answer": "empty answer"}
_CLASSES: dict[str, type] = {"pretrain": PretrainRecord, "vqa": VQARecord,
                             "classification": ClassificationRecord}


class Adapter:
    """Base class of an adapter. Subclasses are dataclasses whose fields are their options.

    Class attributes:
        name: Dataset name used on the command line.
        kind: Manifest kind produced.
        layout: The expected release layout, shown in every layout error.
        source: Where to obtain the release and its license (one line, for ``--help``).
        labels: Closed label vocabulary of a classification dataset (``None``: open).
        published: Record counts of the dataset's paper / release README and when they hold
            (:class:`~mpma.data.sources.published.Published`); ``prepare`` compares every run with them.
    """

    name: ClassVar[str] = ""
    kind: ClassVar[ManifestKind] = "pretrain"
    layout: ClassVar[str] = ""
    source: ClassVar[str] = ""
    labels: ClassVar[tuple[str, ...] | None] = None
    published: ClassVar[tuple[Published, ...]] = ()

    def check(self, src: Path) -> None:
        """Raise :class:`LayoutError` if ``src`` does not hold the expected release files."""
        raise NotImplementedError

    def items(self, src: Path) -> Iterator[Item]:
        """Yield one :class:`Item` per entry of the release, in release order."""
        raise NotImplementedError

    def label_set(self) -> tuple[str, ...] | None:
        """Known labels of this configured adapter (``None``: any label is accepted)."""
        return self.labels

    def settings(self, src: Path) -> dict[str, Any]:
        """The options, plus facts of the release at ``src`` that published counts depend on
        (e.g. which of two layouts it is); matched against ``Published.conditions``."""
        return dataclasses.asdict(self) if dataclasses.is_dataclass(self) else {}

    # helpers for subclasses ------------------------------------------------------------
    def require(self, src: Path, *paths: str) -> None:
        """Raise :class:`LayoutError` naming every missing path under ``src``."""
        missing = [p for p in paths if not (src / p).exists()]
        if missing:
            raise LayoutError(f"{src} does not look like the {self.name} release: missing "
                              f"{', '.join(missing)}. Expected:\n{self.layout}")

    def make(self, record_id: str, source: str, **fields: Any) -> Item:
        """Build a candidate record of this adapter's kind, or a reject item explaining why not.

        Text fields (``text``, ``question``, ``answer``) are cleaned with :func:`clean_text`;
        a missing (``None``) or blank one gives the reject reason ``"empty <field>"`` (the
        optional ``text`` of a classification record may be ``None``). A reject keeps the
        ``split`` of ``fields``.
        """
        split = fields.get("split")
        for name, reason in _EMPTY_REASONS.items():
            if name not in fields:
                continue
            if fields[name] is None and name == "text" and self.kind == "classification":
                continue
            state = "missing" if is_missing(fields[name]) else "blank"
            fields[name] = clean_text(fields[name])
            if not fields[name]:
                return Item(record_id, source, reason=reason, detail=f"{name} is {state}",
                            split=split)
        record_id = clean_text(record_id)
        if not record_id:
            return Item(f"{source}", source, reason="missing id", detail="the id field is blank",
                        split=split)
        try:
            record = _CLASSES[self.kind](id=record_id, **fields)
        except (TypeError, ValueError) as exc:
            return Item(record_id, source, reason="invalid record", detail=str(exc), split=split)
        return Item(record_id, source, record=record)

    @classmethod
    def options(cls) -> dict[str, tuple[type, Any]]:
        """``{option: (type, default)}`` of this adapter (its dataclass fields)."""
        if not dataclasses.is_dataclass(cls):
            return {}
        types = {"bool": bool, "int": int, "float": float, bool: bool, int: int, float: float}
        return {f.name: (types.get(f.type, str), f.default) for f in dataclasses.fields(cls)}
