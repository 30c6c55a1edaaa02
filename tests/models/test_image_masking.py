"""Paired masking, image side: exact image mask sizes, masked pixels are invisible.

The text side (MLM labels, 80/10/10) is in tests/data/test_text_masking.py."""

from __future__ import annotations

import pytest
import torch

from mpma.config import VisionConfig
from mpma.models.vision import VisionTransformer, patchify, random_masking, unpatchify


def _vit() -> VisionTransformer:
    torch.manual_seed(0)
    return VisionTransformer(VisionConfig(image_size=32, patch_size=8, width=32, depth=2, heads=2)).eval()


# ------------------------------------------------------------------ image


@pytest.mark.parametrize("n, ratio", [(16, 0.75), (16, 0.5), (64, 0.75), (64, 0.6), (49, 0.75), (16, 0.99)])
def test_random_masking_keeps_exactly_round_n_times_one_minus_r(n: int, ratio: float) -> None:
    keep = max(1, round(n * (1 - ratio)))
    ids_keep, mask, ids_restore = random_masking(5, n, ratio, torch.device("cpu"), torch.Generator().manual_seed(0))
    assert ids_keep.shape == (5, keep)
    assert torch.all(mask.sum(1) == n - keep)
    for row in range(5):
        assert len(set(ids_keep[row].tolist())) == keep  # distinct patches
        assert torch.all(mask[row, ids_keep[row]] == 0)
    # ids_restore puts [visible ; masked] back into grid order: the decoder relies on it
    placeholder = torch.cat([ids_keep, torch.full((5, n - keep), -1)], 1)
    restored = torch.gather(placeholder, 1, ids_restore)
    assert torch.equal(restored >= 0, mask == 0)
    grid = torch.arange(n).expand(5, n)
    assert torch.equal(restored[restored >= 0], grid[restored >= 0])
    assert torch.equal(ids_restore.sort(1).values, grid)  # a permutation


def test_masks_differ_per_sample_and_follow_the_generator() -> None:
    a = random_masking(8, 64, 0.75, torch.device("cpu"), torch.Generator().manual_seed(3))
    b = random_masking(8, 64, 0.75, torch.device("cpu"), torch.Generator().manual_seed(3))
    c = random_masking(8, 64, 0.75, torch.device("cpu"), torch.Generator().manual_seed(4))
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not torch.equal(a[1], c[1])
    assert len({tuple(row.tolist()) for row in a[1]}) == 8


def test_encoder_sees_only_visible_tokens_of_the_requested_ratio() -> None:
    vit = _vit()
    out = vit(torch.randn(3, 3, 32, 32), mask_ratio=0.75, generator=torch.Generator().manual_seed(0))
    assert out.tokens.shape == (3, 1 + 4, 32)
    assert torch.all(out.mask.sum(1) == 12)


def _scramble_masked_patches(images: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    patches = patchify(images, 8)
    noise = torch.randn_like(patches) * 10
    patches = torch.where(mask.bool()[..., None], noise, patches)
    return unpatchify(patches, 8, channels=3)


def test_masked_pixels_do_not_change_the_encoder_output_explicit_ids() -> None:
    vit = _vit()
    images = torch.randn(2, 3, 32, 32)
    ids_keep = torch.tensor([[0, 5, 10, 15], [3, 2, 9, 12]])
    first = vit(images, ids_keep=ids_keep)
    changed = _scramble_masked_patches(images, first.mask)
    assert not torch.allclose(changed, images)
    second = vit(changed, ids_keep=ids_keep)
    torch.testing.assert_close(second.tokens, first.tokens, rtol=0, atol=1e-6)
    # ...while a visible patch does change it
    visible = images.clone()
    visible[0, :, 0:8, 0:8] += 1.0  # patch 0 of sample 0 is visible
    assert not torch.allclose(vit(visible, ids_keep=ids_keep).tokens[0], first.tokens[0])
    # explicit ids give a mask and an ids_restore consistent with them
    assert torch.equal(first.mask.nonzero()[:, 1].view(2, 12).sort(1).values,
                       torch.tensor([[i for i in range(16) if i not in ids] for ids in ids_keep.tolist()]))
    restored = torch.gather(torch.cat([ids_keep, torch.zeros(2, 12, dtype=torch.long) - 1], 1), 1, first.ids_restore)
    assert torch.equal(restored >= 0, first.mask == 0)


def test_visible_patches_keep_their_own_positions() -> None:
    """Encoding every patch in a shuffled order permutes the unmasked output: positions follow patches."""
    vit = _vit()
    images = torch.randn(2, 3, 32, 32)
    full = vit(images).tokens
    order = torch.stack([torch.randperm(16, generator=torch.Generator().manual_seed(s)) for s in range(2)])
    shuffled = vit(images, ids_keep=order).tokens
    torch.testing.assert_close(shuffled[:, 0], full[:, 0], rtol=0, atol=1e-5)  # CLS
    torch.testing.assert_close(shuffled[:, 1:], torch.gather(full[:, 1:], 1, order[..., None].expand(-1, -1, 32)),
                               rtol=0, atol=1e-5)


def test_masked_pixels_do_not_change_the_encoder_output_seeded() -> None:
    vit = _vit()
    images = torch.randn(4, 3, 32, 32)
    first = vit(images, mask_ratio=0.5, generator=torch.Generator().manual_seed(11))
    changed = _scramble_masked_patches(images, first.mask)
    second = vit(changed, mask_ratio=0.5, generator=torch.Generator().manual_seed(11))
    assert torch.equal(second.ids_keep, first.ids_keep)
    torch.testing.assert_close(second.tokens, first.tokens, rtol=0, atol=1e-6)


def test_masked_pixels_do_not_change_the_unimodal_features_of_the_full_model(micro_config, build_task, make_batch) -> None:
    task = build_task(micro_config())
    task.eval()
    batch = make_batch(n=4)
    args = (batch["input_ids"], batch["attention_mask"])
    first = task.model(batch["images"], *args, generator=torch.Generator().manual_seed(5))
    changed = _scramble_masked_patches(batch["images"], first.vision.mask)
    second = task.model(changed, *args, generator=torch.Generator().manual_seed(5))
    for name in ("image_embed", "image_local"):
        torch.testing.assert_close(getattr(second, name), getattr(first, name), rtol=0, atol=1e-6)
    torch.testing.assert_close(second.fusion.pooled, first.fusion.pooled, rtol=0, atol=1e-6)
