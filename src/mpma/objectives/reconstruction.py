"""Masked reconstruction objectives: MLM on the fused text stream, MIM on the fused image stream."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mpma.models.vision import patchify


def mlm_loss(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-entropy on the masked tokens.

    Args:
        logits: (M, V) logits at the masked positions.
        labels: (M,) original token ids at those positions.

    Returns:
        loss (scalar) and token accuracy (scalar, no grad). With M == 0 the loss is a zero that
        still depends on ``logits`` (so every rank runs the same backward graph).
    """
    if labels.numel() == 0:
        return logits.sum() * 0.0, logits.new_zeros(())
    loss = F.cross_entropy(logits.float(), labels)
    accuracy = (logits.detach().argmax(-1) == labels).float().mean()
    return loss, accuracy


def mim_target(images: torch.Tensor, patch_size: int, normalize: bool) -> torch.Tensor:
    """Per-patch pixel targets (B, N, P*P*C); normalised per patch (mean 0, var 1) if requested."""
    target = patchify(images, patch_size)
    if normalize:
        mean = target.mean(dim=-1, keepdim=True)
        var = target.var(dim=-1, keepdim=True)
        target = (target - mean) / (var + 1e-6) ** 0.5
    return target


def mim_loss(
    pred: torch.Tensor, images: torch.Tensor, mask: torch.Tensor, patch_size: int, normalize: bool = True
) -> torch.Tensor:
    """Mean squared error over the masked patches only.

    Args:
        pred: (B, N, P*P*C) decoder output.
        images: (B, C, H, W) the unmasked input images.
        mask: (B, N) 1 = masked (loss counted), 0 = visible.
    """
    target = mim_target(images, patch_size, normalize)
    per_patch = ((pred.float() - target) ** 2).mean(dim=-1)
    return (per_patch * mask).sum() / mask.sum().clamp(min=1.0)
