"""Image-text matching (ITM) with hard negatives drawn from in-batch global similarities."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def sample_hard_negatives(
    similarity: torch.Tensor, forbidden: torch.Tensor, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Draw one negative column per row, with probability softmax(similarity) over allowed columns.

    Gumbel-max sampling (argmax of similarity + Gumbel noise), so the draw stays on the scores'
    device with no host round trip; the noise comes from ``generator`` (on any device).

    Args:
        similarity: (B, B) scores (rows: queries, columns: candidates); detached inside. A non-finite
            score (a diverged model) is never drawn; the loss reports the divergence instead.
        forbidden: (B, B) bool, True where a candidate may not be a negative (itself, same text, ...).
        generator: RNG for reproducible sampling.

    Returns:
        (B,) column indices. A row with no allowed column falls back to the next sample (i + 1) % B.
    """
    batch = similarity.shape[0]
    device = similarity.device
    scores = similarity.detach().float()
    allowed = torch.isfinite(scores) & ~forbidden
    uniform = torch.rand(scores.shape, generator=generator,
                         device=generator.device if generator is not None else device).to(device)
    gumbel = -torch.log(-torch.log(uniform.clamp(min=1e-12, max=1 - 1e-7)))  # (B, B)
    keys = torch.where(allowed, scores + gumbel, torch.full_like(scores, float("-inf")))
    picks = keys.argmax(dim=1)
    fallback = (torch.arange(batch, device=device) + 1) % batch
    return torch.where(allowed.any(dim=1), picks, fallback)


def itm_loss(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-entropy on matched (1) / unmatched (0) logits (N, 2); returns loss and accuracy."""
    loss = F.cross_entropy(logits.float(), targets)
    accuracy = (logits.detach().argmax(-1) == targets).float().mean()
    return loss, accuracy
