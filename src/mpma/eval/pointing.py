"""Word -> patch maps of a model and the synthrad pointing game (does a finding's word point at its lesion?).

Two maps per text token, both on the patch grid (G, G):

* **GLA-local**: cosine similarity of the token's local-alignment feature with every patch's
  (the diagonal of :func:`mpma.objectives.alignment.token_patch_similarity`), on the unmasked image;
* **fusion attention**: the last fusion layer's head-averaged text -> image attention of the token
  (CLS excluded; with memory the two context halves of each patch are summed by the fusion).

A word's map is the mean of its sub-token maps. The pointing game asks whether the argmax patch
of a finding's word map overlaps the finding's box; chance is the share of patches that overlap
the box (a uniformly random patch), averaged over the mentions. The figures of these maps are
drawn by :mod:`mpma.viz.alignment`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from mpma.data.pairs import grayscale_to_tensor
from mpma.data.synthrad import SYNONYMS, TEST_OFFSET, SynthRad
from mpma.data.text import tokenize

STOPWORDS = frozenset(
    "a an the in on at of is are was were there no not with and or to seen be been this that consistent any "
    "for by as it its which there's".split()
)
LATERAL = ("nodule", "opacity", "effusion", "pneumothorax")  # kinds a report names with a side and a zone
MAP_NAMES = ("local", "attention", "word-agnostic")


# ------------------------------------------------------------------------------ word -> patch maps


@dataclass
class TokenMaps:
    """Per-token patch maps of a batch.

    local: (B, T, G, G) GLA-local cosine similarities, or None when the model has no local head.
    attention: (B, T, G, G) last-layer fusion attention text -> patches.
    grid: G.
    """

    local: torch.Tensor | None
    attention: torch.Tensor
    grid: int


@torch.no_grad()
def token_maps(model, images: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> TokenMaps:
    """Maps for every token of every (image, text) pair; images (B, 3, S, S) unmasked, texts (B, T)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    images, input_ids, attention_mask = images.to(device), input_ids.to(device), attention_mask.to(device)
    vision = model.encode_image(images)
    text = model.encode_text(input_ids, attention_mask)
    grid = vision.grid
    local = None
    if model.align is not None and model.align.local_image is not None:
        patches = F.normalize(model.align.local_image(vision.tokens[:, 1:]), dim=-1)  # (B, K, A)
        tokens = F.normalize(model.align.local_text(text), dim=-1)  # (B, T, A)
        local = torch.einsum("btd,bkd->btk", tokens, patches).float()
        local = local.reshape(*local.shape[:2], grid, grid).cpu()
    fused = model.fuse(text, attention_mask, vision.tokens, return_attention=True)
    attention = fused.attention[..., 1:].float()
    attention = attention.reshape(*attention.shape[:2], grid, grid).cpu()
    model.train(was_training)
    return TokenMaps(local, attention, grid)


def word_tokens(tokenizer, text: str, max_length: int) -> list[tuple[str, list[int], tuple[int, int]]]:
    """(word, token positions, character span) for each word the tokenizer sees in ``text``.

    Positions index the sequence ``tokenize`` builds (with [CLS] first); words cut off by
    truncation are dropped.
    """
    encoded = tokenizer(text, truncation=True, max_length=max_length, return_offsets_mapping=True)
    words: dict[int, list[int]] = {}
    for position, word in enumerate(encoded.word_ids()):
        if word is not None:
            words.setdefault(word, []).append(position)
    out = []
    offsets = encoded["offset_mapping"]
    for positions in words.values():
        start, end = offsets[positions[0]][0], offsets[positions[-1]][1]
        out.append((text[start:end], positions, (start, end)))
    return out


def word_map(maps: torch.Tensor, positions: Sequence[int]) -> np.ndarray:
    """Mean of the (T, G, G) token maps over ``positions`` -> (G, G)."""
    return maps[list(positions)].mean(0).numpy()


# ------------------------------------------------------------------------------ pointing game


def box_patches(box: Sequence[int], grid: int, image_size: int) -> np.ndarray:
    """(G, G) bool: patches whose area overlaps the pixel box ``(y0, x0, y1, x1)`` (y1, x1 exclusive)."""
    y0, x0, y1, x1 = box
    edges = np.arange(grid + 1) * image_size / grid
    rows = (edges[:-1] < y1) & (edges[1:] > y0)
    cols = (edges[:-1] < x1) & (edges[1:] > x0)
    return rows[:, None] & cols[None, :]


def pointing_hit(score_map: np.ndarray, box: Sequence[int], image_size: int) -> bool:
    """Whether the argmax patch of a (G, G) map overlaps the box (ties: the first in row-major order)."""
    grid = score_map.shape[0]
    row, col = np.unravel_index(int(np.argmax(score_map)), score_map.shape)
    return bool(box_patches(box, grid, image_size)[row, col])


@dataclass
class PointingResult:
    """Pointing-game score of a set of maps: ``hits`` of ``n`` argmax patches on their box."""

    hits: int
    n: int
    chance: float  # mean share of patches overlapping the box

    @property
    def hit_rate(self) -> float:
        return self.hits / self.n if self.n else float("nan")

    def to_dict(self) -> dict:
        return {"hit_rate": self.hit_rate, "hits": self.hits, "n": self.n, "chance_rate": self.chance}


def pointing_game(maps: Sequence[np.ndarray], boxes: Sequence[Sequence[int]], image_size: int) -> PointingResult:
    """Hit rate of the argmax of each (G, G) map in its box, and the chance rate of a uniform random patch."""
    if len(maps) != len(boxes):
        raise ValueError(f"{len(maps)} maps but {len(boxes)} boxes")
    hits = sum(pointing_hit(m, b, image_size) for m, b in zip(maps, boxes))
    chance = float(np.mean([box_patches(b, m.shape[0], image_size).mean() for m, b in zip(maps, boxes)])) if maps else 0.0
    return PointingResult(int(hits), len(maps), chance)


def _phrases(kind: str) -> list[str]:
    """The phrases a report may name a finding ``kind`` with, longest first."""
    extra = {"effusion": ["fluid in the pleural space"], "cardiomegaly": ["heart is enlarged"]}
    return sorted({p.removeprefix("the ") for p in (*SYNONYMS[kind], *extra.get(kind, []))}, key=len, reverse=True)


def finding_mentions(case) -> list[tuple[object, tuple[int, int, int, int], tuple[int, int]]]:
    """(finding, box, character span of its kind phrase) for each finding the report names with its location.

    A finding's sentence is the one naming one of its kind's phrases (:data:`SYNONYMS`) and, for the
    lateral kinds, its side; cardiomegaly sentences name no side. The span covers the kind phrase.
    """
    out = []
    sentences = [(m.start(), m.group(0)) for m in re.finditer(r"[^.]+\.?", case.report)]
    for finding, box in zip(case.findings, case.boxes):
        for start, sentence in sentences:
            low = sentence.lower()
            if finding.kind in LATERAL and not re.search(rf"\b{finding.side}\b", low):
                continue
            found = next((p for p in _phrases(finding.kind) if re.search(rf"\b{re.escape(p)}\b", low)), None)
            if found is None or low.lstrip().startswith("no "):
                continue
            m = re.search(rf"\b{re.escape(found)}\b", low)
            out.append((finding, tuple(box), (start + m.start(), start + m.end())))
            break
    return out


def _span_positions(words, span: tuple[int, int]) -> list[int]:
    """Token positions of the non-stop words of ``words`` (:func:`word_tokens`) inside the character span."""
    positions = []
    for word, token_positions, (start, end) in words:
        if start >= span[0] and end <= span[1] and word.lower() not in STOPWORDS:
            positions += token_positions
    return positions


def _mention_rows(loaded, cases, batch_size: int, examples: int) -> tuple[list[dict], list[dict]]:
    """One row per finding mention of ``cases``: its kind, side, box, the case's boxes and its (G, G) maps.

    Returns (rows, the first ``examples`` rows with the case's image, phrase and report added).
    """
    pre = loaded.preprocess
    max_length = int(pre["max_length"])
    rows: list[dict] = []
    kept: list[dict] = []
    for start in range(0, len(cases), batch_size):
        chunk = [c for c in (cases[i] for i in range(start, min(len(cases), start + batch_size))) if c.findings]
        if not chunk:
            continue
        images = torch.stack([grayscale_to_tensor(c.image, int(pre["image_size"]), pre["mean"], pre["std"])
                              for c in chunk])  # (B, 3, S, S)
        batch = tokenize(loaded.tokenizer, [c.report for c in chunk], max_length)
        maps = token_maps(loaded.backbone, images, batch["input_ids"], batch["attention_mask"])
        for b, case in enumerate(chunk):
            words = word_tokens(loaded.tokenizer, case.report, max_length)
            real = [p for _, positions, _ in words for p in positions]
            for finding, box, span in finding_mentions(case):
                positions = _span_positions(words, span)
                if not positions:  # truncated away
                    continue
                row = {"kind": finding.kind, "side": finding.side, "box": box, "all_boxes": case.boxes,
                       "attention": word_map(maps.attention[b], positions)}
                if maps.local is not None:
                    row["local"] = word_map(maps.local[b], positions)
                    row["word-agnostic"] = word_map(maps.local[b], real)
                rows.append(row)
                if len(kept) < examples:
                    kept.append({**row, "image": case.image, "phrase": case.report[span[0]:span[1]],
                                 "report": case.report})
    return rows, kept


def _map_scores(located: list[dict], name: str, size: int, grid: int) -> dict:
    """{hit_rate, hits, n, chance_rate, side_correct, any_lesion} of map ``name`` over the located mentions."""
    game = pointing_game([r[name] for r in located], [r["box"] for r in located], size)
    side = [(np.unravel_index(int(np.argmax(r[name])), r[name].shape)[1] < grid / 2) == (r["side"] == "right")
            for r in located]
    anywhere = [any(pointing_hit(r[name], b, size) for b in r["all_boxes"]) for r in located]
    return {**game.to_dict(), "side_correct": float(np.mean(side)), "any_lesion": float(np.mean(anywhere))}


def _per_kind(rows: list[dict], names: list[str], size: int) -> dict:
    """{kind: {"n", "chance_rate", name: hit_rate, ...}} over every mention (located or not)."""
    out = {}
    for kind in sorted({r["kind"] for r in rows}):
        subset = [r for r in rows if r["kind"] == kind]
        boxes = [r["box"] for r in subset]
        entry = {"n": len(subset), "chance_rate": pointing_game([r["attention"] for r in subset], boxes, size).chance}
        for name in names:
            entry[name] = pointing_game([r[name] for r in subset], boxes, size).hit_rate
        out[kind] = entry
    return out


@torch.no_grad()
def evaluate_pointing(loaded, n: int = 300, batch_size: int = 32, offset: int | None = None,
                      examples: int = 0) -> dict:
    """The pointing game on ``n`` held-out synthrad cases drawn like the model's pre-training data.

    For every finding the report names at a location (nodule, opacity, effusion, pneumothorax:
    side and zone; cardiomegaly, named without one, is reported per kind only), the argmax patch
    of the finding phrase's map must overlap the finding's box. Maps compared: GLA-local, fusion
    attention, and a word-agnostic control (the GLA-local map averaged over every real token of the
    report: if it scores like the word map, the word adds nothing). ``side_correct`` is the share
    of argmax patches in the correct image half (patient right = image left; chance 0.5);
    ``any_lesion`` the share that overlaps the box of *any* finding of the case (a map that finds
    "something abnormal" but not the named finding scores here, not in ``hit_rate``).

    Args:
        loaded: a loaded model (``mpma.hub.PretrainedModel``: backbone, tokenizer, preprocess, config).
        n: cases, from ``offset`` (default: the synthrad test offset, never trained on).
        batch_size: cases per forward pass.
        examples: mentions kept with their image for :func:`mpma.viz.alignment.plot_pointing_examples`.

    Returns:
        {"n_cases", "n_mentions", "image_size", "grid", "chance_rate", "maps": {name: {hit_rate, hits, n,
        chance_rate, side_correct, any_lesion}}, "per_kind": {kind: {"n", "chance_rate", name: hit_rate, ...}},
        "examples": [...]} (no "chance_rate" and empty "maps" when no finding is named with its location).
    """
    size = int(loaded.preprocess["image_size"])
    config = loaded.config
    cases = SynthRad(n, seed=config.data.seed, image_size=size, normal_fraction=config.data.normal_fraction,
                     offset=TEST_OFFSET if offset is None else offset)
    rows, kept = _mention_rows(loaded, cases, batch_size, examples)
    names = [name for name in MAP_NAMES if rows and name in rows[0]]
    located = [r for r in rows if r["kind"] in LATERAL]  # named with a side and zone (cardiomegaly: per kind only)
    result = {"n_cases": len(cases), "n_mentions": len(located), "image_size": size, "grid": None, "maps": {},
              "per_kind": {}, "examples": kept}
    if not located:
        return result
    grid = rows[0]["attention"].shape[0]
    result["grid"] = grid
    result["chance_rate"] = pointing_game([r["attention"] for r in located], [r["box"] for r in located], size).chance
    result["maps"] = {name: _map_scores(located, name, size, grid) for name in names}
    result["per_kind"] = _per_kind(rows, names, size)
    return result
