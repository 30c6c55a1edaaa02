"""Pre-training heads: MLM, ITM, the MAE-style pixel decoder and the GLA projections."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from mpma.config import DecoderConfig
from mpma.models.layers import Block, init_weights
from mpma.models.vision import resize_position_embedding, sincos_position_embedding


class MLMHead(nn.Module):
    """Dense + GELU + LayerNorm + vocabulary projection: (..., D) -> (..., V)."""

    def __init__(self, width: int, vocab_size: int) -> None:
        super().__init__()
        self.dense = nn.Linear(width, width)
        self.norm = nn.LayerNorm(width, eps=1e-6)
        self.decoder = nn.Linear(width, vocab_size)
        self.apply(init_weights)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.norm(F.gelu(self.dense(x))))


class ClassifierHead(nn.Module):
    """MLP on a pooled feature: (B, Din) -> (B, classes). Used for ITM (2 classes) and task heads."""

    def __init__(self, in_width: int, classes: int, hidden: int | None = None) -> None:
        super().__init__()
        hidden = hidden or in_width
        self.net = nn.Sequential(nn.Linear(in_width, hidden), nn.LayerNorm(hidden, eps=1e-6), nn.GELU(),
                                 nn.Linear(hidden, classes))
        self.apply(init_weights)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class MIMDecoder(nn.Module):
    """MAE decoder: fused visible tokens + mask tokens -> per-patch pixels.

    Args:
        in_width: width of the fused image stream.
        n_patches: patches per image at the configured size (position table size).
        patch_pixels: P*P*C values predicted per patch.
    """

    def __init__(self, config: DecoderConfig, in_width: int, n_patches: int, patch_pixels: int) -> None:
        super().__init__()
        self.embed = nn.Linear(in_width, config.width)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, config.width))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + n_patches, config.width))
        self.blocks = nn.ModuleList(Block(config.width, config.heads) for _ in range(config.depth))
        self.norm = nn.LayerNorm(config.width, eps=1e-6)
        self.pred = nn.Linear(config.width, patch_pixels)
        with torch.no_grad():
            self.pos_embed.copy_(sincos_position_embedding(int(math.isqrt(n_patches)), config.width))
        nn.init.normal_(self.mask_token, std=0.02)
        self.apply(init_weights)

    def forward(self, tokens: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        """Args: tokens (B, 1+K, Din) with CLS first; ids_restore (B, N). Returns (B, N, P*P*C)."""
        x = self.embed(tokens)
        batch, n_patches = ids_restore.shape
        n_masked = n_patches - (x.shape[1] - 1)
        patches = torch.cat([x[:, 1:], self.mask_token.expand(batch, n_masked, -1)], dim=1)
        patches = torch.gather(patches, 1, ids_restore[..., None].expand(-1, -1, x.shape[-1]))
        x = torch.cat([x[:, :1], patches], dim=1)
        x = x + resize_position_embedding(self.pos_embed, int(math.isqrt(n_patches)))
        for block in self.blocks:
            x = block(x)
        return self.pred(self.norm(x))[:, 1:]


class AlignmentHeads(nn.Module):
    """GLA projections into the shared embedding space and the learnable InfoNCE temperature.

    ``global_*`` map a pooled unimodal feature (B, D) to (B, A); ``local_*`` map token features
    (B, N, D) to (B, N, A). Parts whose loss is off are not built (None). All outputs are L2-normalised by the caller's objective.
    """

    def __init__(self, image_width: int, text_width: int, dim: int, temperature: float, local: bool,
                 global_: bool = True) -> None:
        super().__init__()
        self.global_image = nn.Linear(image_width, dim, bias=False) if global_ else None
        self.global_text = nn.Linear(text_width, dim, bias=False) if global_ else None
        self.local_image = nn.Linear(image_width, dim, bias=False) if local else None
        self.local_text = nn.Linear(text_width, dim, bias=False) if local else None
        self.log_inv_temperature = nn.Parameter(torch.tensor(math.log(1.0 / temperature)))
        self.apply(init_weights)

    def logit_scale(self) -> torch.Tensor:
        """exp(log 1/T), clamped at 100 as in CLIP."""
        return self.log_inv_temperature.clamp(max=math.log(100.0)).exp()
