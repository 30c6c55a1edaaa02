"""Two-stream co-attention fusion with MA-CMF (memory-augmented cross-modal fusion).

Each fusion layer has a text stream and an image stream. Each stream does self-attention,
cross-attention to the other stream and an MLP (pre-norm residual blocks). In layers with memory,
the text stream's cross-attention is memory-augmented:

    readout = Attn(query = visual tokens, keys/values = memory slots)         (B, Nv, D)
    context = [visual tokens ; visual tokens + readout]                       (B, 2 Nv, D)
    text    = text + sigmoid(gate(text)) * CrossAttn(text, context)

so masked-report reconstruction can draw on visual information stored in a learned memory
(the paper's purpose for MA-CMF; the exact form is ours and every piece is configurable).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from mpma.config import FusionConfig
from mpma.models.layers import MLP, Attention, init_weights, run_block


class MemoryReadout(nn.Module):
    """Visual tokens query a learned memory of ``slots`` x D: (B, Nv, D) -> (B, Nv, D)."""

    def __init__(self, width: int, heads: int, slots: int) -> None:
        super().__init__()
        self.memory = nn.Parameter(torch.randn(1, slots, width) * 0.02)
        self.norm = nn.LayerNorm(width, eps=1e-6)
        self.attn = Attention(width, heads)

    def forward(self, visual: torch.Tensor) -> torch.Tensor:
        memory = self.memory.expand(visual.shape[0], -1, -1)
        return self.attn(self.norm(visual), context=memory)[0]


class StreamLayer(nn.Module):
    """One stream of a fusion layer: self-attention, (gated) cross-attention, MLP. Shapes (B, N, D)."""

    def __init__(self, width: int, heads: int, mlp_ratio: float, gated: bool) -> None:
        super().__init__()
        self.norm_self = nn.LayerNorm(width, eps=1e-6)
        self.self_attn = Attention(width, heads)
        self.norm_cross = nn.LayerNorm(width, eps=1e-6)
        self.norm_context = nn.LayerNorm(width, eps=1e-6)
        self.cross_attn = Attention(width, heads)
        self.gate = nn.Linear(width, width) if gated else None
        self.norm_mlp = nn.LayerNorm(width, eps=1e-6)
        self.mlp = MLP(width, mlp_ratio)

    def forward(
        self,
        x: torch.Tensor,
        x_mask: torch.Tensor | None,
        context: torch.Tensor,
        context_mask: torch.Tensor | None,
        return_weights: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Args: x (B, N, D), x_mask (B, N) bool or None, context (B, M, D), context_mask (B, M) or None."""
        x = x + self.self_attn(self.norm_self(x), key_padding_mask=x_mask)[0]
        h = self.norm_cross(x)
        cross, weights = self.cross_attn(
            h, self.norm_context(context), key_padding_mask=context_mask, return_weights=return_weights
        )
        if self.gate is not None:
            cross = torch.sigmoid(self.gate(h)) * cross
        x = x + cross
        return x + self.mlp(self.norm_mlp(x)), weights


class FusionLayer(nn.Module):
    """Text and image streams updated in parallel from the previous layer's states."""

    def __init__(self, width: int, heads: int, mlp_ratio: float, memory_slots: int) -> None:
        super().__init__()
        self.memory = MemoryReadout(width, heads, memory_slots) if memory_slots > 0 else None
        self.text_stream = StreamLayer(width, heads, mlp_ratio, gated=self.memory is not None)
        self.image_stream = StreamLayer(width, heads, mlp_ratio, gated=False)

    def forward(
        self, text: torch.Tensor, text_mask: torch.Tensor, image: torch.Tensor, return_weights: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """text (B, T, D), text_mask (B, T) bool, image (B, 1+K, D) -> new text, new image, text->image weights."""
        if self.memory is not None:
            context = torch.cat([image, image + self.memory(image)], dim=1)
        else:
            context = image
        new_text, weights = self.text_stream(text, text_mask, context, None, return_weights)
        new_image, _ = self.image_stream(image, None, text, text_mask)
        if weights is not None:
            weights = weights[..., : image.shape[1]] + (weights[..., image.shape[1] :] if self.memory else 0)
        return new_text, new_image, weights


@dataclass
class FusionOutput:
    """text: (B, T, D) fused text stream; image: (B, 1+K, D) fused image stream;
    pooled: (B, 2D) concat of the two streams' pooled CLS; attention: (B, T, 1+K) last layer's
    head-averaged text->image attention when requested, else None."""

    text: torch.Tensor
    image: torch.Tensor
    pooled: torch.Tensor
    attention: torch.Tensor | None = None


class CoAttentionFusion(nn.Module):
    """Projects both modalities to the fusion width, adds modality-type embeddings, runs N layers."""

    def __init__(self, config: FusionConfig, text_width: int, image_width: int) -> None:
        super().__init__()
        self.config = config
        width = config.width
        memory_layers = set(range(config.depth)) if config.memory_layers is None else set(config.memory_layers)
        bad = sorted(i for i in memory_layers if not 0 <= i < config.depth)
        if bad:
            raise ValueError(f"fusion.memory_layers {bad} outside 0..{config.depth - 1}")
        self.text_proj = nn.Linear(text_width, width)
        self.image_proj = nn.Linear(image_width, width)
        self.type_embed = nn.Parameter(torch.zeros(2, width))
        self.layers = nn.ModuleList(
            FusionLayer(width, config.heads, config.mlp_ratio, config.memory_slots if i in memory_layers else 0)
            for i in range(config.depth)
        )
        self.text_norm = nn.LayerNorm(width, eps=1e-6)
        self.image_norm = nn.LayerNorm(width, eps=1e-6)
        self.text_pool = nn.Sequential(nn.Linear(width, width), nn.Tanh())
        self.image_pool = nn.Sequential(nn.Linear(width, width), nn.Tanh())
        self.grad_checkpointing = False  # set_grad_checkpointing: recompute each layer's activations
        self.apply(init_weights)
        nn.init.trunc_normal_(self.type_embed, std=0.02)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Activation checkpointing per fusion layer (see :func:`mpma.models.layers.run_block`)."""
        self.grad_checkpointing = enable

    def forward(
        self, text: torch.Tensor, text_mask: torch.Tensor, image: torch.Tensor, return_attention: bool = False
    ) -> FusionOutput:
        """Fuse unimodal features.

        Args:
            text: (B, T, Dt) text-encoder states; text_mask: (B, T) 1 for real tokens.
            image: (B, 1+K, Dv) vision-encoder states (CLS first).
            return_attention: keep the last layer's text->image attention (visualisation).
        """
        key_mask = text_mask.bool()
        t = self.text_proj(text) + self.type_embed[0]
        v = self.image_proj(image) + self.type_embed[1]
        weights = None
        for i, layer in enumerate(self.layers):
            last = i == len(self.layers) - 1
            t, v, weights = run_block(layer, t, key_mask, v, return_attention and last, recompute=self.grad_checkpointing)
        t, v = self.text_norm(t), self.image_norm(v)
        pooled = torch.cat([self.text_pool(t[:, 0]), self.image_pool(v[:, 0])], dim=-1)
        return FusionOutput(t, v, pooled, weights)
