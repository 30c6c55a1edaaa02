"""GLA: global (InfoNCE on pooled embeddings) and local (token<->patch late interaction) alignment."""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F


def gather_with_grad(x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """All-gather (B, ...) from every rank into (W*B, ...) keeping the gradient of the local part.

    Returns the gathered tensor and the offset of this rank's rows in it. Without an initialised
    process group (or with one rank) it returns ``x`` and 0.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x, 0
    from torch.distributed.nn.functional import all_gather

    parts = all_gather(x)  # autograd-aware: gradients flow back to each rank's own slice
    return torch.cat(parts, dim=0), dist.get_rank() * x.shape[0]


def info_nce(logits: torch.Tensor, offset: int = 0) -> torch.Tensor:
    """Cross-entropy of each row against its positive column in a (B, W*B) logit block.

    Args:
        logits: (B, C) local rows (images) against all gathered columns (texts), where the positive
            of row i is column offset + i.
    """
    targets = torch.arange(logits.shape[0], device=logits.device) + offset
    return F.cross_entropy(logits.float(), targets)


def global_alignment_loss(
    image_embed: torch.Tensor, text_embed: torch.Tensor, logit_scale: torch.Tensor
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Symmetric InfoNCE with negatives gathered from every rank.

    Args:
        image_embed: (B, A) L2-normalised image embeddings of this rank.
        text_embed: (B, A) L2-normalised text embeddings of this rank.
        logit_scale: scalar 1/temperature.

    Returns:
        loss and metrics {"i2t_acc": in-batch top-1 accuracy image->text, "temperature"}.
    """
    all_text, offset = gather_with_grad(text_embed)
    all_image, _ = gather_with_grad(image_embed)
    logits_i2t = logit_scale * image_embed @ all_text.t()  # (B, W*B)
    logits_t2i = logit_scale * text_embed @ all_image.t()
    loss = 0.5 * (info_nce(logits_i2t, offset) + info_nce(logits_t2i, offset))
    targets = torch.arange(image_embed.shape[0], device=image_embed.device) + offset
    accuracy = (logits_i2t.detach().argmax(-1) == targets).float().mean()
    return loss, {"i2t_acc": accuracy, "temperature": 1.0 / logit_scale.detach()}


def token_patch_similarity(text_local: torch.Tensor, image_local: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of every token of every text with every patch of every image.

    Args:
        text_local: (Bt, T, A) normalised token features.
        image_local: (Bi, K, A) normalised patch features.

    Returns:
        (Bt, Bi, T, K).
    """
    return torch.einsum("itd,jkd->ijtk", text_local, image_local)


def late_interaction_scores(
    text_local: torch.Tensor, image_local: torch.Tensor, text_valid: torch.Tensor,
    patch_to_token_weight: float = 0.5,
) -> torch.Tensor:
    """FILIP-style pair scores: mean over tokens of their best patch, and over patches of their best token.

    Args:
        text_local: (Bt, T, A) normalised token features.
        image_local: (Bi, K, A) normalised patch features (visible patches only).
        text_valid: (Bt, T) 1 for tokens that take part (real, non-special, unmasked).
        patch_to_token_weight: w in ``(1 - w) * token->patch + w * patch->token``; 0.5 is FILIP's
            symmetric score. The patch->token term asks *every* patch, background included, to
            match a word of its own text; 0 leaves only each word's best patch.

    Returns:
        (Bt, Bi) scores in [-1, 1].
    """
    sim = token_patch_similarity(text_local, image_local)  # (Bt, Bi, T, K)
    valid = text_valid.bool()[:, None, :]  # (Bt, 1, T)
    weights = valid.to(sim.dtype)
    token_to_patch = sim.max(dim=-1).values  # (Bt, Bi, T)
    t2p = (token_to_patch * weights).sum(-1) / weights.sum(-1).clamp(min=1.0)
    if patch_to_token_weight == 0:
        return t2p
    masked = sim.masked_fill(~valid[..., None], torch.finfo(sim.dtype).min)
    patch_to_token = masked.max(dim=-2).values  # (Bt, Bi, K)
    has_token = valid.any(-1, keepdim=True).to(sim.dtype)
    p2t = patch_to_token.mean(-1) * has_token.squeeze(-1)
    return (1 - patch_to_token_weight) * t2p + patch_to_token_weight * p2t


def local_alignment_loss(
    text_local: torch.Tensor, image_local: torch.Tensor, text_valid: torch.Tensor, logit_scale: torch.Tensor,
    patch_to_token_weight: float = 0.5,
) -> torch.Tensor:
    """Cross-batch symmetric InfoNCE on late-interaction scores (this rank's batch only).

    Shapes and ``patch_to_token_weight`` as :func:`late_interaction_scores`; Bt == Bi == B, the
    positive of text i is image i.
    """
    scores = late_interaction_scores(text_local, image_local, text_valid, patch_to_token_weight)  # (B, B)
    logits = logit_scale * scores
    return 0.5 * (info_nce(logits) + info_nce(logits.t()))
