"""Model shapes on the tiny preset, ViT position-embedding interpolation and optional parts."""

from __future__ import annotations

import pytest
import torch

from mpma.config import VisionConfig, load_config
from mpma.models.mpma import MPMAModel
from mpma.models.vision import VisionTransformer, patchify, resize_position_embedding, unpatchify


@pytest.fixture(scope="module")
def tiny_model(tokenizer):
    torch.manual_seed(0)
    config = load_config("tiny")
    return MPMAModel(config, vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id).eval()


@pytest.fixture(scope="module")
def tiny_batch(make_batch):
    return make_batch(n=3, image_size=64)


def test_tiny_preset_shapes_of_every_module(tiny_model: MPMAModel, tiny_batch: dict, tokenizer) -> None:
    config = tiny_model.config
    b, t = tiny_batch["input_ids"].shape
    n = (config.vision.image_size // config.vision.patch_size) ** 2  # 64 patches
    k = round(n * (1 - config.vision.mask_ratio))
    dv, dt, df, a = config.vision.width, config.text.width, config.fusion.width, config.objectives.align_dim
    pixels = config.vision.patch_size**2 * config.vision.channels
    images = tiny_batch["images"]
    assert images.shape == (b, 3, 64, 64)

    full = tiny_model.encode_image(images)
    assert full.tokens.shape == (b, 1 + n, dv)
    assert full.ids_keep is None and full.mask is None and full.ids_restore is None and full.grid == 8

    masked = tiny_model.encode_image(images, mask_ratio=config.vision.mask_ratio)
    assert masked.tokens.shape == (b, 1 + k, dv)
    assert masked.ids_keep.shape == (b, k) and masked.mask.shape == (b, n) and masked.ids_restore.shape == (b, n)

    text = tiny_model.encode_text(tiny_batch["input_ids"], tiny_batch["attention_mask"])
    assert text.shape == (b, t, dt)

    fused = tiny_model.fuse(text, tiny_batch["attention_mask"], masked.tokens, return_attention=True)
    assert fused.text.shape == (b, t, df)
    assert fused.image.shape == (b, 1 + k, df)
    assert fused.pooled.shape == (b, 2 * df)
    assert fused.attention.shape == (b, t, 1 + k)
    # head-averaged attention rows are distributions over the image tokens (memory read-out folded in)
    torch.testing.assert_close(fused.attention.sum(-1), torch.ones(b, t))
    assert torch.all(fused.attention >= 0)

    assert tiny_model.itm_logits(fused.pooled).shape == (b, 2)

    positions = torch.zeros(b, t, dtype=torch.bool)
    positions[:, 1] = True
    positions[0, 2] = True
    out = tiny_model(images, tiny_batch["input_ids"], tiny_batch["attention_mask"], mlm_positions=positions)
    assert out.vision.tokens.shape == (b, 1 + k, dv)
    assert out.text.shape == (b, t, dt)
    assert out.mlm_logits.shape == (b + 1, len(tokenizer))
    assert out.mim_pred.shape == (b, n, pixels)
    assert out.image_embed.shape == (b, a) and out.text_embed.shape == (b, a)
    assert out.image_local.shape == (b, k, a) and out.text_local.shape == (b, t, a)
    for embedding in (out.image_embed, out.text_embed):
        torch.testing.assert_close(embedding.norm(dim=-1), torch.ones(b))
    for local in (out.image_local, out.text_local):
        torch.testing.assert_close(local.norm(dim=-1), torch.ones(local.shape[:2]))

    assert tiny_model.embed_image(images).shape == (b, a)
    assert tiny_model.embed_text(tiny_batch["input_ids"], tiny_batch["attention_mask"]).shape == (b, a)


def test_unmasked_forward_has_no_mim_prediction(tiny_model: MPMAModel, tiny_batch: dict) -> None:
    out = tiny_model(tiny_batch["images"], tiny_batch["input_ids"], tiny_batch["attention_mask"], mask_ratio=0.0)
    assert out.vision.tokens.shape[1] == 1 + 64
    assert out.mim_pred is None and out.mlm_logits is None


def test_patchify_round_trip() -> None:
    images = torch.randn(2, 3, 32, 32)
    patches = patchify(images, 8)
    assert patches.shape == (2, 16, 8 * 8 * 3)
    # patch 1 is row 0, column 1 of the grid; pixels ordered (row, col, channel)
    torch.testing.assert_close(patches[0, 1].view(8, 8, 3), images[0, :, 0:8, 8:16].permute(1, 2, 0))
    torch.testing.assert_close(unpatchify(patches, 8), images)


# ------------------------------------------------------------------ position interpolation


def _vit(image_size: int = 32, patch_size: int = 8) -> VisionTransformer:
    torch.manual_seed(0)
    return VisionTransformer(VisionConfig(image_size=image_size, patch_size=patch_size, width=32, depth=1, heads=2)).eval()


def test_vit_runs_at_another_image_size() -> None:
    vit = _vit()
    for size, grid in [(48, 6), (16, 2)]:
        out = vit(torch.randn(2, 3, size, size))
        assert out.tokens.shape == (2, 1 + grid * grid, 32) and out.grid == grid
        assert torch.isfinite(out.tokens).all()
    masked = vit(torch.randn(2, 3, 48, 48), mask_ratio=0.75)
    assert masked.tokens.shape == (2, 1 + 9, 32) and masked.mask.shape == (2, 36)


def test_interpolating_to_the_same_grid_is_identity() -> None:
    pos = torch.randn(1, 1 + 16, 8)
    assert torch.equal(resize_position_embedding(pos, 4), pos)
    vit = _vit()
    assert torch.equal(vit.position_embedding(4), vit.pos_embed)


def test_interpolation_keeps_constants_and_cls() -> None:
    pos = torch.randn(1, 1 + 16, 8)
    pos[:, 1:] = 0.37
    for grid in (2, 3, 6, 9):
        resized = resize_position_embedding(pos, grid)
        assert resized.shape == (1, 1 + grid * grid, 8)
        torch.testing.assert_close(resized[:, 0], pos[:, 0])  # CLS position untouched
        torch.testing.assert_close(resized[:, 1:], torch.full((1, grid * grid, 8), 0.37))


def test_interpolation_follows_the_grid_layout() -> None:
    # an embedding that grows along the columns keeps growing along the columns, not the rows
    grid = 4
    ramp = torch.arange(grid, dtype=torch.float32).repeat(grid)  # value = column index
    pos = torch.cat([torch.zeros(1, 1, 1), ramp.view(1, grid * grid, 1)], dim=1)
    resized = resize_position_embedding(pos, 8)[0, 1:, 0].view(8, 8)
    assert torch.all(resized[:, 1:] >= resized[:, :-1] - 1e-5)  # increasing along columns
    torch.testing.assert_close(resized, resized[:1].expand(8, 8))  # constant down the rows


def test_full_model_runs_at_another_image_size(micro_config, build_task, make_batch) -> None:
    task = build_task(micro_config())
    batch = make_batch(n=2, image_size=48)
    out = task.model(batch["images"], batch["input_ids"], batch["attention_mask"])
    assert out.mim_pred.shape == (2, 36, 8 * 8 * 3)  # decoder positions are interpolated too


# ------------------------------------------------------------------ optional parts


def test_memory_slots_and_layers(micro_config, tokenizer) -> None:
    def build(*overrides):
        return MPMAModel(micro_config(*overrides), len(tokenizer), tokenizer.pad_token_id)

    with_memory = build("fusion.depth=2")
    assert all(layer.memory.memory.shape == (1, 4, 32) for layer in with_memory.fusion.layers)
    assert all(layer.text_stream.gate is not None for layer in with_memory.fusion.layers)

    plain = build("fusion.depth=2", "fusion.memory_slots=0")
    assert not [n for n, _ in plain.named_parameters() if "memory" in n or ".gate." in n]
    assert all(layer.memory is None and layer.text_stream.gate is None for layer in plain.fusion.layers)
    n_with = sum(p.numel() for p in with_memory.parameters())
    n_plain = sum(p.numel() for p in plain.parameters())
    assert n_with > n_plain

    first_only = build("fusion.depth=2", "fusion.memory_layers=[0]")
    assert first_only.fusion.layers[0].memory is not None and first_only.fusion.layers[1].memory is None

    with pytest.raises(ValueError, match="memory_layers"):
        build("fusion.depth=2", "fusion.memory_layers=[2]")


def test_zero_weight_heads_are_not_built(micro_config, tokenizer) -> None:
    def build(*overrides):
        return MPMAModel(micro_config(*overrides), len(tokenizer), tokenizer.pad_token_id)

    full = build()
    assert full.mlm_head is not None and full.mim_decoder is not None and full.itm_head is not None
    assert full.align is not None and full.align.local_image is not None
    assert build("objectives.mlm=0").mlm_head is None
    assert build("objectives.mim=0").mim_decoder is None
    assert build("objectives.itm=0").itm_head is None
    no_local = build("objectives.local_align=0")
    assert no_local.align is not None and no_local.align.local_image is None and no_local.align.local_text is None
    assert build("objectives.global_align=0", "objectives.local_align=0").align is None


def test_m3ae_preset_has_no_alignment_and_no_memory(tokenizer) -> None:
    model = MPMAModel(load_config("tiny_m3ae"), len(tokenizer), tokenizer.pad_token_id)
    assert model.align is None
    assert all(layer.memory is None for layer in model.fusion.layers)
    names = [n for n, _ in model.named_parameters()]
    assert not [n for n in names if n.startswith("align.") or "memory" in n]
    assert model.mlm_head is not None and model.mim_decoder is not None and model.itm_head is not None


def test_head_and_no_decay_parameter_names(micro_config, tokenizer) -> None:
    model = MPMAModel(micro_config(), len(tokenizer), tokenizer.pad_token_id)
    heads = model.head_parameter_names()
    names = {n for n, _ in model.named_parameters()}
    assert {n for n in names if n.startswith(("fusion.", "mlm_head.", "mim_decoder.", "itm_head.", "align."))} == heads
    assert not {n for n in heads if n.startswith(("vision.", "text."))}
    no_decay = model.no_weight_decay()
    assert {"vision.pos_embed", "vision.cls_token", "mim_decoder.mask_token", "align.log_inv_temperature"} <= no_decay
    assert "fusion.layers.0.memory.memory" in no_decay


def test_mim_decoder_puts_visible_tokens_back_at_their_grid_positions() -> None:
    """Without decoder blocks nothing mixes, so changing the k-th visible token may only change the
    prediction at its own grid position ids_keep[k]."""
    from mpma.config import DecoderConfig
    from mpma.models.heads import MIMDecoder
    from mpma.models.vision import random_masking

    torch.manual_seed(0)
    decoder = MIMDecoder(DecoderConfig(width=16, depth=0, heads=2), in_width=8, n_patches=16, patch_pixels=12)
    ids_keep, mask, ids_restore = random_masking(2, 16, 0.75, torch.device("cpu"), torch.Generator().manual_seed(1))
    tokens = torch.randn(2, 1 + 4, 8)
    base = decoder(tokens, ids_restore)
    assert base.shape == (2, 16, 12)
    for k in range(4):
        changed = tokens.clone()
        changed[:, 1 + k] += 1.0
        moved = (decoder(changed, ids_restore) - base).abs().sum(-1) > 1e-6  # (2, 16)
        for row in range(2):
            assert moved[row].nonzero().flatten().tolist() == [ids_keep[row, k].item()]


def test_sincos_position_table_separates_rows_and_columns() -> None:
    from mpma.models.vision import sincos_position_embedding

    table = sincos_position_embedding(4, 16)[0]  # (1 + 16, 16), CLS first
    assert table.shape == (17, 16) and torch.equal(table[0], torch.zeros(16))
    grid = table[1:].view(4, 4, 16)
    # the first half of the channels depends on the row only, the second half on the column only
    assert torch.allclose(grid[:, 0, :8], grid[:, 3, :8])  # same row, other column: row half equal
    assert torch.allclose(grid[0, :, 8:], grid[3, :, 8:])  # same column, other row: column half equal
    assert not torch.allclose(grid[0, 0], grid[0, 3]) and not torch.allclose(grid[0, 0], grid[3, 0])
    assert len({tuple(v.tolist()) for v in table[1:]}) == 16  # every patch position is distinct


def test_pool_fused_mean_ignores_padding_and_cls_reads_the_poolers() -> None:
    from mpma.models.fusion import FusionOutput
    from mpma.tasks.classification import pool_fused

    torch.manual_seed(0)
    text, image, pooled = torch.randn(2, 5, 4), torch.randn(2, 3, 4), torch.randn(2, 8)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    fused = FusionOutput(text, image, pooled)
    mean = pool_fused(fused, mask, "mean")  # (B, 2D)
    assert mean.shape == (2, 8)
    assert torch.allclose(mean[0, :4], text[0, :3].mean(0)) and torch.allclose(mean[1, :4], text[1].mean(0))
    assert torch.allclose(mean[:, 4:], image.mean(1))
    padded = text.clone()
    padded[0, 3:] = 1e3  # padding states must not leak into the feature
    assert torch.equal(pool_fused(FusionOutput(padded, image, pooled), mask, "mean"), mean)
    assert pool_fused(fused, mask, "cls") is pooled
    slot = pool_fused(fused, mask, "slot", torch.tensor([2, 4]))  # the answer slot's state beside the image mean
    assert torch.equal(slot[:, :4], torch.stack([text[0, 2], text[1, 4]])) and torch.allclose(slot[:, 4:], image.mean(1))
    with pytest.raises(ValueError, match="slot"):
        pool_fused(fused, mask, "slot")
    with pytest.raises(ValueError, match="pool must be one of"):
        pool_fused(fused, mask, "max")


# ------------------------------------------------------------------ stochastic depth (vision.drop_path)


def test_drop_path_rates_grow_linearly_over_the_depth() -> None:
    from mpma.models.vision import drop_path_rates

    assert drop_path_rates(0.2, 5) == pytest.approx([0.0, 0.05, 0.1, 0.15, 0.2])
    assert drop_path_rates(0.3, 1) == [0.0]
    assert drop_path_rates(0.0, 4) == [0.0] * 4
    vit = VisionTransformer(VisionConfig(image_size=16, patch_size=8, width=16, depth=3, heads=2, drop_path=0.4))
    assert vit.blocks[0].drop_path is None  # rate 0: no DropPath module
    assert [b.drop_path.rate for b in vit.blocks[1:]] == pytest.approx([0.2, 0.4])


def test_drop_path_drops_whole_samples_and_keeps_the_expectation() -> None:
    from mpma.models.layers import drop_path

    x = torch.ones(4000, 3, 2)
    torch.manual_seed(0)
    out = drop_path(x, 0.25, training=True)
    per_sample = out.flatten(1)
    assert torch.equal(per_sample, per_sample[:, :1].expand_as(per_sample))  # one draw per sample
    assert per_sample[:, 0].unique().tolist() == pytest.approx([0.0, 1 / 0.75])  # dropped or rescaled
    assert abs((per_sample[:, 0] == 0).float().mean().item() - 0.25) < 0.03
    assert out.mean().item() == pytest.approx(1.0, abs=0.05)
    state = torch.get_rng_state()
    assert drop_path(x, 0.25, training=False) is x and drop_path(x, 0.0, training=True) is x
    assert torch.equal(torch.get_rng_state(), state)  # neither draws a random number


def _vit_pair(drop_path: float) -> tuple[VisionTransformer, VisionTransformer]:
    """A ViT with ``drop_path`` and its twin without, holding the same weights."""
    shape = dict(image_size=32, patch_size=8, width=32, depth=3, heads=2)
    torch.manual_seed(0)
    plain = VisionTransformer(VisionConfig(**shape))
    torch.manual_seed(0)
    dropping = VisionTransformer(VisionConfig(**shape, drop_path=drop_path))
    assert dropping.state_dict().keys() == plain.state_dict().keys()  # DropPath has no state
    for a, b in zip(plain.state_dict().values(), dropping.state_dict().values()):
        assert torch.equal(a, b)  # building DropPath draws no random number either
    return plain, dropping


def test_vit_drop_path_in_training_and_eval() -> None:
    plain, dropping = _vit_pair(0.5)
    images = torch.randn(64, 3, 32, 32)
    dropping.train()
    torch.manual_seed(1)
    first, second = dropping(images).tokens, dropping(images).tokens
    differs = (first - second).flatten(1).abs().amax(1) > 0
    # per sample: most samples drew different branches in the two calls, a few (~10%) the same ones
    assert 0 < int(differs.sum()) < 64
    torch.manual_seed(3)
    again = dropping(images).tokens
    torch.manual_seed(3)
    assert torch.equal(dropping(images).tokens, again)  # torch's RNG decides: a seed replays it
    dropping.eval()
    reference = plain.eval()(images).tokens
    assert torch.equal(dropping(images).tokens, dropping(images).tokens)
    assert torch.equal(dropping(images).tokens, reference)  # eval: the full network, no rescaling


def test_vit_without_drop_path_is_the_plain_computation_and_draws_nothing() -> None:
    from mpma.models.layers import Block

    vit = _vit_pair(0.5)[0].train()
    assert all(block.drop_path is None for block in vit.blocks)
    images = torch.randn(4, 3, 32, 32)
    state = torch.get_rng_state()
    out = vit(images).tokens
    assert torch.equal(torch.get_rng_state(), state)  # drop_path=0 consumes no random number in training
    # the block is exactly x + attn(norm1(x)); x + mlp(norm2(x)), as before drop path existed
    block = vit.blocks[0]
    assert isinstance(block, Block)
    x = torch.randn(4, 5, 32)
    h = x + block.attn(block.norm1(x))[0]
    assert torch.equal(block(x), h + block.mlp(block.norm2(h)))
    assert torch.equal(vit.eval()(images).tokens, out)  # train and eval agree when nothing is dropped


def test_negative_pairs_are_fused_in_the_same_call_with_the_same_result(micro_config, build_task, make_batch) -> None:
    """One fusion call on B + B' rows gives what two calls give: the pairs' fused streams and the
    negatives' pooled features (the fusion treats each row on its own)."""
    model = build_task(micro_config()).model.eval()
    batch = make_batch(n=6)
    text_index, image_index = torch.tensor([1, 2, 0, 4]), torch.tensor([0, 0, 5, 3])
    calls = []
    with torch.no_grad():
        out = model(batch["images"], batch["input_ids"], batch["attention_mask"], mask_ratio=0.5,
                    generator=torch.Generator().manual_seed(0),
                    negative_pairs=lambda o: calls.append(o.image_embed) or (text_index, image_index))
        plain = model(batch["images"], batch["input_ids"], batch["attention_mask"], mask_ratio=0.5,
                      generator=torch.Generator().manual_seed(0))
        separate = model.fuse(plain.text[text_index], batch["attention_mask"][text_index],
                              plain.vision.tokens[image_index])
    assert len(calls) == 1 and calls[0] is not None  # chosen after the alignment embeddings exist
    torch.testing.assert_close(out.fusion.pooled, plain.fusion.pooled, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out.fusion.text, plain.fusion.text, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out.mim_pred, plain.mim_pred, rtol=1e-4, atol=1e-5)
    assert out.negative_pooled.shape == (4, plain.fusion.pooled.shape[1])
    torch.testing.assert_close(out.negative_pooled, separate.pooled, rtol=1e-4, atol=1e-5)
    assert plain.negative_pooled is None
