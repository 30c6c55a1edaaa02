"""Shared pieces of the figures: model inputs, pixel conversion, synthrad cases, saving a figure."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from mpma.data.image import image_to_array, to_tensor
from mpma.data.pairs import grayscale_to_tensor
from mpma.data.synthrad import TEST_OFFSET, SynthRad
from mpma.data.text import tokenize

FIGURE_DPI = 100


def new_figure(width: float, height: float, dpi: int = FIGURE_DPI):
    """A matplotlib Figure on an Agg canvas (object API: no pyplot, no global backend)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=dpi)
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig, out: str | Path) -> Path:
    """Save as PNG at the figure's own size (no tight bbox, so the pixel size is known), atomically."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.stem + ".tmp.png")
    fig.savefig(tmp, dpi=fig.dpi, format="png")
    tmp.replace(out)
    return out


def preprocess_images(images: Sequence, preprocess: dict) -> torch.Tensor:
    """Paths / arrays / PIL images -> (B, 3, S, S) normalised like the model's training images."""
    size, mean, std = int(preprocess["image_size"]), tuple(preprocess["mean"]), tuple(preprocess["std"])
    return torch.stack([to_tensor(image_to_array(image), size, mean, std) for image in images])


def tokenize_texts(tokenizer, texts: Sequence[str], max_length: int) -> dict[str, torch.Tensor]:
    """Texts -> input_ids, attention_mask, special_tokens_mask, word_ids (B, T) (see mpma.data.text.tokenize)."""
    return tokenize(tokenizer, list(texts), max_length)


def to_pixels(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """Normalised (B, C, H, W) -> displayable (B, H, W, 3) floats in [0, 1]."""
    mean_t = torch.tensor(mean, dtype=torch.float32)[:, None, None]
    std_t = torch.tensor(std, dtype=torch.float32)[:, None, None]
    pixels = (images.detach().float().cpu() * std_t + mean_t).clamp(0, 1)
    if pixels.shape[1] == 1:
        pixels = pixels.expand(-1, 3, -1, -1)
    return pixels.permute(0, 2, 3, 1).numpy()


def synthrad_cases(config, n: int, offset: int | None = None, image_size: int | None = None):
    """``n`` synthrad cases drawn like the run's data (seed, normal fraction), at the model's image size.

    ``offset`` defaults to the test offset (never seen in pre-training or fine-tuning).
    """
    return SynthRad(n, seed=config.data.seed, image_size=image_size or config.vision.image_size,
                    normal_fraction=config.data.normal_fraction, offset=TEST_OFFSET if offset is None else offset)


def case_tensor(case, preprocess: dict) -> torch.Tensor:
    """A synthrad case's image -> (3, S, S) normalised tensor."""
    return grayscale_to_tensor(case.image, int(preprocess["image_size"]), preprocess["mean"], preprocess["std"])


def wrap(text: str, width: int = 34, max_lines: int = 6) -> str:
    """``text`` wrapped to ``width`` characters, at most ``max_lines`` lines (the last one cut with "…")."""
    import textwrap

    lines = textwrap.wrap(text, width) or [""]
    if len(lines) > max_lines:
        lines = lines[:max_lines]
        lines[-1] = lines[-1][: width - 1] + "…"
    return "\n".join(lines)
