"""Transformer building blocks shared by the vision encoder, the fusion and the decoder."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint


def run_block(block: nn.Module, *inputs, recompute: bool = False):
    """``block(*inputs)``; with ``recompute`` (activation checkpointing, in training with gradients on)
    the block keeps only its inputs and recomputes its activations in the backward pass: less memory
    for about one more forward of the block. torch's RNG state is replayed, so dropout and stochastic
    depth draw the same numbers both times."""
    if recompute and block.training and torch.is_grad_enabled():
        return checkpoint(block, *inputs, use_reentrant=False)
    return block(*inputs)


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """``F.scaled_dot_product_attention(q, k, v, attn_mask=mask)``, in fp32 for bf16 inputs on a CPU.

    torch's CPU flash attention is slower in bf16 than in fp32 at this model's sequence lengths
    (forward + backward, 1 thread, AMX host: 4.6x at (64, 4, 65, 32), 2.8x at (32, 8, 80, 64), 1.3x at
    (8, 12, 197, 64); benchmarks/README.md, "bf16 on CPU"), so under CPU bf16 autocast the attention
    itself runs in fp32 on upcast q, k, v (:func:`upcasts_cpu_attention`); the projections around it
    stay bf16 matmuls.

    Args:
        q: (B, H, Nq, Dh); k, v: (B, H, Nk, Dh).
        mask: (B, 1, 1, Nk) bool, True = attend; or None.

    Returns:
        (B, H, Nq, Dh) in q's dtype.
    """
    if upcasts_cpu_attention(q):
        with torch.autocast("cpu", enabled=False):
            return F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=mask).to(q.dtype)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


def upcasts_cpu_attention(query: torch.Tensor) -> bool:
    """Whether attention on ``query`` runs in fp32: bf16 on a CPU, unless ``Attention.fp32_attention_on_cpu``
    is switched off (the one switch for the image side, the fusion and the text encoder)."""
    return Attention.fp32_attention_on_cpu and query.device.type == "cpu" and query.dtype == torch.bfloat16


class Attention(nn.Module):
    """Multi-head attention (self- or cross-) on ``F.scaled_dot_product_attention`` (:func:`attend`).

    Args:
        width: model width D.
        heads: number of heads; D must be divisible by it.
        kv_width: width of the key/value input (defaults to ``width``).
    """

    # Class-wide: False keeps CPU bf16 attention in bf16 (benchmarks/bf16_step.py times both).
    fp32_attention_on_cpu: bool = True

    def __init__(self, width: int, heads: int, kv_width: int | None = None) -> None:
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} is not divisible by heads {heads}")
        self.heads = heads
        self.q = nn.Linear(width, width)
        self.kv = nn.Linear(kv_width or width, 2 * width)
        self.proj = nn.Linear(width, width)

    def forward(
        self,
        x: torch.Tensor,
        context: torch.Tensor | None = None,
        key_padding_mask: torch.Tensor | None = None,
        return_weights: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Attend from ``x`` to ``context`` (or to ``x`` itself).

        Args:
            x: queries (B, Nq, D).
            context: keys/values (B, Nk, Dk); None for self-attention.
            key_padding_mask: (B, Nk) bool, True where the key is a real token (attend), False = padding.
            return_weights: also return the head-averaged attention weights (B, Nq, Nk).

        Returns:
            output (B, Nq, D) and the weights or None.
        """
        context = x if context is None else context
        batch, n_query, width = x.shape
        n_key = context.shape[1]
        head_dim = width // self.heads
        q = self.q(x).view(batch, n_query, self.heads, head_dim).transpose(1, 2)
        k, v = self.kv(context).view(batch, n_key, 2, self.heads, head_dim).permute(2, 0, 3, 1, 4)
        mask = None
        if key_padding_mask is not None:
            mask = key_padding_mask[:, None, None, :]  # (B, 1, 1, Nk), True = attend
        if return_weights:
            scores = (q @ k.transpose(-2, -1)) * head_dim**-0.5
            if mask is not None:
                scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
            weights = scores.softmax(dim=-1)
            out = weights @ v
            averaged = weights.mean(dim=1)
        else:
            out = attend(q, k, v, mask)
            averaged = None
        out = out.transpose(1, 2).reshape(batch, n_query, width)
        return self.proj(out), averaged


def quick_gelu(x: torch.Tensor) -> torch.Tensor:
    """OpenAI CLIP's GELU approximation x * sigmoid(1.702 x)."""
    return x * torch.sigmoid(1.702 * x)


ACTIVATIONS = {"gelu": F.gelu, "quick_gelu": quick_gelu}


class MLP(nn.Module):
    """Two-layer MLP, GELU (or CLIP's quick GELU): (..., D) -> (..., D)."""

    def __init__(self, width: int, ratio: float = 4.0, activation: str = "gelu") -> None:
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
        hidden = int(width * ratio)
        self.fc1 = nn.Linear(width, hidden)
        self.fc2 = nn.Linear(hidden, width)
        self.act = ACTIVATIONS[activation]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


def drop_path(x: torch.Tensor, rate: float, training: bool) -> torch.Tensor:
    """Stochastic depth: zero a residual branch ``x`` (B, ...) for whole samples, scale the kept ones.

    Each sample's branch is kept with probability ``1 - rate`` (a Bernoulli draw from torch's RNG,
    so ``torch.manual_seed`` makes it reproducible) and divided by ``1 - rate`` so its expectation
    is unchanged. With ``rate == 0`` or outside training, ``x`` itself is returned and no random
    number is drawn.
    """
    if rate == 0.0 or not training:
        return x
    keep = 1.0 - rate
    mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
    return x * mask.div_(keep)


class DropPath(nn.Module):
    """:func:`drop_path` as a module (active in ``train()`` mode only)."""

    def __init__(self, rate: float) -> None:
        super().__init__()
        if not 0.0 <= rate < 1.0:
            raise ValueError(f"drop-path rate must be in [0, 1), got {rate}")
        self.rate = rate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return drop_path(x, self.rate, self.training)

    def extra_repr(self) -> str:
        return f"rate={self.rate:g}"


class Block(nn.Module):
    """Pre-norm transformer block: x + SelfAttn(LN(x)); x + MLP(LN(x)). Shapes (B, N, D).

    With ``drop_path`` > 0, each residual branch is dropped per sample in training (stochastic
    depth, see :func:`drop_path`); with 0 (the default) the block has no DropPath module at all.
    """

    def __init__(self, width: int, heads: int, mlp_ratio: float = 4.0, activation: str = "gelu",
                 eps: float = 1e-6, drop_path: float = 0.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(width, eps=eps)
        self.attn = Attention(width, heads)
        self.norm2 = nn.LayerNorm(width, eps=eps)
        self.mlp = MLP(width, mlp_ratio, activation)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else None

    def forward(self, x: torch.Tensor, key_padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        if self.drop_path is None:
            x = x + self.attn(self.norm1(x), key_padding_mask=key_padding_mask)[0]
            return x + self.mlp(self.norm2(x))
        x = x + self.drop_path(self.attn(self.norm1(x), key_padding_mask=key_padding_mask)[0])
        return x + self.drop_path(self.mlp(self.norm2(x)))


def init_weights(module: nn.Module) -> None:
    """Truncated-normal linear weights, zero biases, unit LayerNorm (ViT/MAE convention)."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
