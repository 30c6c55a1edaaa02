"""Table-shaped releases: a user's own CSV/JSONL (``generic``) and MELINDA."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mpma.data.records import normalize_answer
from mpma.data.sources.adapters.base import (
    Adapter,
    Item,
    LayoutError,
    clean_text,
    hash_split,
    is_missing,
    normalize_split,
    read_csv,
)
from mpma.data.sources.adapters.vqa import yes_no_type
from mpma.data.sources.published import TOTAL, Published

_TRUE = {"1", "1.0", "true", "yes", "y", "t"}
_FALSE = {"", "0", "0.0", "false", "no", "n", "f", "nan"}
_TABLES = ("*.csv", "*.tsv", "*.jsonl")


def _cell(value: Any) -> str:
    """A cell as stripped text; ``""`` only for a missing one (``"None"`` or ``0`` are values)."""
    return "" if is_missing(value) else str(value).strip()


@dataclass
class GenericAdapter(Adapter):
    """Any CSV/TSV/JSONL table with one row per image.

    The kind follows the columns: ``question_column`` → vqa, ``labels_column`` or
    ``label_columns`` → classification, else pretrain (``text_column`` required). Example, the
    COVID-19 image data collection: ``-o file=metadata.csv -o image_column=filename
    -o image_root=images -o text_column=clinical_notes``.

    Attributes:
        file: Table path relative to ``--src`` (default: the only csv/tsv/jsonl file there).
        image_column: Column holding the image path (relative to ``image_root``).
        image_root: Folder of the images, relative to ``--src`` (default ``--src``).
        text_column: Report/caption column (required for pretrain, optional otherwise).
        labels_column: One column of ``label_separator``-joined label names.
        label_separator: Separator of ``labels_column``.
        label_columns: Comma-separated 0/1 columns, one per label (the header is the name).
        known_labels: Comma-separated known labels for ``labels_column`` (others are rejects).
        question_column: VQA question column.
        answer_column: VQA answer column.
        answer_type_column: VQA answer type column (default: yes/no → CLOSED, else OPEN).
        id_column: Unique id column (default ``row<N>``, N = data row number from 1).
        split_column: Split column (train/val/test, validation/dev accepted).
        group_column: Without a split column: hash this column (e.g. patient id) to split.
        val_fraction: Without a split column: fraction of groups in val.
        test_fraction: Without a split column: fraction of groups in test.
    """

    file: str = ""
    image_column: str = "image"
    image_root: str = ""
    text_column: str = ""
    labels_column: str = ""
    label_separator: str = "|"
    label_columns: str = ""
    known_labels: str = ""
    question_column: str = ""
    answer_column: str = "answer"
    answer_type_column: str = ""
    id_column: str = ""
    split_column: str = ""
    group_column: str = ""
    val_fraction: float = 0.0
    test_fraction: float = 0.0

    name = "generic"
    source = "your own data"
    layout = """<src>/<file>.csv|.tsv|.jsonl   one row per image; pick columns with -o key=value
<src>/<image_root>/<value of image_column>"""

    @property
    def kind(self) -> str:  # type: ignore[override]
        if self.question_column:
            return "vqa"
        return "classification" if self.labels_column or self.label_columns else "pretrain"

    def label_set(self) -> tuple[str, ...] | None:  # type: ignore[override]
        names = self.label_columns or self.known_labels
        return tuple(n.strip() for n in names.split(",") if n.strip()) or None

    def _table(self, src: Path) -> Path:
        if self.file:
            self.require(src, self.file)
            return src / self.file
        found = sorted(p for pattern in _TABLES for p in src.glob(pattern))
        if len(found) != 1:
            raise LayoutError(f"{src}: found {len(found)} tables ({[p.name for p in found]}); "
                              f"name one with -o file=<name>. Expected:\n{self.layout}")
        return found[0]

    def check(self, src: Path) -> None:
        if self.kind == "pretrain" and not self.text_column:
            raise LayoutError("generic: say which columns to use: -o text_column=<name> for "
                              "image-text pairs, -o labels_column=/label_columns= for labels or "
                              "-o question_column= for VQA")
        self._table(src)
        if self.image_root:
            self.require(src, self.image_root)

    def _rows(self, table: Path, required: tuple[str, ...]) -> Iterator[tuple[int, dict]]:
        if table.suffix == ".jsonl":
            with table.open(encoding="utf-8-sig") as handle:
                for lineno, line in enumerate(handle, 1):
                    if line.strip():
                        try:
                            row = json.loads(line)
                        except json.JSONDecodeError as exc:
                            row = {"__error__": f"not valid JSON ({exc.msg})"}
                        yield lineno, row if isinstance(row, dict) else {"__error__": "not an object"}
        else:
            yield from read_csv(table, required, "\t" if table.suffix == ".tsv" else ",")

    def items(self, src: Path) -> Iterator[Item]:
        table = self._table(src)
        columns = [self.image_column, self.text_column, self.labels_column, self.id_column,
                   self.split_column, self.group_column, self.question_column]
        if self.question_column:
            columns.append(self.answer_column)
        columns += [c.strip() for c in self.label_columns.split(",")]
        required = tuple(c for c in columns if c)
        root = src / self.image_root
        for number, (lineno, row) in enumerate(self._rows(table, required), 1):
            where = f"{table.name}:{lineno}"
            record_id = _cell(row.get(self.id_column)) if self.id_column else f"row{number}"
            missing = [c for c in required if c not in row]
            if "__error__" in row or missing:
                yield Item(record_id, where, reason="malformed row",
                           detail=row.get("__error__") or f"missing {missing}")
                continue
            yield self._item(row, record_id, where, root)

    def _item(self, row: dict, record_id: str, where: str, root: Path) -> Item:
        try:
            split = (normalize_split(_cell(row[self.split_column]), where) if self.split_column
                     else hash_split(_cell(row[self.group_column]) if self.group_column
                                     else record_id, self.val_fraction, self.test_fraction))
        except ValueError as exc:
            return Item(record_id, where, reason="unknown split", detail=str(exc))
        image = _cell(row[self.image_column])
        if not image:
            return Item(record_id, where, reason="image missing", detail="image column is blank",
                        split=split)
        fields: dict[str, Any] = {"image": str(root / image), "split": split}
        text = clean_text(row[self.text_column]) if self.text_column else ""
        if self.kind == "vqa":
            answer = _cell(row[self.answer_column])
            kind = _cell(row.get(self.answer_type_column)) if self.answer_type_column else ""
            missing = is_missing(row[self.answer_column])
            fields.update(question=row[self.question_column],
                          answer=None if missing else normalize_answer(answer),
                          answer_type=kind or yes_no_type(answer))
        elif self.kind == "classification":
            labels = self._labels(row)
            if isinstance(labels, str):
                return Item(record_id, where, reason="unknown label value", detail=labels,
                            split=split)
            fields.update(labels=labels, text=text or None)
        else:
            fields["text"] = text
        return self.make(record_id, where, **fields)

    def _labels(self, row: dict) -> list[str] | str:
        if self.labels_column:
            value = row[self.labels_column]
            parts = value if isinstance(value, list) else _cell(value).split(self.label_separator)
            return [p for p in (_cell(x) for x in parts) if p]
        labels = []
        for column in (c.strip() for c in self.label_columns.split(",") if c.strip()):
            value = _cell(row[column]).lower()
            if value in _TRUE:
                labels.append(column)
            elif value not in _FALSE:
                return f"{column}={row[column]!r} is not 0/1"
        return labels


@dataclass
class MelindaAdapter(Adapter):
    """MELINDA (Wu et al. AAAI 2021): figure + caption → experimental method, M3AE's layout.

    ``id`` = ``<split>-<line>``; text = caption; labels = ``[<level>_label]`` (``<level>`` column
    when there is no ``_label`` column).

    Attributes:
        level: ``i_meth`` (intermediate method, default) or ``p_meth`` (participant method).
    """

    level: str = "i_meth"

    name = "melinda"
    kind = "classification"
    source = "github.com/PlusLabNLP/melinda (images from PMC OA); research use, per-article CC"
    layout = """<src>/train.csv, dev.csv, test.csv   figure_file,caption,i_meth,p_meth,i_meth_label,p_meth_label
<src>/melinda_images/<figure_file>   (or images/<figure_file>)"""
    FILES = {"train": "train.csv", "val": "dev.csv", "test": "test.csv"}
    published = (Published(
        {TOTAL: 5371}, unit="figure-caption pairs", unverified=(TOTAL,),
        source="Wu et al. AAAI 2021 (MELINDA): train/dev/test.csv",
        note="per-split counts not registered; total not checked against the paper"),)

    def check(self, src: Path) -> None:
        if self.level not in ("i_meth", "p_meth"):
            raise LayoutError(f"level={self.level!r}: choose i_meth or p_meth")
        self.require(src, *self.FILES.values())
        if not (src / "melinda_images").is_dir():
            self.require(src, "images")

    def items(self, src: Path) -> Iterator[Item]:
        images = src / "melinda_images" if (src / "melinda_images").is_dir() else src / "images"
        for split, name in self.FILES.items():
            for lineno, row in read_csv(src / name, ("figure_file", "caption", self.level)):
                where, record_id = f"{name}:{lineno}", f"{split}-{lineno:06d}"
                label = _cell(row.get(f"{self.level}_label") or row[self.level])
                if not label:
                    yield Item(record_id, where, reason="missing label", split=split,
                               detail=f"{self.level} blank")
                    continue
                yield self.make(record_id, where, image=str(images / row["figure_file"].strip()),
                                text=row["caption"], labels=[label],
                                split=split, meta={"i_meth": row["i_meth"] if "i_meth" in row else "",
                                                   "p_meth": row.get("p_meth", "")})
