"""ViT image encoder that can encode only the visible patches of a masked image (MAE-style)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from mpma.config import VisionConfig
from mpma.models.layers import Block, init_weights, run_block


def patchify(images: torch.Tensor, patch_size: int) -> torch.Tensor:
    """Cut images into flattened patches.

    Args:
        images: (B, C, H, W) with H and W multiples of ``patch_size``.

    Returns:
        (B, N, P*P*C) patches in row-major grid order, pixels ordered (p_row, p_col, channel).
    """
    batch, channels, height, width = images.shape
    p = patch_size
    grid_h, grid_w = height // p, width // p
    x = images.reshape(batch, channels, grid_h, p, grid_w, p)
    x = x.permute(0, 2, 4, 3, 5, 1)  # B, gh, gw, p, p, C
    return x.reshape(batch, grid_h * grid_w, p * p * channels)


def unpatchify(patches: torch.Tensor, patch_size: int, channels: int = 3) -> torch.Tensor:
    """Inverse of :func:`patchify` for a square grid: (B, N, P*P*C) -> (B, C, H, W)."""
    batch, n, _ = patches.shape
    grid = int(math.isqrt(n))
    if grid * grid != n:
        raise ValueError(f"unpatchify needs a square grid, got {n} patches")
    p = patch_size
    x = patches.reshape(batch, grid, grid, p, p, channels).permute(0, 5, 1, 3, 2, 4)
    return x.reshape(batch, channels, grid * p, grid * p)


def random_masking(
    batch: int, n_patches: int, mask_ratio: float, device: torch.device, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Draw a per-sample random subset of patches to keep.

    Returns:
        ids_keep (B, K) indices of the visible patches (K = round(N * (1 - mask_ratio)), at least 1),
        mask (B, N) float, 1 = masked / 0 = visible,
        ids_restore (B, N) permutation that puts [visible ; masked] back into grid order.
    """
    n_keep = max(1, int(round(n_patches * (1.0 - mask_ratio))))
    noise = torch.rand(batch, n_patches, device=device, generator=generator)
    ids_shuffle = noise.argsort(dim=1)
    ids_restore = ids_shuffle.argsort(dim=1)
    ids_keep = ids_shuffle[:, :n_keep]
    mask = torch.ones(batch, n_patches, device=device)
    mask[:, :n_keep] = 0
    mask = torch.gather(mask, 1, ids_restore)
    return ids_keep, mask, ids_restore


def resize_position_embedding(pos: torch.Tensor, new_grid: int) -> torch.Tensor:
    """Bicubically resize learned position embeddings to another square grid.

    Args:
        pos: (1, 1 + G*G, D) with the CLS position first.
        new_grid: target grid side G'.

    Returns:
        (1, 1 + G'*G', D).
    """
    cls_pos, grid_pos = pos[:, :1], pos[:, 1:]
    old_grid = int(math.isqrt(grid_pos.shape[1]))
    if old_grid == new_grid:
        return pos
    width = grid_pos.shape[-1]
    grid_pos = grid_pos.reshape(1, old_grid, old_grid, width).permute(0, 3, 1, 2)
    grid_pos = F.interpolate(grid_pos.float(), size=(new_grid, new_grid), mode="bicubic", align_corners=False)
    grid_pos = grid_pos.to(pos.dtype).permute(0, 2, 3, 1).reshape(1, new_grid * new_grid, width)
    return torch.cat([cls_pos, grid_pos], dim=1)


def sincos_position_embedding(grid: int, width: int) -> torch.Tensor:
    """2-D sine-cosine position table (MAE's initialisation), CLS position zero: (1, 1 + G*G, D).

    Half the channels encode the row, half the column, each with D/4 frequencies. Used to
    initialise the learned tables, so patch positions (left/right, upper/lower) are distinguishable
    from the first step instead of having to be learned from a 0.02-std random start.
    """
    if width % 4:
        raise ValueError(f"width {width} must be divisible by 4 for a 2-D sine-cosine table")
    quarter = width // 4
    omega = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float64) / quarter)
    coords = torch.arange(grid, dtype=torch.float64)
    rows, cols = torch.meshgrid(coords, coords, indexing="ij")

    def encode(positions: torch.Tensor) -> torch.Tensor:
        angles = positions.reshape(-1, 1) * omega[None]
        return torch.cat([angles.sin(), angles.cos()], dim=1)

    table = torch.cat([encode(rows), encode(cols)], dim=1).float()  # (G*G, D)
    return torch.cat([torch.zeros(1, width), table])[None]


def drop_path_rates(rate: float, depth: int) -> list[float]:
    """Stochastic-depth rate of each block: linear from 0 (first block) to ``rate`` (last block).

    The schedule of DeiT / MAE fine-tuning; a single block gets 0.
    """
    return [rate * i / (depth - 1) if depth > 1 else 0.0 for i in range(depth)]


@dataclass
class VisionOutput:
    """Result of :meth:`VisionTransformer.forward`.

    tokens: (B, 1 + K, D) final-normalised CLS + visible patch tokens (K = N when unmasked).
    ids_keep: (B, K) grid indices of the encoded patches, or None when nothing was masked.
    mask: (B, N) 1 = masked, or None.
    ids_restore: (B, N) or None.
    grid: side of the patch grid.
    """

    tokens: torch.Tensor
    ids_keep: torch.Tensor | None
    mask: torch.Tensor | None
    ids_restore: torch.Tensor | None
    grid: int


class VisionTransformer(nn.Module):
    """ViT encoder: patch embedding, CLS token, learned positions, pre-norm blocks, final LayerNorm.

    ``vision.drop_path`` > 0 adds stochastic depth in training (block i: rate ``drop_path * i /
    (depth - 1)``, per sample, from torch's RNG); at 0 (the default) no random number is drawn.

    With ``pre_norm``, ``activation="quick_gelu"`` and ``norm_eps=1e-5`` it computes exactly a CLIP
    ViT (weights mapped by :mod:`mpma.models.convert`); ``tokens`` then equal CLIP's last hidden
    state passed through its post-LayerNorm (for every token, not only CLS).
    """

    def __init__(self, config: VisionConfig) -> None:
        super().__init__()
        if config.image_size % config.patch_size:
            raise ValueError(f"vision.image_size {config.image_size} is not a multiple of patch_size")
        self.config = config
        self.patch_size = config.patch_size
        self.grid = config.image_size // config.patch_size
        self.patch_embed = nn.Conv2d(config.channels, config.width, config.patch_size, config.patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, config.width))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + self.grid**2, config.width))
        # CLIP normalises the embeddings before the first block; None keeps the state dict unchanged.
        self.norm_pre = nn.LayerNorm(config.width, eps=config.norm_eps) if config.pre_norm else None
        self.blocks = nn.ModuleList(
            Block(config.width, config.heads, config.mlp_ratio, config.activation, config.norm_eps, rate)
            for rate in drop_path_rates(config.drop_path, config.depth)
        )
        self.norm = nn.LayerNorm(config.width, eps=config.norm_eps)
        self.grad_checkpointing = False  # set_grad_checkpointing: recompute each block's activations
        with torch.no_grad():
            self.pos_embed.copy_(sincos_position_embedding(self.grid, config.width))
        nn.init.normal_(self.cls_token, std=0.02)
        self.apply(init_weights)
        w = self.patch_embed.weight.data
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))

    @property
    def width(self) -> int:
        return self.config.width

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Activation checkpointing per block (see :func:`mpma.models.layers.run_block`)."""
        self.grad_checkpointing = enable

    def position_embedding(self, grid: int) -> torch.Tensor:
        """(1, 1 + grid*grid, D), interpolated when the image size differs from the configured one."""
        return resize_position_embedding(self.pos_embed, grid)

    def forward(
        self,
        images: torch.Tensor,
        mask_ratio: float = 0.0,
        generator: torch.Generator | None = None,
        ids_keep: torch.Tensor | None = None,
    ) -> VisionOutput:
        """Encode images, optionally only a random visible subset of their patches.

        Args:
            images: (B, C, H, W), H == W, a multiple of the patch size.
            mask_ratio: share of patches to hide (0 = encode everything).
            generator: RNG for the mask (for reproducible masks).
            ids_keep: (B, K) explicit visible patch indices; overrides ``mask_ratio``.
        """
        x = self.patch_embed(images).flatten(2).transpose(1, 2)  # (B, N, D)
        batch, n_patches, _ = x.shape
        grid = int(math.isqrt(n_patches))
        pos = self.position_embedding(grid)
        x = x + pos[:, 1:]
        mask = ids_restore = None
        if ids_keep is not None:
            mask = torch.ones(batch, n_patches, device=x.device)
            mask.scatter_(1, ids_keep, 0.0)
            ids_restore = torch.cat([ids_keep, (mask.argsort(dim=1, stable=True))[:, ids_keep.shape[1] :]], 1)
            ids_restore = ids_restore.argsort(dim=1)
        elif mask_ratio > 0:
            ids_keep, mask, ids_restore = random_masking(batch, n_patches, mask_ratio, x.device, generator)
        if ids_keep is not None:
            x = torch.gather(x, 1, ids_keep[..., None].expand(-1, -1, x.shape[-1]))
        cls = (self.cls_token + pos[:, :1]).expand(batch, -1, -1)
        x = torch.cat([cls, x], dim=1)
        if self.norm_pre is not None:
            x = self.norm_pre(x)
        for block in self.blocks:
            x = run_block(block, x, recompute=self.grad_checkpointing)
        return VisionOutput(self.norm(x), ids_keep, mask, ids_restore, grid)
