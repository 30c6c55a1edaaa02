"""Figures of word -> patch maps: one image and text, and pointing-game examples.

The maps (GLA-local similarity, fusion attention) and the pointing game are computed by
:mod:`mpma.eval.pointing`; this module chooses the words, draws the maps over the image and
formats a pointing-game result as a table.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from mpma.eval.pointing import LATERAL, MAP_NAMES, STOPWORDS, pointing_hit, token_maps, word_map, word_tokens
from mpma.viz.common import new_figure, preprocess_images, save_figure, to_pixels, tokenize_texts, wrap

MAP_LABELS = {"local": "GLA-local word->patch similarity", "attention": "fusion cross-attention (last layer)",
              "word-agnostic": "word-agnostic (GLA-local, all tokens)"}
PANEL_INCHES = 2.0
WORDS_PER_ROW = 8


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


def format_pointing(result: dict) -> str:
    """The table of an :func:`mpma.eval.pointing.evaluate_pointing` result (``mpma visualize alignment --eval``)."""
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


def _draw_box(ax, box: Sequence[int], **style) -> None:
    """A dashed green pixel box ``(y0, x0, y1, x1)`` (y1, x1 exclusive) on an image axis."""
    from matplotlib.patches import Rectangle

    y0, x0, y1, x1 = box
    ax.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, edgecolor="lime", linestyle="--",
                           **style))


def _overlay(ax, image: np.ndarray, score_map: np.ndarray, title: str, boxes: Sequence | None = None) -> None:
    """A (G, G) map over the (S, S) image, its argmax patch outlined in white, the boxes in dashed green."""
    from matplotlib.patches import Rectangle

    size = image.shape[0]
    grid = score_map.shape[0]
    ax.imshow(image, cmap="gray", extent=(0, size, size, 0), interpolation="nearest")
    ax.imshow(score_map, cmap="jet", alpha=0.45, extent=(0, size, size, 0), interpolation="bilinear")
    row, col = np.unravel_index(int(np.argmax(score_map)), score_map.shape)
    step = size / grid
    ax.add_patch(Rectangle((col * step, row * step), step, step, fill=False, edgecolor="white", linewidth=1.5))
    for box in boxes or []:
        _draw_box(ax, box, linewidth=1.2)
    ax.set_title(title, fontsize=8)
    ax.set_xticks([])
    ax.set_yticks([])


def word_maps_size(n_kinds: int, n_words: int) -> tuple[float, float]:
    """(width, height) in inches of :func:`plot_word_maps` for ``n_kinds`` map rows and ``n_words`` words."""
    chunks = max(1, math.ceil(n_words / WORDS_PER_ROW))
    cols = 1 + min(WORDS_PER_ROW, max(1, n_words))
    return cols * PANEL_INCHES + 0.3, n_kinds * chunks * (PANEL_INCHES + 0.15) + 1.1


def _plain_image(ax, image: np.ndarray, title: str, boxes: Sequence | None) -> None:
    """The (S, S) or (S, S, 3) image alone, with its ground-truth boxes."""
    ax.imshow(image, cmap="gray", interpolation="nearest")
    for box in boxes or []:
        _draw_box(ax, box, linewidth=1.2)
    ax.set_title(title, fontsize=8)
    ax.set_xticks([])
    ax.set_yticks([])


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
            if not part:  # the group's first row starts with the image (or its head map); continuations: words only
                ax = fig.add_subplot(grid_spec[r, 0])
                head_title, head_map = (first or {}).get(label, ("image", None))
                if head_map is None:
                    _plain_image(ax, image, head_title, boxes)
                else:
                    _overlay(ax, image, head_map, head_title)
                ax.set_ylabel(label, fontsize=8.5)
            for c, index in enumerate(chunk):
                _overlay(fig.add_subplot(grid_spec[r, c + 1]), image, maps[index], f'"{words[index]}"', boxes)
            r += 1
    return save_figure(fig, out)


def _chosen_words(tokenizer, text: str, max_length: int, words: Sequence[str] | None) -> list[tuple[str, list[int]]]:
    """(word, token positions) of the requested ``words`` (default: every content word of ``text``)."""
    if not words:
        chosen = content_words(tokenizer, text, max_length)
        if not chosen:
            raise ValueError(f"no content words in {text!r}; pass --words")
        return chosen
    chosen = []
    all_words = word_tokens(tokenizer, text, max_length)
    for wanted in words:
        positions = [p for word, pos, _ in all_words if word.lower() == wanted.lower() for p in pos]
        if not positions:
            raise ValueError(f"word {wanted!r} is not in the text (words: {', '.join(w for w, _, _ in all_words)})")
        chosen.append((wanted, positions))
    return chosen


def _answers_text(loaded) -> bool:
    """Whether the model's head reads the (image, text) pair (``task.json`` head type ``fused``: VQA, mm_cls)."""
    return bool(loaded.task) and (loaded.task.get("head") or {}).get("type") == "fused"


@torch.no_grad()
def _fused_answer(loaded, pixels: torch.Tensor, batch: dict[str, torch.Tensor]) -> dict:
    """{"answer", "probability"}: the top class of a fused-head model for pixels (1, 3, S, S) and a (1, T) text."""
    device = next(loaded.module.parameters()).device
    logits = loaded.module.predict({"images": pixels.to(device), "input_ids": batch["input_ids"].to(device),
                                    "attention_mask": batch["attention_mask"].to(device)})[0].cpu()  # (classes,)
    probs = logits.softmax(-1) if loaded.task["head"].get("loss") == "ce" else logits.sigmoid()
    index = int(probs.argmax())
    return {"answer": loaded.task["classes"][index], "probability": float(probs[index])}


def alignment_figure(loaded, image, text: str, out: str | Path, words: Sequence[str] | None = None,
                     boxes: Sequence | None = None) -> tuple[Path, dict]:
    """``mpma visualize alignment`` for one image and text (a question for a VQA model).

    Args:
        loaded: a loaded model (backbone, tokenizer, preprocess; ``task`` and ``module`` for a task model).
        image: a path, array or PIL image, or an already normalised (1, 3, S, S) tensor.
        words: the words to map (default: every content word).
        boxes: ground-truth pixel boxes ``(y0, x0, y1, x1)`` drawn on the image.

    Returns the PNG path and {"words": [...], "grid": G, "answer": ... (models whose head reads the pair)}.
    """
    pre = loaded.preprocess
    max_length = int(pre["max_length"])
    pixels = image if isinstance(image, torch.Tensor) else preprocess_images([image], pre)  # (1, 3, S, S)
    batch = tokenize_texts(loaded.tokenizer, [text], max_length)
    maps = token_maps(loaded.backbone, pixels, batch["input_ids"], batch["attention_mask"])
    chosen = _chosen_words(loaded.tokenizer, text, max_length, words)
    labels = [w for w, _ in chosen]
    rows: dict[str, list[np.ndarray]] = {}
    if maps.local is not None:
        rows["GLA-local similarity"] = [word_map(maps.local[0], p) for _, p in chosen]
    rows["fusion attention"] = [word_map(maps.attention[0], p) for _, p in chosen]
    first = {"fusion attention": ("[CLS] (pooled)", maps.attention[0, 0].numpy())}
    info: dict = {"words": labels, "grid": maps.grid}
    title = f'text: "{wrap(text, 110, 2)}"'
    if _answers_text(loaded):  # the [CLS] attention row is what the head's pooled feature reads
        info["answer"] = _fused_answer(loaded, pixels, batch)
        answer = info["answer"]
        title = f'question: "{wrap(text, 110, 2)}"  ->  answer: {answer["answer"]} ({answer["probability"]:.2f})'
    gray = to_pixels(pixels, pre["mean"], pre["std"])[0]
    path = plot_word_maps(gray, labels, rows, out, first, title, boxes)
    return path, info


def plot_pointing_examples(examples: list[dict], out: str | Path, title: str = "") -> Path:
    """A grid of pointing-game mentions: image with box, then each map with its argmax.

    Args:
        examples: the ``"examples"`` of :func:`mpma.eval.pointing.evaluate_pointing`: each with "image"
            (S, S) uint8 or floats in [0, 1], "box", "kind", "side", "phrase", "report" and a (G, G) map per name.
    """
    names = [n for n in MAP_NAMES if examples and n in examples[0]]
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
        _draw_box(ax, ex["box"])
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
