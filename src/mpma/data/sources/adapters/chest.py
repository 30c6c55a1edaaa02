"""Chest X-ray classification releases: CheXpert, RSNA Pneumonia and NIH ChestX-ray14.

Labels are multi-label name lists holding the POSITIVE findings; an empty list is a negative
("No Finding"). Records keep the release's raw values in ``meta``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from mpma.data.sources.adapters.base import Adapter, Item, LayoutError, first_existing, hash_split, read_csv
from mpma.data.sources.published import TOTAL, Published

CHEXPERT_LABELS: tuple[str, ...] = (
    "No Finding", "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity", "Lung Lesion",
    "Edema", "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion",
    "Pleural Other", "Fracture", "Support Devices",
)
NIH_LABELS: tuple[str, ...] = (
    "Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumonia",
    "Pneumothorax", "Consolidation", "Edema", "Emphysema", "Fibrosis", "Pleural_Thickening",
    "Hernia",
)


@dataclass
class ChexpertAdapter(Adapter):
    """CheXpert (Irvin et al. 2019), v1.0 or v1.0-small; ``id`` = the CSV ``Path``.

    ``train.csv`` → train, ``valid.csv`` → val, ``test.csv`` (2022 test labels, optional) → test.
    Label values: ``1`` positive, ``0``/blank negative, ``-1`` uncertain, mapped by ``uncertain``.

    Attributes:
        uncertain: ``ones`` (U-Ones), ``zeros`` (U-Zeros) or ``ignore`` (the label is neither
            positive nor negative: listed in ``meta["uncertain"]`` for a masked loss).
        frontal_only: Keep frontal views only (``Frontal/Lateral`` column).
    """

    uncertain: str = "ones"
    frontal_only: bool = False

    name = "chexpert"
    kind = "classification"
    labels = CHEXPERT_LABELS
    source = "stanfordmlgroup.github.io/competitions/chexpert; Stanford research-use agreement"
    layout = """<src>/   (CheXpert-v1.0 or CheXpert-v1.0-small)
    train.csv, valid.csv [, test.csv]   Path,Sex,Age,Frontal/Lateral,AP/PA,<14 observations>
    train/patientNNNNN/studyN/viewN_frontal.jpg, valid/..."""
    FILES = {"train": "train.csv", "val": "valid.csv", "test": "test.csv"}
    _VALUES = {"": 0, "0": 0, "0.0": 0, "1": 1, "1.0": 1, "-1": -1, "-1.0": -1}
    published = (
        Published({"train": 223414, "val": 234}, unit="images", unverified=("train", "val"),
                  source="CheXpert v1.0 / v1.0-small train.csv and valid.csv (Irvin et al. AAAI "
                         "2019: 224,316 radiographs of 65,240 patients)",
                  note="train + valid + the 668 test images sum to the paper's 224,316; counts "
                       "not checked against the csv files"),
        Published({"test": 668}, unit="images", conditions={"test_labels": True},
                  unverified=("test",),
                  source="CheXpert test.csv with the 2022 test labels (500 studies)",
                  note="only when test.csv is present; count not checked against the file"),
    )

    def check(self, src: Path) -> None:
        if self.uncertain not in ("ones", "zeros", "ignore"):
            raise LayoutError(f"uncertain={self.uncertain!r}: choose ones, zeros or ignore")
        self.require(src, "train.csv", "valid.csv")

    def settings(self, src: Path) -> dict:
        """Options plus ``test_labels``: whether ``test.csv`` (the 2022 test labels) is there."""
        return {**super().settings(src), "test_labels": (src / "test.csv").is_file()}

    def _image(self, src: Path, value: str) -> Path:
        parts = Path(value).parts
        if parts and parts[0].startswith("CheXpert-v1.0"):
            parts = parts[1:]
        return src.joinpath(*parts)

    def items(self, src: Path) -> Iterator[Item]:
        for split, name in self.FILES.items():
            if not (src / name).is_file():
                continue
            for lineno, row in read_csv(src / name, ("Path", *CHEXPERT_LABELS)):
                where, path = f"{name}:{lineno}", row["Path"].strip()
                if self.frontal_only and row.get("Frontal/Lateral", "").strip() != "Frontal":
                    yield Item(path, where, excluded=True, reason="lateral view", split=split)
                    continue
                positive, uncertain, bad = [], [], []
                for label in CHEXPERT_LABELS:
                    value = self._VALUES.get(row[label].strip())
                    if value is None:
                        bad.append(f"{label}={row[label]!r}")
                    elif value == 1 or (value == -1 and self.uncertain == "ones"):
                        positive.append(label)
                    elif value == -1 and self.uncertain == "ignore":
                        uncertain.append(label)
                if bad:
                    yield Item(path, where, reason="unknown label value", detail=", ".join(bad),
                               split=split)
                    continue
                meta = {k: row.get(k, "") for k in ("Sex", "Age", "Frontal/Lateral", "AP/PA")}
                if uncertain:
                    meta["uncertain"] = uncertain
                yield self.make(path, where, image=str(self._image(src, path)),
                                labels=positive, split=split, meta=meta)


@dataclass
class RsnaPneumoniaAdapter(Adapter):
    """RSNA Pneumonia Detection Challenge (2018): DICOM images + labels CSV.

    One record per patient (``id`` = ``patientId``); labels ``["pneumonia"]`` when ``Target`` is
    1 (its boxes in ``meta["boxes"]``), else ``[]``. The release has no labelled test split:
    patients are split by a hash (default 70/15/15, as MGCA and others did).

    Attributes:
        val_fraction: Fraction of patients in ``val``.
        test_fraction: Fraction of patients in ``test``.
    """

    val_fraction: float = 0.15
    test_fraction: float = 0.15

    name = "rsna-pneumonia"
    kind = "classification"
    labels = ("pneumonia",)
    source = "kaggle.com/c/rsna-pneumonia-detection-challenge; competition rules (research use)"
    layout = """<src>/stage_2_train_labels.csv   patientId,x,y,width,height,Target  (stage_1_* accepted)
<src>/stage_2_detailed_class_info.csv   (optional) patientId,class
<src>/stage_2_train_images/<patientId>.dcm"""
    published = (
        Published({TOTAL: 26684}, unit="patients", conditions={"stage": "stage_2"},
                  unverified=(TOTAL,),
                  source="RSNA Pneumonia Detection Challenge, stage_2_train_labels.csv "
                         "(30,227 rows)",
                  note="no labelled test set: patients are hash-split here; count not checked "
                       "against the file"),
        Published({TOTAL: 25684}, unit="patients", conditions={"stage": "stage_1"},
                  unverified=(TOTAL,), source="RSNA Pneumonia Detection Challenge, "
                                              "stage_1_train_labels.csv",
                  note="count not checked against the file"),
    )

    def settings(self, src: Path) -> dict:
        """Options plus ``stage``: which labels file is read (``stage_2`` before ``stage_1``)."""
        labels, _ = self._files(src)
        return {**super().settings(src),
                "stage": labels.name[:7] if labels is not None else None}

    def _files(self, src: Path) -> tuple[Path | None, Path | None]:
        for stage in ("stage_2", "stage_1"):
            labels = src / f"{stage}_train_labels.csv"
            if labels.is_file():
                return labels, src / f"{stage}_train_images"
        return None, None

    def check(self, src: Path) -> None:
        labels, images = self._files(src)
        if labels is None or images is None or not images.is_dir():
            self.require(src, "stage_2_train_labels.csv", "stage_2_train_images")

    def items(self, src: Path) -> Iterator[Item]:
        labels_csv, images = self._files(src)
        assert labels_csv is not None and images is not None
        classes: dict[str, str] = {}
        info = src / labels_csv.name.replace("train_labels", "detailed_class_info")
        if info.is_file():
            classes = {r["patientId"]: r["class"] for _, r in read_csv(info, ("patientId", "class"))}
        patients: dict[str, list[tuple[int, dict[str, str]]]] = {}
        for lineno, row in read_csv(labels_csv, ("patientId", "Target")):
            patients.setdefault(row["patientId"].strip(), []).append((lineno, row))
        for pid, rows in patients.items():
            where = f"{labels_csv.name}:{rows[0][0]}"
            split = hash_split(pid, self.val_fraction, self.test_fraction, "rsna")
            targets = {r["Target"].strip() for _, r in rows}
            if not targets <= {"0", "1"}:
                yield Item(pid, where, reason="unknown label value", detail=f"Target {targets}",
                           split=split)
                continue
            if len(targets) > 1:
                yield Item(pid, where, reason="conflicting labels", detail="Target is 0 and 1",
                           split=split)
                continue
            positive = targets == {"1"}
            meta: dict = {"class": classes.get(pid, "")}
            if positive:
                meta["boxes"] = [[float(r[k] or 0) for k in ("x", "y", "width", "height")]
                                 for _, r in rows]
            yield self.make(pid, where, image=str(images / f"{pid}.dcm"),
                            labels=["pneumonia"] if positive else [], meta=meta, split=split)


@dataclass
class ChestXray14Adapter(Adapter):
    """NIH ChestX-ray14 (Wang et al. 2017); ``id`` = ``Image Index``.

    ``test_list.txt`` → test; ``train_val_list.txt`` → train, with ``val_fraction`` of its
    patients held out as val (the release has no separate val list). ``No Finding`` → ``[]``.

    Attributes:
        val_fraction: Fraction of train_val patients moved to ``val``.
    """

    val_fraction: float = 0.1

    name = "chestxray14"
    kind = "classification"
    labels = NIH_LABELS
    source = "nihcc.app.box.com/v/ChestXray-NIHCC; CC0 (cite the NIH CC and the paper)"
    layout = """<src>/Data_Entry_2017.csv (or Data_Entry_2017_v2020.csv)  Image Index,Finding Labels,
    Follow-up #,Patient ID,...     Finding Labels = "A|B" or "No Finding"
<src>/train_val_list.txt, <src>/test_list.txt
<src>/images/<Image Index>   or   <src>/images_001/images/... images_012/images/..."""
    published = (Published(
        {"train+val": 86524, "test": 25596, TOTAL: 112120}, unit="images",
        unverified=("train+val", "test", TOTAL),
        source="NIH ChestX-ray14 release (Wang et al. CVPR 2017): train_val_list.txt, "
               "test_list.txt and Data_Entry_2017.csv",
        note="train and val are both cut from train_val_list.txt here (val_fraction); counts "
             "not checked against the files"),)

    def _entries(self, src: Path) -> Path | None:
        return first_existing(src, "Data_Entry_2017.csv", "Data_Entry_2017_v2020.csv")

    def check(self, src: Path) -> None:
        if self._entries(src) is None:
            self.require(src, "Data_Entry_2017.csv")
        self.require(src, "train_val_list.txt", "test_list.txt")

    def _image_index(self, src: Path) -> dict[str, Path]:
        folders = [src / "images"] + sorted(src.glob("images_*/images")) + sorted(src.glob("images_*"))
        index: dict[str, Path] = {}
        for folder in folders:
            if folder.is_dir():
                with os.scandir(folder) as entries:
                    for entry in entries:
                        index.setdefault(entry.name, Path(entry.path))
        return index

    def items(self, src: Path) -> Iterator[Item]:
        entries = self._entries(src)
        assert entries is not None
        split_of = {n.strip(): "test" for n in (src / "test_list.txt").read_text().split()}
        for name in (src / "train_val_list.txt").read_text().split():
            split_of.setdefault(name.strip(), "train")
        images = self._image_index(src)
        for lineno, row in read_csv(entries, ("Image Index", "Finding Labels", "Patient ID")):
            where, name = f"{entries.name}:{lineno}", row["Image Index"].strip()
            split = split_of.get(name)
            if split is None:
                yield Item(name, where, excluded=True, reason="in neither official list")
                continue
            patient = row["Patient ID"].strip()
            if split == "train" and hash_split(patient, self.val_fraction, 0.0, "nih") == "val":
                split = "val"
            found = [x.strip() for x in row["Finding Labels"].split("|") if x.strip()]
            labels = [x for x in found if x != "No Finding"]
            yield self.make(name, where, image=str(images.get(name, src / "images" / name)),
                            labels=labels, split=split,
                            meta={"patient_id": patient, "view": row.get("View Position", "")})
