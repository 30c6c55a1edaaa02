"""Radiology report releases for pre-training: MIMIC-CXR (JPG) and IU X-Ray (Open-I / R2Gen)."""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from mpma.data.sources.adapters.base import (
    Adapter,
    Item,
    LayoutError,
    clean_text,
    hash_split,
    normalize_split,
    read_csv,
)
from mpma.data.sources.published import TOTAL, Published

# A section heading: an upper-case phrase at the start of a line followed by a colon.
_HEADING = re.compile(r"^[ \t]*([A-Z][A-Z /&()-]{2,40}):", re.MULTILINE)


def report_sections(text: str) -> dict[str, str]:
    """Split a free-text report into ``{heading (lower case): text}``.

    ``"FINDINGS: a\\nIMPRESSION: b"`` → ``{"findings": "a", "impression": "b"}``; text before the
    first heading is stored under ``""``; a repeated heading keeps the later occurrences appended.
    """
    sections: dict[str, str] = {}
    matches = list(_HEADING.finditer(text))
    starts = [(m.start(), m.end(), m.group(1).strip().lower()) for m in matches]
    sections[""] = clean_text(text[: starts[0][0]] if starts else text)
    for i, (_, end, name) in enumerate(starts):
        stop = starts[i + 1][0] if i + 1 < len(starts) else len(text)
        body = clean_text(text[end:stop])
        sections[name] = f"{sections[name]} {body}".strip() if name in sections else body
    return sections


def compose(sections: dict[str, str], wanted: tuple[str, ...]) -> str:
    """Join the wanted sections (in the given order), skipping empty ones."""
    return " ".join(sections[name] for name in wanted if sections.get(name))


def _wanted(value: str) -> tuple[str, ...]:
    names = tuple(s.strip().lower() for s in value.split(",") if s.strip())
    if not names:
        raise LayoutError("option sections is empty; pass e.g. sections=findings,impression")
    return names


@dataclass
class MimicCxrAdapter(Adapter):
    """MIMIC-CXR-JPG (Johnson et al. 2019) with the MIMIC-CXR free-text reports.

    One record per image (``id`` = ``dicom_id``), split from the official split CSV
    (``validate`` → ``val``); text = the chosen report sections. A study whose report has none
    of them (≈ 9k studies have no FINDINGS) gives rejects ``"empty report sections"``, never a
    crash. A missing report file gives ``"report missing"``.

    Attributes:
        sections: Comma-separated report sections joined into the text, in order.
        views: Comma-separated ViewPosition values to keep (e.g. ``PA,AP``; needs the metadata
            CSV); empty keeps all.
        reports: Folder holding ``files/pXX/pNNNNNNNN/sNNNNNNNN.txt`` when it is not ``--src``
            or ``--src/mimic-cxr-reports``.
    """

    sections: str = "findings,impression"
    views: str = ""
    reports: str = ""

    name = "mimic-cxr"
    kind = "pretrain"
    source = "physionet.org/content/mimic-cxr-jpg (credentialed; PhysioNet DUA 1.5.0)"
    layout = """<src>/   (mimic-cxr-jpg/2.x.0)
    mimic-cxr-2.0.0-split.csv.gz     dicom_id,study_id,subject_id,split
    mimic-cxr-2.0.0-metadata.csv.gz  (only for views=...)
    files/pXX/pNNNNNNNN/sNNNNNNNN/<dicom_id>.jpg
  reports (mimic-cxr-reports.zip from MIMIC-CXR, extracted into <src> or <src>/mimic-cxr-reports):
    files/pXX/pNNNNNNNN/sNNNNNNNN.txt"""
    published = (Published(
        {"train": 368960, "val": 2991, "test": 5159, "total": 377110}, unit="images",
        unverified=("train", "val", "test"),
        source="physionet.org/content/mimic-cxr-jpg: 377,110 images of 227,827 studies; splits "
               "from mimic-cxr-2.0.0-split.csv",
        note="per-split counts (they sum to 377,110) not checked against the split file; "
             "studies without the chosen report sections are rejects, so the kept counts are "
             "below these unless every report has them"),)

    def _find(self, src: Path, kind: str) -> Path | None:
        found = sorted(src.glob(f"mimic-cxr-2.*-{kind}.csv*"))
        return found[-1] if found else None

    def _reports_root(self, src: Path) -> Path:
        if self.reports:
            return Path(self.reports).expanduser()
        nested = src / "mimic-cxr-reports"
        return nested if nested.is_dir() else src

    def check(self, src: Path) -> None:
        if self._find(src, "split") is None:
            self.require(src, "mimic-cxr-2.0.0-split.csv.gz")
        self.require(src, "files")
        if self.views and self._find(src, "metadata") is None:
            raise LayoutError(f"{src}: views={self.views} needs mimic-cxr-2.0.0-metadata.csv.gz")
        if not (self._reports_root(src) / "files").is_dir():
            raise LayoutError(f"no MIMIC-CXR reports found under {self._reports_root(src)}; "
                              f"extract mimic-cxr-reports.zip there or pass -o reports=<folder>."
                              f" Expected:\n{self.layout}")

    def items(self, src: Path) -> Iterator[Item]:
        wanted = _wanted(self.sections)
        keep_views = {v.strip().upper() for v in self.views.split(",") if v.strip()}
        view_of: dict[str, str] = {}
        if keep_views:
            meta_path = self._find(src, "metadata")
            assert meta_path is not None
            for _, row in read_csv(meta_path, ("dicom_id", "ViewPosition")):
                view_of[row["dicom_id"]] = row["ViewPosition"].strip().upper()
        reports_root = self._reports_root(src)
        cache: dict[Path, dict[str, str] | None] = {}
        split_csv = self._find(src, "split")
        assert split_csv is not None
        rel = split_csv.relative_to(src)
        for lineno, row in read_csv(split_csv, ("dicom_id", "study_id", "subject_id", "split")):
            where, dicom = f"{rel}:{lineno}", row["dicom_id"].strip()
            try:
                split = normalize_split(row["split"], where)
            except ValueError as exc:
                yield Item(dicom, where, reason="unknown split", detail=str(exc))
                continue
            if keep_views and view_of.get(dicom, "") not in keep_views:
                yield Item(dicom, where, excluded=True, reason="view not selected", split=split)
                continue
            subject, study = row["subject_id"].strip(), row["study_id"].strip()
            folder = Path("files") / f"p{subject[:2]}" / f"p{subject}"
            report = reports_root / folder / f"s{study}.txt"
            if report not in cache:
                try:
                    cache[report] = report_sections(report.read_text(encoding="utf-8"))
                except OSError:
                    cache[report] = None
            sections = cache[report]
            if sections is None:
                yield Item(dicom, where, reason="report missing", detail=f"{report} not found",
                           split=split)
                continue
            text = compose(sections, wanted)
            if not text:
                yield Item(dicom, where, reason="empty report sections", split=split,
                           detail=f"{report.name} has no {'/'.join(wanted)} text")
                continue
            yield self.make(dicom, where, image=str(src / folder / f"s{study}" / f"{dicom}.jpg"),
                            text=text, split=split,
                            meta={"study_id": study, "subject_id": subject})


@dataclass
class IuXrayAdapter(Adapter):
    """IU X-Ray (Demner-Fushman et al. 2016), from Open-I or R2Gen's ``annotation.json``.

    R2Gen layout: its train/val/test split; one record per image, ``id`` =
    ``<study id>/<image index>``. Open-I layout: one record per image (``id`` = image id), text =
    the chosen sections of the XML report, split 70/10/20 by a hash of the report id (all images
    of a report in one split).

    Attributes:
        sections: Open-I report sections joined into the text.
        val_fraction: Open-I layout: fraction of reports in ``val``.
        test_fraction: Open-I layout: fraction of reports in ``test``.
    """

    sections: str = "findings,impression"
    val_fraction: float = 0.1
    test_fraction: float = 0.2

    name = "iu-xray"
    kind = "pretrain"
    source = "openi.nlm.nih.gov/faq (NLMCXR_png.tgz, NLMCXR_reports.tgz); CC BY-NC-ND 4.0"
    layout = """either Open-I:   <src>/ecgen-radiology/<n>.xml   and   <src>/NLMCXR_png/<image id>.png
or R2Gen:        <src>/annotation.json  {"train"|"val"|"test": [{id, report, image_path: [...]}]}
                 <src>/images/<image_path>"""
    published = (
        Published({"train": 4138, "val": 592, "test": 1180}, unit="images",
                  conditions={"layout": "r2gen"}, unverified=("train", "val", "test"),
                  source="R2Gen annotation.json (Chen et al. EMNLP 2020): 2,069 / 296 / 590 "
                         "studies of two images each",
                  note="counts not checked against annotation.json"),
        Published({"total": 7470}, unit="images", conditions={"layout": "openi"},
                  unverified=(TOTAL,),
                  source="Demner-Fushman et al. 2016 (JAMIA): 7,470 images of 3,955 reports",
                  note="no official split (hashed by report here)"),
    )

    def settings(self, src: Path) -> dict:
        """Options plus ``layout``: ``r2gen`` (annotation.json) or ``openi``."""
        return {**super().settings(src),
                "layout": "r2gen" if (src / "annotation.json").is_file() else "openi"}

    def check(self, src: Path) -> None:
        if not (src / "annotation.json").is_file() and not (src / "ecgen-radiology").is_dir():
            raise LayoutError(f"{src} does not look like IU X-Ray: neither annotation.json nor "
                              f"ecgen-radiology/ found. Expected:\n{self.layout}")

    def items(self, src: Path) -> Iterator[Item]:
        if (src / "annotation.json").is_file():
            yield from self._r2gen(src)
        else:
            yield from self._openi(src)

    def _r2gen(self, src: Path) -> Iterator[Item]:
        try:
            data = json.loads((src / "annotation.json").read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise LayoutError(f"{src / 'annotation.json'}: not valid JSON ({exc})") from None
        for key, entries in data.items():
            split = normalize_split(key, str(src / "annotation.json"))
            for index, entry in enumerate(entries):
                where = f"annotation.json:{key}[{index}]"
                if not isinstance(entry, dict) or not entry.get("image_path"):
                    yield Item(where, where, reason="malformed entry", detail="no image_path",
                               split=split)
                    continue
                for i, image in enumerate(entry["image_path"]):
                    yield self.make(f"{entry.get('id', where)}/{i}", where,
                                    image=str(src / "images" / image),
                                    text=entry.get("report", ""), split=split)

    def _openi(self, src: Path) -> Iterator[Item]:
        wanted = _wanted(self.sections)
        images = src / "NLMCXR_png" if (src / "NLMCXR_png").is_dir() else src / "images"
        for path in sorted((src / "ecgen-radiology").glob("*.xml"),
                           key=lambda p: (len(p.stem), p.stem)):
            where = f"ecgen-radiology/{path.name}"
            try:
                root = ET.parse(path).getroot()
            except ET.ParseError as exc:
                yield Item(where, where, reason="malformed report", detail=f"bad XML ({exc})")
                continue
            sections = {str(node.get("Label", "")).lower(): clean_text(node.text)
                        for node in root.iter("AbstractText")}
            uid = root.find("uId")
            report_id = uid.get("id", path.stem) if uid is not None else path.stem
            split = hash_split(report_id, self.val_fraction, self.test_fraction, "iu-xray")
            parents = [node.get("id", "") for node in root.iter("parentImage")]
            if not parents:
                yield Item(report_id, where, reason="no image", detail="report has no parentImage",
                           split=split)
            text = compose(sections, wanted)
            for image_id in parents:
                if not text:
                    yield Item(image_id, where, reason="empty report sections", split=split,
                               detail=f"report has no {'/'.join(wanted)} text")
                    continue
                yield self.make(image_id, where, image=str(images / f"{image_id}.png"),
                                text=text, split=split, meta={"report_id": report_id})
