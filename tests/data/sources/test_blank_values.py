"""A real answer or text is never blank because of its spelling: one test per adapter, each feeding
"None", "null", "NA", "0", "no" (and numbers where the format has them) in the adapter's real
layout. Only a missing field, ``null`` or an empty / whitespace-only string is blank."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest

from tests import fixtures_releases as fx
from mpma.data.sources.adapters import make_adapter
from mpma.data.sources.adapters.base import clean_text

SPELLINGS = ["None", "null", "NA", "0", "no", "nan", "N/A"]


def items(dataset: str, src: Path, **options: object) -> dict:
    """``{id: Item}`` of the adapter's parse (no image decoding)."""
    return {i.id: i for i in make_adapter(dataset, options).items(src)}


def kept(found: dict, field: str) -> dict:
    return {k: getattr(i.record, field) for k, i in found.items() if i.record is not None}


def reasons(found: dict) -> dict:
    return {k: i.reason for k, i in found.items() if i.record is None}


@pytest.mark.parametrize("value, expected", [
    ("None", "None"), ("null", "null"), ("NA", "NA"), ("0", "0"), ("no", "no"), ("nan", "nan"),
    (0, "0"), (2.5, "2.5"), ("  a \n b ", "a b"), ("", ""), ("  \n\t", ""), (None, ""),
    (float("nan"), "")])
def test_clean_text_blank_only_when_missing(value, expected) -> None:
    assert clean_text(value) == expected


def test_roco(tmp_path: Path) -> None:
    base = tmp_path / "data" / "test" / "radiology"
    base.mkdir(parents=True)
    lines = [f"ROCO_{i}\t{v}" for i, v in enumerate(SPELLINGS)] + ["ROCO_90\t  ", "ROCO_91\t12"]
    (base / "captions.txt").write_text("\n".join(lines) + "\n")
    found = items("roco", tmp_path)
    assert kept(found, "text") == {**{f"ROCO_{i}": v for i, v in enumerate(SPELLINGS)},
                                   "ROCO_91": "12"}
    assert reasons(found) == {"ROCO_90": "empty text"}


def test_medicat(tmp_path: Path) -> None:
    rel = tmp_path / "release"
    rel.mkdir(parents=True)
    values = [*SPELLINGS, 0, 7.5, None, "   "]
    rows = [{"pdf_hash": f"p{i}", "fig_uri": "F.png", "s2_caption": v, "radiology": True}
            for i, v in enumerate(values)]
    (rel / "s2_full_figures_oa_nonroco_combined_medical_top4_public.jsonl").write_text(
        "\n".join(json.dumps(r) for r in rows) + "\n")
    found = items("medicat", tmp_path)
    assert kept(found, "text") == {f"p{i}_F.png": str(v) for i, v in enumerate(values[:-2])}
    assert reasons(found) == {"p9_F.png": "empty text", "p10_F.png": "empty text"}


def test_mimic_cxr(tmp_path: Path) -> None:
    studies = {"1": "FINDINGS:\n None\n IMPRESSION:\n No\n", "2": "IMPRESSION: 0\n",
               "3": "FINDINGS: NA\n", "4": "FINDINGS:\n   \n IMPRESSION:\n\n"}
    rows = [[f"d{s}", f"5000000{s}", f"1000000{s}", "train"] for s in studies]
    fx.write_csv(tmp_path / "mimic-cxr-2.0.0-split.csv.gz",
                 ["dicom_id", "study_id", "subject_id", "split"], rows, gz=True)
    (tmp_path / "files").mkdir()
    for s, report in studies.items():
        folder = tmp_path / "mimic-cxr-reports" / "files" / "p10" / f"p1000000{s}"
        folder.mkdir(parents=True)
        (folder / f"s5000000{s}.txt").write_text(report)
    found = items("mimic-cxr", tmp_path)
    assert kept(found, "text") == {"d1": "None No", "d2": "0", "d3": "NA"}
    assert reasons(found) == {"d4": "empty report sections"}


def test_iu_xray_openi_and_r2gen(tmp_path: Path) -> None:
    src = fx.iu_openi(tmp_path / "openi")
    (src / "ecgen-radiology" / "1.xml").write_text(
        (src / "ecgen-radiology" / "1.xml").read_text()
        .replace("Heart size normal.", "None").replace("Normal chest.", "0"))
    found = items("iu-xray", src)
    assert kept(found, "text") == {"CXR1_IM-0": "None 0", "CXR1_IM-1": "None 0"}
    root = tmp_path / "r2gen"
    root.mkdir()
    values = ["None", "NA", 0, None, " "]
    data = {"train": [{"id": f"s{i}", "report": v, "image_path": [f"s{i}/0.png"]}
                      for i, v in enumerate(values)]}
    (root / "annotation.json").write_text(json.dumps(data))
    found = items("iu-xray", root)
    assert kept(found, "text") == {"s0/0": "None", "s1/0": "NA", "s2/0": "0"}
    assert reasons(found) == {"s3/0": "empty text", "s4/0": "empty text"}


def test_vqa_rad(tmp_path: Path) -> None:
    answers = ["None", "null", "NA", 0, "no", 2.5, "N/A"]
    entry = lambda qid, answer: {  # noqa: E731
        "qid": qid, "image_name": "a.jpg", "image_organ": "HEAD", "answer": answer,
        "answer_type": "OPEN", "question_type": "PRES", "question": "None?",
        "phrase_type": "freeform"}
    tmp_path.mkdir(exist_ok=True)
    train = [entry(i, a) for i, a in enumerate(answers)]
    (tmp_path / "trainset.json").write_text(json.dumps(train))
    (tmp_path / "testset.json").write_text(json.dumps([entry(99, "0")]))
    (tmp_path / "images").mkdir()
    found = items("vqa-rad", tmp_path)
    assert kept(found, "answer") == {"0": "none", "1": "null", "2": "na", "3": "0", "4": "no",
                                     "5": "2.5", "6": "n/a", "99": "0"}


def test_slake_none_answer_is_kept(tmp_path: Path) -> None:
    """The real case: 45 English SLAKE answers are the string "None"."""
    def entry(qid: int, answer: object, question: object = "What diseases are included?") -> dict:
        return {"img_id": 1, "img_name": "xmlab1/source.jpg", "question": question,
                "answer": answer, "q_lang": "en", "answer_type": "OPEN",
                "content_type": "Abnormality", "qid": qid}

    values = ["None", "null", "NA", "0", "no", 3, "nan"]
    train = [entry(i, v) for i, v in enumerate(values)]
    train += [entry(20, None), entry(21, "  "), entry(22, "Yes", question=None),
              {k: v for k, v in entry(23, "x").items() if k != "answer"}]
    tmp_path.mkdir(exist_ok=True)
    (tmp_path / "train.json").write_text(json.dumps(train))
    (tmp_path / "validate.json").write_text(json.dumps([entry(30, "None", question="None")]))
    (tmp_path / "test.json").write_text("[]")
    found = items("slake", tmp_path)
    assert kept(found, "answer") == {"0": "none", "1": "null", "2": "na", "3": "0", "4": "no",
                                     "5": "3", "6": "nan", "30": "none"}
    assert found["30"].record.question == "None"
    assert reasons(found) == {"20": "empty answer", "21": "empty answer", "22": "empty question",
                              "23": "empty answer"}
    assert found["20"].detail == "answer is missing" and found["21"].detail == "answer is blank"
    assert found["20"].split == "train"  # a reject keeps its split (for the published check)


def test_vqa_med_2019(tmp_path: Path) -> None:
    src = fx.vqa_med_2019(tmp_path / "src")
    qa = next(src.glob("*/All_QA_Pairs_train.txt"))
    qa.write_text("".join(f"synpic{i}|what is abnormal?|{v}\n" for i, v in enumerate(SPELLINGS))
                  + "synpic9|what is abnormal?|   \n")
    found = items("vqa-med-2019", src)
    answers = {k: v for k, v in kept(found, "answer").items() if k.startswith("train")}
    assert answers == {f"train-{i + 1:05d}": v.lower() for i, v in enumerate(SPELLINGS)}
    assert reasons(found) == {"train-00008": "empty answer"}


def test_pathvqa(tmp_path: Path) -> None:
    src = fx.pathvqa(tmp_path / "src")
    values = ["None", "NA", 0, "no", None, ""]
    entries = [{"image": f"train_{i}", "question": "How many?", "answer": v}
               for i, v in enumerate(values)]
    (src / "pvqa" / "qas" / "train" / "train_qa.pkl").write_bytes(pickle.dumps(entries))
    found = items("pathvqa", src)
    assert {k: v for k, v in kept(found, "answer").items() if k.startswith("train")} == {
        "train-000000": "none", "train-000001": "na", "train-000002": "0", "train-000003": "no"}
    assert found["train-000002"].record.answer_type == "OPEN"
    assert found["train-000003"].record.answer_type == "CLOSED"
    assert {k: v for k, v in reasons(found).items() if k.startswith("train")} == {
        "train-000004": "empty answer", "train-000005": "empty answer"}


def test_melinda(tmp_path: Path) -> None:
    header = ["figure_file", "caption", "i_meth", "p_meth", "i_meth_label", "p_meth_label"]
    rows = [[f"f{i}.jpg", v, "m", "p", "0", "None"] for i, v in enumerate(SPELLINGS)]
    fx.write_csv(tmp_path / "train.csv", header, rows + [["g.jpg", "  ", "m", "p", "Gel", "Mouse"]])
    for name in ("dev.csv", "test.csv"):
        fx.write_csv(tmp_path / name, header, [])
    found = items("melinda", tmp_path)
    assert kept(found, "text") == {f"train-{i + 2:06d}": v for i, v in enumerate(SPELLINGS)}
    assert found["train-000002"].record.labels == ("0",)  # a label spelled "0" is a label
    assert items("melinda", tmp_path, level="p_meth")["train-000002"].record.labels == ("None",)
    assert reasons(found) == {"train-000009": "empty text"}


def test_chexpert_zero_and_blank_cells(tmp_path: Path) -> None:
    """0 and a blank cell are negatives by CheXpert's own convention; the record is kept."""
    cols = fx.CHEXPERT_COLUMNS
    row = ["CheXpert-v1.0-small/train/p1/s1/view1_frontal.jpg", "Unknown", "0", "Frontal", "None"]
    labels = ["0.0", "", "1.0", "0"] + [""] * (len(cols) - 9)
    fx.write_csv(tmp_path / "train.csv", cols, [row + labels])
    fx.write_csv(tmp_path / "valid.csv", cols, [])
    record = next(iter(items("chexpert", tmp_path).values())).record
    assert record.labels == ("Cardiomegaly",)
    assert record.meta["Age"] == "0" and record.meta["AP/PA"] == "None"


def test_rsna_target_zero_is_a_negative(tmp_path: Path) -> None:
    fx.write_csv(tmp_path / "stage_2_train_labels.csv",
                 ["patientId", "x", "y", "width", "height", "Target"],
                 [["0", "", "", "", "", "0"], ["None", "1", "2", "3", "4", "1"]])
    fx.write_csv(tmp_path / "stage_2_detailed_class_info.csv", ["patientId", "class"],
                 [["0", "No Lung Opacity / Not Normal"], ["None", "Lung Opacity"]])
    (tmp_path / "stage_2_train_images").mkdir()
    found = items("rsna-pneumonia", tmp_path)
    assert kept(found, "labels") == {"0": (), "None": ("pneumonia",)}


def test_chestxray14_ids_spelled_like_blanks(tmp_path: Path) -> None:
    header = ["Image Index", "Finding Labels", "Follow-up #", "Patient ID", "View Position"]
    fx.write_csv(tmp_path / "Data_Entry_2017.csv", header,
                 [["a.png", "No Finding", "0", "0", "None"], ["b.png", "Mass", "0", "NA", "PA"]])
    (tmp_path / "train_val_list.txt").write_text("a.png\n")
    (tmp_path / "test_list.txt").write_text("b.png\n")
    found = items("chestxray14", tmp_path)
    assert kept(found, "labels") == {"a.png": (), "b.png": ("Mass",)}
    assert found["a.png"].record.meta == {"patient_id": "0", "view": "None"}
    assert found["b.png"].record.meta["patient_id"] == "NA"


def test_generic_csv_and_jsonl(tmp_path: Path) -> None:
    fx.write_csv(tmp_path / "t.csv", ["image", "text", "id"],
                 [["a.jpg", v, f"r{i}"] for i, v in enumerate(SPELLINGS)]
                 + [["a.jpg", "  ", "blank"], ["a.jpg", "x", "None"]])
    found = items("generic", tmp_path, text_column="text", id_column="id")
    assert kept(found, "text") == {**{f"r{i}": v for i, v in enumerate(SPELLINGS)}, "None": "x"}
    assert reasons(found) == {"blank": "empty text"}
    (tmp_path / "t.csv").unlink()
    rows = [{"img": "a.jpg", "q": "None?", "a": v} for v in ["None", 0, "no", "NA", None, " "]]
    rows.append({"img": "a.jpg", "q": None, "a": "yes"})
    (tmp_path / "v.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    found = items("generic", tmp_path, image_column="img", question_column="q", answer_column="a")
    assert kept(found, "answer") == {"row1": "none", "row2": "0", "row3": "no", "row4": "na"}
    assert reasons(found) == {"row5": "empty answer", "row6": "empty answer",
                              "row7": "empty question"}


def test_medpix(tmp_path: Path) -> None:
    from tests.data.sources.test_medpix import description

    (tmp_path / "images").mkdir()
    values = ["0", "null", "NA", "no", 7, "N/A"]
    entries = [description(f"MPX{i}", f"synpic{i}", v, plane="None") for i, v in enumerate(values)]
    entries.append(description("MPX9", "synpic9", " \n"))
    (tmp_path / "Descriptions.json").write_text(json.dumps(entries))
    found = items("medpix", tmp_path, modality="false", location="false",
                  location_category="false")
    assert kept(found, "text") == {f"MPX{i}_synpic{i}": f"{v}. Plane: None."
                                   for i, v in enumerate(values)}
    assert reasons(found) == {"MPX9_synpic9": "empty caption"}
