"""vision.align_mask_ratio: GLA reads its own, separately masked view of the image."""

from __future__ import annotations

import pytest
import torch

from mpma.config import ConfigError
from mpma.models.factory import create_model


def forward(model, config, generator_seed: int = 0):
    images = torch.randn(3, 3, 32, 32)
    ids = torch.randint(5, 40, (3, 10))
    mask = torch.ones_like(ids)
    return model(images, ids, mask, generator=torch.Generator().manual_seed(generator_seed))


@pytest.mark.parametrize("ratio, visible", [(0.0, 16), (0.25, 12), (0.5, 8), (0.9, 2)])
def test_the_alignment_view_keeps_exactly_the_asked_share_of_patches(micro_config, ratio, visible):
    config = micro_config(f"vision.align_mask_ratio={ratio}", "vision.mask_ratio=0.75")  # 16 patches -> 4 visible
    model = create_model(config, vocab_size=50, pad_token_id=0)
    out = forward(model, config)
    assert out.vision.tokens.shape[1] == 1 + 4  # MIM and the fusion keep their own mask
    assert out.align_vision.tokens.shape[1] == 1 + visible
    assert out.image_local.shape[1] == visible
    if ratio == 0.0:
        assert out.align_vision.mask is None or float(out.align_vision.mask.sum()) == 0


def test_without_the_setting_alignment_reads_the_masked_pass(micro_config):
    model = create_model(micro_config("vision.mask_ratio=0.75"), vocab_size=50, pad_token_id=0)
    out = forward(model, None)
    assert out.align_vision is out.vision and out.image_local.shape[1] == 4


def test_the_alignment_view_is_drawn_apart_from_the_mim_mask(micro_config):
    """Same seed, same MIM mask; the alignment view is another draw (not the MIM view repeated)."""
    config = micro_config("vision.align_mask_ratio=0.25")
    model = create_model(config, vocab_size=50, pad_token_id=0)
    plain = create_model(micro_config(), vocab_size=50, pad_token_id=0)
    a, b = forward(model, config), forward(plain, None)
    assert torch.equal(a.vision.mask, b.vision.mask)
    assert a.align_vision.tokens.shape[1] != a.vision.tokens.shape[1]


@pytest.mark.parametrize("value", ["1.0", "-0.1"])
def test_an_impossible_ratio_is_refused(micro_config, value):
    with pytest.raises(ConfigError, match="vision.align_mask_ratio"):
        micro_config(f"vision.align_mask_ratio={value}")
