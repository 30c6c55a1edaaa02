"""Ground truth and text side of synthrad: types, finding sampling, reports, VQA, text pairs.

Everything here is derived from the structured ground truth (a tuple of
:class:`Finding`); nothing is parsed back from text. Sides are the *patient's*
sides (``"right"``/``"left"``; ``"center"`` for cardiomegaly); see
:mod:`mpma.data.synthrad` for how they map onto the image.

A report is a handful of short sentences: one per finding (kind synonym, size
word, location phrase naming side and zone), plus 0-2 negations of kinds that
are absent from the case, or for a normal case a global "no abnormality"
sentence (which negates every kind). The tables :data:`SYNONYMS`,
:data:`NEGATION_SENTENCES`, :data:`NORMAL_SENTENCES` and :data:`ZONE_WORDS` are
exported so that tests and evaluations can check the wording.

Image rendering lives in :mod:`mpma.data.synthrad.render`, cases, datasets and file export in
:mod:`mpma.data.synthrad.dataset`; :mod:`mpma.data.synthrad` re-exports everything public from here
(import from there).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

FINDING_KINDS: tuple[str, ...] = ("nodule", "opacity", "effusion", "cardiomegaly", "pneumothorax")
LABELS: tuple[str, ...] = FINDING_KINDS + ("normal",)
SIDES: tuple[str, ...] = ("right", "left")
ZONES: tuple[str, ...] = ("upper", "middle", "lower")
SIZES: tuple[str, ...] = ("small", "moderate", "large")

ALLOWED_LOCATIONS: dict[str, tuple[tuple[str, str], ...]] = {
    "nodule": tuple((s, z) for s in SIDES for z in ZONES),
    "opacity": tuple((s, z) for s in SIDES for z in ZONES),
    "effusion": (("right", "lower"), ("left", "lower")),
    "cardiomegaly": (("center", "middle"),),
    "pneumothorax": (("right", "upper"), ("left", "upper")),
}
#: Every allowed (kind, side, zone); findings are drawn uniformly from these.
COMBOS: tuple[tuple[str, str, str], ...] = tuple(
    (k, s, z) for k in FINDING_KINDS for s, z in ALLOWED_LOCATIONS[k]
)


@dataclass(frozen=True)
class Finding:
    """One ground-truth finding.

    Attributes:
        kind: One of :data:`FINDING_KINDS`.
        side: Patient side, ``"right"``/``"left"``, or ``"center"`` (cardiomegaly).
        zone: ``"upper"``/``"middle"``/``"lower"``.
        size: ``"small"``/``"moderate"``/``"large"`` (severity for cardiomegaly).
    """

    kind: str
    side: str
    zone: str
    size: str

    def __post_init__(self) -> None:
        if self.kind not in ALLOWED_LOCATIONS:
            raise ValueError(f"unknown finding kind {self.kind!r}")
        if (self.side, self.zone) not in ALLOWED_LOCATIONS[self.kind]:
            raise ValueError(f"{self.kind} not allowed at {self.side} {self.zone}")
        if self.size not in SIZES:
            raise ValueError(f"unknown size {self.size!r}")


@dataclass
class VQAPair:
    """A question/answer pair about one case (answers are lower-case)."""

    question: str
    answer: str
    answer_type: str  # "CLOSED" or "OPEN"
    question_type: str  # presence | location | normal | side | kind | size


def sample_findings(rng: np.random.Generator, normal_fraction: float = 0.1,
                    max_findings: int = 2) -> tuple[Finding, ...]:
    """Draw a finding set: normal w.p. ``normal_fraction``, else 1..max_findings findings."""
    if max_findings < 1 or rng.random() < normal_fraction:
        return ()
    n = int(rng.integers(1, max_findings + 1))
    chosen: list[Finding] = []
    for _ in range(n):
        taken = {(f.kind, f.side) for f in chosen}
        options = [c for c in COMBOS if (c[0], c[1]) not in taken]
        k, s, z = options[int(rng.integers(len(options)))]
        chosen.append(Finding(k, s, z, SIZES[int(rng.integers(len(SIZES)))]))
    return tuple(sorted(chosen, key=lambda f: (FINDING_KINDS.index(f.kind), f.side, f.zone)))


@dataclass
class SynthCase:
    """One generated case; see the module docstring for conventions.

    Attributes:
        index: Case index within the seed (split offset included).
        image: (H, W) uint8 grayscale radiograph.
        findings: Ground-truth findings (empty for a normal case).
        boxes: One ``(y0, x0, y1, x1)`` pixel box per finding (y1/x1 exclusive).
        report: Free-text report.
        finding_key: Retrieval key (see :func:`finding_key`).
        labels: (len(LABELS),) float32 multi-hot vector.
        vqa: Question/answer pairs.
        negated: Kinds the report states are absent (all kinds for a normal report).
        seed: Dataset seed.
        heart_ratio: Cardiothoracic ratio of the drawn heart.
    """

    index: int
    image: np.ndarray
    findings: tuple[Finding, ...]
    boxes: tuple[tuple[int, int, int, int], ...]
    report: str
    finding_key: str
    labels: np.ndarray
    vqa: list[VQAPair]
    negated: tuple[str, ...] = ()
    seed: int = 0
    heart_ratio: float = 0.0


def finding_key(findings: Sequence[Finding]) -> str:
    """Canonical retrieval key: sorted ``kind:side:zone`` joined by ``|`` (size ignored)."""
    if not findings:
        return "normal"
    return "|".join(sorted(f"{f.kind}:{f.side}:{f.zone}" for f in findings))


def labels_for(findings: Sequence[Finding]) -> np.ndarray:
    """Multi-hot float32 vector over :data:`LABELS` (``normal`` iff no findings)."""
    out = np.zeros(len(LABELS), dtype=np.float32)
    for f in findings:
        out[LABELS.index(f.kind)] = 1.0
    if not findings:
        out[LABELS.index("normal")] = 1.0
    return out


SYNONYMS: dict[str, tuple[str, ...]] = {
    "nodule": ("nodule", "nodular density", "rounded density"),
    "opacity": ("opacity", "airspace opacity", "consolidation", "mass"),
    "effusion": ("pleural effusion", "effusion", "fluid in the pleural space"),
    "cardiomegaly": ("cardiomegaly", "enlarged cardiac silhouette", "the heart is enlarged",
                     "enlargement of the cardiac silhouette"),
    "pneumothorax": ("pneumothorax", "collapsed lung"),
}
NEGATION_SENTENCES: dict[str, tuple[str, ...]] = {
    "nodule": ("No pulmonary nodules.", "No focal nodule is seen."),
    "opacity": ("No focal consolidation.", "No airspace opacity.", "No mass is seen."),
    "effusion": ("No pleural effusion.", "No effusion.", "There is no pleural effusion."),
    "cardiomegaly": ("Heart size is normal.", "The cardiac silhouette is normal in size.",
                     "No cardiomegaly."),
    "pneumothorax": ("No pneumothorax.", "There is no pneumothorax."),
}
NORMAL_SENTENCES: tuple[str, ...] = (
    "No acute cardiopulmonary abnormality.", "No acute cardiopulmonary process.",
    "Normal chest radiograph.", "The lungs are clear and there is no abnormality.",
)
#: Words that identify a zone inside a location phrase.
ZONE_WORDS: dict[str, tuple[str, ...]] = {
    "upper": ("upper", "apex", "apical"), "middle": ("mid", "middle"), "lower": ("lower", "base"),
}
_LOC: dict[str, tuple[str, ...]] = {
    "upper": ("in the {s} upper lobe", "in the {s} upper zone", "at the {s} apex",
              "in the {s} apical region"),
    "middle": ("in the {s} mid zone", "in the {s} middle zone", "in the {s} mid lung"),
    "lower": ("in the {s} lower lobe", "in the {s} lower zone", "at the {s} base",
              "in the {s} lung base"),
}
_SEVERITY = {"small": "mild", "moderate": "moderate", "large": "marked"}
_NOUN_TEMPLATES = ("{Size} {syn} {loc}.", "There is a {size} {syn} {loc}.",
                   "{Loc}, there is a {size} {syn}.", "A {size} {syn} is seen {loc}.")
_SPECIAL_TEMPLATES: dict[str, tuple[str, ...]] = {
    "effusion": ("A {size} amount of fluid in the pleural space {loc}.",),
    "pneumothorax": ("{Size} apical pneumothorax on the {side}.",
                     "Partially collapsed lung {loc}, consistent with a {size} pneumothorax."),
    "cardiomegaly": ("{Size} cardiomegaly.", "The heart is enlarged.",
                     "Enlarged cardiac silhouette, consistent with {size} cardiomegaly.",
                     "{Size} enlargement of the cardiac silhouette."),
}
_NOUN_SYNS: dict[str, tuple[str, ...]] = {
    "nodule": SYNONYMS["nodule"], "opacity": SYNONYMS["opacity"],
    "effusion": ("pleural effusion", "effusion"), "pneumothorax": ("pneumothorax",),
}


def _choice(rng: np.random.Generator, items: Sequence[Any]) -> Any:
    return items[int(rng.integers(len(items)))]


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def finding_sentence(f: Finding, rng: np.random.Generator) -> str:
    """One positive sentence naming ``f``'s kind (a synonym), size, side and zone."""
    size = _SEVERITY[f.size] if f.kind == "cardiomegaly" else f.size
    templates = [(t, s) for t in _NOUN_TEMPLATES for s in _NOUN_SYNS.get(f.kind, ())]
    templates += [(t, "") for t in _SPECIAL_TEMPLATES.get(f.kind, ())]
    template, syn = _choice(rng, templates)
    loc = _choice(rng, _LOC[f.zone]).format(s=f.side) if f.side != "center" else ""
    return template.format(size=size, Size=_cap(size), syn=syn, loc=loc, Loc=_cap(loc),
                           side=f.side)


def build_report(findings: Sequence[Finding],
                 rng: np.random.Generator) -> tuple[str, tuple[str, ...]]:
    """Write a short report for ``findings``.

    Args:
        findings: Ground-truth findings (empty for a normal case).
        rng: Generator choosing the wording.

    Returns:
        ``(report, negated)`` where ``negated`` lists the kinds the report states
        are absent (all kinds for a normal case, whose global sentence negates all).
    """
    present = {f.kind for f in findings}
    absent = [k for k in FINDING_KINDS if k not in present]
    n_neg = int(rng.integers(0, 3))
    neg_kinds = [absent[i] for i in sorted(rng.permutation(len(absent))[:n_neg])]
    negs = [_choice(rng, NEGATION_SENTENCES[k]) for k in neg_kinds]
    if not findings:
        sentences = [_choice(rng, NORMAL_SENTENCES)] + negs
        order = rng.permutation(len(sentences))
        return " ".join(sentences[i] for i in order), FINDING_KINDS
    pos = [finding_sentence(f, rng) for f in findings]
    pos = [pos[i] for i in rng.permutation(len(pos))]
    if rng.random() < 0.7:
        sentences = pos + negs
    else:
        sentences = [(pos + negs)[i] for i in rng.permutation(len(pos) + len(negs))]
    return " ".join(sentences), tuple(k for k in FINDING_KINDS if k in neg_kinds)


_Q_NAME = {"nodule": "a nodule", "opacity": "an opacity", "effusion": "a pleural effusion",
           "cardiomegaly": "cardiomegaly", "pneumothorax": "a pneumothorax"}
_DEF_NAME = {"nodule": "the nodule", "opacity": "the opacity", "effusion": "the effusion",
             "cardiomegaly": "the cardiomegaly", "pneumothorax": "the pneumothorax"}
_LATERAL = ("nodule", "opacity", "effusion", "pneumothorax")


def build_vqa(findings: Sequence[Finding], rng: np.random.Generator) -> list[VQAPair]:
    """Closed (yes/no) and open question/answer pairs for one case, all from ground truth."""
    yn = {True: "yes", False: "no"}
    present = {f.kind for f in findings}
    qa: list[VQAPair] = []

    def closed(q: str, ans: bool, qt: str) -> None:
        qa.append(VQAPair(q, yn[ans], "CLOSED", qt))

    def presence_q(kind: str) -> str:
        if kind == "cardiomegaly" and rng.random() < 0.5:
            return "Is the heart enlarged?"
        return f"Is there {_Q_NAME[kind]}?"

    absent = [k for k in FINDING_KINDS if k not in present]
    for k in FINDING_KINDS:
        if k in present:
            closed(presence_q(k), True, "presence")
    for i in rng.permutation(len(absent))[: max(1, len(present))]:
        closed(presence_q(absent[int(i)]), False, "presence")
    if rng.random() < 0.5:
        closed(_choice(rng, ("Is this image normal?", "Is this chest radiograph normal?")),
               not findings, "normal")
    else:
        closed(_choice(rng, ("Is there any abnormality?", "Are there any abnormal findings?")),
               bool(findings), "normal")
    sides_of = {k: sorted(f.side for f in findings if f.kind == k) for k in _LATERAL}
    for f in findings:
        if f.kind not in _LATERAL:
            continue
        for side in SIDES:
            closed(f"Is there {_Q_NAME[f.kind]} in the {side} lung?", side in sides_of[f.kind],
                   "location")
        if len(sides_of[f.kind]) == 1:
            qa.append(VQAPair(f"Where is {_DEF_NAME[f.kind]}?", f"{f.side} {f.zone}", "OPEN",
                              "location"))
            qa.append(VQAPair(f"Which side is {_DEF_NAME[f.kind]} on?", f.side, "OPEN", "side"))
        qa.append(VQAPair(f"How large is {_DEF_NAME[f.kind]} in the {f.side} lung?", f.size,
                          "OPEN", "size"))
    asked_sides = SIDES if findings else (_choice(rng, SIDES),)
    for side in asked_sides:
        kinds = [f.kind for f in findings if f.side == side]
        if len(kinds) <= 1:
            qa.append(VQAPair(f"What abnormality is seen in the {side} lung?",
                              kinds[0] if kinds else "none", "OPEN", "kind"))
    if len(findings) <= 1:
        qa.append(VQAPair("What is the main finding?", findings[0].kind if findings else "none",
                          "OPEN", "kind"))
    return qa


_POS_HYP = {"nodule": "There is a nodule in the {side} lung.",
            "opacity": "There is an opacity in the {side} lung.",
            "effusion": "There is a {side} pleural effusion.",
            "pneumothorax": "There is a {side} pneumothorax.",
            "cardiomegaly": "The heart is enlarged."}
_NEG_HYP = {"nodule": "There is no lung nodule.", "opacity": "There is no lung opacity.",
            "effusion": "There is no pleural effusion.",
            "pneumothorax": "There is no pneumothorax.",
            "cardiomegaly": "The heart is normal in size."}


def entailment_label(findings: Sequence[Finding], negated: Sequence[str], kind: str,
                     side: str, positive: bool) -> str:
    """Label of hypothesis "kind[/side] is present" (``positive``) or "kind is absent".

    A positive hypothesis is entailed when (kind, side) is present, contradicted
    when the report negates the kind, neutral otherwise (e.g. other side only,
    or absent but unmentioned). A negative hypothesis is entailed when the
    report negates the kind, contradicted when the kind is present on any side,
    neutral otherwise.
    """
    if positive:
        if any(f.kind == kind and f.side == side for f in findings):
            return "entailment"
        return "contradiction" if kind in negated else "neutral"
    if kind in negated:
        return "entailment"
    return "contradiction" if any(f.kind == kind for f in findings) else "neutral"


def text_pairs(case: SynthCase) -> list[dict[str, Any]]:
    """Text-classification examples for one case (deterministic per case).

    Args:
        case: The case (uses its findings, report, negated kinds, seed and index).

    Returns:
        Dicts with ``text`` (the report), ``text_pair``, ``label``, ``task`` and
        ``meta``. Task ``"presence"``: ``text_pair`` is a finding kind, label
        ``"present"``/``"absent"``. Task ``"entailment"``: ``text_pair`` is a
        hypothesis sentence, label from :func:`entailment_label`.
    """
    rng = np.random.default_rng([int(case.seed), int(case.index), 3])
    findings, negated = tuple(case.findings), tuple(case.negated)
    present = {f.kind for f in findings}
    out: list[dict[str, Any]] = []
    for k in FINDING_KINDS:
        out.append({"text": case.report, "text_pair": k, "task": "presence",
                    "label": "present" if k in present else "absent", "meta": {"kind": k}})
    hyps: list[tuple[str, str, bool]] = [(f.kind, f.side, True) for f in findings]
    if present:
        hyps.append((_choice(rng, sorted(present)), "", False))
    if negated:
        k = _choice(rng, negated)
        side = "center" if k == "cardiomegaly" else _choice(rng, SIDES)
        hyps += [(k, side, True), (k, "", False)]
    unmentioned = [k for k in FINDING_KINDS if k not in negated]
    pos_neutral = [(f.kind, s) for f in findings if f.kind in _LATERAL for s in SIDES
                   if (f.kind, s) not in {(g.kind, g.side) for g in findings}]
    pos_neutral += [(k, s) for k in unmentioned if k not in present
                    for s in (("center",) if k == "cardiomegaly" else SIDES)]
    if pos_neutral:
        hyps.append((*_choice(rng, pos_neutral), True))
    neg_neutral = [k for k in unmentioned if k not in present]
    if neg_neutral:
        hyps.append((_choice(rng, neg_neutral), "", False))
    for kind, side, positive in hyps:
        hyp = _POS_HYP[kind].format(side=side) if positive else _NEG_HYP[kind]
        out.append({"text": case.report, "text_pair": hyp, "task": "entailment",
                    "label": entailment_label(findings, negated, kind, side, positive),
                    "meta": {"kind": kind, "side": side, "positive": positive}})
    return out
