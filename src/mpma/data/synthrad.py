"""synthrad: a seeded, procedural chest-radiograph-like dataset with known ground truth.

Each case is drawn from ``np.random.SeedSequence([seed, index])``: a set of 0-2
findings (kind, side, zone, size; uniform over :data:`COMBOS`, no two sharing
(kind, side), ``normal_fraction`` of cases normal), a grayscale image showing
them, a short free-text report, VQA pairs, multi-hot labels and a retrieval key.

Image convention: a PA radiograph seen from the front, so the patient's
**right** side is on the image **left** (small x) and the patient's left on the
image right. The heart bulges to the patient's left (image right).

Rendering works in normalised thorax coordinates (u, v) in [-1, 1] (v grows
downwards), so any ``image_size >= 32`` works; a per-case affine (shift,
rotation, scale), exposure gradient, noise and a gamma/contrast/brightness LUT
make images with the same findings differ. Each finding's box ``(y0, x0, y1,
x1)`` (pixel coordinates, y1/x1 exclusive) bounds the pixels it changes by at
least 30 % of its peak effect (for cardiomegaly: the enlarged heart silhouette).

Randomness is split into independent streams (findings, geometry/intensity,
per-finding jitter keyed by (kind, side), text), so rendering the same case
with a different ``findings`` override changes only the findings' pixels.
"""

from __future__ import annotations

import functools
import json
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from mpma.data.synthrad_text import (
    ALLOWED_LOCATIONS, COMBOS, FINDING_KINDS, LABELS, NEGATION_SENTENCES, NORMAL_SENTENCES,
    SIDES, SIZES, SYNONYMS, ZONE_WORDS, ZONES, Finding, VQAPair, build_report, build_vqa,
    entailment_label, finding_key, labels_for, text_pairs,
)

__all__ = [
    "ALLOWED_LOCATIONS", "COMBOS", "FINDING_KINDS", "LABELS", "NEGATION_SENTENCES",
    "NORMAL_SENTENCES", "SIDES", "SIZES", "SYNONYMS", "ZONES", "ZONE_WORDS", "Finding",
    "VQAPair", "SynthCase", "SynthRad", "entailment_label", "finding_key", "generate_case",
    "labels_for", "render", "sample_findings", "synthrad_splits", "text_pairs", "write_synthrad",
]

Box = tuple[int, int, int, int]
VAL_OFFSET = 1_000_000_000
TEST_OFFSET = 2_000_000_000
_SIZE_IDX = {s: i for i, s in enumerate(SIZES)}
_ZONE_V = {"upper": -0.40, "middle": -0.04, "lower": 0.24}
_LUNG_AX, _LUNG_AY, _LUNG_CY = 0.30, 0.70, -0.02


@dataclass
class SynthCase:
    """One generated case; see the module docstring for conventions."""

    index: int
    image: np.ndarray
    findings: tuple[Finding, ...]
    boxes: tuple[Box, ...]
    report: str
    finding_key: str
    labels: np.ndarray
    vqa: list[VQAPair]
    negated: tuple[str, ...] = ()
    seed: int = 0
    heart_ratio: float = field(default=0.0)


@functools.lru_cache(maxsize=16)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    c = ((np.arange(size, dtype=np.float32) + 0.5) / size * 2.0 - 1.0).astype(np.float32)
    return c[:, None], c[None, :]


@functools.lru_cache(maxsize=16)
def _upsampler(size: int, n: int) -> np.ndarray:
    """(size, n) bilinear interpolation matrix from an n-point grid to ``size`` pixels."""
    pos = np.clip((np.arange(size) + 0.5) / size * (n - 1), 0, n - 1)
    lo = np.minimum(pos.astype(int), n - 2)
    w = (pos - lo).astype(np.float32)
    m = np.zeros((size, n), dtype=np.float32)
    m[np.arange(size), lo] = 1.0 - w
    m[np.arange(size), lo + 1] = w
    return m


def _soft(x: np.ndarray, k: float) -> np.ndarray:
    return np.clip(x * k, 0.0, 1.0)


def _bbox(mask: np.ndarray) -> Box:
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return (0, 0, 0, 0)
    return (int(rows[0]), int(cols[0]), int(rows[-1]) + 1, int(cols[-1]) + 1)


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


def render(findings: Sequence[Finding], seed: int, index: int,
           image_size: int = 64) -> tuple[np.ndarray, tuple[Box, ...], float]:
    """Draw the radiograph of case ``(seed, index)`` showing ``findings``.

    Args:
        findings: Findings to draw (any valid set; need not be the sampled one).
        seed: Dataset seed.
        index: Case index (selects geometry, intensity and noise).
        image_size: Side of the square output, >= 32.

    Returns:
        ``(image, boxes, heart_ratio)``: (H, W) uint8 image, one box per finding,
        and the cardiothoracic ratio of the drawn heart.
    """
    if image_size < 32:
        raise ValueError("image_size must be >= 32")
    rng = np.random.default_rng([seed, index, 1])
    yy, xx = _grid(image_size)
    half = image_size / 2.0
    scale, rot = rng.uniform(0.92, 1.04), np.deg2rad(rng.uniform(-4.0, 4.0))
    dx, dy = rng.uniform(-0.05, 0.05, size=2)
    cr, sr = np.float32(np.cos(rot) / scale), np.float32(np.sin(rot) / scale)
    x0, y0 = xx - np.float32(dx), yy - np.float32(dy)
    u, v = cr * x0 + sr * y0, cr * y0 - sr * x0
    au = np.abs(u)
    # Body soft tissue with a brighter rim, dark air outside.
    bu, bv = u / 0.93, (v - 0.14) / 1.2
    body_r2 = np.abs(bu * bu * bu) + np.abs(bv * bv * bv)
    body = _soft(1.0 - body_r2, 8.0)
    img = 0.04 + body * (0.46 + 0.12 * _soft(body_r2 - 0.5, 2.5))
    # Lungs carved out of the thorax, domes of the diaphragm at the base.
    lung_cx = {"right": -0.40 + rng.uniform(-0.02, 0.02), "left": 0.40 + rng.uniform(-0.02, 0.02)}
    dome_top = {"right": 0.34 + rng.uniform(-0.03, 0.03), "left": 0.41 + rng.uniform(-0.03, 0.03)}
    ells, lungs = {}, {}
    for side in SIDES:
        t = (u - lung_cx[side]) / _LUNG_AX
        ells[side] = _soft(1.0 - t * t - ((v - _LUNG_CY) / _LUNG_AY) ** 2, 6.0)
        lungs[side] = ells[side] * _soft(dome_top[side] + 0.22 * t * t - v, 20.0)
    by_kind = {f.kind: f for f in findings}
    heart_ax = 0.28 + rng.uniform(-0.02, 0.02)
    if "cardiomegaly" in by_kind:
        heart_ax = (0.42, 0.48, 0.54)[_SIZE_IDX[by_kind["cardiomegaly"].size]]
    hcx, hcy, hay = 0.08, 0.30, 0.26 + 0.35 * (heart_ax - 0.28)
    heart = _soft(1.0 - ((u - hcx) / heart_ax) ** 2 - ((v - hcy) / hay) ** 2, 5.0)
    lung_all = (lungs["right"] + lungs["left"]) * (1.0 - heart)
    noise_lr = rng.standard_normal((10, 10), dtype=np.float32)
    up = _upsampler(image_size, 10)
    markings = up @ noise_lr @ up.T
    hila = np.exp(-((au - 0.2) ** 2 / 0.012 + v * v / 0.04))
    img = img - lung_all * (0.34 - 0.05 * markings - 0.10 * hila)
    boxes: list[Box] = []
    for f in findings:
        frng = np.random.default_rng([seed, index, 2, FINDING_KINDS.index(f.kind),
                                      ("right", "left", "center").index(f.side)])
        if f.kind == "cardiomegaly":
            boxes.append(_bbox(heart > 0.5))
            continue
        before = img
        sg = -1.0 if f.side == "right" else 1.0
        cx, si = lung_cx[f.side], _SIZE_IDX[f.size]
        if f.kind in ("nodule", "opacity"):
            fx = cx + sg * frng.uniform(-0.02, 0.08)
            fy = _ZONE_V[f.zone] + frng.uniform(-0.05, 0.05)
            if f.kind == "nodule":
                r = max((0.085, 0.115, 0.15)[si] / scale, 2.6 / half)
                blob = _soft(1.0 - ((u - fx) ** 2 + (v - fy) ** 2) / (r * r), 3.0)
                img = img + frng.uniform(0.36, 0.44) * blob
            else:
                sig = (0.10, 0.135, 0.17)[si]
                blob = np.zeros_like(img)
                for ox, oy in frng.uniform(-0.5, 0.5, size=(3, 2)) * sig:
                    blob = blob + np.exp(-((u - fx - ox) ** 2 + (v - fy - oy) ** 2) / (2 * sig * sig))
                amp = frng.uniform(0.8, 0.9) * np.clip(blob, 0.0, 1.0) * ells[f.side]
                img = img + amp * (0.52 - img)
        elif f.kind == "effusion":
            depth = (0.27, 0.37, 0.50)[si] + frng.uniform(-0.02, 0.02)
            lat = np.clip(sg * (u - cx) / _LUNG_AX, 0.0, 1.0)
            surface = dome_top[f.side] + 0.22 - depth - 0.12 * lat * lat
            fluid = _soft(v - surface, 18.0) * ells[f.side]
            img = img + fluid * (0.47 - img) * 0.95
        else:  # pneumothorax: apical/lateral lucency beyond a visible pleural line
            depth = (0.36, 0.48, 0.60)[si] + frng.uniform(-0.02, 0.02)
            ccx = cx - sg * _LUNG_AX * depth * 0.55
            cax, cay, ccy = _LUNG_AX * (1 - 0.55 * depth), _LUNG_AY * (1 - 0.5 * depth), _LUNG_CY + _LUNG_AY * depth * 0.5
            cr2 = ((u - ccx) / cax) ** 2 + ((v - ccy) / cay) ** 2
            region = lungs[f.side] * (1.0 - heart) * _soft(-0.05 + 0.25 * depth - v, 10.0)
            air = region * _soft(cr2 - 1.0, 8.0)
            line = region * np.clip(1.0 - np.abs(cr2 - 1.0) * 7.0, 0.0, 1.0)
            img = img + air * (0.03 - img) + 0.16 * line
        delta = np.abs(img - before)
        boxes.append(_bbox(delta >= max(0.3 * float(delta.max()), 0.02)))
    # Overlying bones: ribs, clavicles, spine; trachea lucency.
    phase = (v - 0.28 * u * u + 0.12 * au) * 3.3 + rng.uniform(0.0, 1.0)
    ribs = _soft(np.sin(2 * np.pi * phase) - 0.55, 2.2)
    img = img + 0.07 * ribs * (ells["right"] + ells["left"])
    img = img + 0.10 * np.exp(-((v + 0.74 - 0.22 * au) / 0.035) ** 2) * (au < 0.62) * body
    img = img + (0.06 * _soft(0.075 - au, 40.0) - 0.09 * _soft(0.035 - au, 60.0) * (v < -0.35)) * body
    gx, gy = rng.uniform(-0.04, 0.04, size=2)
    img = img + np.float32(gx) * xx + np.float32(gy) * yy
    img = img + np.float32(rng.uniform(0.008, 0.03)) * rng.standard_normal(img.shape, dtype=np.float32)
    gamma, contrast, bright = rng.uniform(0.8, 1.25), rng.uniform(0.85, 1.15), rng.uniform(-0.05, 0.05)
    lut = np.clip(((np.arange(256) / 255.0) ** gamma * contrast + bright) * 255.0 + 0.5, 0, 255)
    q = np.clip(img * (255.0 / 0.72) + 0.5, 0, 255).astype(np.uint8)
    ratio = float(2 * heart_ax / (lung_cx["left"] - lung_cx["right"] + 2 * _LUNG_AX))
    return lut.astype(np.uint8)[q], tuple(boxes), ratio


def generate_case(index: int, seed: int = 0, image_size: int = 64, normal_fraction: float = 0.1,
                  max_findings: int = 2, *, findings: Sequence[Finding] | None = None) -> SynthCase:
    """Generate case ``index`` of dataset ``seed`` (deterministic in all arguments).

    Args:
        index: Case index.
        seed: Dataset seed; streams derive from ``np.random.SeedSequence([seed, index])``.
        image_size: Square image side in pixels (>= 32).
        normal_fraction: Probability that a case has no findings.
        max_findings: Maximum number of findings per case.
        findings: Optional override of the sampled findings (same geometry/noise).

    Returns:
        The :class:`SynthCase`.
    """
    if findings is None:
        findings = sample_findings(np.random.default_rng([seed, index]), normal_fraction, max_findings)
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
        self.n, self.seed, self.image_size, self.offset = int(n), int(seed), int(image_size), int(offset)
        self.normal_fraction, self.max_findings, self.cache_size = normal_fraction, max_findings, cache_size
        self._cache: OrderedDict[int, SynthCase] = OrderedDict()

    def __len__(self) -> int:
        return self.n

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


def synthrad_splits(n_train: int, n_val: int, n_test: int, seed: int = 0, **kw) -> dict[str, SynthRad]:
    """Train/val/test datasets at fixed disjoint offsets (0, 1e9, 2e9) of one seed.

    Fixed offsets keep val/test identical whatever ``n_train`` is.
    """
    if max(n_train, n_val, n_test) > VAL_OFFSET:
        raise ValueError("split too large")
    return {"train": SynthRad(n_train, seed, offset=0, **kw),
            "val": SynthRad(n_val, seed, offset=VAL_OFFSET, **kw),
            "test": SynthRad(n_test, seed, offset=TEST_OFFSET, **kw)}


def write_synthrad(out_dir: str | Path, n: int, seed: int = 0, image_size: int = 64,
                   val_fraction: float = 0.1, test_fraction: float = 0.1) -> dict[str, Path]:
    """Write PNGs and JSONL manifests (pretrain, vqa, cls, text_cls, truth) for ``n`` cases.

    Returns:
        ``{manifest name: path}`` plus ``"images"`` for the image folder.
    """
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    n_val, n_test = int(round(n * val_fraction)), int(round(n * test_fraction))
    splits = synthrad_splits(n - n_val - n_test, n_val, n_test, seed, image_size=image_size)
    names = ("pretrain", "vqa", "cls", "text_cls", "truth")
    paths = {k: out / f"{k}.jsonl" for k in names}
    files = {k: p.open("w", encoding="utf-8") for k, p in paths.items()}
    try:
        for split, ds in splits.items():
            for i in range(len(ds)):
                c = ds[i]
                cid, rel = f"{split}_{i:06d}", f"images/{split}_{i:06d}.png"
                Image.fromarray(c.image, mode="L").save(out / rel)
                base = {"id": cid, "image": rel}

                def w(name: str, rec: dict) -> None:
                    files[name].write(json.dumps({**rec, "split": split}) + "\n")

                w("pretrain", {**base, "text": c.report, "finding_key": c.finding_key})
                for q in c.vqa:
                    w("vqa", {**base, "question": q.question, "answer": q.answer,
                              "answer_type": q.answer_type, "question_type": q.question_type})
                w("cls", {**base, "text": c.report,
                          "labels": [lab for lab, y in zip(LABELS, c.labels) if y > 0]})
                for p in text_pairs(c):
                    w("text_cls", {"id": cid, **p})
                w("truth", {**base, "index": c.index, "seed": seed, "report": c.report,
                            "finding_key": c.finding_key, "negated": list(c.negated),
                            "heart_ratio": round(c.heart_ratio, 3),
                            "findings": [{"kind": f.kind, "side": f.side, "zone": f.zone,
                                          "size": f.size, "box": list(b)}
                                         for f, b in zip(c.findings, c.boxes)]})
    finally:
        for fh in files.values():
            fh.close()
    return {**paths, "images": out / "images"}
