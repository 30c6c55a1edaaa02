"""MAE reconstructions: original, masked input, decoder output, and the output pasted into the visible patches.

The model runs exactly as in pre-training: the ViT encodes the visible patches, the text encoder the
(unmasked) report, the fusion mixes them and the MIM decoder predicts every patch. With
``objectives.norm_pix_loss`` the decoder predicts per-patch-normalised pixels; to display them each
predicted patch is mapped back with the mean and standard deviation of the true patch (as the MAE
demo does), so the picture shows the predicted *structure* inside each masked patch, not its
brightness. A grayscale input (every channel equal) is shown in gray: the decoder predicts three
channels, and their small disagreements would otherwise show up as colour tints.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mpma.models.vision import patchify, unpatchify
from mpma.objectives.reconstruction import mim_target
from mpma.viz.common import new_figure, preprocess_images, save_figure, to_pixels, tokenize_texts, wrap

PANEL_INCHES = 2.2
COLUMNS = ("original", "masked input", "reconstruction", "reconstruction + visible")


@dataclass
class Reconstruction:
    """Pixels (B, H, W, 3) in [0, 1] for each column, the mask (B, N) (1 = masked) and the
    per-image MIM loss on the masked patches (the pre-training objective, in its own units)."""

    original: np.ndarray
    masked: np.ndarray
    reconstruction: np.ndarray
    pasted: np.ndarray
    mask: np.ndarray
    masked_loss: np.ndarray
    mask_ratio: float


@torch.no_grad()
def reconstruct(model, images: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                mean: Sequence[float], std: Sequence[float], mask_ratio: float | None = None,
                generator: torch.Generator | None = None) -> Reconstruction:
    """Mask, encode, fuse and decode a batch.

    Args:
        model: an MPMAModel with a MIM decoder (a pre-training run or a model exported from one).
        images: (B, 3, S, S) normalised images.
        input_ids, attention_mask: (B, T) the paired texts (an empty text is [CLS] [SEP]).
        mean, std: the normalisation of ``images`` (to display pixels).
        mask_ratio: share of patches hidden (default: the model's ``vision.mask_ratio``).
        generator: CPU RNG for the mask (``torch.Generator().manual_seed(N)`` for a fixed mask).
    """
    if model.mim_decoder is None:
        raise ValueError("this model has no MIM decoder (fine-tuned models and objectives.mim=0 runs drop it); "
                         "pass a pre-training run folder or a model exported from one")
    ratio = model.config.vision.mask_ratio if mask_ratio is None else mask_ratio
    if not 0 < ratio < 1:
        raise ValueError(f"mask ratio must be in (0, 1), got {ratio}")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    images = images.to(device)
    if generator is not None and device.type != "cpu":
        generator = torch.Generator(device).manual_seed(generator.initial_seed())
    vision = model.encode_image(images, ratio, generator)
    text = model.encode_text(input_ids.to(device), attention_mask.to(device))
    fused = model.fuse(text, attention_mask.to(device), vision.tokens)
    pred = model.mim_decoder(fused.image, vision.ids_restore).float()  # (B, N, P*P*C)
    model.train(was_training)
    p, channels = model.config.vision.patch_size, images.shape[1]
    target = patchify(images.float(), p)
    mask = vision.mask.float()  # (B, N)
    normalize = model.config.objectives.norm_pix_loss
    goal = mim_target(images.float(), p, normalize)
    loss = (((pred - goal) ** 2).mean(-1) * mask).sum(1) / mask.sum(1).clamp(min=1)
    if normalize:
        pred = pred * (target.var(-1, keepdim=True) + 1e-6) ** 0.5 + target.mean(-1, keepdim=True)
    keep = mask[..., None]
    gray = torch.tensor([(0.5 - m) / s for m, s in zip(mean, std)], device=device).repeat(p * p)
    masked_patches = target * (1 - keep) + gray * keep
    pasted = target * (1 - keep) + pred * keep
    pixels = [to_pixels(unpatchify(x, p, channels), mean, std) for x in (target, masked_patches, pred, pasted)]
    if np.abs(pixels[0] - pixels[0][..., :1]).max() < 2e-3:  # a grayscale input: show gray, not colour-noise tints
        pixels = [np.repeat(x.mean(-1, keepdims=True), 3, axis=-1) for x in pixels]
    return Reconstruction(*pixels, mask.cpu().numpy(), loss.cpu().numpy(), ratio)


def figure_size(rows: int) -> tuple[float, float]:
    """(width, height) in inches: a text column plus the four image columns; a title band."""
    return (len(COLUMNS) + 1.0) * PANEL_INCHES, rows * PANEL_INCHES + 0.6


def plot_reconstructions(result: Reconstruction, texts: Sequence[str], out: str | Path,
                         names: Sequence[str] | None = None, title: str | None = None) -> Path:
    """One row per image: its text (and the masked-patch loss) and the four columns of :data:`COLUMNS`."""
    rows = len(result.original)
    width, height = figure_size(rows)
    fig = new_figure(width, height)
    text_width = 1.0 * PANEL_INCHES / width
    fig.suptitle(title or f"MIM reconstructions, {result.mask_ratio:.0%} of patches masked", fontsize=11)
    top = 1 - 0.6 / height
    row_h = (top - 0.01) / rows
    col_w = (1 - text_width - 0.01) / len(COLUMNS)
    for r in range(rows):
        y = top - (r + 1) * row_h
        label = (names[r] + "\n" if names else "") + f'"{wrap(texts[r] or "(no text)", 30, 7)}"'
        label += f"\n\nmasked-patch loss {result.masked_loss[r]:.3f}"
        fig.text(0.01, y + row_h / 2, label, fontsize=7, va="center", ha="left", family="sans-serif")
        for c, (column, pixels) in enumerate(zip(COLUMNS, (result.original, result.masked, result.reconstruction,
                                                           result.pasted))):
            ax = fig.add_axes((text_width + c * col_w + 0.005, y + 0.01, col_w - 0.01, row_h - 0.035))
            ax.imshow(pixels[r], interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(column, fontsize=9)
    return save_figure(fig, out)


def reconstruct_files(loaded, images: Sequence, texts: Sequence[str], out: str | Path, mask_ratio: float | None = None,
                      mask_seed: int = 0, names: Sequence[str] | None = None, title: str | None = None) -> Path:
    """Load, reconstruct and draw (the ``mpma visualize reconstruct`` path).

    Args:
        loaded: a :class:`mpma.hub.PretrainedModel` (its backbone needs the MIM decoder).
        images: paths, arrays or PIL images; or an already normalised (B, 3, S, S) tensor.
        texts: one text per image ("" for none).
        mask_seed: seed of the random patch mask (same seed, same mask).
    """
    if len(texts) != len(images):
        raise ValueError(f"{len(images)} images but {len(texts)} texts")
    pre = loaded.preprocess
    pixels = images if isinstance(images, torch.Tensor) else preprocess_images(images, pre)
    batch = tokenize_texts(loaded.tokenizer, texts, int(pre["max_length"]))
    generator = torch.Generator().manual_seed(mask_seed)
    result = reconstruct(loaded.backbone, pixels, batch["input_ids"], batch["attention_mask"], pre["mean"], pre["std"],
                         mask_ratio, generator)
    return plot_reconstructions(result, texts, out, names, title)
