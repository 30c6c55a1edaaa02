"""synthrad: a seeded, procedural chest-radiograph-like dataset with known ground truth.

Each case has a set of 0-``max_findings`` findings (kind, side, zone, size;
uniform over the 17 allowed (kind, side, zone) :data:`COMBOS`, no two sharing
(kind, side), ``normal_fraction`` of cases normal), a grayscale image showing
them with one box per finding, a short free-text report, VQA pairs, multi-hot
labels over :data:`LABELS` and a retrieval key (:func:`finding_key`: sorted
``kind:side:zone``, size ignored; 142 distinct keys exist with
``max_findings=2``, "normal" included).

Anatomy/finding rules: nodule = small sharp round bright spot (radius >= 2.6 px
at any size); opacity = larger ill-defined blob blended toward soft-tissue
density inside the lung; effusion = lower zone only, basal fluid with a meniscus
rising laterally (costophrenic blunting); pneumothorax = upper zone only,
apical/lateral lucency without lung markings bounded by a bright pleural line;
cardiomegaly = side "center", zone "middle", heart widened to a
cardiothoracic ratio > 0.5 (normal hearts are ~0.4).

Image convention: a PA radiograph seen from the front, so the patient's
**right** side is on the image **left** (small x) and the patient's left on the
image right. The heart bulges to the patient's left (image right).

Rendering works in normalised thorax coordinates (u, v) in [-1, 1] (v grows
downwards), so any ``image_size >= 32`` works; a per-case affine (shift,
rotation, scale), exposure gradient, noise and a gamma/contrast/brightness LUT
make images with the same findings differ. Each finding's box ``(y0, x0, y1,
x1)`` (pixel coordinates, y1/x1 exclusive) bounds the pixels it changes by at
least 30 % of its peak effect (for cardiomegaly: the enlarged heart silhouette).

Randomness: findings come from ``np.random.default_rng([seed, index])``;
geometry, intensity and noise from ``[seed, index, 1]``; per-finding jitter from
``[seed, index, 2, kind, side]``; report and VQA wording from ``[seed, index, 4]``
(text pairs: ``[seed, index, 3]``). Rendering the same case with a different
``findings`` override therefore changes only the findings' pixels.
"""

from __future__ import annotations

import functools
import json
import math
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from mpma.data.synthrad_text import (
    ALLOWED_LOCATIONS, COMBOS, FINDING_KINDS, LABELS, NEGATION_SENTENCES, NORMAL_SENTENCES,
    SIDES, SIZES, SYNONYMS, ZONE_WORDS, ZONES, Finding, SynthCase, VQAPair, build_report,
    build_vqa, entailment_label, finding_key, labels_for, sample_findings, text_pairs,
)

__all__ = [
    "ALLOWED_LOCATIONS", "COMBOS", "FINDING_KINDS", "LABELS", "NEGATION_SENTENCES",
    "NORMAL_SENTENCES", "SIDES", "SIZES", "SYNONYMS", "ZONES", "ZONE_WORDS", "Finding",
    "VQAPair", "SynthCase", "SynthRad", "case_report", "entailment_label", "finding_key", "generate_case",
    "labels_for", "render", "sample_findings", "synthrad_splits", "text_pairs", "write_synthrad",
]

Box = tuple[int, int, int, int]
VAL_OFFSET = 1_000_000_000
TEST_OFFSET = 2_000_000_000
_SIZE_IDX = {s: i for i, s in enumerate(SIZES)}
_ZONE_V = {"upper": -0.40, "middle": -0.04, "lower": 0.24}
_LUNG_AX, _LUNG_AY, _LUNG_CY = 0.30, 0.70, -0.02


@functools.lru_cache(maxsize=16)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    c = ((np.arange(size, dtype=np.float32) + 0.5) / size * 2.0 - 1.0).astype(np.float32)
    c.flags.writeable = False
    return c[:, None], c[None, :]


@functools.lru_cache(maxsize=16)
def _upsampler(size: int, n: int) -> np.ndarray:
    """(size, n) bilinear interpolation matrix from an n-point grid to ``size`` pixels."""
    pos = np.clip((np.arange(size) + 0.5) / size * (n - 1), 0, n - 1)
    m = np.maximum(0.0, 1.0 - np.abs(pos[:, None] - np.arange(n)[None, :])).astype(np.float32)
    m.flags.writeable = False
    return m


def _soft(x: np.ndarray, k: float) -> np.ndarray:
    """``clip(x * k, 0, 1)`` (faster than ``np.clip`` with scalars)."""
    y = x * np.float32(k)
    np.maximum(y, 0.0, out=y)
    return np.minimum(y, 1.0, out=y)


def _bbox(mask: np.ndarray, r0: int = 0, c0: int = 0) -> Box:
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return (r0, c0, r0, c0)
    return (r0 + int(rows[0]), c0 + int(cols[0]), r0 + int(rows[-1]) + 1, c0 + int(cols[-1]) + 1)


class _Frame:
    """Per-case affine map between thorax coordinates (u, v) and image pixels."""

    def __init__(self, size: int, scale: float, rot: float, dx: float, dy: float) -> None:
        self.size, self.scale, self.dx, self.dy = size, scale, dx, dy
        self.c, self.s = float(np.cos(rot)), float(np.sin(rot))
        yy, xx = _grid(size)
        cr, sr = np.float32(self.c / scale), np.float32(self.s / scale)
        x0, y0 = xx - np.float32(dx), yy - np.float32(dy)
        self.u, self.v = cr * x0 + sr * y0, cr * y0 - sr * x0

    def window(self, umin: float, umax: float, vmin: float, vmax: float,
               within: tuple[slice, slice] | None = None) -> tuple[slice, slice]:
        """Pixel slices covering the (u, v) rectangle, optionally relative to ``within``."""
        h, c, s, k = self.size / 2, self.c, self.s, self.scale
        xs = [k * (c * a - s * b) + self.dx for a in (umin, umax) for b in (vmin, vmax)]
        ys = [k * (s * a + c * b) + self.dy for a in (umin, umax) for b in (vmin, vmax)]
        r0, c0 = math.floor((min(ys) + 1) * h - 0.5) - 1, math.floor((min(xs) + 1) * h - 0.5) - 1
        r1, c1 = math.ceil((max(ys) + 1) * h - 0.5) + 2, math.ceil((max(xs) + 1) * h - 0.5) + 2
        lo_r, lo_c, hi_r, hi_c = 0, 0, self.size, self.size
        if within is not None:
            (lo_r, hi_r), (lo_c, hi_c) = (within[0].start, within[0].stop), (within[1].start,
                                                                             within[1].stop)
        r0, r1 = min(max(r0, lo_r), hi_r) - lo_r, min(max(r1, lo_r), hi_r) - lo_r
        c0, c1 = min(max(c0, lo_c), hi_c) - lo_c, min(max(c1, lo_c), hi_c) - lo_c
        return slice(r0, r1), slice(c0, c1)


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
    scale, rot = rng.uniform(0.92, 1.04), np.deg2rad(rng.uniform(-4.0, 4.0))
    dx, dy = rng.uniform(-0.05, 0.05, size=2)
    fr = _Frame(image_size, scale, rot, float(dx), float(dy))
    u, v = fr.u, fr.v
    # Body soft tissue (super-ellipse) with a brighter rim, dark air outside.
    bu, bv = (u * np.float32(1 / 0.93)) ** 2, ((v - 0.14) * np.float32(1 / 1.2)) ** 2
    body_r = bu * bu + bv * bv
    body = _soft(1.0 - body_r, 6.0)
    img = 0.04 + body * (0.46 + 0.12 * _soft(body_r - 0.35, 2.0))
    spine = fr.window(-0.1, 0.1, -1.3, 1.3)
    img[spine] += 0.06 * _soft(0.075 - np.abs(u[spine]), 40.0) * body[spine]
    # Everything else lives in the thorax window T (sub is a view into img).
    T = fr.window(-0.76, 0.76, -0.98, 0.78)
    ut, vt, sub = u[T], v[T], img[T]
    aut = np.abs(ut)
    lung_cx = {"right": -0.40 + rng.uniform(-0.02, 0.02), "left": 0.40 + rng.uniform(-0.02, 0.02)}
    dome_top = {"right": 0.34 + rng.uniform(-0.03, 0.03), "left": 0.41 + rng.uniform(-0.03, 0.03)}
    ells, lungs = {}, {}
    for side in SIDES:
        t = (ut - lung_cx[side]) * np.float32(1 / _LUNG_AX)
        t2 = t * t
        ells[side] = _soft(1.0 - t2 - ((vt - _LUNG_CY) * np.float32(1 / _LUNG_AY)) ** 2, 6.0)
        lungs[side] = ells[side] * _soft(dome_top[side] + 0.22 * t2 - vt, 20.0)
    by_kind = {f.kind: f for f in findings}
    heart_ax = 0.28 + rng.uniform(-0.02, 0.02)
    if "cardiomegaly" in by_kind:
        heart_ax = (0.42, 0.48, 0.54)[_SIZE_IDX[by_kind["cardiomegaly"].size]]
    hcx, hcy, hay = 0.08, 0.30, 0.26 + 0.35 * (heart_ax - 0.28)
    heart = _soft(1.0 - ((ut - hcx) * np.float32(1 / heart_ax)) ** 2
                  - ((vt - hcy) * np.float32(1 / hay)) ** 2, 5.0)
    lung_all = (lungs["right"] + lungs["left"]) * (1.0 - heart)
    up = _upsampler(image_size, 10)
    markings = up[T[0]] @ rng.standard_normal((10, 10), dtype=np.float32) @ up[T[1]].T
    hila = np.exp(-((aut - 0.2) ** 2 * np.float32(1 / 0.012) + vt * vt * np.float32(1 / 0.04)))
    sub -= lung_all * (0.34 - 0.05 * markings - 0.10 * hila)
    boxes: list[Box] = []
    for f in findings:
        frng = np.random.default_rng([seed, index, 2, FINDING_KINDS.index(f.kind),
                                      ("right", "left", "center").index(f.side)])
        if f.kind == "cardiomegaly":
            boxes.append(_bbox(heart > 0.5, T[0].start, T[1].start))
            continue
        sg = -1.0 if f.side == "right" else 1.0
        cx, si = lung_cx[f.side], _SIZE_IDX[f.size]
        if f.kind in ("nodule", "opacity"):
            fx = cx + sg * frng.uniform(-0.02, 0.08)
            fy = _ZONE_V[f.zone] + frng.uniform(-0.05, 0.05)
            if f.kind == "nodule":
                r = max((0.085, 0.115, 0.15)[si] / scale, 2.6 / (image_size / 2.0))
                w = fr.window(fx - r, fx + r, fy - r, fy + r, within=T)
                before = sub[w].copy()
                d2 = ((ut[w] - fx) ** 2 + (vt[w] - fy) ** 2) * np.float32(1 / (r * r))
                sub[w] += frng.uniform(0.36, 0.44) * _soft(1.0 - d2, 3.0)
            else:
                sig = (0.10, 0.135, 0.17)[si]
                R = 3.8 * sig
                w = fr.window(fx - R, fx + R, fy - R, fy + R, within=T)
                before, uw, vw = sub[w].copy(), ut[w], vt[w]
                blob = np.zeros_like(before)
                for ox, oy in frng.uniform(-0.5, 0.5, size=(3, 2)) * sig:
                    blob += np.exp(((uw - float(fx + ox)) ** 2 + (vw - float(fy + oy)) ** 2)
                                   * np.float32(-0.5 / (sig * sig)))
                amp = np.minimum(blob, 1.0) * ells[f.side][w] * np.float32(frng.uniform(0.8, 0.9))
                sub[w] += amp * (0.52 - before)
        elif f.kind == "effusion":
            depth = (0.27, 0.37, 0.50)[si] + frng.uniform(-0.02, 0.02)
            level = dome_top[f.side] + 0.22 - depth
            w = fr.window(cx - _LUNG_AX, cx + _LUNG_AX, level - 0.2, _LUNG_CY + _LUNG_AY, within=T)
            before = sub[w].copy()
            lat = _soft(ut[w] - cx, sg / _LUNG_AX)
            fluid = _soft(vt[w] - (level - 0.12 * lat * lat), 18.0) * ells[f.side][w]
            sub[w] += fluid * (0.47 - before) * 0.95
        else:  # pneumothorax: apical/lateral lucency beyond a visible pleural line
            depth = (0.36, 0.48, 0.60)[si] + frng.uniform(-0.02, 0.02)
            vcut = -0.05 + 0.25 * depth
            w = fr.window(cx - _LUNG_AX, cx + _LUNG_AX, _LUNG_CY - _LUNG_AY, vcut + 0.05, within=T)
            before, uw, vw = sub[w].copy(), ut[w], vt[w]
            ccx = cx - sg * _LUNG_AX * depth * 0.55
            cax, cay = _LUNG_AX * (1 - 0.55 * depth), _LUNG_AY * (1 - 0.5 * depth)
            cr2 = ((uw - ccx) / cax) ** 2 + ((vw - (_LUNG_CY + _LUNG_AY * depth * 0.5)) / cay) ** 2
            region = lungs[f.side][w] * (1.0 - heart[w]) * _soft(vcut - vw, 10.0)
            air = region * _soft(cr2 - 1.0, 8.0)
            line = region * _soft(1.0 - np.abs(cr2 - 1.0) * 7.0, 1.0)
            sub[w] += air * (0.03 - before) + 0.16 * line
        delta = np.abs(sub[w] - before)
        boxes.append(_bbox(delta >= max(0.3 * float(delta.max(initial=0.0)), 0.02),
                           T[0].start + w[0].start, T[1].start + w[1].start))
    # Overlying bones (ribs, clavicles) and the trachea lucency.
    phase = (vt - 0.28 * ut * ut + 0.12 * aut) * 3.3 + rng.uniform(0.0, 1.0)
    ribs = _soft(np.sin(phase * np.float32(2 * np.pi)) - 0.55, 2.2)
    sub += 0.07 * ribs * lung_all
    clav = np.exp(((vt + 0.74 - 0.22 * aut) * np.float32(1 / 0.035)) ** 2 * -1.0) * (aut < 0.62)
    sub += (0.10 * clav - 0.09 * _soft(0.035 - aut, 60.0) * (vt < -0.35)) * body[T]
    gx, gy = rng.uniform(-0.04, 0.04, size=2)
    yy, xx = _grid(image_size)
    img += np.float32(gx) * xx + np.float32(gy) * yy
    img += np.float32(rng.uniform(0.008, 0.03)) * rng.standard_normal(img.shape, dtype=np.float32)
    gamma, contrast = rng.uniform(0.8, 1.25), rng.uniform(0.85, 1.15)
    bright = rng.uniform(-0.05, 0.05)
    lut = np.clip(((np.arange(256) / 255.0) ** gamma * contrast + bright) * 255.0 + 0.5, 0, 255)
    img *= np.float32(255.0 / 0.72)
    img += 0.5
    q = np.minimum(np.maximum(img, 0.0, out=img), 255.0, out=img).astype(np.uint8)
    ratio = float(2 * heart_ax / (lung_cx["left"] - lung_cx["right"] + 2 * _LUNG_AX))
    return lut.astype(np.uint8)[q], tuple(boxes), ratio


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


def write_synthrad(out_dir: str | Path, n: int, seed: int = 0, image_size: int = 64,
                   val_fraction: float = 0.1, test_fraction: float = 0.1,
                   **kw: Any) -> dict[str, Path]:
    """Write ``images/<id>.png`` and JSONL manifests for ``n`` cases split train/val/test.

    Manifests: ``pretrain`` (id, image, text, split, finding_key), ``vqa`` (id, image,
    question, answer, answer_type, question_type, split), ``cls`` (id, image, text,
    labels, split), ``text_cls`` (id, text, text_pair, label, task, meta, split) and
    ``truth`` (full ground truth incl. findings with boxes). Image paths are relative
    to ``out_dir``; ids are ``<split>_<i:06d>``. ``kw`` goes to :func:`synthrad_splits`.

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
                for q in c.vqa:
                    emit("vqa", split, {**base, "question": q.question, "answer": q.answer,
                                        "answer_type": q.answer_type,
                                        "question_type": q.question_type})
                emit("cls", split, {**base, "text": c.report,
                                    "labels": [lab for lab, y in zip(LABELS, c.labels) if y > 0]})
                for p in text_pairs(c):
                    emit("text_cls", split, {"id": cid, **p})
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
