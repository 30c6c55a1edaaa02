"""``mpma data prepare`` never aborts a release for one record or one absent folder (issue 13, item 11):
a VQA-RAD entry with an empty or null question (or a malformed one, or a repeated qid) is a reject and
the rest is prepared; a VQA-Med-2019 copy without its test images (a separate download) is prepared,
the test records being ``image missing`` rejects."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from mpma.cli import main
from tests import fixtures_releases as fx


def prepared(out: Path) -> tuple[dict, dict]:
    rows = [json.loads(x) for x in (out / "manifest.jsonl").read_text().splitlines()]
    rejects = [json.loads(x) for x in (out / "rejects.jsonl").read_text().splitlines()]
    return {r["id"]: r for r in rows}, {r["id"]: r for r in rejects}


def entry(qid: int, question: object, image: str = "a.jpg") -> dict:
    return {"qid": qid, "image_name": image, "image_organ": "HEAD", "answer": "Yes", "answer_type": "CLOSED",
            "question_type": "PRES", "question": question, "phrase_type": "freeform"}


def test_vqa_rad_bad_entries_are_rejects_and_the_rest_is_prepared(tmp_path, capsys):
    src = fx.vqa_rad(tmp_path / "src")
    train = json.loads((src / "trainset.json").read_text())
    train += [entry(44, ""), entry(45, None), entry(46, "   "), {"qid": 47, "image_name": "a.jpg"}, "not an entry",
              entry(1, "Asked twice?"), entry(48, "Is this fine?"), {**entry(49, "No answer?"), "answer": None}]
    (src / "trainset.json").write_text(json.dumps(train))
    code = main(["data", "prepare", "vqa-rad", "--src", str(src), "--out", str(tmp_path / "out"), "--no-progress",
                 "--workers", "0"])
    assert code == 0, capsys.readouterr().err
    rows, rejects = prepared(tmp_path / "out")
    assert set(rows) == {"1", "3", "48"}
    assert {k: r["reason"] for k, r in rejects.items()} == {
        "2": "image missing", "44": "empty question", "45": "empty question", "46": "empty question",
        "47": "malformed entry", "trainset.json[6]": "malformed entry", "1": "duplicate id", "49": "empty answer"}
    assert rejects["45"]["detail"] == "question is missing" and rejects["44"]["source"] == "trainset.json[2]"
    assert "missing field 'question'" in rejects["47"]["detail"]


def test_vqa_med_2019_without_test_images_is_prepared(tmp_path, capsys):
    src = fx.vqa_med_2019(tmp_path / "src")
    shutil.rmtree(src / "VQAMed2019Test" / "VQAMed2019_Test_Images")  # distributed separately
    code = main(["data", "prepare", "vqa-med-2019", "--src", str(src), "--out", str(tmp_path / "out"),
                 "--no-progress", "--workers", "0"])
    assert code == 0, capsys.readouterr().err
    rows, rejects = prepared(tmp_path / "out")
    assert set(rows) == {"train-00001", "train-00002", "val-00001"}
    assert {k: r["reason"] for k, r in rejects.items()} == {
        "train-00003": "malformed line", "test-00001": "image missing", "test-00002": "image missing"}
    assert "VQAMed2019_Test_Images/synpic9.jpg" in rejects["test-00001"]["detail"]
