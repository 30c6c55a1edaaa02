"""Under CPU bf16 autocast the attention itself runs in fp32 (image side and text side), and only there."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mpma.config import TextConfig
from mpma.models.layers import Attention, attend
from mpma.models.text import TextEncoder


@pytest.fixture
def sdpa_dtypes(monkeypatch) -> list[torch.dtype]:
    """Records the query dtype of every F.scaled_dot_product_attention call."""
    seen: list[torch.dtype] = []
    original = F.scaled_dot_product_attention

    def recording(query, *args, **kwargs):
        seen.append(query.dtype)
        return original(query, *args, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", recording)
    return seen


def test_attend_matches_fp32_attention_of_the_bf16_inputs() -> None:
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 4, 9, 8, generator=g).bfloat16().requires_grad_() for _ in range(3))
    mask = torch.ones(2, 1, 1, 9, dtype=torch.bool)
    mask[0, ..., 6:] = False
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = attend(q, k, v, mask)
    expected = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=mask).bfloat16()
    assert out.dtype == torch.bfloat16 and out.shape == (2, 4, 9, 8)
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    out.float().sum().backward()
    assert all(t.grad is not None and t.grad.dtype == torch.bfloat16 for t in (q, k, v))


@pytest.mark.parametrize("fp32_attention", [True, False])
def test_image_side_attention_dtype_under_cpu_bf16_autocast(sdpa_dtypes, monkeypatch, fp32_attention: bool) -> None:
    monkeypatch.setattr(Attention, "fp32_attention_on_cpu", fp32_attention)
    layer = Attention(width=16, heads=2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, _ = layer(torch.randn(2, 5, 16), context=torch.randn(2, 7, 16))
    assert out.shape == (2, 5, 16)
    assert sdpa_dtypes == [torch.float32 if fp32_attention else torch.bfloat16]
    sdpa_dtypes.clear()
    layer(torch.randn(2, 5, 16))  # no autocast: fp32 stays fp32
    assert sdpa_dtypes == [torch.float32]


@pytest.mark.parametrize("fp32_attention", [True, False])
def test_text_encoder_attention_dtype_under_cpu_bf16_autocast(sdpa_dtypes, monkeypatch, fp32_attention: bool) -> None:
    monkeypatch.setattr(Attention, "fp32_attention_on_cpu", fp32_attention)
    encoder = TextEncoder(TextConfig(width=32, depth=2, heads=4, intermediate=64, max_length=16),
                          vocab_size=50, pad_token_id=0).eval()
    ids = torch.randint(1, 50, (2, 6))
    attention_mask = torch.ones(2, 6, dtype=torch.long)
    attention_mask[1, 4:] = 0
    fp32 = encoder(ids, attention_mask)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = encoder(ids, attention_mask)
    assert sdpa_dtypes[:2] == [torch.float32, torch.float32]  # the fp32 pass
    assert sdpa_dtypes[2:] == [torch.float32 if fp32_attention else torch.bfloat16] * 2
    # transformers' own sdpa gives the same fp32 output, padding mask included
    encoder.encoder.set_attn_implementation("sdpa")
    torch.testing.assert_close(fp32, encoder(ids, attention_mask), rtol=0, atol=1e-6)
    unmasked = encoder(ids, torch.ones_like(attention_mask))
    assert (fp32[1] - unmasked[1]).abs().max() > 1e-3  # the padding mask changes the padded row
    torch.testing.assert_close(out.float(), fp32, rtol=0.05, atol=0.05)
