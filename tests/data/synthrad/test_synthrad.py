"""Tests for the procedural synthrad dataset (mpma.data.synthrad)."""

from __future__ import annotations

import json
import re
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from mpma.data.synthrad import (
    COMBOS, FINDING_KINDS, LABELS, NEGATION_SENTENCES, NORMAL_SENTENCES, SIDES, SIZES, SYNONYMS,
    ZONE_WORDS, Finding, SynthRad, finding_key, generate_case, render, sample_findings,
    synthrad_splits, text_pairs, write_synthrad,
)

LATERAL = ("nodule", "opacity", "effusion", "pneumothorax")


@pytest.fixture(scope="module")
def cases():
    return [generate_case(i, seed=7) for i in range(400)]


def _sentences(report: str) -> list[str]:
    return [s.strip() for s in re.split(r"(?<=\.)\s+", report) if s.strip()]


def _has(text: str, phrase: str) -> bool:
    return re.search(rf"\b{re.escape(phrase.lower())}\b", text.lower()) is not None


def _positive_part(report: str) -> str:
    """The report without its negation and global-normal sentences."""
    fixed = {s for v in NEGATION_SENTENCES.values() for s in v} | set(NORMAL_SENTENCES)
    return " ".join(s for s in _sentences(report) if s not in fixed)


def test_deterministic_and_seed_dependent():
    a, b = generate_case(11, seed=3), generate_case(11, seed=3)
    assert np.array_equal(a.image, b.image) and a.report == b.report and a.boxes == b.boxes
    assert a.vqa == b.vqa and a.findings == b.findings
    assert a.image.shape == (64, 64) and a.image.dtype == np.uint8
    others = [generate_case(11, seed=s) for s in (4, 5, 6)]
    assert all(not np.array_equal(a.image, o.image) for o in others)
    assert len({o.report for o in others} | {a.report}) > 1
    assert not np.array_equal(generate_case(12, seed=3).image, a.image)
    same = generate_case(11, seed=4, findings=a.findings)  # geometry/noise depend on the seed too
    assert not np.array_equal(same.image, a.image)


def test_image_sizes():
    for size in (32, 128):
        c = generate_case(5, image_size=size)
        assert c.image.shape == (size, size)
        for y0, x0, y1, x1 in c.boxes:
            assert 0 <= y0 < y1 <= size and 0 <= x0 < x1 <= size
    with pytest.raises(ValueError):
        generate_case(0, image_size=16)
    img = generate_case(2).image.astype(float)
    assert img[:, :3].mean() < img[20:44, 28:36].mean()  # dark edge, bright mediastinum


def test_splits_are_disjoint_ranges():
    splits = synthrad_splits(20, 5, 5, seed=1)
    idx = {k: {ds[i].index for i in range(len(ds))} for k, ds in splits.items()}
    assert [len(idx[k]) for k in ("train", "val", "test")] == [20, 5, 5]
    assert not (idx["train"] & idx["val"]) and not (idx["val"] & idx["test"])
    assert not (idx["train"] & idx["test"])
    ds = SynthRad(4, seed=1, offset=100, cache_size=2)
    assert ds[0].index == 100 and ds[-1].index == 103 and len(list(ds)) == 4
    assert ds[1].report == generate_case(101, seed=1).report
    with pytest.raises(IndexError):
        ds[4]


def test_finding_sets_valid_and_distribution():
    sets = [sample_findings(np.random.default_rng([0, i])) for i in range(2000)]
    for i in (0, 1, 2, 3):
        assert generate_case(i).findings == sets[i]
    assert 0.075 < sum(not s for s in sets) / len(sets) < 0.125
    combos = Counter()
    for s in sets:
        assert len(s) <= 2
        assert len({(f.kind, f.side) for f in s}) == len(s)
        for f in s:
            assert (f.kind, f.side, f.zone) in COMBOS and f.size in SIZES
            combos[(f.kind, f.side, f.zone)] += 1
    assert set(combos) == set(COMBOS)
    expected = sum(combos.values()) / len(COMBOS)
    assert all(0.6 * expected < n < 1.4 * expected for n in combos.values())
    assert all(len(sample_findings(np.random.default_rng([1, i]), 0.0, 1)) == 1 for i in range(50))


def test_reports_agree_with_ground_truth(cases):
    for c in cases:
        assert len(c.report.split()) <= 40
        present = {f.kind for f in c.findings}
        sentences = _sentences(c.report)
        for f in c.findings:
            hits = [s for s in sentences if any(_has(s, syn) for syn in SYNONYMS[f.kind])]
            assert hits, (f, c.report)
            if f.kind in LATERAL:
                other = {z: w for z, w in ZONE_WORDS.items() if z != f.zone}
                assert any(_has(s, f.side) and any(w in s.lower() for w in ZONE_WORDS[f.zone])
                           and not any(w in s.lower() for ws in other.values() for w in ws)
                           for s in hits), (f, c.report)
        assert not set(c.negated) & present
        for kind, negs in NEGATION_SENTENCES.items():
            if any(n in sentences for n in negs):
                assert kind in c.negated and kind not in present
        positive = _positive_part(c.report)
        for kind in FINDING_KINDS:
            if kind not in present:
                assert not any(_has(positive, syn) for syn in SYNONYMS[kind]), (kind, c.report)
        if not c.findings:
            assert positive == "" and any(s in sentences for s in NORMAL_SENTENCES)
            assert set(c.negated) == set(FINDING_KINDS)
        else:
            assert not any(s in sentences for s in NORMAL_SENTENCES)


@pytest.mark.parametrize("kind,side,zone", COMBOS)
def test_findings_are_visible_and_located(kind, side, zone):
    for index in (0, 1, 2):
        f = Finding(kind, side, zone, "small")
        with_f = generate_case(index, findings=(f,))
        without = generate_case(index, findings=())
        assert with_f.findings == (f,) and without.findings == ()
        y0, x0, y1, x1 = with_f.boxes[0]
        assert 0 <= y0 < y1 <= 64 and 0 <= x0 < x1 <= 64
        a = with_f.image[y0:y1, x0:x1].astype(float).mean()
        b = without.image[y0:y1, x0:x1].astype(float).mean()
        assert abs(a - b) >= 3.0, (f, index, a, b)
        outside = np.ones((64, 64), bool)
        outside[max(y0 - 2, 0):y1 + 2, max(x0 - 2, 0):x1 + 2] = False
        if kind != "cardiomegaly":  # the only change is inside the box (noise is shared)
            diff = np.abs(with_f.image.astype(int) - without.image.astype(int))[outside]
            assert diff.mean() < 1.0
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        if side != "center":  # patient's right is on the image left
            assert (cx < 32) == (side == "right"), (f, with_f.boxes)
        if kind in ("nodule", "opacity"):
            assert cy < 27 if zone == "upper" else (cy > 34 if zone == "lower" else 20 < cy < 42)
    big = render((Finding(kind, side, zone, "large"),), 0, 0)[1][0]
    small = render((Finding(kind, side, zone, "small"),), 0, 0)[1][0]
    assert (big[2] - big[0]) * (big[3] - big[1]) >= (small[2] - small[0]) * (small[3] - small[1])


def test_cardiothoracic_ratio():
    normal = generate_case(3, findings=())
    enlarged = generate_case(3, findings=(Finding("cardiomegaly", "center", "middle", "small"),))
    assert normal.heart_ratio < 0.5 < enlarged.heart_ratio


def _expected_answer(q: str, c) -> str | None:
    fs = c.findings
    kinds = {f.kind for f in fs}
    yn = {True: "yes", False: "no"}
    name = r"(nodule|opacity|pleural effusion|effusion|pneumothorax|cardiomegaly)"
    norm = {"pleural effusion": "effusion"}
    if q in ("Is this image normal?", "Is this chest radiograph normal?"):
        return yn[not fs]
    if q in ("Is there any abnormality?", "Are there any abnormal findings?"):
        return yn[bool(fs)]
    if q == "Is the heart enlarged?":
        return yn["cardiomegaly" in kinds]
    if q == "What is the main finding?":
        assert len(fs) <= 1
        return fs[0].kind if fs else "none"
    if m := re.fullmatch(rf"Is there (?:an? )?{name}( in the (left|right) lung)?\?", q):
        k = norm.get(m[1], m[1])
        return yn[any(f.kind == k and (m[3] is None or f.side == m[3]) for f in fs)]
    if m := re.fullmatch(rf"(Where is|Which side is) the {name}( on)?\?", q):
        (f,) = [f for f in fs if f.kind == norm.get(m[2], m[2])]
        return f"{f.side} {f.zone}" if m[1] == "Where is" else f.side
    if m := re.fullmatch(rf"How large is the {name} in the (left|right) lung\?", q):
        (f,) = [f for f in fs if f.kind == norm.get(m[1], m[1]) and f.side == m[2]]
        return f.size
    if m := re.fullmatch(r"What abnormality is seen in the (left|right) lung\?", q):
        on_side = [f.kind for f in fs if f.side == m[1]]
        assert len(on_side) <= 1
        return on_side[0] if on_side else "none"
    return None


def test_vqa_consistent_with_truth(cases):
    closed = Counter()
    qtypes = Counter()
    for c in cases:
        assert c.vqa
        for p in c.vqa:
            assert p.answer == p.answer.lower()
            assert p.answer_type in ("CLOSED", "OPEN")
            expected = _expected_answer(p.question, c)
            assert expected is not None, p.question
            assert p.answer == expected, (p, c.findings)
            if p.answer_type == "CLOSED":
                assert p.answer in ("yes", "no")
                closed[p.answer] += 1
            qtypes[(p.answer_type, p.question_type)] += 1
    assert 0.35 < closed["yes"] / sum(closed.values()) < 0.65
    for qt in [("CLOSED", "presence"), ("CLOSED", "normal"), ("CLOSED", "location"),
               ("OPEN", "location"), ("OPEN", "side"), ("OPEN", "kind"), ("OPEN", "size")]:
        assert qtypes[qt] > 0, qt


def test_labels_and_finding_keys(cases):
    key_to_set: dict[str, frozenset] = {}
    for c in cases:
        expected = np.zeros(len(LABELS), np.float32)
        for f in c.findings:
            expected[LABELS.index(f.kind)] = 1
        expected[LABELS.index("normal")] = float(not c.findings)
        assert c.labels.dtype == np.float32 and np.array_equal(c.labels, expected)
        s = frozenset((f.kind, f.side, f.zone) for f in c.findings)
        assert key_to_set.setdefault(c.finding_key, s) == s
    assert len(set(key_to_set.values())) == len(key_to_set) > 40
    a = Finding("nodule", "right", "upper", "small")
    b = Finding("effusion", "left", "lower", "large")
    assert finding_key((a, b)) == finding_key((b, Finding("nodule", "right", "upper", "large")))
    assert finding_key((a, b)) == "effusion:left:lower|nodule:right:upper"
    assert finding_key((a,)) != finding_key((Finding("nodule", "left", "upper", "small"),))
    assert finding_key(()) == "normal"


def test_text_pairs_consistent(cases):
    labels = Counter()
    for c in cases[:300]:
        pairs = text_pairs(c)
        assert pairs == text_pairs(c)
        present = {(f.kind, f.side) for f in c.findings}
        kinds = {f.kind for f in c.findings}
        assert not set(c.negated) & kinds
        for p in pairs:
            assert p["text"] == c.report
            meta = p["meta"]
            if p["task"] == "presence":
                assert p["label"] == ("present" if meta["kind"] in kinds else "absent")
                continue
            assert p["task"] == "entailment"
            k, side, pos = meta["kind"], meta["side"], meta["positive"]
            if pos:
                want = ("entailment" if (k, side) in present else
                        "contradiction" if k in c.negated else "neutral")
                if side in SIDES:
                    assert side in p["text_pair"]
            else:
                want = ("entailment" if k in c.negated else
                        "contradiction" if k in kinds else "neutral")
            assert p["label"] == want, (p, c.findings, c.negated)
            labels[want] += 1
    assert all(labels[k] > 30 for k in ("entailment", "contradiction", "neutral")), labels


def test_write_synthrad(tmp_path):
    paths = write_synthrad(tmp_path / "sr", n=30, seed=2, image_size=40)
    for name in ("pretrain", "vqa", "cls", "text_cls", "truth"):
        assert paths[name].is_file()
    rows = {name: [json.loads(line) for line in paths[name].read_text().splitlines()]
            for name in ("pretrain", "vqa", "cls", "text_cls", "truth")}
    assert len(rows["pretrain"]) == len(rows["truth"]) == len(rows["cls"]) == 30
    assert {r["split"] for r in rows["pretrain"]} == {"train", "val", "test"}
    assert Counter(r["split"] for r in rows["pretrain"]) == {"train": 24, "val": 3, "test": 3}
    assert len({r["id"] for r in rows["pretrain"]}) == 30
    for r in rows["pretrain"]:
        with Image.open(tmp_path / "sr" / r["image"]) as im:
            assert im.size == (40, 40) and im.mode == "L"
    truth = {r["id"]: r for r in rows["truth"]}
    for r in rows["cls"]:
        kinds = {f["kind"] for f in truth[r["id"]]["findings"]}
        assert set(r["labels"]) == (kinds or {"normal"})
    for r in rows["vqa"]:
        assert {"question", "answer", "answer_type", "question_type", "image"} <= set(r)
    assert {r["task"] for r in rows["text_cls"]} == {"presence", "entailment"}
    keys = {r["id"]: r["finding_key"] for r in rows["pretrain"]}
    for r in rows["truth"]:
        assert all(len(f["box"]) == 4 for f in r["findings"])
        fs = tuple(Finding(f["kind"], f["side"], f["zone"], f["size"]) for f in r["findings"])
        assert r["finding_key"] == keys[r["id"]] == finding_key(fs)
        case = generate_case(r["index"], seed=2, image_size=40)
        assert case.findings == fs
        assert [list(b) for b in case.boxes] == [f["box"] for f in r["findings"]]


def test_reports_without_rendering_equal_the_generated_cases():
    data = SynthRad(40, seed=3, normal_fraction=0.2, offset=7)
    assert data.reports() == [data[i].report for i in range(len(data))]
