"""Image-text matching (ITM) with hard negatives drawn from in-batch global similarities."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def sample_hard_negatives(
    similarity: torch.Tensor, forbidden: torch.Tensor, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Draw one negative column per row, with probability softmax(similarity) over allowed columns.

    Args:
        similarity: (B, B) scores (rows: queries, columns: candidates); detached inside.
        forbidden: (B, B) bool, True where a candidate may not be a negative (itself, same text, ...).
        generator: RNG for reproducible sampling.

    Returns:
        (B,) column indices. A row with no allowed column falls back to the next sample (i + 1) % B.
    """
    batch = similarity.shape[0]
    weights = similarity.detach().float().softmax(dim=1)
    # a non-finite similarity (diverged model) must not crash multinomial; the loss reports it instead
    weights = weights.nan_to_num(nan=0.0, posinf=0.0, neginf=0.0).masked_fill(forbidden, 0.0)
    empty = weights.sum(dim=1) <= 0
    weights[empty] = 1.0  # placeholder, replaced below
    picks = torch.multinomial(weights, 1, generator=generator).squeeze(1)
    fallback = (torch.arange(batch, device=similarity.device) + 1) % batch
    return torch.where(empty, fallback, picks)


def itm_loss(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-entropy on matched (1) / unmatched (0) logits (N, 2); returns loss and accuracy."""
    loss = F.cross_entropy(logits.float(), targets)
    accuracy = (logits.detach().argmax(-1) == targets).float().mean()
    return loss, accuracy
