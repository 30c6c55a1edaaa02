"""Two-stream co-attention fusion with MA-CMF (memory-augmented cross-modal fusion).

Each fusion layer has a text stream and an image stream. Each stream does self-attention,
cross-attention to the other stream and an MLP (pre-norm residual blocks). In layers with memory,
the text stream's cross-attention is memory-augmented:

    readout = Attn(query = visual tokens, keys/values = memory slots)         (B, Nv, D)
    context = [visual tokens ; visual tokens + readout]                       (B, 2 Nv, D)
    text    = text + sigmoid(gate(text)) * CrossAttn(text, context)

so masked-report reconstruction can draw on visual information stored in a learned memory
(the paper's purpose for MA-CMF; the exact form is ours and every piece is configurable).

A caller that needs only some of the fused states says so (``CoAttentionFusion.forward``'s
``text_positions`` and ``token_rows``): the last layer then computes new states only for those
queries, with every token still a key and value, so the states it returns are the ones the full
computation gives. Pre-training needs the fused text only at its masked words and only the pooled CLS
of the ITM negatives: on ``tiny`` that saves 17% of a step's FLOPs (benchmarks/selective_fusion.py).
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


def gather_positions(states: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """states (B, N, D), positions (B, Q) long -> (B, Q, D): ``states[b, positions[b, q]]``."""
    return torch.gather(states, 1, positions.unsqueeze(-1).expand(-1, -1, states.shape[-1]))


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
        query_positions: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """New states of the stream (B, N, D), or (B, Q, D) at ``query_positions``.

        Args:
            x: (B, N, D) the stream's states; x_mask: (B, N) bool, True = real token, or None.
            context: (B, M, D) the other stream; context_mask: (B, M) or None.
            return_weights: also return the cross-attention weights (B, N or Q, M).
            query_positions: (B, Q) long, the positions of ``x`` whose new states are wanted; every
                position is still a key and value of the self-attention. None: all N.
        """
        normed = self.norm_self(x)
        if query_positions is None:
            x = x + self.self_attn(normed, key_padding_mask=x_mask)[0]
        else:
            attended = self.self_attn(gather_positions(normed, query_positions), context=normed, key_padding_mask=x_mask)[0]
            x = gather_positions(x, query_positions) + attended
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
        self, text: torch.Tensor, text_mask: torch.Tensor, image: torch.Tensor, return_weights: bool = False,
        text_positions: torch.Tensor | None = None, image_positions: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """text (B, T, D), text_mask (B, T) bool, image (B, 1+K, D) -> new text, new image, text->image weights.

        ``text_positions`` (B, Q) / ``image_positions`` (B, Q') long: compute only those positions' new
        states, (B, Q, D) / (B, Q', D) (:meth:`StreamLayer.forward`); None: every position.
        """
        if self.memory is not None:
            context = torch.cat([image, image + self.memory(image)], dim=1)
        else:
            context = image
        new_text, weights = self.text_stream(text, text_mask, context, None, return_weights, text_positions)
        new_image, _ = self.image_stream(image, None, text, text_mask, False, image_positions)
        if weights is not None:
            weights = weights[..., : image.shape[1]] + (weights[..., image.shape[1] :] if self.memory else 0)
        return new_text, new_image, weights


@dataclass
class FusionOutput:
    """text: (N, T, D) fused text stream, or (N, Q, D) at the requested ``text_positions``;
    image: (N, 1+K, D) fused image stream; N = B, or the ``token_rows`` requested;
    pooled: (B, 2D) concat of the two streams' pooled CLS, every row; attention: (N, T or Q, 1+K)
    last layer's head-averaged text->image attention when requested, else None."""

    text: torch.Tensor
    image: torch.Tensor
    pooled: torch.Tensor
    attention: torch.Tensor | None = None


class CoAttentionFusion(nn.Module):
    """Projects both modalities to the fusion width, adds modality-type embeddings, runs N layers."""

    # Class-wide: False computes every state and then selects the ones asked for (the reference the
    # tests compare against, and the "full" setting of benchmarks/selective_fusion.py).
    selective_last_layer: bool = True

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
        self, text: torch.Tensor, text_mask: torch.Tensor, image: torch.Tensor, return_attention: bool = False,
        text_positions: torch.Tensor | None = None, token_rows: int | None = None,
    ) -> FusionOutput:
        """Fuse unimodal features.

        Args:
            text: (B, T, Dt) text-encoder states; text_mask: (B, T) 1 for real tokens.
            image: (B, 1+K, Dv) vision-encoder states (CLS first).
            return_attention: keep the last layer's text->image attention (visualisation).
            text_positions: (N, Q) long, the text positions whose fused states are wanted (pre-training:
                the masked words), for the N token rows; the output's text is then (N, Q, D). None: all T.
            token_rows: only the first N rows' fused tokens are wanted; the other B - N rows give their
                pooled feature only (ITM negatives; 0: pooled only, as ITM scoring needs). None: N = B.
                Either argument makes the last layer compute just the states asked for; the results are
                those of the full computation (module docstring).
        """
        key_mask = text_mask.bool()
        t = self.text_proj(text) + self.type_embed[0]
        v = self.image_proj(image) + self.type_embed[1]
        rows = t.shape[0] if token_rows is None else token_rows
        if text_positions is not None and text_positions.shape[0] != rows:
            raise ValueError(f"text_positions has {text_positions.shape[0]} rows; the fusion returns tokens for {rows}")
        selective = (self.selective_last_layer and len(self.layers) > 0
                     and (text_positions is not None or rows < t.shape[0]))
        weights = None
        for i, layer in enumerate(self.layers):
            last = i == len(self.layers) - 1
            if selective and last:
                return self._last_layer_selective(layer, t, key_mask, v, return_attention, text_positions, rows)
            t, v, weights = run_block(layer, t, key_mask, v, return_attention and last, recompute=self.grad_checkpointing)
        t, v = self.text_norm(t), self.image_norm(v)
        pooled = torch.cat([self.text_pool(t[:, 0]), self.image_pool(v[:, 0])], dim=-1)
        t, v = t[:rows], v[:rows]
        if text_positions is not None:  # fusion.depth 0 (nothing to save) or the reference: select
            t = gather_positions(t, text_positions)
        return FusionOutput(t, v, pooled, weights)

    def _last_layer_selective(
        self, layer: FusionLayer, t: torch.Tensor, key_mask: torch.Tensor, v: torch.Tensor, return_attention: bool,
        text_positions: torch.Tensor | None, rows: int,
    ) -> FusionOutput:
        """The last layer for the states asked for only (:meth:`forward`). t (B, T, D), key_mask (B, T),
        v (B, 1+K, D) after the other layers; text_positions (rows, Q) or None."""
        cls_text, cls_image = [], []
        queried = t.shape[1] if text_positions is None else text_positions.shape[1]
        fused_text, fused_image, weights = t.new_zeros(0, queried, t.shape[-1]), v[:0], None
        if rows > 0:
            queries = None  # the CLS (for the pooled feature) and the requested positions
            if text_positions is not None:
                queries = torch.cat([text_positions.new_zeros(rows, 1), text_positions], dim=1)
            fused_text, fused_image, weights = run_block(
                layer, t[:rows], key_mask[:rows], v[:rows], return_attention, queries, None,
                recompute=self.grad_checkpointing)
            fused_text, fused_image = self.text_norm(fused_text), self.image_norm(fused_image)
            cls_text.append(fused_text[:, 0])
            cls_image.append(fused_image[:, 0])
            if text_positions is not None:
                fused_text = fused_text[:, 1:]
                weights = None if weights is None else weights[:, 1:]
        if rows < t.shape[0]:  # pooled only: each stream's CLS
            cls = torch.zeros(t.shape[0] - rows, 1, dtype=torch.long, device=t.device)
            pooled_text, pooled_image, _ = run_block(
                layer, t[rows:], key_mask[rows:], v[rows:], False, cls, cls, recompute=self.grad_checkpointing)
            cls_text.append(self.text_norm(pooled_text[:, 0]))
            cls_image.append(self.image_norm(pooled_image[:, 0]))
        pooled = torch.cat([self.text_pool(torch.cat(cls_text)), self.image_pool(torch.cat(cls_image))], dim=-1)
        return FusionOutput(fused_text, fused_image, pooled, weights)
