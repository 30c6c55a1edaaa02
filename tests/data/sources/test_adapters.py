"""Each adapter against a tiny release written in its exact original layout (good + bad records)."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest

from tests import fixtures_releases as fx
from mpma.data.sources.adapters import ADAPTERS, LayoutError, make_adapter, parse_options
from mpma.data.sources.prepare import prepare


def run(dataset: str, src: Path, out: Path, **options: object):
    """prepare() in-process; returns (result, {id: manifest row}, {id: reject reason})."""
    result = prepare(dataset, src, out, options=options, workers=0, progress=False)
    rows = [json.loads(x) for x in (out / "manifest.jsonl").read_text().splitlines()]
    rejects = [json.loads(x) for x in (out / "rejects.jsonl").read_text().splitlines()]
    for reject in rejects:
        assert set(reject) == {"id", "source", "reason", "detail"} and reject["source"]
    return result, {r["id"]: r for r in rows}, {r["id"]: r["reason"] for r in rejects}


def test_registry_lists_every_family() -> None:
    assert set(ADAPTERS) == {"roco", "medicat", "mimic-cxr", "iu-xray", "vqa-rad", "slake",
                             "vqa-med-2019", "pathvqa", "melinda", "chexpert",
                             "rsna-pneumonia", "chestxray14", "generic", "medpix"}
    for cls in ADAPTERS.values():
        assert cls.layout and cls.source and cls.__doc__


def test_roco(tmp_path: Path) -> None:
    result, rows, rejects = run("roco", fx.roco(tmp_path / "src"), tmp_path / "out")
    assert set(rows) == {"ROCO_00001", "ROCO_00002", "ROCO_09999"}
    assert rows["ROCO_00001"]["split"] == "train" and rows["ROCO_09999"]["split"] == "test"
    assert rows["ROCO_00002"]["image"].endswith("ROCO_00002.jpg")  # mirror naming accepted
    assert rows["ROCO_00001"]["meta"] == {"pmc_file": "PMC1_a.jpg", "license": "CC BY"}
    assert (tmp_path / "out" / rows["ROCO_00001"]["image"]).is_file()  # relative to manifest
    assert rejects == {"ROCO_00003": "image does not decode", "ROCO_00004": "image missing",
                       "ROCO_00005": "empty text", "data/train/radiology/captions.txt:6":
                       "malformed line", "ROCO_00001": "duplicate id"}
    assert result.total == 8 and result.kept == 3


def test_medicat(tmp_path: Path) -> None:
    result, rows, rejects = run("medicat", fx.medicat(tmp_path / "src"), tmp_path / "out",
                                with_references=True)
    assert list(rows) == ["aaa_1-Figure1-1.png"]
    assert rows["aaa_1-Figure1-1.png"]["text"] == "CT scan of liver. Figure 1 shows the liver."
    assert rejects == {"ccc_3-Figure1-1.png": "empty text",
                       "release/s2_full_figures_oa_nonroco_combined_medical_top4_public.jsonl:4":
                       "malformed line"}
    assert result.excluded == {"not a radiology figure": 1}


def test_mimic_cxr_empty_sections_are_rejects(tmp_path: Path) -> None:
    result, rows, rejects = run("mimic-cxr", fx.mimic_cxr(tmp_path / "src"), tmp_path / "out")
    assert set(rows) == {"d1", "d2"}
    assert rows["d1"]["text"] == "The lungs are clear. No effusion. No acute process."
    assert rejects == {"d3": "empty report sections", "d4": "report missing"}
    _, rows, _ = run("mimic-cxr", tmp_path / "src", tmp_path / "out2", views="PA,AP",
                     sections="impression")
    assert list(rows) == ["d1"] and rows["d1"]["text"] == "No acute process."


def test_iu_xray_openi_and_r2gen(tmp_path: Path) -> None:
    _, rows, rejects = run("iu-xray", fx.iu_openi(tmp_path / "openi"), tmp_path / "o1")
    assert set(rows) == {"CXR1_IM-0", "CXR1_IM-1"}
    assert rows["CXR1_IM-0"]["text"] == "Heart size normal. Normal chest."
    assert rows["CXR1_IM-0"]["split"] == rows["CXR1_IM-1"]["split"]  # one report, one split
    assert rejects == {"CXR2_IM-0": "empty report sections"}
    _, rows, rejects = run("iu-xray", fx.iu_r2gen(tmp_path / "r2gen"), tmp_path / "o2")
    assert set(rows) == {"CXR1_1_IM-0001/0", "CXR1_1_IM-0001/1"}  # 16-bit PNGs decode
    assert rejects == {"CXR2_1_IM-0002/0": "empty text", "annotation.json:test[0]":
                       "malformed entry"}


def test_vqa_rad_reuses_loader_and_rejects_missing_image(tmp_path: Path) -> None:
    result, rows, rejects = run("vqa-rad", fx.vqa_rad(tmp_path / "src"), tmp_path / "out")
    assert rows["1"]["answer"] == "yes" and rows["1"]["answer_type"] == "CLOSED"
    assert rows["3"]["split"] == "test" and result.splits == {"train": 1, "test": 1}
    assert rejects == {"2": "image missing"}


def test_slake_keeps_english(tmp_path: Path) -> None:
    result, rows, rejects = run("slake", fx.slake(tmp_path / "src"), tmp_path / "out")
    assert set(rows) == {"1", "4"} and rows["4"]["split"] == "val"
    assert rows["1"]["question_type"] == "Abnormality" and rows["4"]["answer"] == "lung"
    assert rejects == {"3": "image file empty", "5": "empty answer",
                       "test.json[1]": "malformed entry"}
    assert result.excluded == {"q_lang zh": 1}


def test_vqa_med_2019_categories(tmp_path: Path) -> None:
    src = fx.vqa_med_2019(tmp_path / "src")
    _, rows, rejects = run("vqa-med-2019", src, tmp_path / "all")
    assert {r["question_type"] for r in rows.values()} == {"modality", "plane", "abnormality", "organ"}
    assert rows["train-00002"]["answer_type"] == "CLOSED"
    assert rows["train-00001"]["answer"] == "ct w/contrast (iv)"
    assert rejects == {"train-00003": "malformed line", "test-00002": "image does not decode"}
    result, rows, _ = run("vqa-med-2019", src, tmp_path / "m3ae", categories="modality,plane,organ")
    assert set(rows) == {"train-00001", "val-00001", "test-00001"}
    assert result.excluded == {"category abnormality": 2}
    with pytest.raises(LayoutError, match="categories"):
        run("vqa-med-2019", src, tmp_path / "bad", categories="colour")


def test_pathvqa_and_unsafe_pickle(tmp_path: Path) -> None:
    src = fx.pathvqa(tmp_path / "src")
    _, rows, rejects = run("pathvqa", src, tmp_path / "out")
    assert rows["train-000000"]["answer_type"] == "CLOSED"
    assert rows["train-000001"]["answer"] == "granuloma" and rows["val-000000"]["split"] == "val"
    assert rejects == {"train-000002": "malformed entry", "test-000000": "empty answer"}
    (src / "pvqa" / "qas" / "val" / "val_qa.pkl").write_bytes(pickle.dumps([Path("x")]))
    with pytest.raises(LayoutError, match="refusing"):
        run("pathvqa", src, tmp_path / "out2")


def test_melinda(tmp_path: Path) -> None:
    _, rows, rejects = run("melinda", fx.melinda(tmp_path / "src"), tmp_path / "out")
    assert rows["train-000002"]["labels"] == ["Gel"] and rows["val-000002"]["split"] == "val"
    assert rejects == {"train-000003": "empty text", "test-000002": "missing label"}
    _, rows, _ = run("melinda", tmp_path / "src", tmp_path / "p", level="p_meth")
    assert rows["train-000002"]["labels"] == ["Mouse"]


@pytest.mark.parametrize("policy, labels, uncertain", [
    ("ones", ["Cardiomegaly", "Edema"], None), ("zeros", ["Cardiomegaly"], None),
    ("ignore", ["Cardiomegaly"], ["Edema"])])
def test_chexpert_uncertain_policy(tmp_path: Path, policy: str, labels: list, uncertain) -> None:
    result, rows, rejects = run("chexpert", fx.chexpert(tmp_path / "src"), tmp_path / "out",
                                uncertain=policy)
    first = rows["CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg"]
    assert first["labels"] == labels and first["meta"].get("uncertain") == uncertain
    assert result.splits == {"train": 2, "val": 1}
    assert list(rejects.values()) == ["unknown label value"]


def test_chexpert_frontal_only(tmp_path: Path) -> None:
    result, rows, _ = run("chexpert", fx.chexpert(tmp_path / "src"), tmp_path / "out",
                          frontal_only=True)
    assert result.excluded == {"lateral view": 1} and len(rows) == 2


def test_rsna_dicom(tmp_path: Path) -> None:
    _, rows, rejects = run("rsna-pneumonia", fx.rsna(tmp_path / "src"), tmp_path / "out")
    assert rows["p1"]["labels"] == ["pneumonia"] and len(rows["p1"]["meta"]["boxes"]) == 2
    assert "labels" in rows["p2"] and rows["p2"]["labels"] == []
    assert rows["p1"]["meta"]["class"] == "Lung Opacity"
    assert rejects == {"p3": "conflicting labels", "p4": "image does not decode"}


def test_chestxray14(tmp_path: Path) -> None:
    result, rows, rejects = run("chestxray14", fx.chestxray14(tmp_path / "src"), tmp_path / "out")
    assert rows["00000001_000.png"]["labels"] == ["Cardiomegaly", "Emphysema"]
    assert rows["00000002_000.png"]["labels"] == [] and rows["00000004_000.png"]["split"] == "test"
    assert rejects == {"00000003_000.png": "unknown label"}
    assert result.excluded == {"in neither official list": 1}


def test_generic_csv_labels_and_jsonl_vqa(tmp_path: Path) -> None:
    src = tmp_path / "src"
    fx.jpeg(src / "pics" / "a.jpg")
    fx.corrupt(src / "pics" / "b.jpg")
    fx.write_csv(src / "table.csv", ["file", "note", "effusion", "nodule", "split"], [
        ["a.jpg", "Small effusion.", "1", "0", "train"], ["b.jpg", "Nodule.", "0", "1", "test"],
        ["a.jpg", "", "0", "0", "validation"], ["a.jpg", "x", "maybe", "0", "train"],
        ["a.jpg", "y", "0", "0", "holdout"]])
    _, rows, rejects = run("generic", src, tmp_path / "cls", image_column="file",
                           image_root="pics", text_column="note", label_columns="effusion,nodule",
                           split_column="split")
    assert rows["row1"]["labels"] == ["effusion"] and rows["row1"]["text"] == "Small effusion."
    assert rows["row3"]["split"] == "val" and "text" not in rows["row3"]
    assert rejects == {"row2": "image does not decode", "row4": "unknown label value",
                       "row5": "unknown split"}
    lines = [{"img": "a.jpg", "q": "Is there an effusion?", "a": "Yes", "pid": "7"},
             {"img": "a.jpg", "q": "Where?", "a": "left", "pid": "7"}]
    (src / "table.csv").unlink()
    (src / "vqa.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n[1]\n")
    _, rows, rejects = run("generic", src, tmp_path / "vqa", image_column="img", image_root="pics",
                           question_column="q", answer_column="a", group_column="pid",
                           test_fraction=0.5)
    assert [r["answer_type"] for r in rows.values()] == ["CLOSED", "OPEN"]
    assert len({r["split"] for r in rows.values()}) == 1  # grouped by patient
    assert rejects == {"row3": "malformed row"}


def test_layout_errors_are_clear(tmp_path: Path) -> None:
    with pytest.raises(LayoutError, match="does not exist") as error:
        prepare("slake", tmp_path / "nowhere", tmp_path / "out", progress=False)
    assert "train.json" in str(error.value)  # names what was expected
    (tmp_path / "empty").mkdir()
    for name in ADAPTERS:
        with pytest.raises(LayoutError):
            prepare(name, tmp_path / "empty", tmp_path / "out", progress=False)
    with pytest.raises(LayoutError, match="missing test.json, imgs"):
        fx.slake(tmp_path / "s")
        (tmp_path / "s" / "test.json").unlink()
        import shutil
        shutil.rmtree(tmp_path / "s" / "imgs")
        prepare("slake", tmp_path / "s", tmp_path / "out", progress=False)


def test_option_errors() -> None:
    with pytest.raises(ValueError, match="no option 'colour'.*accepted: frontal_only, uncertain"):
        make_adapter("chexpert", {"colour": "red"})
    with pytest.raises(ValueError, match="expects true/false"):
        make_adapter("chexpert", {"frontal_only": "perhaps"})
    with pytest.raises(ValueError, match="unknown dataset 'roco2'"):
        make_adapter("roco2")
    with pytest.raises(ValueError, match="key=value"):
        parse_options(["novalue"])
    assert parse_options(["a=b=c"]) == {"a": "b=c"}
