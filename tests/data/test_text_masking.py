"""Paired masking, text side: exact text mask sizes, MLM labels and 80/10/10.

The image side is in tests/models/test_image_masking.py."""

from __future__ import annotations

import pytest
import torch

from mpma.data.text import mask_tokens, tokenize

MASK_ID, VOCAB = 4, 1000


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
