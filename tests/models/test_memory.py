"""MA-CMF: the learned memory changes what the text stream fuses; memory_slots=0 removes it."""

from __future__ import annotations

import torch

from mpma.models.factory import create_model


def fused(model, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(2, 3, 32, 32, generator=generator)
    ids = torch.randint(5, 40, (2, 9), generator=generator)
    mask = torch.ones_like(ids)
    with torch.no_grad():
        vision = model.encode_image(images)
        text = model.encode_text(ids, mask)
        return model.fuse(text, mask, vision.tokens)


def test_the_memory_changes_the_fused_text_stream_only(micro_config):
    model = create_model(micro_config("fusion.depth=1", "fusion.memory_slots=4"), vocab_size=50, pad_token_id=0).eval()
    before = fused(model)
    with torch.no_grad():
        model.fusion.layers[0].memory.memory.mul_(-3.0).add_(0.5)  # other memory contents
    after = fused(model)
    assert (before.text - after.text).abs().max() > 1e-4  # the text stream reads the memory
    assert torch.equal(before.image, after.image)  # the image stream of the layer does not


def test_without_memory_slots_there_is_no_memory_to_read(micro_config):
    plain = create_model(micro_config("fusion.depth=1", "fusion.memory_slots=0"), vocab_size=50, pad_token_id=0).eval()
    assert plain.fusion.layers[0].memory is None
    assert not [name for name, _ in plain.named_parameters() if "memory" in name]
    out = fused(plain)
    assert out.text.shape == (2, 9, 32) and torch.isfinite(out.text).all()
