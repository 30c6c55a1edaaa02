"""The ``medpix`` adapter (MedPix 2.0) on a tiny release written in its real layout, through
``prepare`` and the CLI, plus one check of the real release when it is on this machine."""

from __future__ import annotations

import json
import os
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from mpma.cli import main
from mpma.data.sources.adapters import ADAPTERS, LayoutError, hash_split, make_adapter
from mpma.data.sources.prepare import prepare

REAL = Path(os.environ.get("MPMA_MEDPIX", Path(__file__).resolve().parents[4] / "shared" / "data"
                           / "medpix"))


def gray_jpeg(path: Path, seed: int) -> None:
    """A small grayscale JPEG (the release's images are grayscale)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    array = np.random.default_rng(seed).integers(0, 255, (20, 24), dtype=np.uint8)
    Image.fromarray(array, mode="L").save(path, format="JPEG")


def description(u_id: str, synpic: str, caption: Any, *, type_: str = "CT",
                modality: Any = "CT - noncontrast", plane: Any = "Axial",
                location: Any = "Brain and Neuro", category: Any = "Head") -> dict:
    """One ``Descriptions.json`` entry in the release's field structure."""
    desc = {"ACR Codes": "1.3", "Age": "45", "Caption": caption, "Figure Part": None,
            "Modality": modality, "Plane": plane, "Sex": "female"}
    if caption is ...:  # the key itself is absent
        del desc["Caption"]
    return {"Type": type_, "U_id": u_id, "image": f"{u_id}_{synpic}", "Description": desc,
            "Location": location, "Location Category": category}


def case(u_id: str, tac: list[str], mri: list[str], findings: Any, history: Any = "Headache.",
         diagnosis: str = "Glioma") -> dict:
    """One ``Case_topic.json`` entry in the release's field structure."""
    return {"U_id": u_id, "TAC": tac, "MRI": mri,
            "Case": {"Title": diagnosis, "History": history, "Exam": "N/A", "Findings": findings,
                     "Differential Diagnosis": diagnosis, "Case Diagnosis": diagnosis},
            "Topic": {"Title": diagnosis, "Disease Discussion": "Discussion.", "ACR Code": "1.3",
                      "Category": "Neoplasm"}}


def medpix_release(root: Path) -> Path:
    """4 cases, 9 description entries.

    MPX1 (CT): 2 good images. MPX2 (MR): a good image, a whitespace caption, the caption "None".
    MPX3: a missing image file, a Description without Caption, a null Plane and Location.
    MPX4: described but absent from Case_topic.json. Case_topic.json lists an image that
    Descriptions.json lacks (as in the real release) and has a case with null Findings.
    """
    descriptions = [
        description("MPX1", "synpic100", "Ring-enhancing   lesion in the\nleft frontal lobe",
                    modality="CT w/contrast (IV)"),
        description("MPX1", "synpic101", "Same lesion, coronal view.", plane="Coronal"),
        description("MPX2", "synpic200", "Hyperintense T2 signal.", type_="MR",
                    modality=" MR - T2 weighted ", plane="Sagittal", location="Spine",
                    category="Spine and Muscles"),
        description("MPX2", "synpic201", "  \n ", type_="MR", modality="MR - FLAIR"),
        description("MPX2", "synpic202", "None", type_="MR", modality="MR - FLAIR",
                    location="Head", category="Head"),
        description("MPX3", "synpic300", "Image never shipped."),
        description("MPX3", "synpic301", ...),
        description("MPX3", "synpic302", "Pleural effusion.", plane=None, location=None,
                    category="Thorax"),
        description("MPX4", "synpic400", "Kidney stone.", location="Genitourinary",
                    category="Reproductive and Urinary System"),
    ]
    cases = [
        case("MPX1", ["MPX1_synpic100", "MPX1_synpic101", "MPX1_synpic199"], [],
             "Enhancing mass.\n\nMild   edema."),
        case("MPX2", [], ["MPX2_synpic200", "MPX2_synpic201", "MPX2_synpic202"], "NA",
             history=None, diagnosis="Syrinx"),
        case("MPX3", ["MPX3_synpic300", "MPX3_synpic301", "MPX3_synpic302"], [], None),
    ]
    root.mkdir(parents=True)
    (root / "Descriptions.json").write_text(json.dumps(descriptions, indent=1), encoding="utf-8")
    (root / "Case_topic.json").write_text(json.dumps(cases, indent=1), encoding="utf-8")
    for seed, entry in enumerate(descriptions):
        if entry["image"] != "MPX3_synpic300":
            gray_jpeg(root / "images" / f"{entry['image']}.jpg", seed)
    return root


def run(src: Path, out: Path, **options: object) -> tuple[Any, dict, dict]:
    """prepare() in-process: (result, {id: manifest row}, {id: reject reason})."""
    result = prepare("medpix", src, out, options=options, workers=0, progress=False)
    rows = [json.loads(x) for x in (out / "manifest.jsonl").read_text().splitlines()]
    rejects = [json.loads(x) for x in (out / "rejects.jsonl").read_text().splitlines()]
    return result, {r["id"]: r for r in rows}, {r["id"]: r for r in rejects}


@pytest.fixture()
def release(tmp_path: Path) -> Path:
    return medpix_release(tmp_path / "medpix")


def test_registered_with_layout_and_source() -> None:
    cls = ADAPTERS["medpix"]
    assert cls.kind == "pretrain" and "Siragusa" in cls.source and "Descriptions.json" in cls.layout
    assert cls.options()["findings"] == (bool, False) and cls.options()["modality"] == (bool, True)


def test_default_texts_meta_and_rejects(release: Path, tmp_path: Path) -> None:
    result, rows, rejects = run(release, tmp_path / "out")
    assert list(rows) == ["MPX1_synpic100", "MPX1_synpic101", "MPX2_synpic200",
                          "MPX2_synpic202", "MPX3_synpic302", "MPX4_synpic400"]
    assert rows["MPX1_synpic100"]["text"] == (
        "Ring-enhancing lesion in the left frontal lobe. Modality: CT w/contrast (IV). "
        "Plane: Axial. Location: Brain and Neuro (Head).")
    assert rows["MPX2_synpic200"]["text"] == (
        "Hyperintense T2 signal. Modality: MR - T2 weighted. Plane: Sagittal. "
        "Location: Spine (Spine and Muscles).")
    # "None" is what the author typed, not a missing caption; a category equal to the location
    # is not repeated; a null plane/location is left out.
    assert rows["MPX2_synpic202"]["text"] == ("None. Modality: MR - FLAIR. Plane: Axial. "
                                              "Location: Head.")
    assert rows["MPX3_synpic302"]["text"] == ("Pleural effusion. Modality: CT - noncontrast. "
                                              "Location: Thorax.")
    assert rows["MPX2_synpic200"]["meta"] == {
        "u_id": "MPX2", "synpic": "synpic200", "type": "MR", "modality": "MR - T2 weighted",
        "plane": "Sagittal", "location": "Spine", "location_category": "Spine and Muscles"}
    assert rows["MPX3_synpic302"]["meta"]["plane"] is None
    assert (tmp_path / "out" / rows["MPX1_synpic100"]["image"]).is_file()  # relative to manifest
    assert {k: r["reason"] for k, r in rejects.items()} == {
        "MPX2_synpic201": "empty caption", "MPX3_synpic301": "empty caption",
        "MPX3_synpic300": "image missing"}
    assert rejects["MPX2_synpic201"]["detail"] == "MPX2_synpic201: Description.Caption is blank"
    assert rejects["MPX3_synpic301"]["detail"] == "MPX3_synpic301: Description.Caption is missing"
    assert rejects["MPX2_synpic201"]["source"] == "Descriptions.json[3]"
    assert result.total == 9 and result.kept == 6


def test_caption_only_keeps_none_caption(release: Path) -> None:
    adapter = make_adapter("medpix", {"modality": "false", "plane": "off", "location": "no",
                                      "location_category": "0"})
    items = {i.id: i for i in adapter.items(release)}
    assert items["MPX2_synpic202"].record.text == "None"
    assert items["MPX1_synpic101"].record.text == "Same lesion, coronal view."
    assert items["MPX2_synpic201"].reason == "empty caption"


def test_location_options_apart(release: Path) -> None:
    only_category = make_adapter("medpix", {"location": "false"})
    only_location = make_adapter("medpix", {"location_category": "false"})
    assert next(only_category.items(release)).record.text.endswith("Location: Head.")
    assert next(only_location.items(release)).record.text.endswith("Location: Brain and Neuro.")


def test_case_texts_joined_by_u_id(release: Path) -> None:
    adapter = make_adapter("medpix", {"findings": "true", "history": "true",
                                      "diagnosis": "true", "modality": "false"})
    texts = {i.id: i.record.text for i in adapter.items(release) if i.record}
    assert texts["MPX1_synpic101"] == (
        "Same lesion, coronal view. Plane: Coronal. Location: Brain and Neuro (Head). "
        "History: Headache. Findings: Enhancing mass. Mild edema. Diagnosis: Glioma.")
    # "NA" findings are a real value; a null history adds nothing.
    assert texts["MPX2_synpic202"].endswith("Location: Head. Findings: NA. Diagnosis: Syrinx.")
    # null findings: nothing; MPX4 is not in Case_topic.json: no case text, no error.
    assert texts["MPX3_synpic302"].endswith(
        "Location: Thorax. History: Headache. Diagnosis: Glioma.")
    assert texts["MPX4_synpic400"] == ("Kidney stone. Plane: Axial. Location: Genitourinary "
                                       "(Reproductive and Urinary System).")
    findings_only = make_adapter("medpix", {"findings": "true"})
    assert next(findings_only.items(release)).record.text.endswith(
        "(Head). Findings: Enhancing mass. Mild edema.")


def test_case_topic_needed_only_for_case_texts(release: Path, tmp_path: Path) -> None:
    (release / "Case_topic.json").unlink()
    assert len(list(make_adapter("medpix").items(release))) == 9
    with pytest.raises(LayoutError, match="missing Case_topic.json"):
        prepare("medpix", release, tmp_path / "out", options={"findings": "true"}, progress=False)
    (release / "Case_topic.json").write_text(json.dumps([{"TAC": []}]))
    with pytest.raises(LayoutError, match=r"Case_topic.json\[0\]: expected an object with"):
        list(make_adapter("medpix", {"history": "true"}).items(release))


def test_malformed_entries_are_rejects(tmp_path: Path) -> None:
    root = tmp_path / "m"
    (root / "images").mkdir(parents=True)
    entries = ["not an object", {"U_id": "MPX9", "Description": {"Caption": "x"}},
               {**description("MPX9", "synpic9", ["a", "list"])},
               {**description("MPX9", "synpic8", "ok"), "Description": "text"}]
    (root / "Descriptions.json").write_text(json.dumps(entries))
    items = list(make_adapter("medpix").items(root))
    assert [i.reason for i in items] == ["malformed entry"] * 4
    assert "Description.Caption should be text, got list" in items[2].detail
    (root / "Descriptions.json").write_text("{broken")
    with pytest.raises(LayoutError, match="Descriptions.json: not a readable JSON file"):
        list(make_adapter("medpix").items(root))


def test_split_by_case(tmp_path: Path) -> None:
    root = tmp_path / "many"
    (root / "images").mkdir(parents=True)
    entries = [description(f"MPX{c}", f"synpic{c * 10 + i}", f"Caption {i}.")
               for c in range(60) for i in range(3)]
    (root / "Descriptions.json").write_text(json.dumps(entries))
    options = {"val_fraction": "0.25", "test_fraction": "0.25"}
    splits: dict[str, set[str]] = defaultdict(set)
    for item in make_adapter("medpix", options).items(root):
        splits[item.record.meta["u_id"]].add(item.record.split)
        assert item.record.split == hash_split(item.record.meta["u_id"], 0.25, 0.25, "medpix")
    assert all(len(s) == 1 for s in splits.values())  # no case in two splits
    assert {s for group in splits.values() for s in group} == {"train", "val", "test"}
    again = [i.record.split for i in make_adapter("medpix", options).items(root)]
    assert again == [i.record.split for i in make_adapter("medpix", options).items(root)]


def test_option_checks(release: Path) -> None:
    with pytest.raises(ValueError, match="no option 'finding'"):
        make_adapter("medpix", {"finding": "true"})
    with pytest.raises(ValueError, match="val_fraction \\+ test_fraction must be below 1"):
        make_adapter("medpix", {"val_fraction": "0.5", "test_fraction": "0.5"})
    excluded = [i for i in make_adapter("medpix", {"min_words": "3"}).items(release) if i.excluded]
    assert [(i.id, i.reason) for i in excluded] == [("MPX2_synpic202", "caption under 3 words"),
                                                   ("MPX3_synpic302", "caption under 3 words"),
                                                   ("MPX4_synpic400", "caption under 3 words")]


def test_cli_prepare_then_validate(release: Path, tmp_path: Path,
                                   capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "prepared"
    assert main(["data", "prepare", "medpix", "--src", str(release), "--out", str(out),
                 "-o", "findings=true", "--workers", "0", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "medpix: 9 entries read -> kept 6, rejected 3" in printed
    assert "empty caption" in printed
    info = json.loads((out / "prepare.json").read_text())
    assert info["kind"] == "pretrain" and info["options"]["findings"] is True
    assert main(["data", "validate", str(out / "manifest.jsonl"), "--workers", "0",
                 "--no-progress"]) == 0
    assert "6 records, 6 ok, 0 with problems" in capsys.readouterr().out
    assert main(["data", "prepare", "medpix", "--layout"]) == 0
    assert "Case_topic.json" in capsys.readouterr().out


@pytest.mark.skipif(not (REAL / "Descriptions.json").is_file(),
                    reason=f"the real MedPix 2.0 release is not at {REAL} (set MPMA_MEDPIX)")
def test_real_release(tmp_path: Path) -> None:
    """The real release: 2,040 images in, all kept, no case in two splits (decodes ~2k small
    JPEGs in this process: a few seconds)."""
    result = prepare("medpix", REAL, tmp_path / "out", workers=0, progress=False)
    assert result.total == 2040 and result.kept == 2040 and not result.rejected
    rows = [json.loads(x) for x in (tmp_path / "out" / "manifest.jsonl").read_text().splitlines()]
    case_splits: dict[str, set[str]] = defaultdict(set)
    for row in rows:
        case_splits[row["meta"]["u_id"]].add(row["split"])
    assert len(case_splits) == 669 and all(len(s) == 1 for s in case_splits.values())
    assert len({r["meta"]["synpic"] for r in rows}) == 2040
    assert dict(result.splits) == {"train": 1814, "val": 142, "test": 84}
    # the shared copy lacks the 10 VQA-RAD test images on purpose: the summary says so
    assert result.matches_published is False
    assert ("total  2,040 differs from the published 2,050 by -10: the release read here has 10 "
            "fewer entries than published") in result.summary()
