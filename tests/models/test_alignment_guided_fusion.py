"""``fusion.align_bias``: the fusion's text stream reads the patches GLA-local ties to each word."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mpma.models.factory import create_model


def build(micro_config, *overrides):
    return create_model(micro_config("fusion.depth=1", *overrides), vocab_size=50, pad_token_id=0).eval()


def states(model, seed: int = 0):
    """text (2, 9, Dt), mask (2, 9), image tokens (2, 1+16, Dv) of two unmasked random pairs."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(2, 3, 32, 32, generator=generator)
    ids = torch.randint(5, 40, (2, 9), generator=generator)
    mask = torch.ones_like(ids)
    with torch.no_grad():
        return model.encode_text(ids, mask), mask, model.encode_image(images).tokens


def local_similarity(model, text, tokens):
    """(B, T, K) GLA-local cosine of every word with every patch."""
    words = F.normalize(model.align.local_text(text), dim=-1)
    patches = F.normalize(model.align.local_image(tokens[:, 1:]), dim=-1)
    return torch.einsum("btd,bkd->btk", words, patches)


def test_off_by_default_and_then_the_fusion_is_unchanged(micro_config):
    model = build(micro_config)
    text, mask, tokens = states(model)
    assert model.config.fusion.align_bias == 0 and model.alignment_bias(text, tokens) is None


@pytest.mark.parametrize("memory_slots", [0, 4])
def test_a_strong_bias_sends_each_word_to_its_most_similar_patch(micro_config, memory_slots):
    model = build(micro_config, "fusion.align_bias=200", f"fusion.memory_slots={memory_slots}")
    text, mask, tokens = states(model)
    with torch.no_grad():
        attention = model.fuse(text, mask, tokens, return_attention=True).attention[..., 1:]  # (B, T, K)
        expected = local_similarity(model, text, tokens).argmax(-1)
    assert torch.equal(attention.argmax(-1), expected)
    unguided = build(micro_config, f"fusion.memory_slots={memory_slots}")
    unguided.load_state_dict(model.state_dict())
    with torch.no_grad():
        plain = unguided.fuse(text, mask, tokens, return_attention=True).attention[..., 1:]
    assert not torch.equal(plain.argmax(-1), expected)  # without the bias the random fusion looks elsewhere


def test_the_bias_is_the_scaled_cosine_with_nothing_on_the_image_cls(micro_config):
    model = build(micro_config, "fusion.align_bias=3")
    text, mask, tokens = states(model)
    with torch.no_grad():
        bias = model.alignment_bias(text, tokens)
        expected = 3 * local_similarity(model, text, tokens)
    assert bias.shape == (2, 9, 17)
    assert torch.equal(bias[..., 0], torch.zeros(2, 9))
    torch.testing.assert_close(bias[..., 1:], expected)


def test_the_fused_losses_do_not_train_gla_local_through_the_bias(micro_config):
    model = build(micro_config, "fusion.align_bias=5").train()
    text, mask, tokens = states(model)
    model.fuse(text, mask, tokens).text.sum().backward()
    assert all(p.grad is None for p in model.align.parameters())  # only GLA-local's own loss trains it
    assert any(p.grad is not None for p in model.fusion.parameters())


def test_it_needs_gla_local(micro_config):
    with pytest.raises(ValueError, match="GLA-local"):
        build(micro_config, "fusion.align_bias=5", "objectives.local_align=0")
