"""Tests for mpma.eval.metrics against hand-computed and brute-force values."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from mpma.eval.metrics import (
    accuracy,
    chance_at_k,
    first_relevant_rank,
    macro_auc,
    macro_f1,
    recall_at_k,
    retrieval_metrics,
    roc_auc,
    vqa_accuracy,
)

SIM = np.array([
    [0.9, 0.5, 0.5, 0.1],  # relevant 1; tied with irrelevant 2 → rank 2 (pessimistic)
    [0.2, 0.2, 0.2, 0.2],  # relevant 0; all tied → rank 3
    [0.1, 0.3, 0.3, 0.0],  # relevant 1 and 2, tied with each other → rank 0
    [0.1, 0.8, 0.7, 0.6],  # relevant 0 and 3; best relevant 0.6 below two others → rank 2
])
REL = np.array([
    [0, 1, 0, 0],
    [1, 0, 0, 0],
    [0, 1, 1, 0],
    [1, 0, 0, 1],
], dtype=bool)


def test_ranks_and_recall_with_ties() -> None:
    np.testing.assert_array_equal(first_relevant_rank(SIM, REL), [2, 3, 0, 2])
    assert recall_at_k(SIM, REL, ks=(1, 2, 3, 4)) == {
        "R@1": 0.25, "R@2": 0.25, "R@3": 0.75, "R@4": 1.0,
    }
    # identity relevance with a perfect diagonal
    eye = np.eye(5, dtype=bool)
    assert recall_at_k(np.eye(5), eye, ks=(1,)) == {"R@1": 1.0}
    # a constant similarity gets no credit at R@1
    assert recall_at_k(np.ones((5, 5)), eye, ks=(1, 5)) == {"R@1": 0.0, "R@5": 1.0}


def test_recall_input_errors() -> None:
    with pytest.raises(ValueError, match="no relevant candidate"):
        recall_at_k(SIM, np.zeros_like(REL))
    with pytest.raises(ValueError, match=r"\(Q, C\)"):
        recall_at_k(SIM, REL[:2])
    with pytest.raises(ValueError, match="ks"):
        recall_at_k(SIM, REL, ks=(0,))


def _brute_force_chance(relevant: np.ndarray, k: int) -> float:
    n = relevant.shape[1]
    rates = []
    for row in relevant:
        hits = [any(row[j] for j in perm[:k]) for perm in itertools.permutations(range(n))]
        rates.append(np.mean(hits))
    return float(np.mean(rates))


def test_chance_matches_brute_force() -> None:
    relevant = np.array([
        [1, 0, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0],
        [0, 1, 1, 1, 0, 0],
        [1, 1, 1, 1, 1, 0],
        [1, 1, 1, 1, 1, 1],
    ], dtype=bool)
    ks = (1, 2, 3, 5, 6, 10)
    chance = chance_at_k(relevant, ks)
    for k in ks:
        assert chance[f"chance@{k}"] == pytest.approx(_brute_force_chance(relevant, k), abs=1e-12)
    # closed form for one relevant item among C: k / C
    assert chance_at_k(np.eye(100, dtype=bool), (1, 5, 10)) == pytest.approx(
        {"chance@1": 0.01, "chance@5": 0.05, "chance@10": 0.10})


def test_chance_is_stable_for_large_c() -> None:
    n, m, k = 2000, 3, 10
    relevant = np.zeros((1, n), dtype=bool)
    relevant[0, :m] = True
    expected = 1.0 - math.comb(n - m, k) / math.comb(n, k)
    assert chance_at_k(relevant, (k,))[f"chance@{k}"] == pytest.approx(expected, rel=1e-12)


def test_retrieval_metrics_keys() -> None:
    out = retrieval_metrics(SIM, REL, ks=(1, 5, 10))
    assert set(out) == {"R@1", "R@5", "R@10", "chance@1", "chance@5", "chance@10"}
    assert out["chance@1"] == pytest.approx((1 / 4 + 1 / 4 + 2 / 4 + 2 / 4) / 4)
    assert out["R@10"] == out["chance@10"] == 1.0


def test_roc_auc_hand_computed() -> None:
    assert roc_auc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1])) == 0.75
    # ties count one half: pos {0.5, 0.9} vs neg {0.5, 0.2} → (0.5 + 1 + 1 + 1) / 4
    assert roc_auc(np.array([0.5, 0.5, 0.2, 0.9]), np.array([1, 0, 0, 1])) == 0.875
    assert roc_auc(np.ones(4), np.array([0, 1, 0, 1])) == 0.5
    with pytest.raises(ValueError, match="both classes"):
        roc_auc(np.array([0.1, 0.2]), np.array([1, 1]))


def test_macro_auc_skips_single_class_labels() -> None:
    scores = np.array([[0.1, 0.5, 0.3], [0.4, 0.5, 0.2], [0.35, 0.2, 0.9], [0.8, 0.9, 0.1]])
    labels = np.array([[0, 1, 0], [0, 0, 0], [1, 0, 0], [1, 1, 0]])
    out = macro_auc(scores, labels, label_names=["nodule", "effusion", "pneumothorax"])
    assert out["per_label"] == {"nodule": 0.75, "effusion": 0.875}
    assert out["skipped"] == ["pneumothorax"]
    assert out["macro_auc"] == pytest.approx(0.8125)
    assert math.isnan(macro_auc(scores[:, 2:], labels[:, 2:])["macro_auc"])


def test_accuracy_and_macro_f1() -> None:
    assert accuracy(np.array([1, 2, 3, 4]), np.array([1, 2, 0, 0])) == 0.5
    pred, target = np.array([0, 0, 1, 2]), np.array([0, 1, 1, 2])
    # class 0: 2/3, class 1: 2/3, class 2: 1, class 3 absent from both → left out
    assert macro_f1(pred, target, num_classes=4) == pytest.approx(7 / 9)
    # a class predicted but never true scores 0 and counts
    assert macro_f1(np.array([0, 1]), np.array([0, 0]), num_classes=2) == pytest.approx(
        (2 / 3 + 0.0) / 2)
    with pytest.raises(ValueError, match="class indices"):
        macro_f1(np.array([0, 5]), np.array([0, 1]), num_classes=2)


def test_vqa_accuracy_open_closed_and_out_of_vocab() -> None:
    predictions = ["Yes", "no", "left lung.", "ct", "liver", "axial"]
    answers = ["yes", "Yes", "Left  lung", "MRI", "spleen", "axial"]
    types = ["CLOSED", "CLOSED ", "OPEN", "OPEN", "OPEN", "open"]
    out = vqa_accuracy(predictions, answers, types)
    assert out["n"] == 6 and out["n_open"] == 4 and out["n_closed"] == 2
    assert out["closed"] == 0.5 and out["open"] == 0.5
    assert out["overall"] == pytest.approx(3 / 6)
    assert out["out_of_vocab"] == 0.0

    # "axial" is outside the vocabulary: wrong even though predicted correctly
    vocab = {"yes", "no", "Left lung", "ct", "mri", "liver", "spleen"}
    out = vqa_accuracy(predictions, answers, types, vocabulary=vocab)
    assert out["n_out_of_vocab"] == 1 and out["out_of_vocab"] == pytest.approx(1 / 6)
    assert out["open"] == 0.25 and out["closed"] == 0.5
    assert out["overall"] == pytest.approx(2 / 6)

    only_closed = vqa_accuracy(["yes"], ["yes"], ["CLOSED"])
    assert only_closed["closed"] == 1.0 and math.isnan(only_closed["open"])
    with pytest.raises(ValueError, match="lengths differ"):
        vqa_accuracy(["a"], ["a", "b"], ["OPEN", "OPEN"])
    with pytest.raises(ValueError, match="OPEN or CLOSED"):
        vqa_accuracy(["a"], ["a"], ["free"])


def test_evaluate_vqa_scores_each_question_type() -> None:
    """by_question_type: accuracy and count per question type, beside the open/closed figures."""
    from mpma.eval.downstream import evaluate_vqa

    answers = ["yes", "no", "left", "right"]
    examples = [{"answer": "left", "answer_type": "OPEN", "question_type": "side"},
                {"answer": "right", "answer_type": "OPEN", "question_type": "side"},
                {"answer": "Yes", "answer_type": "CLOSED", "question_type": "presence"},
                {"answer": "cardiomegaly", "answer_type": "OPEN", "question_type": "kind"},  # outside the vocabulary
                {"answer": "no", "answer_type": "CLOSED"}]  # no type: counted overall only
    scores = np.eye(4)[[2, 2, 0, 0, 1]]  # left, left, yes, yes, no
    result = evaluate_vqa(scores, examples, answers)
    assert result["overall"] == pytest.approx(3 / 5)
    assert result["by_question_type"] == {"kind": {"accuracy": 0.0, "n": 1}, "presence": {"accuracy": 1.0, "n": 1},
                                          "side": {"accuracy": 0.5, "n": 2}}
    assert "by_question_type" not in evaluate_vqa(scores[:1], [{"answer": "left", "answer_type": "OPEN"}], answers)
