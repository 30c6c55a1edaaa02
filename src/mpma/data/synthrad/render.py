"""Drawing a synthrad radiograph: body, lungs and heart, one drawing function per finding kind,
overlying bones, then exposure, noise and a tone curve.

Everything is drawn in normalised thorax coordinates (u, v) in [-1, 1] (v grows downwards) that a
per-case affine :class:`_Frame` maps onto pixels; :mod:`mpma.data.synthrad` describes the anatomy,
the image convention (the patient's right on the image left) and the random streams.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from mpma.data.synthrad.text import FINDING_KINDS, SIDES, SIZES, Finding

Box = tuple[int, int, int, int]
Window = tuple[slice, slice]
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
               within: Window | None = None) -> Window:
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


@dataclass
class _Chest:
    """The chest of one case inside the thorax window ``T``: what the findings are drawn into.

    ``sub`` is a view into the image (``image[T]``); ``ut``/``vt`` are the thorax coordinates of its
    pixels, ``ells`` the lung ellipses, ``lungs`` the lungs cut at the diaphragm domes, ``heart`` the
    heart silhouette (of half-width ``heart_ax``) and ``lung_all`` both lungs outside the heart.
    """

    frame: _Frame
    T: Window
    ut: np.ndarray
    vt: np.ndarray
    sub: np.ndarray
    lung_cx: dict[str, float]
    dome_top: dict[str, float]
    ells: dict[str, np.ndarray]
    lungs: dict[str, np.ndarray]
    heart: np.ndarray
    heart_ax: float
    lung_all: np.ndarray


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
    img, body = _draw_body(fr)
    chest = _draw_chest(fr, img, findings, rng)
    boxes = tuple(_draw_finding(chest, f, seed, index) for f in findings)
    _draw_bones(chest, body, rng)
    image = _expose(img, rng)
    ratio = float(2 * chest.heart_ax / (chest.lung_cx["left"] - chest.lung_cx["right"] + 2 * _LUNG_AX))
    return image, boxes, ratio


def _draw_body(fr: _Frame) -> tuple[np.ndarray, np.ndarray]:
    """Body soft tissue (super-ellipse) with a brighter rim, dark air outside, and the spine.

    Returns:
        ``(image, body)``: the float image so far and the body mask.
    """
    u, v = fr.u, fr.v
    bu, bv = (u * np.float32(1 / 0.93)) ** 2, ((v - 0.14) * np.float32(1 / 1.2)) ** 2
    body_r = bu * bu + bv * bv
    body = _soft(1.0 - body_r, 6.0)
    img = 0.04 + body * (0.46 + 0.12 * _soft(body_r - 0.35, 2.0))
    spine = fr.window(-0.1, 0.1, -1.3, 1.3)
    img[spine] += 0.06 * _soft(0.075 - np.abs(u[spine]), 40.0) * body[spine]
    return img, body


def _draw_chest(fr: _Frame, img: np.ndarray, findings: Sequence[Finding],
                rng: np.random.Generator) -> _Chest:
    """Lungs (with markings and hila) and the heart (enlarged for cardiomegaly) in the thorax window."""
    T = fr.window(-0.76, 0.76, -0.98, 0.78)
    ut, vt, sub = fr.u[T], fr.v[T], img[T]
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
    up = _upsampler(fr.size, 10)
    markings = up[T[0]] @ rng.standard_normal((10, 10), dtype=np.float32) @ up[T[1]].T
    hila = np.exp(-((aut - 0.2) ** 2 * np.float32(1 / 0.012) + vt * vt * np.float32(1 / 0.04)))
    sub -= lung_all * (0.34 - 0.05 * markings - 0.10 * hila)
    return _Chest(fr, T, ut, vt, sub, lung_cx, dome_top, ells, lungs, heart, heart_ax, lung_all)



def _draw_finding(c: _Chest, f: Finding, seed: int, index: int) -> Box:
    """Draw ``f`` into the chest; its box bounds the pixels it changed by >= 30 % of its peak effect
    (for cardiomegaly, drawn with the heart: the enlarged heart silhouette)."""
    frng = np.random.default_rng([seed, index, 2, FINDING_KINDS.index(f.kind),
                                  ("right", "left", "center").index(f.side)])
    if f.kind == "cardiomegaly":
        return _bbox(c.heart > 0.5, c.T[0].start, c.T[1].start)
    w, before = _DRAW_FINDING[f.kind](c, f, frng)
    delta = np.abs(c.sub[w] - before)
    return _bbox(delta >= max(0.3 * float(delta.max(initial=0.0)), 0.02),
                 c.T[0].start + w[0].start, c.T[1].start + w[1].start)


def _lateral(f: Finding) -> float:
    """-1 for a finding on the patient's right (image left), +1 on the left."""
    return -1.0 if f.side == "right" else 1.0


def _focus(c: _Chest, f: Finding, frng: np.random.Generator) -> tuple[float, float]:
    """Jittered centre (u, v) of a focal finding (nodule, opacity) in its lung and zone."""
    fx = c.lung_cx[f.side] + _lateral(f) * frng.uniform(-0.02, 0.08)
    fy = _ZONE_V[f.zone] + frng.uniform(-0.05, 0.05)
    return fx, fy


def _draw_nodule(c: _Chest, f: Finding, frng: np.random.Generator) -> tuple[Window, np.ndarray]:
    """A small sharp round bright spot (radius >= 2.6 px at any size); returns (window, pixels before)."""
    fx, fy = _focus(c, f, frng)
    r = max((0.085, 0.115, 0.15)[_SIZE_IDX[f.size]] / c.frame.scale, 2.6 / (c.frame.size / 2.0))
    w = c.frame.window(fx - r, fx + r, fy - r, fy + r, within=c.T)
    before = c.sub[w].copy()
    d2 = ((c.ut[w] - fx) ** 2 + (c.vt[w] - fy) ** 2) * np.float32(1 / (r * r))
    c.sub[w] += frng.uniform(0.36, 0.44) * _soft(1.0 - d2, 3.0)
    return w, before


def _draw_opacity(c: _Chest, f: Finding, frng: np.random.Generator) -> tuple[Window, np.ndarray]:
    """A larger ill-defined blob blended toward soft-tissue density inside the lung."""
    fx, fy = _focus(c, f, frng)
    sig = (0.10, 0.135, 0.17)[_SIZE_IDX[f.size]]
    R = 3.8 * sig
    w = c.frame.window(fx - R, fx + R, fy - R, fy + R, within=c.T)
    before, uw, vw = c.sub[w].copy(), c.ut[w], c.vt[w]
    blob = np.zeros_like(before)
    for ox, oy in frng.uniform(-0.5, 0.5, size=(3, 2)) * sig:
        blob += np.exp(((uw - float(fx + ox)) ** 2 + (vw - float(fy + oy)) ** 2)
                       * np.float32(-0.5 / (sig * sig)))
    amp = np.minimum(blob, 1.0) * c.ells[f.side][w] * np.float32(frng.uniform(0.8, 0.9))
    c.sub[w] += amp * (0.52 - before)
    return w, before


def _draw_effusion(c: _Chest, f: Finding, frng: np.random.Generator) -> tuple[Window, np.ndarray]:
    """Basal fluid with a meniscus rising laterally (costophrenic blunting)."""
    cx = c.lung_cx[f.side]
    depth = (0.27, 0.37, 0.50)[_SIZE_IDX[f.size]] + frng.uniform(-0.02, 0.02)
    level = c.dome_top[f.side] + 0.22 - depth
    w = c.frame.window(cx - _LUNG_AX, cx + _LUNG_AX, level - 0.2, _LUNG_CY + _LUNG_AY, within=c.T)
    before = c.sub[w].copy()
    lat = _soft(c.ut[w] - cx, _lateral(f) / _LUNG_AX)
    fluid = _soft(c.vt[w] - (level - 0.12 * lat * lat), 18.0) * c.ells[f.side][w]
    c.sub[w] += fluid * (0.47 - before) * 0.95
    return w, before


def _draw_pneumothorax(c: _Chest, f: Finding, frng: np.random.Generator) -> tuple[Window, np.ndarray]:
    """Apical/lateral lucency without lung markings beyond a visible bright pleural line."""
    cx, sg = c.lung_cx[f.side], _lateral(f)
    depth = (0.36, 0.48, 0.60)[_SIZE_IDX[f.size]] + frng.uniform(-0.02, 0.02)
    vcut = -0.05 + 0.25 * depth
    w = c.frame.window(cx - _LUNG_AX, cx + _LUNG_AX, _LUNG_CY - _LUNG_AY, vcut + 0.05, within=c.T)
    before, uw, vw = c.sub[w].copy(), c.ut[w], c.vt[w]
    ccx = cx - sg * _LUNG_AX * depth * 0.55
    cax, cay = _LUNG_AX * (1 - 0.55 * depth), _LUNG_AY * (1 - 0.5 * depth)
    cr2 = ((uw - ccx) / cax) ** 2 + ((vw - (_LUNG_CY + _LUNG_AY * depth * 0.5)) / cay) ** 2
    region = c.lungs[f.side][w] * (1.0 - c.heart[w]) * _soft(vcut - vw, 10.0)
    air = region * _soft(cr2 - 1.0, 8.0)
    line = region * _soft(1.0 - np.abs(cr2 - 1.0) * 7.0, 1.0)
    c.sub[w] += air * (0.03 - before) + 0.16 * line
    return w, before


_DRAW_FINDING: dict[str, Callable[[_Chest, Finding, np.random.Generator], tuple[Window, np.ndarray]]] = {
    "nodule": _draw_nodule, "opacity": _draw_opacity, "effusion": _draw_effusion,
    "pneumothorax": _draw_pneumothorax,
}


def _draw_bones(c: _Chest, body: np.ndarray, rng: np.random.Generator) -> None:
    """Overlying bones (ribs, clavicles) and the trachea lucency."""
    ut, vt, aut = c.ut, c.vt, np.abs(c.ut)
    phase = (vt - 0.28 * ut * ut + 0.12 * aut) * 3.3 + rng.uniform(0.0, 1.0)
    ribs = _soft(np.sin(phase * np.float32(2 * np.pi)) - 0.55, 2.2)
    c.sub += 0.07 * ribs * c.lung_all
    clav = np.exp(((vt + 0.74 - 0.22 * aut) * np.float32(1 / 0.035)) ** 2 * -1.0) * (aut < 0.62)
    c.sub += (0.10 * clav - 0.09 * _soft(0.035 - aut, 60.0) * (vt < -0.35)) * body[c.T]


def _expose(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Exposure gradient, noise and a gamma/contrast/brightness LUT: the float image -> (H, W) uint8."""
    gx, gy = rng.uniform(-0.04, 0.04, size=2)
    yy, xx = _grid(img.shape[0])
    img += np.float32(gx) * xx + np.float32(gy) * yy
    img += np.float32(rng.uniform(0.008, 0.03)) * rng.standard_normal(img.shape, dtype=np.float32)
    gamma, contrast = rng.uniform(0.8, 1.25), rng.uniform(0.85, 1.15)
    bright = rng.uniform(-0.05, 0.05)
    lut = np.clip(((np.arange(256) / 255.0) ** gamma * contrast + bright) * 255.0 + 0.5, 0, 255)
    img *= np.float32(255.0 / 0.72)
    img += 0.5
    q = np.minimum(np.maximum(img, 0.0, out=img), 255.0, out=img).astype(np.uint8)
    return lut.astype(np.uint8)[q]
