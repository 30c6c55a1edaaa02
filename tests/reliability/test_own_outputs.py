"""What the project writes passes its own checks (issue 13, item 10): every manifest ``mpma data synth``
writes passes ``mpma data validate`` and ``mpma data stats`` (unique ids, ``labels`` in the text
classification file); ``truth.jsonl`` is the ground truth, not a manifest."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from mpma.cli import main
from mpma.data.records import read_manifest
from mpma.data.synthrad import SYNTH_MANIFESTS


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    out = tmp_path_factory.mktemp("own-outputs") / "synth"
    assert main(["data", "synth", "--out", str(out), "--n", "8", "--image-size", "32"]) == 0
    return out


def test_synth_writes_the_listed_manifests_and_the_truth(synth):
    written = {p.stem for p in synth.glob("*.jsonl")}
    assert written == {*SYNTH_MANIFESTS, "truth"}
    assert "truth" not in SYNTH_MANIFESTS  # ground truth of each case, not a manifest of any kind


@pytest.mark.parametrize("name", sorted(SYNTH_MANIFESTS))
def test_every_synth_manifest_passes_validate_and_stats(synth, name, capsys):
    path = synth / f"{name}.jsonl"
    kind = SYNTH_MANIFESTS[name]
    assert main(["data", "validate", str(path), "--no-progress", "--workers", "0"]) == 0, capsys.readouterr().out
    assert f"({kind}):" in capsys.readouterr().out  # the inferred kind is the listed one
    assert main(["data", "stats", str(path), "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    records = read_manifest(path, kind)
    assert stats["records"] == len(records) == len({r.id for r in records})


def test_synth_vqa_and_text_pairs_keep_one_record_per_question(synth):
    vqa = [json.loads(line) for line in (synth / "vqa.jsonl").read_text().splitlines()]
    cases = Counter(r["image"] for r in vqa)
    assert len(vqa) > len(cases)  # several questions per image, each its own id
    assert all(r["id"].startswith(r["image"].removeprefix("images/").removesuffix(".png") + "_q") for r in vqa)
    pairs = [json.loads(line) for line in (synth / "text_cls.jsonl").read_text().splitlines()]
    assert all(r["labels"] == [r["label"]] for r in pairs)
