"""The fusion's last layer computes only the states asked for, and they equal the full computation's.

Pre-training asks for the fused text at the masked words and the pooled CLS of the ITM negatives
(``CoAttentionFusion.forward``'s ``text_positions`` / ``token_rows``). The reference is the same
fusion with ``selective_last_layer`` off: every state computed, then the requested ones selected.
Float64 throughout, so "equal" means equal to rounding.
"""

from __future__ import annotations

import pytest
import torch

from mpma.config import FusionConfig
from mpma.models.fusion import CoAttentionFusion
from mpma.models.mpma import padded_positions


def _inputs(rows: int = 5, length: int = 7, patches: int = 4, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    text = torch.randn(rows, length, 12, generator=g, dtype=torch.float64)
    image = torch.randn(rows, 1 + patches, 20, generator=g, dtype=torch.float64)
    mask = torch.ones(rows, length, dtype=torch.long)
    mask[1, 5:] = 0
    mask[3, 3:] = 0
    return text, mask, image


POSITIONS = torch.tensor([[1, 2], [3, 4], [0, 6], [2, 2], [5, 1]])  # rows 1 and 3 include padding positions


@pytest.mark.parametrize("depth,slots", [(2, 4), (2, 0), (1, 4), (0, 0)])
@pytest.mark.parametrize("rows", [5, 3, 0])
@pytest.mark.parametrize("with_positions", [True, False])
def test_the_selected_states_are_the_full_computations(depth, slots, rows, with_positions):
    torch.manual_seed(0)
    fusion = CoAttentionFusion(FusionConfig(width=16, depth=depth, heads=2, memory_slots=slots), 12, 20).double()
    text, mask, image = _inputs()
    positions = POSITIONS[:rows] if with_positions else None
    full = fusion(text, mask, image, return_attention=True)
    part = fusion(text, mask, image, return_attention=True, text_positions=positions, token_rows=rows)
    expected_text = full.text[:rows]
    if with_positions:
        expected_text = torch.gather(expected_text, 1, positions[..., None].expand(-1, -1, 16))
    assert part.text.shape == expected_text.shape and part.image.shape == full.image[:rows].shape
    torch.testing.assert_close(part.pooled, full.pooled, rtol=0, atol=1e-12)  # every row's pooled feature
    torch.testing.assert_close(part.text, expected_text, rtol=0, atol=1e-12)
    torch.testing.assert_close(part.image, full.image[:rows], rtol=0, atol=1e-12)
    if depth > 0 and rows > 0:
        weights = full.attention[:rows]
        if with_positions:
            weights = torch.gather(weights, 1, positions[..., None].expand(-1, -1, weights.shape[-1]))
        torch.testing.assert_close(part.attention, weights, rtol=0, atol=1e-12)


def test_the_last_layer_really_computes_fewer_states():
    """The saving is real: the last layer's MLP sees the requested queries only."""
    torch.manual_seed(0)
    fusion = CoAttentionFusion(FusionConfig(width=16, depth=2, heads=2, memory_slots=4), 12, 20).double()
    seen = {}
    last = fusion.layers[-1]
    last.text_stream.mlp.register_forward_hook(lambda m, i, o: seen.setdefault("text", []).append(i[0].shape[:2]))
    last.image_stream.mlp.register_forward_hook(lambda m, i, o: seen.setdefault("image", []).append(i[0].shape[:2]))
    text, mask, image = _inputs()
    fusion(text, mask, image, text_positions=POSITIONS[:3], token_rows=3)
    # token rows: the CLS and 2 positions of the text, every image token; negatives: the two CLS
    assert seen == {"text": [(3, 3), (2, 1)], "image": [(3, 5), (2, 1)]}


def test_text_positions_must_cover_the_token_rows():
    fusion = CoAttentionFusion(FusionConfig(width=16, depth=1, heads=2, memory_slots=0), 12, 20).double()
    text, mask, image = _inputs()
    with pytest.raises(ValueError, match="text_positions has 5 rows; the fusion returns tokens for 3"):
        fusion(text, mask, image, text_positions=POSITIONS, token_rows=3)


def test_padded_positions_keep_the_order_of_boolean_selection():
    selected = torch.tensor([[0, 1, 0, 1, 1], [0, 0, 0, 0, 0], [1, 0, 0, 0, 1]], dtype=torch.bool)
    positions, found = padded_positions(selected)
    assert positions.tolist() == [[1, 3, 4], [0, 0, 0], [0, 4, 0]]
    assert found.tolist() == [[True, True, True], [False, False, False], [True, True, False]]
    states = torch.randn(3, 5, 2)
    assert torch.equal(torch.gather(states, 1, positions[..., None].expand(-1, -1, 2))[found], states[selected])
    positions, found = padded_positions(torch.zeros(2, 4, dtype=torch.bool))
    assert positions.shape == found.shape == (2, 0)


@pytest.mark.parametrize("checkpointing", [False, True])
def test_a_pretraining_step_has_the_losses_and_gradients_of_the_full_fusion(
        micro_config, build_task, make_batch, checkpointing):
    """MLM at the masked words, MIM, ITM on the negatives: losses and every gradient as before."""
    config = micro_config("fusion.depth=2", "fusion.memory_slots=4")
    batch = make_batch(n=8)

    def step(reference: bool):
        task = build_task(config).double()
        task.model.set_grad_checkpointing(checkpointing)
        double = {k: v.double() if v.is_floating_point() else v for k, v in batch.items()}
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(CoAttentionFusion, "selective_last_layer", not reference)
            result = task(double, generator=torch.Generator().manual_seed(3))
            sum(result.losses.values()).backward()
        return result.losses, {n: p.grad for n, p in task.named_parameters() if p.grad is not None}

    losses, grads = step(reference=False)
    expected_losses, expected_grads = step(reference=True)
    assert set(losses) == {"mlm", "mim", "global_align", "local_align", "itm"}
    for name in expected_losses:
        torch.testing.assert_close(losses[name], expected_losses[name], rtol=0, atol=1e-12)
    assert grads.keys() == expected_grads.keys()
    for name in expected_grads:
        torch.testing.assert_close(grads[name], expected_grads[name], rtol=1e-9, atol=1e-12, msg=name)
