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


# ------------------------------------------------------------------ masking in the collate step


def _masking_collator(tokenizer, whole_word: bool = True):
    from mpma.data.pairs import PairCollator
    from mpma.data.text import TextMasker

    masker = TextMasker(tokenizer.mask_token_id, len(tokenizer), 0.15, whole_word, seed=7)
    return PairCollator(tokenizer, 48, masker=masker)


def _synthrad_pairs(n: int = 24):
    from mpma.data.pairs import SynthradPairs
    from mpma.data.synthrad import SynthRad

    return SynthradPairs(SynthRad(n, seed=3, image_size=32), 32)


def test_collate_step_adds_the_mlm_view_seeded_by_the_batch_number(tokenizer) -> None:
    pairs = _synthrad_pairs(8)
    items = [pairs[i] for i in range(8)]
    collate = _masking_collator(tokenizer)
    first, again, other = collate(items, 5), collate(items, 5), collate(items, 6)
    assert torch.equal(first["mlm_input_ids"], again["mlm_input_ids"])
    assert not torch.equal(first["mlm_labels"], other["mlm_labels"])
    selected = first["mlm_labels"] != -100
    special = first["special_tokens_mask"]
    assert torch.equal(first["mlm_labels"][selected], first["input_ids"][selected])
    for row in range(8):
        n = int((special[row] == 0).sum())
        assert int(selected[row].sum()) >= max(1, round(0.15 * n))
    with pytest.raises(ValueError, match="batch number"):
        collate(items)


@pytest.mark.parametrize("workers", [0, 2])
def test_masks_do_not_depend_on_workers_and_replay_from_any_start(tokenizer, workers: int) -> None:
    from mpma.data.sampling import EpochBatches, iterate_batches

    pairs = _synthrad_pairs(24)
    collate = _masking_collator(tokenizer)

    def masks(start: int, count: int, num_workers: int) -> list[torch.Tensor]:
        stream = iterate_batches(pairs, collate, EpochBatches(len(pairs), 4, seed=2), start, num_workers)
        return [next(stream)["mlm_input_ids"] for _ in range(count)]

    reference = masks(0, 9, 0)  # 6 batches per epoch: crosses into the second epoch
    assert len({tuple(m.flatten().tolist()) for m in reference}) == 9
    assert all(torch.equal(a, b) for a, b in zip(reference, masks(0, 9, workers)))
    assert all(torch.equal(a, b) for a, b in zip(reference[4:], masks(4, 5, workers)))


def test_counting_collate_numbers_a_stream_as_the_loader_orders_it(tokenizer) -> None:
    from torch.utils.data import DataLoader, IterableDataset

    from mpma.data.sampling import CountingCollate

    pairs = _synthrad_pairs(16)

    class Stream(IterableDataset):
        def __iter__(self):
            from torch.utils.data import get_worker_info

            info = get_worker_info()
            worker, workers = (info.id, info.num_workers) if info else (0, 1)
            for batch in range(worker, 4, workers):  # batch b holds items 4b..4b+3, in loader order
                yield from (pairs[i] for i in range(4 * batch, 4 * batch + 4))

    numbers = []

    def record(items, number):
        numbers.append(number)
        return _masking_collator(tokenizer)(items, number)

    direct = [_masking_collator(tokenizer)([pairs[i] for i in range(4 * b, 4 * b + 4)], b)["mlm_input_ids"]
              for b in range(4)]
    single = list(DataLoader(Stream(), batch_size=4, collate_fn=CountingCollate(record)))
    assert numbers == [0, 1, 2, 3]
    two = list(DataLoader(Stream(), batch_size=4, collate_fn=CountingCollate(_masking_collator(tokenizer)),
                          num_workers=2))
    for batch_number in range(4):
        assert torch.equal(single[batch_number]["mlm_input_ids"], direct[batch_number])
        assert torch.equal(two[batch_number]["mlm_input_ids"], direct[batch_number])


def test_task_trains_on_the_collated_mlm_view(micro_config, build_task, tokenizer, monkeypatch) -> None:
    from mpma.tasks import pretrain

    task = build_task(micro_config())
    pairs = _synthrad_pairs(8)
    batch = _masking_collator(tokenizer)([pairs[i] for i in range(8)], 0)
    monkeypatch.setattr(pretrain, "mask_tokens", lambda *a, **k: pytest.fail("the batch was already masked"))
    seen = {}
    original = task.model.forward

    def spy(images, input_ids, *args, **kwargs):
        seen["input_ids"] = input_ids
        return original(images, input_ids, *args, **kwargs)

    monkeypatch.setattr(task.model, "forward", spy)
    result = task(batch, torch.Generator().manual_seed(0))
    assert torch.equal(seen["input_ids"], batch["mlm_input_ids"])
    assert torch.isfinite(result.losses["mlm"])


def test_vectorised_masking_takes_words_in_key_order() -> None:
    """Every unit below the count is taken whole; the first unit that reaches the count is the last."""
    word_ids = torch.tensor([[-1, 0, 0, 0, 1, 2, 2, 3, 4, 5, 6, 7, 8, 9, -1]] * 200)
    special = (word_ids < 0).long()
    ids = torch.arange(15).repeat(200, 1) + 10
    _, labels = mask_tokens(ids, special, MASK_ID, VOCAB, 0.15, word_ids=word_ids,
                            generator=torch.Generator().manual_seed(4))
    counts = (labels != -100).sum(dim=1)  # 13 maskable -> count 2: one 3-piece word, or 2 one-piece words,
    assert set(counts.tolist()) <= {2, 3, 4}  # or a 2-piece word, or one 1-piece then the 3-piece word
    first_word = (labels[:, 1:4] != -100)
    assert torch.all(first_word.all(dim=1) | ~first_word.any(dim=1))  # word 0 all or nothing


# ------------------------------------------------------------------ weighted masking (text.mask_weighting)


@pytest.mark.parametrize("whole_word", [False, True])
def test_weighted_masking_keeps_the_exact_count_and_follows_the_weights(whole_word: bool) -> None:
    ids, special = _ids(batch=300, length=30, pad_from=[30 - (i % 20) for i in range(300)], seed=5)
    word_ids = torch.where(special == 1, -1, torch.arange(30).repeat(300, 1)) if whole_word else None
    weights = torch.ones(VOCAB)
    heavy = torch.arange(10, VOCAB, 2)  # even ids weigh 20x the odd ones
    weights[heavy] = 20.0
    _, labels = mask_tokens(ids, special, MASK_ID, VOCAB, 0.2, word_ids=word_ids,
                            generator=torch.Generator().manual_seed(0), token_weights=weights)
    selected = labels != -100
    assert not torch.any(selected & (special == 1))
    for row in range(ids.shape[0]):
        n = int((special[row] == 0).sum())
        assert int(selected[row].sum()) == max(1, round(0.2 * n)), row
    maskable = special == 0
    even_share_of_maskable = float((ids[maskable] % 2 == 0).float().mean())  # ~0.5
    even_share_of_masked = float((ids[selected] % 2 == 0).float().mean())
    _, uniform_labels = mask_tokens(ids, special, MASK_ID, VOCAB, 0.2, word_ids=word_ids,
                                    generator=torch.Generator().manual_seed(0))
    uniform_share = float((ids[uniform_labels != -100] % 2 == 0).float().mean())
    assert abs(uniform_share - even_share_of_maskable) < 0.05  # uniform draws ignore the weights
    assert even_share_of_masked > 0.85  # 20:1 weights: nearly every masked token is an even one


def test_a_weightless_word_is_masked_only_when_the_count_needs_it() -> None:
    """Exponential clocks over weights: a token of (floored) weight ~0 is taken only after every other."""
    ids = torch.tensor([[2, 20, 21, 22, 23, 3]] * 50)
    special = torch.tensor([[1, 0, 0, 0, 0, 1]] * 50)
    weights = torch.ones(VOCAB)
    weights[20] = 1e-6
    _, labels = mask_tokens(ids, special, MASK_ID, VOCAB, 0.75, generator=torch.Generator().manual_seed(1),
                            token_weights=weights)  # 3 of 4 maskable tokens: always 21, 22, 23
    assert torch.all(labels[:, 1] == -100) and torch.all(labels[:, 2:5] != -100)


@pytest.mark.parametrize("kind", ["idf", "surprisal"])
def test_mask_weights_favour_the_words_the_text_leaves_open(tokenizer, kind: str) -> None:
    from mpma.data.text import mask_weights

    # "left"/"right" and the finding words vary from text to text; "the", "in", "is", "." never do
    sides, findings = ["left", "right"], ["nodule", "effusion", "opacity", "mass"]
    texts = [f"there is a {findings[i % 4]} in the {sides[(i // 4) % 2]} lower zone ." for i in range(400)]
    weights = mask_weights(tokenizer, texts, 32, kind)
    vocab = tokenizer.get_vocab()
    assert weights.shape == (len(tokenizer),) and torch.all(weights > 0)
    for fixed in ["the", "is", "in", "."]:
        for varying in findings if kind == "idf" else [*sides, *findings]:
            assert weights[vocab[varying]] > 3 * weights[vocab[fixed]], (fixed, varying)
    if kind == "surprisal":  # two equally likely sides: ln 2; four findings: ln 4
        assert float(weights[vocab["left"]]) == pytest.approx(0.693, abs=0.05)
        assert float(weights[vocab["nodule"]]) == pytest.approx(1.386, abs=0.05)
    with pytest.raises(ValueError, match="no texts"):
        mask_weights(tokenizer, [], 32, kind)


def test_config_mask_weighting_choices() -> None:
    from mpma.config import ConfigError, load_config

    assert load_config("tiny").text.mask_weighting == "uniform"
    assert load_config("tiny", ["text.mask_weighting=surprisal"]).text.mask_weighting == "surprisal"
    with pytest.raises(ConfigError, match="text.mask_weighting"):
        load_config("tiny", ["text.mask_weighting=tfidf"])


def test_task_refuses_weighted_masking_without_weights(micro_config, build_task, tokenizer) -> None:
    task = build_task(micro_config("text.mask_weighting=idf"))
    pairs = _synthrad_pairs(4)
    from mpma.data.pairs import PairCollator

    batch = PairCollator(tokenizer, 32)([pairs[i] for i in range(4)])
    with pytest.raises(ValueError, match="token_mask_weights"):
        task(batch, torch.Generator().manual_seed(0))
    task.token_mask_weights = torch.ones(len(tokenizer))
    assert torch.isfinite(task(batch, torch.Generator().manual_seed(0)).losses["mlm"])


@pytest.mark.parametrize("weighting", ["uniform", "surprisal"])
def test_pretraining_masks_with_weights_from_its_training_texts(micro_config, tokenizer, weighting: str) -> None:
    from types import SimpleNamespace

    from mpma.data.text import RUN_TOKENIZER_TEXTS, mask_weights
    from mpma.pipelines.pretraining import _text_masker, build_pretrain_data, build_task

    config = micro_config(f"text.mask_weighting={weighting}")
    data = build_pretrain_data(config)
    task = build_task(config, tokenizer)
    masker = _text_masker(task, config, SimpleNamespace(rank=0), data, tokenizer)
    if weighting == "uniform":
        assert masker.token_weights is None and task.token_mask_weights is None
        return
    expected = mask_weights(tokenizer, data.train.texts()[:RUN_TOKENIZER_TEXTS], config.text.max_length, weighting)
    assert torch.equal(masker.token_weights, expected)
    assert task.token_mask_weights is masker.token_weights  # the task's own masking path draws the same way
