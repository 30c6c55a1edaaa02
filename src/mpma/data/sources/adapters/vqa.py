"""Medical VQA releases: VQA-RAD, SLAKE, VQA-Med-2019 and PathVQA.

Answers are normalised with :func:`~mpma.data.records.normalize_answer` (raw answer kept in
``meta``). Where a release has no answer type, a yes/no answer is ``CLOSED`` and any other
``OPEN`` (the convention of the PathVQA paper).
"""

from __future__ import annotations

import json
import pickle
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from mpma.data.records import normalize_answer
from mpma.data.sources.adapters.base import Adapter, Item, LayoutError, is_missing
from mpma.data.sources.published import Published
from mpma.data.sources.vqa_rad import IMAGE_DIR, SPLIT_FILES, VQARadError, entry_fields, read_entries


def answer_text(value: object) -> str | None:
    """A release's raw answer as text for :func:`normalize_answer`; ``None`` when it is missing
    (``null`` or absent): a missing answer is blank, the string "None" or the number 0 is not."""
    return None if is_missing(value) else str(value)


def yes_no_type(answer: str) -> str:
    """``CLOSED`` for a yes/no answer, else ``OPEN``."""
    return "CLOSED" if normalize_answer(answer) in ("yes", "no") else "OPEN"


def find_file(src: Path, name: str, depth: int = 3) -> Path | None:
    """First ``name`` under ``src`` at most ``depth`` folders deep (release zips add wrappers)."""
    for level in range(depth + 1):
        found = sorted(src.glob("/".join(["*"] * level + [name])))
        if found:
            return found[0]
    return None


@dataclass
class VqaRadAdapter(Adapter):
    """VQA-RAD (Lau et al. 2018), parsed as :func:`mpma.data.sources.vqa_rad.load_vqa_rad` does, one
    entry at a time: a malformed entry, an empty or ``null`` question or answer, or a repeated qid is
    a reject of that entry, never the end of the run."""

    name = "vqa-rad"
    kind = "vqa"
    source = "osf.io/89kps (VQA-RAD); CC0 1.0"
    layout = """<src>/trainset.json, <src>/testset.json   (MEVF / MICCAI-2019 split)
<src>/images/<image_name>"""
    published = (Published(
        {"train": 3064, "test": 451}, unit="QA pairs",
        source="Lau et al. 2018 (Sci. Data 5:180251), MEVF split of Nguyen et al. MICCAI 2019 "
               "(trainset.json / testset.json) used by M3AE"),)

    def check(self, src: Path) -> None:
        self.require(src, *SPLIT_FILES.values(), "images")

    def items(self, src: Path) -> Iterator[Item]:
        image_dir = src.expanduser().absolute() / IMAGE_DIR
        for split, name in SPLIT_FILES.items():
            try:
                entries = read_entries(src / name)
            except VQARadError as exc:
                raise LayoutError(str(exc)) from None
            for index, entry in enumerate(entries):
                where = f"{name}[{index}]"
                try:
                    fields = entry_fields(entry, split, image_dir, f"{name}: entry {index}")
                except VQARadError as exc:
                    record_id = str(entry["qid"]) if isinstance(entry, dict) and not is_missing(entry.get("qid")) \
                        else where
                    yield Item(record_id, where, reason="malformed entry", detail=str(exc), split=split)
                    continue
                yield self.make(fields.pop("id"), where, **fields)


@dataclass
class SlakeAdapter(Adapter):
    """SLAKE (Liu et al. 2021); ``id`` = ``qid``, ``question_type`` = ``content_type``.

    Attributes:
        language: Keep questions with this ``q_lang`` (``en`` as in M3AE); ``all`` keeps all.
    """

    language: str = "en"

    name = "slake"
    kind = "vqa"
    source = "www.med-vqa.com/slake (Slake1.0.zip); CC BY 4.0"
    layout = """<src>/train.json, validate.json, test.json
    [{qid, img_name, question, answer, answer_type, q_lang, content_type, ...}]
<src>/imgs/<folder>/source.jpg   (img_name = "<folder>/source.jpg")"""
    FILES = {"train": "train.json", "val": "validate.json", "test": "test.json"}
    published = (
        Published({"train": 4919, "val": 1053, "test": 1061}, unit="English QA pairs",
                  conditions={"language": "en"},
                  source="Liu et al. ISBI 2021, English questions of Slake1.0 "
                         "train/validate/test.json (the split M3AE and most papers report on)"),
        Published({"train": 9849, "val": 2109, "test": 2070}, unit="QA pairs (English + Chinese)",
                  conditions={"language": "all"}, unverified=("train", "val", "test"),
                  source="Slake1.0 train/validate/test.json, all languages",
                  note="the three sum to the 14,028 QA pairs of Liu et al. 2021; per-split counts "
                       "not checked against the release"),
    )

    def check(self, src: Path) -> None:
        self.require(src, *self.FILES.values(), "imgs")

    def items(self, src: Path) -> Iterator[Item]:
        for split, name in self.FILES.items():
            try:
                entries = json.loads((src / name).read_text(encoding="utf-8"))
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise LayoutError(f"{src / name}: not valid JSON ({exc})") from None
            for index, entry in enumerate(entries):
                where = f"{name}[{index}]"
                if not isinstance(entry, dict) or is_missing(entry.get("qid")) or \
                        is_missing(entry.get("img_name")):
                    yield Item(where, where, reason="malformed entry", split=split,
                               detail="need an object with qid and img_name")
                    continue
                qid = str(entry["qid"])
                lang = str(entry.get("q_lang", "en"))
                if self.language != "all" and lang != self.language:
                    yield Item(qid, where, excluded=True, reason=f"q_lang {lang}", split=split)
                    continue
                meta = {k: entry[k] for k in ("img_id", "img_name", "modality", "location",
                                              "base_type", "q_lang") if k in entry}
                meta["raw_answer"] = entry.get("answer")
                answer = answer_text(entry.get("answer"))
                yield self.make(qid, where, image=str(src / "imgs" / str(entry["img_name"])),
                                question=entry.get("question"),
                                answer=None if answer is None else normalize_answer(answer),
                                answer_type=str(entry.get("answer_type", "")), split=split,
                                question_type=str(entry.get("content_type", "")), meta=meta)


@dataclass
class VqaMed2019Adapter(Adapter):
    """ImageCLEF VQA-Med 2019 (Ben Abacha et al.); ``id`` = ``<split>-<line>``.

    The category (``question_type``) of a train/val pair comes from ``QAPairsByCategory/``; the
    test file carries it. The three question files are required; an absent image folder (the test
    images come in a separate download) is not an error: its records are ``image missing`` rejects.
    ``categories=modality,plane,organ`` reproduces M3AE (which dropped the abnormality questions);
    the other pairs are counted as excluded.

    Attributes:
        categories: ``all`` or a comma-separated subset of modality, plane, organ, abnormality.
    """

    categories: str = "all"

    name = "vqa-med-2019"
    kind = "vqa"
    source = "github.com/abachaa/VQA-Med-2019; research use (ImageCLEF terms), MedPix images"
    layout = """<src>/ImageClef-2019-VQA-Med-Training/  (any wrapper folder names)
    All_QA_Pairs_train.txt        image_id|question|answer
    QAPairsByCategory/C1_Modality_train.txt, C2_Plane_..., C3_Organ_..., C4_Abnormality_...
    Train_images/<image_id>.jpg
<src>/ImageClef-2019-VQA-Med-Validation/: All_QA_Pairs_val.txt, QAPairsByCategory/, Val_images/
<src>/.../VQAMed2019_Test_Questions_w_Ref_Answers.txt   image_id|category|question|answer
<src>/.../VQAMed2019_Test_Images/<image_id>.jpg"""
    ALL = ("modality", "plane", "organ", "abnormality")
    published = (Published(
        {"train": 12792, "val": 2000, "test": 500}, unit="QA pairs",
        source="Ben Abacha et al., VQA-Med overview, ImageCLEF 2019 (3,200 / 500 / 500 images)",
        note="categories=modality,plane,organ (M3AE) leaves the abnormality questions out: "
             "such a test set is not the published one"),)
    _ALIASES = {"organ_system": "organ", "organsystem": "organ"}

    def _wanted(self) -> set[str]:
        if self.categories == "all":
            return set(self.ALL)
        wanted = {c.strip().lower() for c in self.categories.split(",") if c.strip()}
        if not wanted or wanted - set(self.ALL):
            raise LayoutError(f"categories={self.categories!r}: choose 'all' or from {self.ALL}")
        return wanted

    def check(self, src: Path) -> None:
        self._wanted()
        # The question files are needed; an image folder may be absent (the test images are
        # distributed separately): its records become "image missing" rejects.
        needed = ("All_QA_Pairs_train.txt", "All_QA_Pairs_val.txt",
                  "VQAMed2019_Test_Questions_w_Ref_Answers.txt")
        missing = [n for n in needed if find_file(src, n) is None]
        if missing:
            raise LayoutError(f"{src} does not look like VQA-Med-2019: missing "
                              f"{', '.join(missing)}. Expected:\n{self.layout}")

    def _category_of(self, qa_file: Path, split_tag: str) -> dict[tuple[str, str], str]:
        out: dict[tuple[str, str], str] = {}
        for path in sorted((qa_file.parent / "QAPairsByCategory").glob(f"C*_*_{split_tag}.txt")):
            category = path.name.split("_")[1].lower()
            for line in path.read_text(encoding="utf-8-sig").splitlines():
                parts = line.split("|")
                if len(parts) >= 3:
                    out[(parts[0].strip(), parts[1].strip())] = category
        return out

    def items(self, src: Path) -> Iterator[Item]:
        wanted = self._wanted()
        jobs = [("train", "All_QA_Pairs_train.txt", "train", "Train_images"),
                ("val", "All_QA_Pairs_val.txt", "val", "Val_images")]
        for split, name, tag, image_dir in jobs:
            qa_file = find_file(src, name)
            assert qa_file is not None
            categories = self._category_of(qa_file, tag)
            if not categories and wanted != set(self.ALL):
                raise LayoutError(f"{qa_file.parent / 'QAPairsByCategory'}: no category files "
                                  f"(C1_Modality_{tag}.txt, ...); needed for categories=")
            yield from self._lines(src, qa_file, split, qa_file.parent / image_dir,
                                   lambda p: (p[0], categories.get((p[0], p[1]), ""), p[1], p[2]),
                                   3, wanted)
        test_file = find_file(src, "VQAMed2019_Test_Questions_w_Ref_Answers.txt")
        assert test_file is not None
        test_images = find_file(src, "VQAMed2019_Test_Images") or test_file.parent / "VQAMed2019_Test_Images"
        yield from self._lines(src, test_file, "test", test_images,
                               lambda p: (p[0], p[1].lower(), p[2], p[3]), 4, wanted)

    def _lines(self, src: Path, path: Path, split: str, images: Path, fields, n_fields: int,
               wanted: set[str]) -> Iterator[Item]:
        rel = path.relative_to(src)
        for lineno, line in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), 1):
            if not line.strip():
                continue
            where, record_id = f"{rel}:{lineno}", f"{split}-{lineno:05d}"
            parts = [p.strip() for p in line.split("|")]
            if len(parts) != n_fields:
                yield Item(record_id, where, reason="malformed line", split=split,
                           detail=f"expected {n_fields} '|'-separated fields, got {len(parts)}")
                continue
            image_id, category, question, answer = fields(parts)
            category = self._ALIASES.get(category, category)
            if category and category not in wanted:
                yield Item(record_id, where, excluded=True, reason=f"category {category}",
                           split=split)
                continue
            yield self.make(record_id, where, image=str(images / f"{image_id}.jpg"),
                            question=question, answer=normalize_answer(answer),
                            answer_type=yes_no_type(answer), split=split,
                            question_type=category, meta={"image_id": image_id,
                                                          "raw_answer": answer})


class _PlainUnpickler(pickle.Unpickler):
    """Unpickles only plain containers and strings/numbers: a release file cannot run code."""

    def find_class(self, module: str, name: str):  # noqa: ANN201 - pickle protocol
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} (not plain data)")


@dataclass
class PathVqaAdapter(Adapter):
    """PathVQA (He et al. 2020), the authors' release; ``id`` = ``<split>-<index>``."""

    name = "pathvqa"
    kind = "vqa"
    source = "github.com/UCSD-AI4H/PathVQA (Google Drive pvqa.zip); MIT for the QA pairs"
    layout = """<src>/   (the pvqa folder, or its parent)
    qas/{train,val,test}/{train,val,test}_qa.pkl   list of {image, question, answer}
    images/{train,val,test}/<image>.jpg"""
    SPLITS = ("train", "val", "test")
    published = (Published(
        {"train": 19755, "val": 6279, "test": 6761}, unit="QA pairs",
        unverified=("train", "val", "test"),
        source="He et al. 2020 (arXiv:2003.10286) split of pvqa.zip",
        note="the three sum to the 32,795 QA pairs of the pvqa.zip release (Feb 2023 link); "
             "the challenge page says 32,799; per-split counts not checked against the paper"),)

    def _root(self, src: Path) -> Path:
        return src / "pvqa" if (src / "pvqa" / "qas").is_dir() else src

    def check(self, src: Path) -> None:
        root = self._root(src)
        prefix = "pvqa/" if root != src else ""
        self.require(src, *(f"{prefix}qas/{s}/{s}_qa.pkl" for s in self.SPLITS),
                     *(f"{prefix}images/{s}" for s in self.SPLITS))

    def items(self, src: Path) -> Iterator[Item]:
        root = self._root(src)
        for split in self.SPLITS:
            path = root / "qas" / split / f"{split}_qa.pkl"
            try:
                with path.open("rb") as handle:
                    entries = _PlainUnpickler(handle).load()
            except (pickle.UnpicklingError, EOFError, ValueError) as exc:
                raise LayoutError(f"{path}: cannot read the QA list ({exc})") from None
            rel = path.relative_to(src)
            for index, entry in enumerate(entries):
                where, record_id = f"{rel}[{index}]", f"{split}-{index:06d}"
                if not isinstance(entry, dict) or is_missing(entry.get("image")) or \
                        not str(entry["image"]).strip():
                    yield Item(record_id, where, reason="malformed entry", detail="no image",
                               split=split)
                    continue
                answer = answer_text(entry.get("answer"))
                yield self.make(record_id, where,
                                image=str(root / "images" / split / f"{entry['image']}.jpg"),
                                question=entry.get("question"),
                                answer=None if answer is None else normalize_answer(answer),
                                answer_type=yes_no_type(answer or ""), split=split,
                                meta={"image_name": str(entry["image"]), "raw_answer": answer})
