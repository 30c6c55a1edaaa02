"""Paired masking: exact image/text mask sizes, masked pixels are invisible, MLM labels and 80/10/10."""

from __future__ import annotations

import pytest
import torch

from mpma.config import VisionConfig
from mpma.data.text import mask_tokens, tokenize
from mpma.models.vision import VisionTransformer, patchify, random_masking, unpatchify

MASK_ID, VOCAB = 4, 1000


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


# ------------------------------------------------------------------ text


def _ids(batch: int = 4, length: int = 30, pad_from: list[int] | None = None, seed: int = 0):
    """Random ids in [10, VOCAB) with [CLS]=2 first, [SEP]=3 last real token, [PAD]=0 after it."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(10, VOCAB, (batch, length), generator=g)
    special = torch.zeros(batch, length, dtype=torch.long)
    pad_from = pad_from or [length] * batch
    for row, end in enumerate(pad_from):
        ids[row, 0], ids[row, end - 1] = 2, 3
        ids[row, end:] = 0
        special[row, 0] = special[row, end - 1:] = 1
    return ids, special


@pytest.mark.parametrize("ratio", [0.15, 0.3, 0.5])
def test_exact_text_mask_count_per_sequence(ratio: float) -> None:
    ids, special = _ids(batch=6, length=40, pad_from=[40, 30, 12, 3, 5, 22])
    _, labels = mask_tokens(ids, special, MASK_ID, VOCAB, ratio, generator=torch.Generator().manual_seed(0))
    for row in range(ids.shape[0]):
        n = int((special[row] == 0).sum())
        assert int((labels[row] != -100).sum()) == max(1, round(ratio * n)), row


def test_a_sequence_without_maskable_tokens_is_left_alone() -> None:
    ids, special = _ids(batch=2, length=6, pad_from=[6, 2])  # row 1: [CLS] [SEP] padding
    masked, labels = mask_tokens(ids, special, MASK_ID, VOCAB, 0.15, generator=torch.Generator().manual_seed(0))
    assert torch.all(labels[1] == -100) and torch.equal(masked[1], ids[1])


def test_labels_only_at_masked_positions_and_specials_never_masked() -> None:
    ids, special = _ids(batch=64, length=40, pad_from=[40 - (i % 30) for i in range(64)])
    masked, labels = mask_tokens(ids, special, MASK_ID, VOCAB, 0.3, generator=torch.Generator().manual_seed(1))
    selected = labels != -100
    assert torch.equal(labels[selected], ids[selected])  # the label is the original id
    assert not torch.any(selected & (special == 1))  # specials and padding never selected
    assert torch.equal(masked[special == 1], ids[special == 1])  # ...nor changed
    assert torch.equal(masked[~selected], ids[~selected])  # nothing outside the selection changes
    assert torch.all(masked[masked == MASK_ID] == MASK_ID) and not torch.any((masked == MASK_ID) & ~selected)


def test_80_10_10_replacement() -> None:
    ids, special = _ids(batch=400, length=64, seed=2)
    masked, labels = mask_tokens(ids, special, MASK_ID, VOCAB, 0.5, generator=torch.Generator().manual_seed(2))
    selected = labels != -100
    total = int(selected.sum())
    assert total > 10000
    as_mask = (masked[selected] == MASK_ID).float().mean().item()
    unchanged = (masked[selected] == ids[selected]).float().mean().item()
    random = ((masked[selected] != MASK_ID) & (masked[selected] != ids[selected])).float().mean().item()
    assert as_mask == pytest.approx(0.8, abs=0.015)
    assert unchanged == pytest.approx(0.1, abs=0.01)
    assert random == pytest.approx(0.1, abs=0.01)
    # random replacements are spread over the vocabulary, not a constant
    replaced = masked[selected][(masked[selected] != MASK_ID) & (masked[selected] != ids[selected])]
    assert len(set(replaced.tolist())) > 300


def test_masking_is_reproducible_with_a_generator() -> None:
    ids, special = _ids()
    a = mask_tokens(ids, special, MASK_ID, VOCAB, 0.15, generator=torch.Generator().manual_seed(9))
    b = mask_tokens(ids, special, MASK_ID, VOCAB, 0.15, generator=torch.Generator().manual_seed(9))
    c = mask_tokens(ids, special, MASK_ID, VOCAB, 0.15, generator=torch.Generator().manual_seed(10))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[1], c[1])


def test_whole_word_masking_masks_every_sub_token_of_a_chosen_word() -> None:
    # 20 words of 1-3 sub-tokens each after [CLS]; [SEP] and padding at the end
    torch.manual_seed(0)
    lengths = [1, 3, 2, 1, 3, 2, 2, 1, 3, 1, 2, 3, 1, 1, 2, 3, 2, 1, 1, 2]
    words = [-1] + [w for w, n in enumerate(lengths) for _ in range(n)] + [-1, -1, -1]
    length = len(words)
    word_ids = torch.tensor([words] * 50)
    ids = torch.randint(10, VOCAB, (50, length))
    special = (word_ids < 0).long()
    maskable = int((special[0] == 0).sum())
    count = max(1, round(0.15 * maskable))
    for seed in range(3):
        _, labels = mask_tokens(ids, special, MASK_ID, VOCAB, 0.15, word_ids=word_ids,
                                generator=torch.Generator().manual_seed(seed))
        selected = labels != -100
        assert not torch.any(selected & (special == 1))
        for row in range(50):
            chosen = set(word_ids[row][selected[row]].tolist())
            for word in chosen:  # every sub-token of a chosen word is masked
                assert torch.all(selected[row][word_ids[row] == word]), (row, word)
            # at least the target count, overshooting by less than one (longest) word
            assert count <= int(selected[row].sum()) < count + max(lengths)
        # different rows choose different words
        assert len({tuple(s.nonzero().flatten().tolist()) for s in selected}) > 10


def test_whole_word_masking_with_a_real_tokenizer(tokenizer) -> None:
    text = ["cardiomegaly with pneumothoraces and hyperinflation bilaterally"] * 20
    batch = tokenize(tokenizer, text, max_length=48)
    multi = [w for w in set(batch["word_ids"][0].tolist()) if w >= 0 and (batch["word_ids"][0] == w).sum() > 1]
    assert multi, "the test text should contain words split into several word pieces"
    _, labels = mask_tokens(batch["input_ids"], batch["special_tokens_mask"], tokenizer.mask_token_id, len(tokenizer),
                            0.15, word_ids=batch["word_ids"], generator=torch.Generator().manual_seed(0))
    for row in range(20):
        selected = labels[row] != -100
        for word in set(batch["word_ids"][row][selected].tolist()):
            assert torch.all(selected[batch["word_ids"][row] == word])


def test_task_masks_text_with_the_configured_ratio_and_never_specials(
    micro_config, build_task, make_batch, monkeypatch
) -> None:
    """The pre-training task masks the real batch: labels only at non-special tokens, exact counts."""
    from mpma.tasks import pretrain

    task = build_task(micro_config("text.mask_ratio=0.3"))
    batch = make_batch(n=8)
    calls = {}
    original = pretrain.mask_tokens

    def spy(*args, **kwargs):
        calls["result"] = original(*args, **kwargs)
        return calls["result"]

    monkeypatch.setattr(pretrain, "mask_tokens", spy)
    task(batch, torch.Generator().manual_seed(0))
    masked, labels = calls["result"]
    special = batch["special_tokens_mask"]
    assert not torch.any((labels != -100) & (special == 1))
    for row in range(8):
        n = int((special[row] == 0).sum())
        assert int((labels[row] != -100).sum()) == max(1, round(0.3 * n))
    assert torch.equal(masked[special == 1], batch["input_ids"][special == 1])
