"""MedPix 2.0 (Siragusa et al. 2024): CT and MR slices of MedPix cases with their captions.

One pre-training record per entry of ``Descriptions.json``; the text is the image's caption,
optionally followed by the image's modality, plane and location and by its case's history,
findings and diagnosis (``Case_topic.json``, joined by ``U_id``). The release has no split:
cases are hashed to train/val/test, so every image of one case lands in the same split.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mpma.data.records import PretrainRecord
from mpma.data.sources.adapters.base import Adapter, Item, LayoutError, hash_split
from mpma.data.sources.published import TOTAL, Published

DESCRIPTIONS = "Descriptions.json"
CASES = "Case_topic.json"
IMAGES = "images"
_SYNPIC = re.compile(r"synpic\d+")
_MISSING = object()  # a key absent from an entry (told apart from an explicit null)


class _Malformed(ValueError):
    """A field of an entry has a type that is not text (a list, an object ...)."""


def _text(value: Any, field: str) -> str:
    """``value`` with whitespace runs collapsed; ``None`` or a missing key gives ``""``.

    As with :func:`~mpma.data.sources.adapters.base.clean_text`, strings such as ``"None"``, ``"NA"``
    or ``"0"`` are kept: in MedPix they are what the author typed, not a missing value; unlike
    it, a list or an object is an error.

    Raises:
        _Malformed: ``value`` is a list, an object or another non-scalar (names ``field``).
    """
    if value is None or value is _MISSING:
        return ""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise _Malformed(f"{field} should be text, got {type(value).__name__}")
    return " ".join(str(value).split())


def _sentence(label: str, value: str) -> str:
    """``"Label: value."`` (``"value."`` without label); no second full stop is added."""
    text = f"{label}: {value}" if label else value
    return text if text[-1] in ".!?" else text + "."


def _load_list(path: Path) -> list[Any]:
    """The top-level JSON list of a release file.

    Raises:
        LayoutError: The file is not UTF-8 JSON or its top level is not a list (names the file).
    """
    try:
        with path.open(encoding="utf-8-sig") as handle:
            data = json.load(handle)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise LayoutError(f"{path}: not a readable JSON file ({exc})") from None
    if not isinstance(data, list):
        raise LayoutError(f"{path}: expected a JSON list of entries, got {type(data).__name__}")
    return data


@dataclass
class MedpixAdapter(Adapter):
    """MedPix 2.0 (Siragusa et al. 2024): CT/MR images of MedPix cases with captions.

    One record per ``Descriptions.json`` entry; ``id`` = the image stem
    (``MPX1009_synpic46283``), image ``images/<stem>.jpg``. Text = the caption, then, each as
    its own sentence when switched on and not blank: ``Modality: CT - noncontrast.``,
    ``Plane: Axial.``, ``Location: Genitourinary (Reproductive and Urinary System).``, and the
    case's ``History:``, ``Findings:``, ``Diagnosis:`` (joined by ``U_id``; a case missing from
    ``Case_topic.json`` simply adds nothing). The caption gets a full stop only when a sentence
    follows it. Only missing, null or whitespace-only fields are blank: "None", "N/A" or "0"
    are kept as typed. A blank caption is rejected (``empty caption``) even when the other
    fields would give text. ``meta`` holds ``u_id``, ``synpic`` (dedupe against VQA-RAD /
    VQA-Med by it), ``type``, ``modality``, ``plane``, ``location`` and ``location_category``.
    Cases are hashed to splits (all images of a case in one split).

    Attributes:
        modality: Append ``Description.Modality`` (e.g. "CT w/contrast (IV)").
        plane: Append ``Description.Plane`` (e.g. "Axial").
        location: Append ``Location`` (e.g. "Brain and Neuro").
        location_category: Append ``Location Category`` (e.g. "Head").
        history: Append the case's ``Case.History``.
        findings: Append the case's ``Case.Findings`` (longer text shared by the whole case).
        diagnosis: Append the case's ``Case.Case Diagnosis``.
        min_words: Captions with fewer words are excluded (counted, not rejected); 0 keeps all.
        val_fraction: Fraction of cases in ``val``.
        test_fraction: Fraction of cases in ``test``.
    """

    modality: bool = True
    plane: bool = True
    location: bool = True
    location_category: bool = True
    history: bool = False
    findings: bool = False
    diagnosis: bool = False
    min_words: int = 0
    val_fraction: float = 0.05
    test_fraction: float = 0.05

    name = "medpix"
    kind = "pretrain"
    source = ("MedPix 2.0, Siragusa et al. 2024 (images and texts from NLM MedPix); no licence "
              "stated: research use, do not redistribute")
    layout = f"""<src>/{DESCRIPTIONS}   one entry per image:
    [{{Type: CT|MR, U_id, image: <stem>, Location, Location Category,
      Description: {{Caption, Modality, Plane, Age, Sex, ACR Codes, Figure Part}}}}, ...]
<src>/{CASES}     one entry per case (needed only with history/findings/diagnosis):
    [{{U_id, TAC: [<stem>...], MRI: [<stem>...], Topic: {{...}},
      Case: {{Title, History, Exam, Findings, Differential Diagnosis, Case Diagnosis}}}}, ...]
<src>/{IMAGES}/<U_id>_<synpic id>.jpg   (= <stem>.jpg)"""
    published = (Published(
        {TOTAL: 2050}, unit="images",
        source="Siragusa et al. 2024 (MedPix 2.0, arXiv:2407.02994): 2,050 CT/MR images",
        note="no official split (hashed by case here). A copy with the 10 VQA-RAD test images "
             "removed (as shared/data/medpix) holds 2,040 on purpose"),)

    def __post_init__(self) -> None:
        for name in ("val_fraction", "test_fraction"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"option {name} must be in [0, 1), got {getattr(self, name)}")
        if self.val_fraction + self.test_fraction >= 1.0:
            raise ValueError(f"val_fraction + test_fraction must be below 1 (no train left), got "
                             f"{self.val_fraction} + {self.test_fraction}")
        if self.min_words < 0:
            raise ValueError(f"option min_words must be >= 0, got {self.min_words}")

    @property
    def _uses_cases(self) -> bool:
        return self.history or self.findings or self.diagnosis

    def check(self, src: Path) -> None:
        self.require(src, DESCRIPTIONS, IMAGES, *([CASES] if self._uses_cases else []))

    def items(self, src: Path) -> Iterator[Item]:
        cases = self._cases(src / CASES) if self._uses_cases else {}
        for index, entry in enumerate(_load_list(src / DESCRIPTIONS)):
            yield self._item(src, f"{DESCRIPTIONS}[{index}]", entry, cases)

    def _cases(self, path: Path) -> dict[str, str]:
        """``{U_id: case text}`` of ``Case_topic.json`` (history/findings/diagnosis as chosen).

        Raises:
            LayoutError: An entry is not an object with a text ``U_id`` and a ``Case`` object,
                or a ``U_id`` occurs twice (the join would be ambiguous); names file and index.
        """
        fields = [("History", "History", self.history), ("Findings", "Findings", self.findings),
                  ("Diagnosis", "Case Diagnosis", self.diagnosis)]
        out: dict[str, str] = {}
        first: dict[str, int] = {}
        for index, entry in enumerate(_load_list(path)):
            where = f"{path}[{index}]"
            obj = entry if isinstance(entry, dict) else {}
            u_id, case = obj.get("U_id"), obj.get("Case")
            if not isinstance(u_id, str) or not u_id.strip() or not isinstance(
                    case, (dict, type(None))):
                raise LayoutError(f"{where}: expected an object with a text U_id and a Case "
                                  f"object; got {str(entry)[:120]!r}")
            u_id = u_id.strip()
            if u_id in first:
                raise LayoutError(f"{where}: case {u_id} already at index {first[u_id]}; "
                                  "cannot tell which case text belongs to its images")
            first[u_id] = index
            parts = []
            for label, key, wanted in fields:
                try:
                    value = _text((case or {}).get(key), f"Case.{key}") if wanted else ""
                except _Malformed as exc:
                    raise LayoutError(f"{where} ({u_id}): {exc}") from None
                if value:
                    parts.append(_sentence(label, value))
            out[u_id] = " ".join(parts)
        return out

    def _item(self, src: Path, where: str, entry: Any, cases: dict[str, str]) -> Item:
        if not isinstance(entry, dict):
            return Item(where, where, reason="malformed entry",
                        detail=f"expected an object, got {type(entry).__name__}")
        stem, u_id = entry.get("image"), entry.get("U_id")
        if not all(isinstance(v, str) and v.strip() for v in (stem, u_id)):
            return Item(where, where, reason="malformed entry", detail=f"needs text fields "
                        f"image and U_id; got image={stem!r}, U_id={u_id!r}")
        stem, u_id = stem.strip(), u_id.strip()
        if "/" in stem or "\\" in stem or stem.startswith("."):
            return Item(stem, where, reason="malformed entry",
                        detail=f"image {stem!r} is not a file stem inside {IMAGES}/")
        description = entry.get("Description", _MISSING)
        if description not in (None, _MISSING) and not isinstance(description, dict):
            return Item(stem, where, reason="malformed entry",
                        detail=f"Description should be an object, got {type(description).__name__}")
        description = description if isinstance(description, dict) else {}
        try:
            raw_caption = description.get("Caption", _MISSING)
            caption = _text(raw_caption, "Description.Caption")
            values = {"type": _text(entry.get("Type"), "Type"),
                      "modality": _text(description.get("Modality"), "Description.Modality"),
                      "plane": _text(description.get("Plane"), "Description.Plane"),
                      "location": _text(entry.get("Location"), "Location"),
                      "location_category": _text(entry.get("Location Category"),
                                                 "Location Category")}
        except _Malformed as exc:
            return Item(stem, where, reason="malformed entry", detail=f"{stem}: {exc}")
        split = hash_split(u_id, self.val_fraction, self.test_fraction, "medpix")
        if not caption:
            state = "missing" if raw_caption is _MISSING else "null" if raw_caption is None \
                else "blank"
            return Item(stem, where, reason="empty caption", split=split,
                        detail=f"{stem}: Description.Caption is {state}")
        if len(caption.split()) < self.min_words:
            return Item(stem, where, excluded=True, reason=f"caption under {self.min_words} words",
                        split=split)
        extras = [part for part in (*self._extras(values), cases.get(u_id, "")) if part]
        text = " ".join([_sentence("", caption), *extras]) if extras else caption
        synpic = stem[len(u_id) + 1:] if stem.startswith(f"{u_id}_") else None
        if not synpic:
            match = _SYNPIC.search(stem)
            synpic = match.group(0) if match else None
        meta = {"u_id": u_id, "synpic": synpic, **{k: v or None for k, v in values.items()}}
        try:
            record = PretrainRecord(id=stem, image=str(src / IMAGES / f"{stem}.jpg"),
                                    text=text, split=split, meta=meta)
        except (TypeError, ValueError) as exc:
            return Item(stem, where, reason="invalid record", detail=str(exc))
        return Item(stem, where, record=record)

    def _extras(self, values: dict[str, str]) -> list[str]:
        """The switched-on image-level sentences (modality, plane, location), blanks left out."""
        parts = []
        if self.modality and values["modality"]:
            parts.append(_sentence("Modality", values["modality"]))
        if self.plane and values["plane"]:
            parts.append(_sentence("Plane", values["plane"]))
        where = values["location"] if self.location else ""
        category = values["location_category"] if self.location_category else ""
        if where and category and category.lower() != where.lower():
            parts.append(_sentence("Location", f"{where} ({category})"))
        elif where or category:
            parts.append(_sentence("Location", where or category))
        return parts

