"""One bad line never stops a whole job (issue 13, item 7): ``mpma data validate`` reports a line that is
not UTF-8 (or not JSON) as a reject with its line number and checks the rest; ``mpma predict --manifest``
writes an error row for such a line and answers the others."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mpma.cli import main
from mpma.data.jsonl import ManifestError, iter_jsonl
from mpma.data.records import read_manifest
from tests.reliability.micro_folders import save_micro_models, write_image

NOT_UTF8 = b'{"id": "b", "image": "b.png", "text": "caf\xff", "split": "train"}'


def manifest(path: Path, lines: list[bytes], images: bool = True) -> Path:
    """A JSONL file of ``lines`` (bytes, written as they are) next to 32x32 PNGs a.png ... d.png."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if images:
        for name in "abcd":
            write_image(path.parent / f"{name}.png")
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def row(record_id: str, **fields: str) -> bytes:
    values = {"id": record_id, "image": f"{record_id}.png", "split": "train", **fields}
    return json.dumps(values).encode()


def test_iter_jsonl_reports_each_bad_line_and_goes_on(tmp_path):
    path = manifest(tmp_path / "m.jsonl", [row("a", text="x"), NOT_UTF8, b"", b"{broken", b"[1]", row("d", text="y")],
                    images=False)
    seen = [(number, data is not None, problem.split(" (")[0]) for number, data, problem in iter_jsonl(path)]
    assert seen == [(1, True, ""), (2, False, "not UTF-8"), (4, False, "not valid JSON"),
                    (5, False, "expected a JSON object, got list"), (6, True, "")]
    with pytest.raises(ManifestError, match=r"m\.jsonl:2: not UTF-8"):  # the strict reader names the line
        read_manifest(path, "pretrain")


def test_validate_reports_a_non_utf8_line_and_checks_the_rest(tmp_path, capsys):
    path = manifest(tmp_path / "m.jsonl", [row("a", text="one"), NOT_UTF8, row("c", text="three"),
                                           row("d", text="")])
    rejects = tmp_path / "rejects.jsonl"
    code = main(["data", "validate", str(path), "--rejects", str(rejects), "--no-progress", "--workers", "0"])
    out = capsys.readouterr().out
    assert code == 1, out
    assert "4 records, 2 ok, 2 with problems" in out and "line not UTF-8" in out
    rows = [json.loads(line) for line in rejects.read_text().splitlines()]
    assert [(r["source"], r["reason"]) for r in rows] == [("m.jsonl:2", "line not UTF-8"), ("m.jsonl:4", "invalid record")]
    assert rows[0]["detail"].startswith("line 2: not UTF-8")


def test_validate_infers_the_kind_past_a_bad_first_line(tmp_path, capsys):
    path = manifest(tmp_path / "v.jsonl", [b"\xff\xfe", row("a", question="Is it?", answer="yes", answer_type="closed")])
    assert main(["data", "validate", str(path), "--no-progress", "--workers", "0"]) == 1
    assert "(vqa): 2 records, 1 ok, 1 with problems" in capsys.readouterr().out


@pytest.fixture(scope="module")
def vqa_model(tmp_path_factory, micro_config, tokenizer) -> Path:
    return save_micro_models(tmp_path_factory.mktemp("bad-lines-models"), micro_config, tokenizer)["vqa"]


@pytest.mark.parametrize("bad", [b'{"id": "b", "image": "b.png", "question": ', NOT_UTF8], ids=["not-json", "not-utf8"])
def test_predict_writes_an_error_row_for_a_bad_line_and_answers_the_rest(vqa_model, tmp_path, capsys, bad):
    path = manifest(tmp_path / "q.jsonl", [row("a", question="Is there a nodule?"), bad,
                                           row("c", question="Is it normal?"), row("d", question="Which side?")])
    out = tmp_path / "answers.jsonl"
    code = main(["predict", "vqa", "--model", str(vqa_model), "--manifest", str(path), "--out", str(out),
                 "--device", "cpu"])
    assert code == 1  # one line failed; the others were answered
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in rows] == ["a", "2", "c", "d"]
    assert rows[1]["line"] == 2 and rows[1]["error"].startswith("line 2: not")
    assert all("answer" in r and "error" not in r for r in (rows[0], rows[2], rows[3]))
    assert "1 of 4 records failed" in capsys.readouterr().err


def test_predict_retrieve_leaves_a_bad_line_out_of_the_candidates(vqa_model, tmp_path, capsys):
    path = manifest(tmp_path / "c.jsonl", [row("a"), b"{nope", row("c"), row("d")])
    out = tmp_path / "ranking.jsonl"
    code = main(["predict", "retrieve", "--model", str(vqa_model), "--manifest", str(path), "--query",
                 "a small nodule", "--out", str(out), "--device", "cpu"])
    assert code == 1
    assert "c.jsonl: line 2: not valid JSON" in capsys.readouterr().err
    assert sorted(json.loads(line)["id"] for line in out.read_text().splitlines()) == ["a", "c", "d"]
