"""``fusion.image_positions``: the fusion's image tokens carry their own patch's position, masked or not."""

from __future__ import annotations

import pytest
import torch

from mpma.config import ConfigError
from mpma.models.factory import create_model
from mpma.models.vision import sincos_position_embedding


def build(micro_config, positions: bool):
    overrides = ("fusion.depth=1", f"fusion.image_positions={str(positions).lower()}")
    return create_model(micro_config(*overrides), vocab_size=50, pad_token_id=0).eval()


def inputs(model, seed: int = 0):
    """Unimodal states of 2 unmasked pairs: text (2, 9, Dt), mask (2, 9), image tokens (2, 1+16, Dv)."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(2, 3, 32, 32, generator=generator)
    ids = torch.randint(5, 40, (2, 9), generator=generator)
    mask = torch.ones_like(ids)
    with torch.no_grad():
        return model.encode_text(ids, mask), mask, model.encode_image(images).tokens


@pytest.mark.parametrize("positions", [False, True])
def test_the_patch_ids_reach_the_fused_streams_only_with_image_positions(micro_config, positions):
    model = build(micro_config, positions)
    text, mask, tokens = inputs(model)
    in_order = torch.arange(16).expand(2, -1)
    reversed_ids = in_order.flip(1)  # the same tokens said to sit at mirrored positions
    with torch.no_grad():
        plain = model.fuse(text, mask, tokens)
        explicit = model.fuse(text, mask, tokens, patch_ids=in_order, grid=4)
        moved = model.fuse(text, mask, tokens, patch_ids=reversed_ids, grid=4)
    torch.testing.assert_close(explicit.text, plain.text)  # None means "all patches in order"
    changed = (moved.text - plain.text).abs().max().item()
    if positions:
        assert changed > 1e-4  # where a token sits changes what the text stream reads
    else:
        assert changed == 0.0  # the published fusion knows nothing of positions


def test_each_visible_token_gets_its_own_patchs_position(micro_config):
    fusion = build(micro_config, True).fusion
    table = sincos_position_embedding(4, fusion.config.width)[0]  # (1+16, D), CLS row zero
    patch_ids = torch.tensor([[3, 0, 15], [7, 8, 2]])
    got = fusion.image_position_table(patch_ids, grid=4, tokens=4)  # (2, 1+3, D)
    assert got.shape == (2, 4, fusion.config.width)
    assert torch.equal(got[:, 0], torch.zeros(2, fusion.config.width))  # CLS has no position
    assert torch.equal(got[0, 1:], table[1 + patch_ids[0]])
    assert torch.equal(got[1, 1:], table[1 + patch_ids[1]])
    assert torch.equal(fusion.image_position_table(None, None, tokens=17), table[None])


def test_masked_tokens_without_their_patch_ids_are_refused(micro_config):
    model = build(micro_config, True)
    text, mask, tokens = inputs(model)
    with pytest.raises(ValueError, match="patch_ids and grid"):
        model.fuse(text, mask, tokens[:, :9])  # 8 of 16 patches: their positions are unknown


def test_the_table_needs_a_width_divisible_by_four(micro_config):
    with pytest.raises(ConfigError, match="fusion.image_positions"):
        micro_config("fusion.width=30", "fusion.heads=2", "fusion.image_positions=true")
