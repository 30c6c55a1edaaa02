"""Tiny fake releases in each dataset's ORIGINAL layout, with good and bad records.

Every writer returns the release folder. Image helpers write real (tiny) JPEG/PNG/DICOM files,
a corrupt file (``b"not an image"``) and an empty file, so validation has something to reject.
"""

from __future__ import annotations

import csv
import gzip
import json
import pickle
import shutil
from pathlib import Path

import numpy as np
from PIL import Image


def jpeg(path: Path, size: tuple[int, int] = (24, 20), value: int = 100) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(value)
    array = rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(array).save(path, format="JPEG")
    return path


def png16(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    array = (np.arange(20 * 16, dtype=np.uint16).reshape(16, 20) * 97).astype(np.uint16)
    Image.fromarray(array).save(path)
    return path


def corrupt(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"not an image")
    return path


def empty(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


def dicom(path: Path) -> Path:
    from pydicom.data import get_testdata_file

    path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(get_testdata_file("CT_small.dcm"), path)
    return path


def write_csv(path: Path, header: list[str], rows: list[list[object]], gz: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    opener = (lambda: gzip.open(path, "wt", newline="")) if gz else (
        lambda: path.open("w", newline="", encoding="utf-8"))
    with opener() as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def roco(root: Path) -> Path:
    """train: 2 good (PMC name, ROCO-name mirror), corrupt, missing, empty caption, malformed,
    duplicate id; test: 1 good."""
    base = root / "data" / "train" / "radiology"
    base.mkdir(parents=True)
    (base / "captions.txt").write_text(
        "ROCO_00001\t CT of the chest showing a nodule.\n"
        "ROCO_00002\t Axial MRI of the brain.\n"
        "ROCO_00003\t Corrupt image here.\n"
        "ROCO_00004\t Image never downloaded.\n"
        "ROCO_00005\t   \n"
        "this line has no tab\n"
        "ROCO_00001\t Duplicate id.\n", encoding="utf-8")
    write_csv(base / "licences.txt", ["ROCO_ID", "PMC_ID", "CC"], [
        ["ROCO_00001", "PMC1_a.jpg", "CC BY"], ["ROCO_00002", "PMC2_b.jpg", "CC BY-NC"],
        ["ROCO_00003", "PMC3_c.jpg", "CC BY"], ["ROCO_00004", "PMC4_d.jpg", "CC BY"],
        ["ROCO_00005", "PMC5_e.jpg", "CC BY"]])
    jpeg(base / "images" / "PMC1_a.jpg")
    jpeg(base / "images" / "ROCO_00002.jpg")  # a mirror naming images by ROCO id
    corrupt(base / "images" / "PMC3_c.jpg")
    test = root / "data" / "test" / "radiology"
    test.mkdir(parents=True)
    (test / "captions.txt").write_text("ROCO_09999\t Plain radiograph of the hand.\n")
    write_csv(test / "licences.txt", ["ROCO_ID", "PMC_ID", "CC"], [["ROCO_09999", "PMC9.jpg", "CC BY"]])
    jpeg(test / "images" / "PMC9.jpg")
    return root


def medicat(root: Path) -> Path:
    rel = root / "release"
    entries = [
        {"pdf_hash": "aaa", "fig_uri": "1-Figure1-1.png", "s2_caption": "CT scan of liver.",
         "s2orc_references": ["Figure 1 shows the liver."], "radiology": True},
        {"pdf_hash": "bbb", "fig_uri": "2-Figure2-1.png", "s2_caption": "A bar chart.",
         "radiology": False},
        {"pdf_hash": "ccc", "fig_uri": "3-Figure1-1.png", "s2_caption": "  ", "radiology": True},
    ]
    rel.mkdir(parents=True)
    lines = [json.dumps(e) for e in entries] + ["{not json"]
    (rel / "s2_full_figures_oa_nonroco_combined_medical_top4_public.jsonl").write_text(
        "\n".join(lines) + "\n")
    jpeg(rel / "figures" / "aaa_1-Figure1-1.png")
    jpeg(rel / "figures" / "ccc_3-Figure1-1.png")
    return root


def mimic_cxr(root: Path) -> Path:
    """4 images in 3 studies: a good study (2 images), one without findings/impression, one
    whose report is missing."""
    rows = [["d1", "50000001", "10000001", "train"], ["d2", "50000001", "10000001", "train"],
            ["d3", "50000002", "10000002", "validate"], ["d4", "50000003", "10000003", "test"]]
    write_csv(root / "mimic-cxr-2.0.0-split.csv.gz", ["dicom_id", "study_id", "subject_id",
                                                     "split"], rows, gz=True)
    write_csv(root / "mimic-cxr-2.0.0-metadata.csv.gz", ["dicom_id", "ViewPosition"],
              [["d1", "PA"], ["d2", "LATERAL"], ["d3", "AP"], ["d4", "PA"]], gz=True)
    for dicom_id, study, subject, _ in rows:
        jpeg(root / "files" / f"p{subject[:2]}" / f"p{subject}" / f"s{study}" / f"{dicom_id}.jpg")
    reports = root / "mimic-cxr-reports" / "files"
    (reports / "p10" / "p10000001").mkdir(parents=True)
    (reports / "p10" / "p10000001" / "s50000001.txt").write_text(
        "                                 FINAL REPORT\n EXAMINATION:  CHEST (PA AND LAT)\n\n"
        " FINDINGS:\n \n The lungs are clear.  No effusion.\n \n IMPRESSION:\n \n No acute process.\n")
    (reports / "p10" / "p10000002").mkdir(parents=True)
    (reports / "p10" / "p10000002" / "s50000002.txt").write_text(
        " INDICATION:  ___ with cough.\n COMPARISON:  None.\n")
    return root


def iu_openi(root: Path) -> Path:
    xml = """<?xml version="1.0" encoding="utf-8"?>
<eCitation><uId id="CXR{n}"/><MedlineCitation><Article><Abstract>
<AbstractText Label="COMPARISON">None.</AbstractText>
<AbstractText Label="FINDINGS">{findings}</AbstractText>
<AbstractText Label="IMPRESSION">{impression}</AbstractText>
</Abstract></Article></MedlineCitation>{images}</eCitation>"""
    folder = root / "ecgen-radiology"
    folder.mkdir(parents=True)
    image = '<parentImage id="CXR{n}_IM-{i}"><figureId>F{i}</figureId></parentImage>'
    for n, findings, impression, count in [(1, "Heart size normal.", "Normal chest.", 2),
                                           (2, "", "", 1)]:
        images = "".join(image.format(n=n, i=i) for i in range(count))
        (folder / f"{n}.xml").write_text(xml.format(n=n, findings=findings,
                                                    impression=impression, images=images))
        for i in range(count):
            jpeg(root / "NLMCXR_png" / f"CXR{n}_IM-{i}.png")
    return root


def iu_r2gen(root: Path) -> Path:
    data = {"train": [{"id": "CXR1_1_IM-0001", "report": "The lungs are clear.",
                       "image_path": ["CXR1_1_IM-0001/0.png", "CXR1_1_IM-0001/1.png"],
                       "split": "train"}],
            "val": [{"id": "CXR2_1_IM-0002", "report": "", "image_path": ["CXR2_1_IM-0002/0.png"]}],
            "test": [{"id": "CXR3_1_IM-0003", "report": "Cardiomegaly.", "image_path": []}]}
    root.mkdir(parents=True)
    (root / "annotation.json").write_text(json.dumps(data))
    for name in ("CXR1_1_IM-0001/0.png", "CXR1_1_IM-0001/1.png", "CXR2_1_IM-0002/0.png"):
        png16(root / "images" / name)
    return root


def vqa_rad(root: Path) -> Path:
    entry = lambda qid, image, answer, kind: {  # noqa: E731
        "qid": qid, "image_name": image, "image_organ": "HEAD", "answer": answer,
        "answer_type": kind, "question_type": "PRES", "question": f"Question {qid}?",
        "phrase_type": "freeform"}
    root.mkdir(parents=True)
    (root / "trainset.json").write_text(json.dumps(
        [entry(1, "a.jpg", "Yes", "CLOSED "), entry(2, "missing.jpg", "no", "CLOSED")]))
    (root / "testset.json").write_text(json.dumps([entry(3, "a.jpg", "Left", "OPEN")]))
    jpeg(root / "images" / "a.jpg")
    return root


def slake(root: Path) -> Path:
    def entry(qid: int, folder: str, lang: str, answer: object = "Yes") -> dict:
        return {"img_id": 1, "img_name": f"{folder}/source.jpg", "question": f"Q{qid}?",
                "answer": answer, "q_lang": lang, "location": "Lung", "modality": "CT",
                "answer_type": "CLOSED" if answer in ("Yes", "No") else "OPEN",
                "base_type": "vqa", "content_type": "Abnormality", "triple": ["v", "r", "o"],
                "qid": qid}

    root.mkdir(parents=True)
    (root / "train.json").write_text(json.dumps(
        [entry(1, "xmlab1", "en"), entry(2, "xmlab1", "zh", "是"), entry(3, "xmlab2", "en")]))
    (root / "validate.json").write_text(json.dumps([entry(4, "xmlab1", "en", "Lung")]))
    (root / "test.json").write_text(json.dumps([entry(5, "xmlab1", "en", ""), {"qid": 6}]))
    jpeg(root / "imgs" / "xmlab1" / "source.jpg")
    empty(root / "imgs" / "xmlab2" / "source.jpg")
    return root


def vqa_med_2019(root: Path) -> Path:
    train = root / "ImageClef-2019-VQA-Med-Training"
    val = root / "ImageClef-2019-VQA-Med-Validation"
    test = root / "VQAMed2019Test"
    pairs = {"train": ["synpic1|what modality is shown?|ct w/contrast (iv)",
                       "synpic2|is this an abnormal image?|yes", "synpic1|broken line"],
             "val": ["synpic3|which plane is this image taken?|axial"]}
    for folder, tag, images in ((train, "train", "Train_images"), (val, "val", "Val_images")):
        (folder / "QAPairsByCategory").mkdir(parents=True)
        (folder / f"All_QA_Pairs_{tag}.txt").write_text("\n".join(pairs[tag]) + "\n")
        by_cat = {"Modality": [], "Plane": [], "Organ": [], "Abnormality": []}
        for line in pairs[tag]:
            if "modality" in line:
                by_cat["Modality"].append(line)
            elif "plane" in line:
                by_cat["Plane"].append(line)
            elif "abnormal" in line:
                by_cat["Abnormality"].append(line)
        for i, (cat, lines) in enumerate(by_cat.items(), 1):
            (folder / "QAPairsByCategory" / f"C{i}_{cat}_{tag}.txt").write_text("\n".join(lines))
        for line in pairs[tag]:
            jpeg(folder / images / f"{line.split('|')[0]}.jpg")
    test.mkdir(parents=True)
    (test / "VQAMed2019_Test_Questions_w_Ref_Answers.txt").write_text(
        "synpic9|organ|what organ system is shown?|skull and contents\n"
        "synpic8|abnormality|what is abnormal?|glioma\n")
    jpeg(test / "VQAMed2019_Test_Images" / "synpic9.jpg")
    corrupt(test / "VQAMed2019_Test_Images" / "synpic8.jpg")
    return root


def pathvqa(root: Path) -> Path:
    pv = root / "pvqa"
    content = {"train": [{"image": "train_0001", "question": "Is this necrosis?", "answer": "yes"},
                         {"image": "train_0002", "question": "What is shown?", "answer": "Granuloma"},
                         {"question": "no image"}],
               "val": [{"image": "val_0001", "question": "What stain?", "answer": "h&e"}],
               "test": [{"image": "test_0001", "question": "How many?", "answer": ""}]}
    for split, entries in content.items():
        (pv / "qas" / split).mkdir(parents=True)
        (pv / "qas" / split / f"{split}_qa.pkl").write_bytes(pickle.dumps(entries))
        for entry in entries:
            if "image" in entry:
                jpeg(pv / "images" / split / f"{entry['image']}.jpg")
    return root


def melinda(root: Path) -> Path:
    header = ["figure_file", "caption", "i_meth", "p_meth", "i_meth_label", "p_meth_label"]
    write_csv(root / "train.csv", header, [["f1.jpg", "Western blot of X.", "wb", "Mus", "Gel", "Mouse"],
                                           ["f2.jpg", "", "mic", "Hs", "Microscopy", "Human"]])
    write_csv(root / "dev.csv", header, [["f3.jpg", "Confocal image.", "mic", "Hs", "Microscopy", "Human"]])
    write_csv(root / "test.csv", header, [["f4.jpg", "Blot.", "", "", "", ""]])
    for name in ("f1.jpg", "f2.jpg", "f3.jpg", "f4.jpg"):
        jpeg(root / "melinda_images" / name)
    return root


CHEXPERT_COLUMNS = ["Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", "No Finding",
                    "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity", "Lung Lesion",
                    "Edema", "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax",
                    "Pleural Effusion", "Pleural Other", "Fracture", "Support Devices"]


def chexpert(root: Path) -> Path:
    """train: positive + uncertain, lateral no-finding, a bad value; valid: one record."""
    def row(path: str, view: str, **values: str) -> list[str]:
        labels = [values.get(c.replace(" ", "_").replace("/", "_"), "") for c in CHEXPERT_COLUMNS[5:]]
        return [f"CheXpert-v1.0-small/{path}", "Female", "68", view, "AP"] + labels

    write_csv(root / "train.csv", CHEXPERT_COLUMNS, [
        row("train/patient00001/study1/view1_frontal.jpg", "Frontal", Cardiomegaly="1.0",
            Edema="-1.0", Pneumonia="0.0"),
        row("train/patient00002/study1/view1_lateral.jpg", "Lateral", No_Finding="1.0"),
        row("train/patient00003/study1/view1_frontal.jpg", "Frontal", Edema="2.0")])
    write_csv(root / "valid.csv", CHEXPERT_COLUMNS, [
        row("valid/patient64541/study1/view1_frontal.jpg", "Frontal", Atelectasis="1.0")])
    for path in ("train/patient00001/study1/view1_frontal.jpg",
                 "train/patient00002/study1/view1_lateral.jpg",
                 "train/patient00003/study1/view1_frontal.jpg",
                 "valid/patient64541/study1/view1_frontal.jpg"):
        jpeg(root / path)
    return root


def rsna(root: Path) -> Path:
    """p1 positive with two boxes (DICOM), p2 negative (DICOM), p3 conflicting Target, p4 bad DICOM."""
    write_csv(root / "stage_2_train_labels.csv", ["patientId", "x", "y", "width", "height", "Target"], [
        ["p1", "264", "152", "213", "379", "1"], ["p1", "562", "152", "256", "453", "1"],
        ["p2", "", "", "", "", "0"], ["p3", "", "", "", "", "0"], ["p3", "1", "2", "3", "4", "1"],
        ["p4", "", "", "", "", "0"]])
    write_csv(root / "stage_2_detailed_class_info.csv", ["patientId", "class"], [
        ["p1", "Lung Opacity"], ["p2", "Normal"], ["p3", "Normal"], ["p4", "Normal"]])
    for pid in ("p1", "p2", "p3"):
        dicom(root / "stage_2_train_images" / f"{pid}.dcm")
    corrupt(root / "stage_2_train_images" / "p4.dcm")
    return root


def chestxray14(root: Path) -> Path:
    header = ["Image Index", "Finding Labels", "Follow-up #", "Patient ID", "Patient Age",
              "Patient Gender", "View Position"]
    rows = [["00000001_000.png", "Cardiomegaly|Emphysema", "0", "1", "58", "M", "PA"],
            ["00000002_000.png", "No Finding", "0", "2", "81", "M", "PA"],
            ["00000003_000.png", "Hernia|Unicorn", "0", "3", "74", "F", "PA"],
            ["00000004_000.png", "Mass", "0", "4", "82", "M", "AP"],
            ["00000005_000.png", "Effusion", "0", "5", "60", "F", "PA"]]
    write_csv(root / "Data_Entry_2017.csv", header, rows)
    (root / "train_val_list.txt").write_text("00000001_000.png\n00000002_000.png\n00000003_000.png\n")
    (root / "test_list.txt").write_text("00000004_000.png\n")
    for name, *_ in rows:
        jpeg(root / "images_001" / "images" / name)
    return root
