"""synthrad cases and datasets: a case from its seed and index, the lazy :class:`SynthRad`
dataset, the fixed train/val/test offsets and the export to images + JSONL manifests."""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from mpma.data.synthrad.render import render
from mpma.data.synthrad.text import (
    LABELS, Finding, SynthCase, build_report, build_vqa, finding_key, labels_for, sample_findings, text_pairs,
)

VAL_OFFSET = 1_000_000_000
TEST_OFFSET = 2_000_000_000


def generate_case(index: int, seed: int = 0, image_size: int = 64, normal_fraction: float = 0.1,
                  max_findings: int = 2, *, findings: Sequence[Finding] | None = None) -> SynthCase:
    """Generate case ``index`` of dataset ``seed`` (deterministic in all arguments).

    Args:
        index: Case index.
        seed: Dataset seed; findings use ``np.random.default_rng([seed, index])``.
        image_size: Square image side in pixels (>= 32).
        normal_fraction: Probability that a case has no findings.
        max_findings: Maximum number of findings per case.
        findings: Optional override of the sampled findings (same geometry/noise).

    Returns:
        The :class:`SynthCase`.
    """
    if findings is None:
        rng = np.random.default_rng([seed, index])
        findings = sample_findings(rng, normal_fraction, max_findings)
    findings = tuple(findings)
    if len({(f.kind, f.side) for f in findings}) != len(findings):
        raise ValueError("findings must not repeat a (kind, side)")
    image, boxes, ratio = render(findings, seed, index, image_size)
    trng = np.random.default_rng([seed, index, 4])
    report, negated = build_report(findings, trng)
    return SynthCase(index=index, image=image, findings=findings, boxes=boxes, report=report,
                     finding_key=finding_key(findings), labels=labels_for(findings),
                     vqa=build_vqa(findings, trng), negated=negated, seed=seed, heart_ratio=ratio)


class SynthRad(Sequence):
    """Lazy indexable synthrad dataset: item ``i`` is case ``offset + i``.

    Args:
        n: Number of cases.
        seed: Dataset seed.
        image_size: Square image side.
        normal_fraction: Fraction of normal cases.
        max_findings: Maximum findings per case.
        offset: First case index (splits are disjoint index ranges of one seed).
        cache_size: Cases kept in an LRU cache (0: none, -1: all).
    """

    def __init__(self, n: int, seed: int = 0, image_size: int = 64, normal_fraction: float = 0.1,
                 max_findings: int = 2, offset: int = 0, cache_size: int = 0) -> None:
        self.n, self.seed, self.offset = int(n), int(seed), int(offset)
        self.image_size, self.normal_fraction = int(image_size), float(normal_fraction)
        self.max_findings, self.cache_size = int(max_findings), int(cache_size)
        self._cache: OrderedDict[int, SynthCase] = OrderedDict()

    def __len__(self) -> int:
        return self.n

    def reports(self) -> list[str]:
        """Every case's report, without drawing the images (tokenizer training needs only these)."""
        return [case_report(self.offset + i, self.seed, self.normal_fraction, self.max_findings)
                for i in range(self.n)]

    def __getitem__(self, i: int) -> SynthCase:  # type: ignore[override]
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(self.n))]  # type: ignore[return-value]
        i = int(i) + self.n if int(i) < 0 else int(i)
        if not 0 <= i < self.n:
            raise IndexError(i)
        if i in self._cache:
            self._cache.move_to_end(i)
            return self._cache[i]
        out = generate_case(self.offset + i, self.seed, self.image_size, self.normal_fraction,
                            self.max_findings)
        if self.cache_size:
            self._cache[i] = out
            if 0 < self.cache_size < len(self._cache):
                self._cache.popitem(last=False)
        return out


def case_report(index: int, seed: int = 0, normal_fraction: float = 0.1, max_findings: int = 2) -> str:
    """The report of case ``index`` without drawing its image (equal to ``generate_case(...).report``)."""
    findings = sample_findings(np.random.default_rng([seed, index]), normal_fraction, max_findings)
    return build_report(tuple(findings), np.random.default_rng([seed, index, 4]))[0]


def synthrad_splits(n_train: int, n_val: int, n_test: int, seed: int = 0,
                    **kw: Any) -> dict[str, SynthRad]:
    """Train/val/test datasets at fixed disjoint offsets (0, 1e9, 2e9) of one seed.

    Fixed offsets keep val/test identical whatever ``n_train`` is. ``kw`` goes to
    :class:`SynthRad` (image_size, normal_fraction, max_findings, cache_size).
    """
    if max(n_train, n_val, n_test) > VAL_OFFSET:
        raise ValueError("split too large")
    return {"train": SynthRad(n_train, seed, offset=0, **kw),
            "val": SynthRad(n_val, seed, offset=VAL_OFFSET, **kw),
            "test": SynthRad(n_test, seed, offset=TEST_OFFSET, **kw)}


# The manifests write_synthrad writes and their kinds (`mpma data validate --kind`); "truth" is not
# a manifest but the ground truth of every case (findings with boxes), one JSON object per case.
SYNTH_MANIFESTS: dict[str, str] = {"pretrain": "pretrain", "vqa": "vqa", "cls": "classification",
                                   "text_cls": "classification"}


def write_synthrad(out_dir: str | Path, n: int, seed: int = 0, image_size: int = 64,
                   val_fraction: float = 0.1, test_fraction: float = 0.1,
                   **kw: Any) -> dict[str, Path]:
    """Write ``images/<id>.png`` and JSONL manifests for ``n`` cases split train/val/test.

    Manifests (:data:`SYNTH_MANIFESTS`; each passes ``mpma data validate``): ``pretrain`` (id, image,
    text, split, finding_key), ``vqa`` (id, image, question, answer, answer_type, question_type,
    split; one record per question, id ``<case id>_q<j>``), ``cls`` (id, image, text, labels, split)
    and ``text_cls`` (id ``<case id>_t<j>``, text, text_pair, labels = [label], label, task, meta,
    split). ``truth`` is not a manifest: the full ground truth of each case (findings with boxes),
    one object per case. Image paths are relative to ``out_dir``; case ids are ``<split>_<i:06d>``.
    ``kw`` goes to :func:`synthrad_splits`.

    Returns:
        ``{manifest name: path}`` plus ``"images"`` for the image folder.
    """
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    n_val, n_test = int(round(n * val_fraction)), int(round(n * test_fraction))
    splits = synthrad_splits(n - n_val - n_test, n_val, n_test, seed, image_size=image_size, **kw)
    paths = {k: out / f"{k}.jsonl" for k in ("pretrain", "vqa", "cls", "text_cls", "truth")}
    files = {k: p.open("w", encoding="utf-8") for k, p in paths.items()}

    def emit(name: str, split: str, rec: dict[str, Any]) -> None:
        files[name].write(json.dumps({**rec, "split": split}) + "\n")

    try:
        for split, ds in splits.items():
            for i, c in enumerate(ds):
                cid, rel = f"{split}_{i:06d}", f"images/{split}_{i:06d}.png"
                Image.fromarray(c.image).save(out / rel)
                base = {"id": cid, "image": rel}
                emit("pretrain", split, {**base, "text": c.report, "finding_key": c.finding_key})
                for j, q in enumerate(c.vqa):
                    emit("vqa", split, {**base, "id": f"{cid}_q{j}", "question": q.question,
                                        "answer": q.answer, "answer_type": q.answer_type,
                                        "question_type": q.question_type})
                emit("cls", split, {**base, "text": c.report,
                                    "labels": [lab for lab, y in zip(LABELS, c.labels) if y > 0]})
                for j, p in enumerate(text_pairs(c)):
                    emit("text_cls", split, {"id": f"{cid}_t{j}", **p, "labels": [p["label"]]})
                emit("truth", split, {
                    **base, "index": c.index, "seed": seed, "report": c.report,
                    "finding_key": c.finding_key, "negated": list(c.negated),
                    "heart_ratio": round(c.heart_ratio, 3),
                    "findings": [{"kind": f.kind, "side": f.side, "zone": f.zone, "size": f.size,
                                  "box": list(b)} for f, b in zip(c.findings, c.boxes)]})
    finally:
        for fh in files.values():
            fh.close()
    return {**paths, "images": out / "images"}
