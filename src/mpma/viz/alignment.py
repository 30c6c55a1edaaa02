"""Word -> patch maps and the synthrad pointing game.

Two maps per text token, both on the patch grid (G, G):

* **GLA-local**: cosine similarity of the token's local-alignment feature with every patch's
  (the diagonal of :func:`mpma.objectives.alignment.token_patch_similarity`), on the unmasked image;
* **fusion attention**: the last fusion layer's head-averaged text -> image attention of the token
  (CLS excluded; with memory the two context halves of each patch are summed by the fusion).

A word's map is the mean of its sub-token maps. The pointing game asks whether the argmax patch
of a finding's word map overlaps the finding's box; chance is the share of patches that overlap
the box (a uniformly random patch), averaged over the mentions.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from mpma.viz.common import new_figure, save_figure, to_pixels, wrap

STOPWORDS = frozenset(
    "a an the in on at of is are was were there no not with and or to seen be been this that consistent any "
    "for by as it its which there's".split()
)
LATERAL = ("nodule", "opacity", "effusion", "pneumothorax")
MAP_LABELS = {"local": "GLA-local word->patch similarity", "attention": "fusion cross-attention (last layer)",
              "word-agnostic": "word-agnostic (GLA-local, all tokens)"}
PANEL_INCHES = 2.0
WORDS_PER_ROW = 8


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


def content_words(tokenizer, text: str, max_length: int) -> list[tuple[str, list[int]]]:
    """Words with letters that are not stop words (first occurrence of each), with their token positions."""
    seen, out = set(), []
    for word, positions, _ in word_tokens(tokenizer, text, max_length):
        key = word.lower()
        if key in STOPWORDS or not re.search(r"[a-z]", key) or key in seen:
            continue
        seen.add(key)
        out.append((word, positions))
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
    from mpma.data.synthrad import SYNONYMS

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
    positions = []
    for word, token_positions, (start, end) in words:
        if start >= span[0] and end <= span[1] and word.lower() not in STOPWORDS:
            positions += token_positions
    return positions


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

    Returns:
        {"n_cases", "n_mentions", "chance_rate", "maps": {name: {hit_rate, hits, n, side_correct, any_lesion}},
         "per_kind": {kind: {"n", "chance_rate", name: hit_rate, ...}}, "examples": [...]} where
        ``examples`` (the first ``examples`` mentions) holds what :func:`plot_pointing_examples` draws.
    """
    from mpma.viz.common import case_tensor, synthrad_cases, tokenize_texts

    model, pre = loaded.backbone, loaded.preprocess
    size, max_length = int(pre["image_size"]), int(pre["max_length"])
    cases = synthrad_cases(loaded.config, n, offset, size)
    rows: list[dict] = []
    kept_examples: list[dict] = []
    for start in range(0, len(cases), batch_size):
        chunk = [cases[i] for i in range(start, min(len(cases), start + batch_size))]
        chunk = [c for c in chunk if c.findings]
        if not chunk:
            continue
        images = torch.stack([case_tensor(c, pre) for c in chunk])
        batch = tokenize_texts(loaded.tokenizer, [c.report for c in chunk], max_length)
        maps = token_maps(model, images, batch["input_ids"], batch["attention_mask"])
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
                if len(kept_examples) < examples:
                    kept_examples.append({**row, "image": case.image, "phrase": case.report[span[0]:span[1]],
                                          "report": case.report})
    names = [name for name in ("local", "attention", "word-agnostic") if rows and name in rows[0]]
    located = [r for r in rows if r["kind"] in LATERAL]  # named with a side and zone (cardiomegaly: per kind only)
    result = {"n_cases": len(cases), "n_mentions": len(located), "image_size": size, "grid": None, "maps": {},
              "per_kind": {}, "examples": kept_examples}
    if not located:
        return result
    boxes = [r["box"] for r in located]
    grid = rows[0]["attention"].shape[0]
    result["grid"] = grid
    result["chance_rate"] = pointing_game([r["attention"] for r in located], boxes, size).chance
    for name in names:
        game = pointing_game([r[name] for r in located], boxes, size)
        side = [(np.unravel_index(int(np.argmax(r[name])), r[name].shape)[1] < grid / 2) == (r["side"] == "right")
                for r in located]
        anywhere = [any(pointing_hit(r[name], b, size) for b in r["all_boxes"]) for r in located]
        result["maps"][name] = {**game.to_dict(), "side_correct": float(np.mean(side)),
                                "any_lesion": float(np.mean(anywhere))}
    for kind in sorted({r["kind"] for r in rows}):
        subset = [r for r in rows if r["kind"] == kind]
        entry = {"n": len(subset), "chance_rate": pointing_game([r["attention"] for r in subset],
                                                                [r["box"] for r in subset], size).chance}
        for name in names:
            entry[name] = pointing_game([r[name] for r in subset], [r["box"] for r in subset], size).hit_rate
        result["per_kind"][kind] = entry
    return result


def format_pointing(result: dict) -> str:
    """The table ``mpma visualize alignment --eval`` prints."""
    if not result["n_mentions"]:
        return f"pointing game: no finding mentions in {result['n_cases']} cases"
    labels = MAP_LABELS
    lines = [f"pointing game on {result['n_cases']} held-out synthrad cases: {result['n_mentions']} findings named "
             f"with their side and zone; {result['grid']}x{result['grid']} patches; hit = argmax patch overlaps the "
             "lesion box",
             f"{'map':<40}{'hit rate':>10}{'hits':>10}{'side ok':>10}{'any box':>10}"]
    for name, entry in result["maps"].items():
        lines.append(f"{labels[name]:<40}{entry['hit_rate']:>10.3f}{entry['hits']:>6}/{entry['n']:<4}"
                     f"{entry['side_correct']:>9.3f}{entry['any_lesion']:>10.3f}")
    lines.append(f"{'uniform random patch (chance)':<40}{result['chance_rate']:>10.3f}{'':>10}{0.5:>10.3f}")
    lines.append("side ok: argmax in the correct image half (patient right = image left); any box: argmax on the box "
                 "of any finding of the case")
    names = list(result["maps"])
    lines += ["", f"{'per kind':<16}{'n':>5}{'chance':>9}" + "".join(f"{n[:12]:>14}" for n in names)]
    for kind, entry in result["per_kind"].items():
        lines.append(f"{kind + ('' if kind in LATERAL else ' *'):<16}{entry['n']:>5}{entry['chance_rate']:>9.3f}"
                     + "".join(f"{entry[n]:>14.3f}" for n in names))
    if any(kind not in LATERAL for kind in result["per_kind"]):
        lines.append("* named without a location: not in the hit rates above")
    return "\n".join(lines)


# ------------------------------------------------------------------------------ figures


def _overlay(ax, image: np.ndarray, score_map: np.ndarray, title: str, boxes: Sequence | None = None) -> None:
    from matplotlib.patches import Rectangle

    size = image.shape[0]
    grid = score_map.shape[0]
    ax.imshow(image, cmap="gray", extent=(0, size, size, 0), interpolation="nearest")
    ax.imshow(score_map, cmap="jet", alpha=0.45, extent=(0, size, size, 0), interpolation="bilinear")
    row, col = np.unravel_index(int(np.argmax(score_map)), score_map.shape)
    step = size / grid
    ax.add_patch(Rectangle((col * step, row * step), step, step, fill=False, edgecolor="white", linewidth=1.5))
    for y0, x0, y1, x1 in boxes or []:
        ax.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, edgecolor="lime", linewidth=1.2,
                               linestyle="--"))
    ax.set_title(title, fontsize=8)
    ax.set_xticks([])
    ax.set_yticks([])


def word_maps_size(n_kinds: int, n_words: int) -> tuple[float, float]:
    """(width, height) in inches of :func:`plot_word_maps` for ``n_kinds`` map rows and ``n_words`` words."""
    chunks = max(1, math.ceil(n_words / WORDS_PER_ROW))
    cols = 1 + min(WORDS_PER_ROW, max(1, n_words))
    return cols * PANEL_INCHES + 0.3, n_kinds * chunks * (PANEL_INCHES + 0.15) + 1.1


def plot_word_maps(image: np.ndarray, words: Sequence[str], rows: dict[str, Sequence[np.ndarray]],
                   out: str | Path, first: dict[str, tuple[str, np.ndarray | None]] | None = None,
                   title: str = "", boxes: Sequence | None = None) -> Path:
    """A grid: one row (group) per map kind, one column per word (at most :data:`WORDS_PER_ROW` a row).

    Args:
        image: (S, S) or (S, S, 3) pixels in [0, 1].
        words: the words, in column order.
        rows: {row label: one (G, G) map per word}.
        first: {row label: (title, map or None)} for the first column (None: the plain image).
        boxes: optional ground-truth boxes drawn on the first column.
    """
    from matplotlib.patches import Rectangle

    chunks = [list(range(i, min(len(words), i + WORDS_PER_ROW))) for i in range(0, max(1, len(words)), WORDS_PER_ROW)]
    n_rows = len(rows) * len(chunks)
    cols = 1 + min(WORDS_PER_ROW, max(1, len(words)))
    width, height = word_maps_size(len(rows), len(words))
    fig = new_figure(width, height)
    fig.suptitle(title, fontsize=10)
    fig.text(0.5, 0.12 / height, "each map colour-scaled on its own (red = highest); white square = argmax "
             "patch" + ("; dashed green = ground-truth box" if boxes else ""), ha="center", fontsize=8)
    grid_spec = fig.add_gridspec(n_rows, cols, left=0.03, right=0.99, bottom=0.35 / height, top=1 - 0.85 / height,
                                 hspace=0.3, wspace=0.08)
    r = 0
    for label, maps in rows.items():
        for part, chunk in enumerate(chunks):
            if part:  # a continuation row: the words only
                for c, index in enumerate(chunk):
                    _overlay(fig.add_subplot(grid_spec[r, c + 1]), image, maps[index], f'"{words[index]}"', boxes)
                r += 1
                continue
            ax = fig.add_subplot(grid_spec[r, 0])
            head_title, head_map = (first or {}).get(label, ("image", None))
            if head_map is None:
                ax.imshow(image, cmap="gray", interpolation="nearest")
                for box in boxes or []:
                    y0, x0, y1, x1 = box
                    ax.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, edgecolor="lime",
                                           linewidth=1.2, linestyle="--"))
                ax.set_title(head_title, fontsize=8)
                ax.set_xticks([])
                ax.set_yticks([])
            else:
                _overlay(ax, image, head_map, head_title)
            ax.set_ylabel(label, fontsize=8.5)
            for c, index in enumerate(chunk):
                _overlay(fig.add_subplot(grid_spec[r, c + 1]), image, maps[index], f'"{words[index]}"', boxes)
            r += 1
    return save_figure(fig, out)


def alignment_figure(loaded, image, text: str, out: str | Path, words: Sequence[str] | None = None,
                     boxes: Sequence | None = None) -> tuple[Path, dict]:
    """``mpma visualize alignment`` for one image and text (a question for a VQA model).

    Returns the PNG path and {"words": [...], "grid": G, "answer": ... (VQA models)}.
    """
    from mpma.viz.common import preprocess_images, tokenize_texts

    pre = loaded.preprocess
    max_length = int(pre["max_length"])
    pixels = image if isinstance(image, torch.Tensor) else preprocess_images([image], pre)
    batch = tokenize_texts(loaded.tokenizer, [text], max_length)
    maps = token_maps(loaded.backbone, pixels, batch["input_ids"], batch["attention_mask"])
    available = content_words(loaded.tokenizer, text, max_length)
    if words:
        chosen = []
        all_words = word_tokens(loaded.tokenizer, text, max_length)
        for wanted in words:
            positions = [p for word, pos, _ in all_words if word.lower() == wanted.lower() for p in pos]
            if not positions:
                raise ValueError(f"word {wanted!r} is not in the text (words: {', '.join(w for w, _, _ in all_words)})")
            chosen.append((wanted, positions))
    else:
        chosen = available
    if not chosen:
        raise ValueError(f"no content words in {text!r}; pass --words")
    labels = [w for w, _ in chosen]
    rows: dict[str, list[np.ndarray]] = {}
    if maps.local is not None:
        rows["GLA-local similarity"] = [word_map(maps.local[0], p) for _, p in chosen]
    rows["fusion attention"] = [word_map(maps.attention[0], p) for _, p in chosen]
    first = {"fusion attention": ("[CLS] (pooled)", maps.attention[0, 0].numpy())}
    info: dict = {"words": labels, "grid": maps.grid}
    kind = "question" if loaded.task and loaded.task.get("task") == "vqa" else "text"
    title = f'{kind}: "{wrap(text, 110, 2)}"'
    if kind == "question":  # the [CLS] attention row is what the VQA head's pooled feature reads
        device = next(loaded.module.parameters()).device
        with torch.no_grad():
            logits = loaded.module.predict({"images": pixels.to(device), "input_ids": batch["input_ids"].to(device),
                                            "attention_mask": batch["attention_mask"].to(device)})[0].cpu()
        probs = logits.softmax(-1) if loaded.task["head"].get("loss") == "ce" else logits.sigmoid()
        index = int(probs.argmax())
        info["answer"] = {"answer": loaded.task["classes"][index], "probability": float(probs[index])}
        title += f"  ->  answer: {info['answer']['answer']} ({info['answer']['probability']:.2f})"
    gray = to_pixels(pixels, pre["mean"], pre["std"])[0]
    path = plot_word_maps(gray, labels, rows, out, first, title, boxes)
    return path, info


def plot_pointing_examples(examples: list[dict], out: str | Path, title: str = "") -> Path:
    """A grid of pointing-game mentions: image with box, then each map with its argmax."""
    from matplotlib.patches import Rectangle

    names = [n for n in ("local", "attention", "word-agnostic") if examples and n in examples[0]]
    labels = {"local": "GLA-local", "attention": "fusion attention", "word-agnostic": "all tokens (GLA-local)"}
    cols = 1 + len(names)
    width, height = cols * PANEL_INCHES + 1.8, max(1, len(examples)) * (PANEL_INCHES + 0.25) + 1.0
    fig = new_figure(width, height)
    fig.suptitle(title or "pointing game examples (dashed green: lesion box; white: argmax patch)", fontsize=10)
    spec = fig.add_gridspec(max(1, len(examples)), cols + 1, left=0.01, right=0.99, bottom=0.01, top=1 - 0.95 / height,
                            width_ratios=[0.9] + [1] * cols, hspace=0.25, wspace=0.06)
    for r, ex in enumerate(examples):
        image = ex["image"] / 255.0 if ex["image"].dtype == np.uint8 else ex["image"]
        hit = {n: pointing_hit(ex[n], ex["box"], image.shape[0]) for n in names}
        text_ax = fig.add_subplot(spec[r, 0])
        text_ax.set_axis_off()
        text_ax.text(0, 0.5, f"{ex['kind']} ({ex['side']})\nphrase: \"{ex['phrase']}\"\n\n{wrap(ex['report'], 26, 6)}",
                     fontsize=6.5, va="center")
        ax = fig.add_subplot(spec[r, 1])
        ax.imshow(image, cmap="gray", interpolation="nearest")
        y0, x0, y1, x1 = ex["box"]
        ax.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, edgecolor="lime", linestyle="--"))
        ax.set_xticks([])
        ax.set_yticks([])
        if r == 0:
            ax.set_title("image", fontsize=8)
        for c, name in enumerate(names):
            ax = fig.add_subplot(spec[r, c + 2])
            _overlay(ax, image, ex[name], (labels[name] + ": " if r == 0 else "") + ("hit" if hit[name] else "miss"),
                     [ex["box"]])
            ax.title.set_color("green" if hit[name] else "red")
    return save_figure(fig, out)
