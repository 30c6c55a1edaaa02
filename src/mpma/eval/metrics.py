"""Evaluation metrics: retrieval recall@K (with chance level), AUC, accuracy, F1, VQA accuracy.

All functions take numpy arrays (or lists) and return Python floats / dicts; no torch.
Every rate is a fraction in [0, 1] (multiply by 100 for the percentages papers report).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from mpma.data.records import normalize_answer


def _check_pair(similarity: np.ndarray, relevant: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    sim = np.asarray(similarity, dtype=np.float64)
    rel = np.asarray(relevant)
    if sim.ndim != 2 or rel.shape != sim.shape:
        raise ValueError(
            f"similarity and relevant must both be (Q, C); got {sim.shape} and {rel.shape}"
        )
    if rel.dtype != np.bool_:
        if not np.isin(rel, (0, 1)).all():
            raise ValueError("relevant must be boolean (or 0/1)")
        rel = rel.astype(bool)
    if np.isnan(sim).any():
        raise ValueError("similarity contains NaN")
    empty = np.flatnonzero(~rel.any(axis=1))
    if empty.size:
        raise ValueError(
            f"{empty.size} queries have no relevant candidate (first rows: {empty[:5].tolist()}); "
            "drop them or fix the relevance matrix"
        )
    return sim, rel


def _check_ks(ks: Sequence[int]) -> list[int]:
    ks = [int(k) for k in ks]
    if not ks or any(k < 1 for k in ks):
        raise ValueError(f"ks must be positive integers, got {ks}")
    return ks


def first_relevant_rank(similarity: np.ndarray, relevant: np.ndarray) -> np.ndarray:
    """0-based rank of the best-ranked relevant candidate of each query, ties pessimistic.

    Candidates are sorted by decreasing similarity; an irrelevant candidate whose score EQUALS
    that of a relevant one is ranked ahead of it, so a constant similarity matrix gets no credit.

    Args:
        similarity: ``(Q, C)`` scores, higher = more similar.
        relevant: ``(Q, C)`` boolean relevance; every query needs at least one relevant item.

    Returns:
        ``(Q,)`` int64 ranks (0 = first place).
    """
    sim, rel = _check_pair(similarity, relevant)
    best = np.where(rel, sim, -np.inf).max(axis=1, keepdims=True)  # (Q, 1)
    above = (sim > best).sum(axis=1)
    tied_irrelevant = ((sim == best) & ~rel).sum(axis=1)
    return (above + tied_irrelevant).astype(np.int64)


def recall_at_k(
    similarity: np.ndarray, relevant: np.ndarray, ks: Sequence[int] = (1, 5, 10)
) -> dict[str, float]:
    """Recall@K: share of queries with at least one relevant candidate in the top K.

    Ties are broken pessimistically (see :func:`first_relevant_rank`).

    Args:
        similarity: ``(Q, C)`` scores.
        relevant: ``(Q, C)`` boolean relevance.
        ks: Cut-offs.

    Returns:
        ``{"R@k": fraction}`` for each k.
    """
    ks = _check_ks(ks)
    rank = first_relevant_rank(similarity, relevant)
    return {f"R@{k}": float(np.mean(rank < k)) for k in ks}


def chance_at_k(relevant: np.ndarray, ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
    """Expected Recall@K of a uniformly random ranking.

    For a query with ``m`` relevant items among ``C`` candidates the hit probability is
    ``1 - C(C-m, k) / C(C, k)``, computed as the product ``prod_{i<k} (C-m-i) / (C-i)``
    (terms clipped at 0, ``k`` clipped to ``C``), which is exact and stable.

    Args:
        relevant: ``(Q, C)`` boolean relevance.
        ks: Cut-offs.

    Returns:
        ``{"chance@k": fraction}`` (mean over queries) for each k.
    """
    ks = _check_ks(ks)
    rel = np.asarray(relevant)
    _, rel = _check_pair(np.zeros(rel.shape), rel)
    n_cand = rel.shape[1]
    m = rel.sum(axis=1).astype(np.float64)  # (Q,)
    out: dict[str, float] = {}
    for k in ks:
        miss = np.ones_like(m)
        for i in range(min(k, n_cand)):
            miss *= np.clip(n_cand - m - i, 0.0, None) / (n_cand - i)
        out[f"chance@{k}"] = float(np.mean(1.0 - miss))
    return out


def retrieval_metrics(
    similarity: np.ndarray, relevant: np.ndarray, ks: Sequence[int] = (1, 5, 10)
) -> dict[str, float]:
    """Recall@K and its chance level in one dict (``"R@k"`` and ``"chance@k"``, fractions).

    Args:
        similarity: ``(Q, C)`` scores (queries × candidates); pass the transpose for the
            other retrieval direction.
        relevant: ``(Q, C)`` boolean relevance (e.g. the identity for one-to-one pairs, or
            a block pattern when several captions belong to one image).
        ks: Cut-offs.

    Returns:
        Dict with ``R@k`` and ``chance@k`` for each k.
    """
    out = recall_at_k(similarity, relevant, ks)
    out.update(chance_at_k(relevant, ks))
    return out


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks with ties given their average rank."""
    order = np.argsort(values, kind="mergesort")
    sorted_vals = values[order]
    # boundaries of runs of equal values
    starts = np.flatnonzero(np.r_[True, sorted_vals[1:] != sorted_vals[:-1]])
    ends = np.r_[starts[1:], len(values)]
    avg = (starts + ends + 1) / 2.0  # mean of 1-based positions start+1 .. end
    ranks = np.empty(len(values), dtype=np.float64)
    ranks[order] = np.repeat(avg, ends - starts)
    return ranks


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve (Mann–Whitney U; ties count one half).

    Args:
        scores: ``(N,)`` scores, higher = more positive.
        labels: ``(N,)`` 0/1 (or bool) ground truth.

    Returns:
        AUC in [0, 1].

    Raises:
        ValueError: Shapes differ, NaN scores, labels not 0/1, or only one class present.
    """
    s = np.asarray(scores, dtype=np.float64).ravel()
    y = np.asarray(labels).ravel()
    if s.shape != y.shape:
        raise ValueError(f"scores and labels differ in length: {s.shape} vs {y.shape}")
    if np.isnan(s).any():
        raise ValueError("scores contain NaN")
    if not np.isin(y, (0, 1)).all():
        raise ValueError("labels must be 0/1")
    y = y.astype(bool)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError(f"AUC needs both classes; got {n_pos} positives and {n_neg} negatives")
    ranks = _average_ranks(s)
    u = ranks[y].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def macro_auc(
    scores: np.ndarray, labels: np.ndarray, label_names: Sequence[str] | None = None
) -> dict[str, object]:
    """Mean per-label AUC over the labels where both classes occur.

    Args:
        scores: ``(N, L)`` scores.
        labels: ``(N, L)`` 0/1 ground truth.
        label_names: ``L`` names used as keys (default ``"0"``, ``"1"``, ...).

    Returns:
        ``{"macro_auc": float (NaN if every label was skipped), "per_label": {name: auc},
        "skipped": [names with a single class present]}``.
    """
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels)
    if s.ndim != 2 or s.shape != y.shape:
        raise ValueError(f"scores and labels must both be (N, L); got {s.shape} and {y.shape}")
    names = [str(i) for i in range(s.shape[1])] if label_names is None else list(label_names)
    if len(names) != s.shape[1]:
        raise ValueError(f"{len(names)} label names for {s.shape[1]} label columns")
    per_label: dict[str, float] = {}
    skipped: list[str] = []
    for j, name in enumerate(names):
        column = y[:, j]
        if not np.isin(column, (0, 1)).all():
            raise ValueError(f"labels of {name!r} must be 0/1")
        if column.min() == column.max():
            skipped.append(name)
            continue
        per_label[name] = roc_auc(s[:, j], column)
    mean = float(np.mean(list(per_label.values()))) if per_label else float("nan")
    return {"macro_auc": mean, "per_label": per_label, "skipped": skipped}


def accuracy(pred: np.ndarray, target: np.ndarray) -> float:
    """Share of equal elements of ``pred`` and ``target`` (same shape, ≥ 1 element)."""
    p, t = np.asarray(pred), np.asarray(target)
    if p.shape != t.shape or p.size == 0:
        raise ValueError(f"pred and target need the same non-empty shape; got {p.shape}, {t.shape}")
    return float(np.mean(p == t))


def macro_f1(pred: np.ndarray, target: np.ndarray, num_classes: int) -> float:
    """Unweighted mean F1 over classes.

    Classes absent from both ``pred`` and ``target`` have an undefined F1 and are left out of
    the mean; a class that occurs in only one of them scores 0.

    Args:
        pred: ``(N,)`` predicted class indices in ``[0, num_classes)``.
        target: ``(N,)`` true class indices in ``[0, num_classes)``.
        num_classes: Number of classes.

    Returns:
        Macro-F1 in [0, 1].
    """
    p = np.asarray(pred).ravel()
    t = np.asarray(target).ravel()
    if p.shape != t.shape or p.size == 0:
        raise ValueError(
            f"pred and target need the same non-empty length; got {p.shape}, {t.shape}"
        )
    for name, arr in (("pred", p), ("target", t)):
        if not np.issubdtype(arr.dtype, np.integer) or arr.min() < 0 or arr.max() >= num_classes:
            raise ValueError(f"{name} must hold integer class indices in [0, {num_classes})")
    tp = np.bincount(t[p == t], minlength=num_classes).astype(np.float64)
    n_pred = np.bincount(p, minlength=num_classes).astype(np.float64)
    n_true = np.bincount(t, minlength=num_classes).astype(np.float64)
    present = (n_pred + n_true) > 0
    f1 = 2.0 * tp[present] / (n_pred[present] + n_true[present])
    return float(f1.mean())


def vqa_accuracy(
    predictions: Sequence[str],
    answers: Sequence[str],
    answer_types: Sequence[str],
    vocabulary: set[str] | None = None,
) -> dict[str, float | int]:
    """Exact-match VQA accuracy, overall and per answer type.

    Predictions and answers are compared after :func:`~mpma.data.records.normalize_answer`.
    With a ``vocabulary`` (the answers a classifier can output; normalised here too), a
    question whose answer is outside it counts as wrong whatever the prediction.

    Args:
        predictions: Predicted answers.
        answers: Ground-truth answers.
        answer_types: ``"OPEN"``/``"CLOSED"`` per question (case and spaces ignored).
        vocabulary: Answer vocabulary, or ``None`` for no vocabulary check.

    Returns:
        ``overall``, ``open``, ``closed`` (fractions in [0, 1]; NaN for an empty group),
        ``n``, ``n_open``, ``n_closed``, ``n_out_of_vocab`` and ``out_of_vocab`` (share of
        questions whose answer is absent from the vocabulary; 0.0 without a vocabulary).
    """
    n = len(answers)
    if len(predictions) != n or len(answer_types) != n:
        raise ValueError(
            f"lengths differ: {len(predictions)} predictions, {n} answers, "
            f"{len(answer_types)} answer types"
        )
    if n == 0:
        raise ValueError("vqa_accuracy needs at least one question")
    types = [str(t).strip().upper() for t in answer_types]
    bad = sorted({t for t in types if t not in ("OPEN", "CLOSED")})
    if bad:
        raise ValueError(f"answer types must be OPEN or CLOSED, got {bad}")
    vocab = None if vocabulary is None else {normalize_answer(v) for v in vocabulary}
    correct = np.zeros(n, dtype=bool)
    in_vocab = np.ones(n, dtype=bool)
    for i, (pred, answer) in enumerate(zip(predictions, answers)):
        gold = normalize_answer(answer)
        if vocab is not None and gold not in vocab:
            in_vocab[i] = False
            continue
        correct[i] = normalize_answer(pred) == gold
    is_open = np.array([t == "OPEN" for t in types])

    def _mean(mask: np.ndarray) -> float:
        return float(correct[mask].mean()) if mask.any() else float("nan")

    return {
        "overall": float(correct.mean()),
        "open": _mean(is_open),
        "closed": _mean(~is_open),
        "n": n,
        "n_open": int(is_open.sum()),
        "n_closed": int((~is_open).sum()),
        "n_out_of_vocab": int((~in_vocab).sum()),
        "out_of_vocab": float((~in_vocab).mean()),
    }


def scalar_items(value, prefix: str = "") -> list[tuple[str, float]]:
    """Every number in a nested metrics dict as (dotted name, value), in insertion order.

    ``{"i2t": {"R@1": 0.5}, "n": 3, "note": "x"}`` -> ``[("i2t.R@1", 0.5), ("n", 3)]`` (booleans and
    strings are skipped).
    """
    rows = []
    if isinstance(value, dict):
        for key, sub in value.items():
            rows += scalar_items(sub, f"{prefix}{key}.")
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        rows.append((prefix.rstrip("."), value))
    return rows
