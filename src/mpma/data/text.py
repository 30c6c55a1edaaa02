"""Text processing: offline WordPiece tokenizer training, tokenizer loading, unknown-token coverage
and MLM masking (the corpora a tokenizer is trained on are read by :mod:`mpma.data.corpora`)."""

from __future__ import annotations

import hashlib
import itertools
import math
import os
import string
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

import torch

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
COVERAGE_WARN_RATE = 0.01  # fine-tuning warns above this share of [UNK] tokens in the training text
RUN_TOKENIZER_TEXTS = 20_000  # a pre-training tokenizer learns from the run's first 20,000 training texts
CORPUS_TOKENIZER_TEXTS = 100_000  # ... and from the first 100,000 of each text.tokenizer_corpora entry


def cache_dir() -> Path:
    """``$MPMA_CACHE`` or ``~/.cache/mpma``: where tokenizers trained on the fly are kept."""
    return Path(os.environ.get("MPMA_CACHE", Path.home() / ".cache" / "mpma"))


def train_tokenizer(
    texts: Iterable[str], out_dir: str | Path, vocab_size: int = 8000, lowercase: bool = True, overwrite: bool = True
):
    """Train a WordPiece tokenizer offline and save it as a Hugging Face tokenizer folder.

    The folder loads with ``transformers.AutoTokenizer.from_pretrained(out_dir)``; sequences are
    ``[CLS] text [SEP]`` (pairs: ``[CLS] a [SEP] b [SEP]``). When ``out_dir`` already exists its
    tokenizer files are replaced (other files are kept), or, with ``overwrite=False`` (the cache,
    where another process may have just written the same tokenizer), the existing copy is kept.

    Returns:
        the loaded ``transformers`` fast tokenizer.
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import BertTokenizerFast

    tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=lowercase, strip_accents=lowercase)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    # Every printable ASCII character is in the alphabet, so text unlike the training text (a question's
    # "?", "/", "(") never becomes [UNK]: synthrad reports alone hold none of them.
    alphabet = sorted(set((string.ascii_lowercase if lowercase else string.ascii_letters) + string.digits
                          + string.punctuation))
    trainer = trainers.WordPieceTrainer(
        vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, min_frequency=1, show_progress=False,
        initial_alphabet=alphabet,
    )
    # One line of doubled letters and digits ("aa bb ... 99") puts each in continuation form ("##a")
    # too, so any word of a new text can be spelled from pieces instead of becoming [UNK].
    spelling = " ".join(c + c for c in alphabet if c.isalnum())
    tokenizer.train_from_iterator(itertools.chain(texts, [spelling]), trainer=trainer)
    cls_id, sep_id = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)]
    )
    tokenizer.decoder = decoders.WordPiece()
    fast = BertTokenizerFast(tokenizer_object=tokenizer, do_lower_case=lowercase)
    out_dir = Path(out_dir)
    tmp = out_dir.with_name(out_dir.name + f".tmp{os.getpid()}")
    fast.save_pretrained(str(tmp))
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    if not out_dir.exists():
        os.replace(tmp, out_dir)
    elif overwrite:
        for item in tmp.iterdir():
            os.replace(item, out_dir / item.name)
        tmp.rmdir()
    else:  # another process won the race; keep its copy
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    return load_tokenizer(out_dir)


def load_tokenizer(path: str | Path):
    """Load a local Hugging Face tokenizer folder (never the network)."""
    from transformers import AutoTokenizer

    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(
            f"tokenizer folder not found: {path} (set text.tokenizer to a local Hugging Face tokenizer folder, "
            "or train one with `mpma tokenizer train --corpus FILE --out DIR`)"
        )
    tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    if tokenizer.mask_token_id is None or tokenizer.pad_token_id is None:
        raise ValueError(f"tokenizer at {path} has no mask or pad token; masked language modelling needs both")
    return tokenizer


def cached_tokenizer(name: str, texts_fn, vocab_size: int):
    """A tokenizer trained once on ``texts_fn()`` and cached under ``cache_dir()/tokenizers``."""
    # "a1": tokenizers trained with the printable-ASCII alphabet (earlier caches lacked "?", "/", ...)
    key = hashlib.sha1(f"{name}-{vocab_size}-a1".encode()).hexdigest()[:10]
    path = cache_dir() / "tokenizers" / f"{name}-{vocab_size}-{key}"
    if path.is_dir():
        return load_tokenizer(path)
    return train_tokenizer(texts_fn(), path, vocab_size=vocab_size, overwrite=False)


class TokenizerCoverageWarning(UserWarning):
    """A tokenizer maps too many tokens of a task's text to [UNK] (see :func:`coverage_warning`)."""


def unknown_token_rate(tokenizer, texts: Iterable[str], top_k: int = 20) -> dict:
    """How much of ``texts`` a tokenizer cannot represent: its [UNK] tokens and the words behind them.

    A WordPiece tokenizer emits one [UNK] for a whole word it cannot spell with its vocabulary; the
    word is read back from the token's character offsets (fast tokenizers) or found by tokenising each
    whitespace-separated word alone (slow ones). Texts are tokenised whole, without special tokens and
    without truncation. ~10k short texts take well under a second.

    Returns:
        ``texts``, ``texts_with_unk``, ``words`` (pre-tokenised words), ``tokens``, ``unk_tokens``,
        ``rate`` (unk_tokens / tokens, 0 when there are no tokens), ``tokens_per_word``,
        ``distinct_unknown_words`` and ``top_unknown_words``: up to ``top_k`` ``(word, count)``, most
        frequent first, words as the tokenizer normalises them (lower-cased for an uncased one).
    """
    texts = [t for t in texts if isinstance(t, str)]
    count = _count_unknown_fast if getattr(tokenizer, "is_fast", False) else _count_unknown_slow
    tokens, unk_tokens, words, texts_with_unk, unknown = count(tokenizer, texts)
    return {
        "texts": len(texts),
        "texts_with_unk": texts_with_unk,
        "words": words,
        "tokens": tokens,
        "unk_tokens": unk_tokens,
        "rate": unk_tokens / tokens if tokens else 0.0,
        "tokens_per_word": tokens / words if words else 0.0,
        "distinct_unknown_words": len(unknown),
        "top_unknown_words": sorted(unknown.items(), key=lambda item: (-item[1], item[0]))[:top_k],
    }


def _count_unknown_fast(tokenizer, texts: list[str]) -> tuple[int, int, int, int, Counter[str]]:
    """(tokens, unk_tokens, words, texts_with_unk, unknown word counts) of ``texts`` under a fast
    tokenizer: whole texts encoded by a copy of its backend (no truncation, padding or special tokens)
    in chunks of 2048; each [UNK]'s word is read back from its character offsets, normalised."""
    from tokenizers import Tokenizer

    unk_id = tokenizer.unk_token_id
    unknown: Counter[str] = Counter()
    tokens = unk_tokens = words = texts_with_unk = 0
    backend = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())  # a copy: never touch its truncation
    backend.no_truncation()
    backend.no_padding()
    normalize = backend.normalizer.normalize_str if backend.normalizer is not None else (lambda w: w)
    for start in range(0, len(texts), 2048):
        chunk = texts[start:start + 2048]
        for text, encoding in zip(chunk, backend.encode_batch(chunk, add_special_tokens=False)):
            ids = encoding.ids
            tokens += len(ids)
            words += len({w for w in encoding.word_ids if w is not None})
            hits = [i for i, token in enumerate(ids) if token == unk_id] if unk_id is not None else []
            if hits:
                texts_with_unk += 1
                unk_tokens += len(hits)
                for i in hits:
                    begin, end = encoding.offsets[i]
                    unknown[normalize(text[begin:end])] += 1
    return tokens, unk_tokens, words, texts_with_unk, unknown


def _count_unknown_slow(tokenizer, texts: list[str]) -> tuple[int, int, int, int, Counter[str]]:
    """(tokens, unk_tokens, words, texts_with_unk, unknown word counts) of ``texts`` under a slow
    tokenizer: each whitespace-separated word tokenised alone, without special tokens; an unknown
    word is lower-cased when the tokenizer is."""
    unk_id = tokenizer.unk_token_id
    unknown: Counter[str] = Counter()
    tokens = unk_tokens = words = texts_with_unk = 0
    for text in texts:
        hit = False
        for word in text.split():
            ids = tokenizer(word, add_special_tokens=False)["input_ids"]
            words += 1
            tokens += len(ids)
            n = ids.count(unk_id) if unk_id is not None else 0
            if n:
                hit = True
                unk_tokens += n
                unknown[word.lower() if getattr(tokenizer, "do_lower_case", False) else word] += n
        texts_with_unk += hit
    return tokens, unk_tokens, words, texts_with_unk, unknown


def coverage_warning(report: dict, what: str, threshold: float = COVERAGE_WARN_RATE) -> str | None:
    """The warning to show when ``report['rate']`` (from :func:`unknown_token_rate`) exceeds ``threshold``.

    Args:
        report: An :func:`unknown_token_rate` report.
        what: The text it was measured on, e.g. "the vqa training text".

    Returns:
        A message naming the rate, the most frequent unknown words and the remedy, or None.
    """
    if report["rate"] <= threshold:
        return None
    shown = ", ".join(f"{word!r} x{count}" for word, count in report["top_unknown_words"][:10])
    return (f"{report['rate']:.1%} of the {report['tokens']} tokens of {what} are [UNK] under this run's tokenizer "
            f"({report['texts_with_unk']} of {report['texts']} texts hit; {report['distinct_unknown_words']} distinct "
            f"unknown words, most frequent: {shown}). The model cannot read these words. Pre-train with a tokenizer "
            "built over the downstream text too, e.g. `mpma pretrain 'text.tokenizer_corpora=[vqa-rad:PATH, "
            "roco:PATH, manifest.jsonl]'` (and a larger text.vocab_size), then fine-tune from that run; "
            "`mpma tokenizer coverage --tokenizer DIR --corpus SPEC` measures a tokenizer first.")


def tokenize(tokenizer, texts: list[str], max_length: int, text_pairs: list[str] | None = None) -> dict[str, torch.Tensor]:
    """Tokenise a batch, padded to the longest sequence (at most ``max_length``).

    Returns:
        input_ids (B, T), attention_mask (B, T), special_tokens_mask (B, T) and word_ids (B, T) with
        -1 at special and padding positions.
    """
    encoded = tokenizer(
        texts, text_pairs, padding="longest", truncation=True, max_length=max_length,
        return_special_tokens_mask=True, return_tensors="pt",
    )
    word_ids = torch.full_like(encoded["input_ids"], -1)
    for row in range(word_ids.shape[0]):
        ids = encoded.word_ids(row)
        word_ids[row] = torch.tensor([-1 if w is None else w for w in ids])
    return {
        "input_ids": encoded["input_ids"],
        "attention_mask": encoded["attention_mask"],
        "special_tokens_mask": encoded["special_tokens_mask"] | (1 - encoded["attention_mask"]),
        "word_ids": word_ids,
    }


def insert_answer_slot(input_ids: torch.Tensor, attention_mask: torch.Tensor, slot_token_id: int, pad_token_id: int,
                       max_length: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Put one ``slot_token_id`` (the tokenizer's [MASK]) before each sequence's last token ([SEP]).

    The fused state at that position is what a ``head.pool=slot`` classifier reads: in pre-training,
    masked positions are the only text positions MLM trains to gather image-conditioned word
    information. The sequences grow by one token up to ``max_length``; a sequence already that long
    gives up its last word for the slot.

    Args:
        input_ids: (B, T) token ids, each row ``[CLS] ... [SEP]`` then padding.
        attention_mask: (B, T), 1 for real tokens (at least 2 per row).
        slot_token_id: the id placed in the slot.
        pad_token_id: the id of the padding after each row.
        max_length: the longest sequence the text encoder takes.

    Returns:
        input_ids (B, T'), attention_mask (B, T') with T' = min(T + 1, max(T, max_length)), and the
        slot's position per row (B,).
    """
    batch, length = input_ids.shape
    lengths = attention_mask.sum(1)  # (B,)
    if bool((lengths < 2).any()):
        raise ValueError("insert_answer_slot needs [CLS] ... [SEP] in every row (2 tokens or more)")
    new_length = min(length + 1, max(length, max_length))
    slot = torch.clamp(lengths - 1, max=new_length - 2)  # (B,)
    positions = torch.arange(new_length, device=input_ids.device).unsqueeze(0)  # (1, T')
    kept = input_ids.gather(1, positions.clamp(max=length - 1).expand(batch, -1))  # (B, T')
    last = input_ids.gather(1, (lengths - 1).unsqueeze(1))  # (B, 1): each row's [SEP]
    ids = torch.where(positions < slot.unsqueeze(1), kept, torch.full_like(kept, pad_token_id))
    ids = torch.where(positions == slot.unsqueeze(1), torch.full_like(kept, slot_token_id), ids)
    ids = torch.where(positions == slot.unsqueeze(1) + 1, last.expand(-1, new_length), ids)
    mask = (positions <= slot.unsqueeze(1) + 1).to(attention_mask.dtype)
    return ids, mask, slot


def encode_with_answer_slot(tokenizer, texts: list[str], max_length: int,
                            text_pairs: list[str] | None = None) -> dict[str, torch.Tensor]:
    """:func:`tokenize`, then :func:`insert_answer_slot` with the tokenizer's [MASK] (``head.pool=slot``).

    Returns:
        input_ids (B, T'), attention_mask (B, T') and answer_slot (B,), the slot's position per row.
    """
    if tokenizer.mask_token_id is None:
        raise ValueError("head.pool=slot reads the fused state at a [MASK] slot after the text, and this tokenizer "
                         "has no mask token; use head.pool=mean or cls")
    encoded = tokenize(tokenizer, texts, max_length, text_pairs)
    input_ids, attention_mask, slot = insert_answer_slot(encoded["input_ids"], encoded["attention_mask"],
                                                         tokenizer.mask_token_id, tokenizer.pad_token_id, max_length)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "answer_slot": slot}


def mask_tokens(
    input_ids: torch.Tensor,
    special_tokens_mask: torch.Tensor,
    mask_token_id: int,
    vocab_size: int,
    mask_ratio: float = 0.15,
    word_ids: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    token_weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT masking with an exact count per sequence: 80% [MASK], 10% random token, 10% unchanged.

    Each sequence gets ``max(1, round(mask_ratio * n))`` masked positions among its n maskable
    (non-special, non-padding) tokens. With ``word_ids`` whole words are masked together (words are
    taken in random order until the count is reached, so a long last word may overshoot it).
    Vectorised over the batch (no per-row loop): every unit (a token, or a word) gets a random key,
    and a unit is taken when fewer than ``count`` maskable tokens have a smaller key. It runs where the
    batch is collated (:class:`TextMasker`, on the loader workers) or on any device.

    With ``token_weights`` the units are drawn without replacement in proportion to their weight
    (a unit's key is ``Exp(1) / weight``, the exponential-clock form of weighted sampling; a word's
    weight is its heaviest piece's): the count per sequence is unchanged, only *which* tokens are
    masked moves towards the heavy ones (:func:`mask_weights`: the words the text around them leaves
    open, over function words).

    Args:
        input_ids: (B, T) token ids.
        special_tokens_mask: (B, T) 1 at special and padding tokens (never masked).
        word_ids: (B, T) word index per token (-1 for specials), enables whole-word masking.
        generator: RNG for the draws (CPU, or on ``input_ids``' device).
        token_weights: (V,) positive weight per token id, or None for uniform draws.

    Returns:
        masked input ids (B, T) and labels (B, T): the original id at masked positions, -100 elsewhere.
    """
    device = input_ids.device
    rows, length = input_ids.shape
    rng_device = generator.device if generator is not None else device

    def uniform(*shape: int) -> torch.Tensor:
        return torch.rand(shape, generator=generator, device=rng_device).to(device)

    maskable = special_tokens_mask == 0
    count = (mask_ratio * maskable.sum(dim=1).double()).round().clamp(min=1)  # (B,)
    words = None if word_ids is None else word_ids.long().clamp(min=0)  # (B, T) word index of each token
    units = length if words is None else (int(words.max()) + 1 if words.numel() else 1)

    def per_token(unit_values: torch.Tensor) -> torch.Tensor:
        """(B, units) -> (B, T): each token takes its unit's value (a unit is a token, or a word)."""
        return unit_values if words is None else unit_values.gather(1, words)

    draws = uniform(rows, units)
    if token_weights is None:
        keys = per_token(draws).masked_fill(~maskable, 2.0)  # above every real key: never taken
    else:
        weights = token_weights.to(device)[input_ids].masked_fill(~maskable, 0.0)  # (B, T)
        if words is not None:  # a word weighs what its heaviest piece weighs
            weights = per_token(torch.zeros(rows, units, device=device).scatter_reduce(1, words, weights, reduce="amax"))
        clocks = per_token(-torch.log1p(-draws))  # Exp(1) per unit
        keys = (clocks / weights.clamp(min=1e-6)).masked_fill(~maskable, float("inf"))  # never taken: inf
    ordered = keys.sort(dim=1).values  # (B, T)
    before = torch.searchsorted(ordered, keys, side="left")  # (B, T) tokens with a smaller key
    selected = maskable & (before < count[:, None])
    labels = torch.where(selected, input_ids, torch.full_like(input_ids, -100))
    action = uniform(rows, length)
    random_ids = torch.randint(vocab_size, (rows, length), generator=generator, device=rng_device).to(device)
    masked = torch.where(selected & (action < 0.8), torch.full_like(input_ids, mask_token_id), input_ids)
    masked = torch.where(selected & (action >= 0.8) & (action < 0.9), random_ids, masked)
    return masked, labels


class TextMasker:
    """MLM masking in the collate step: adds ``mlm_input_ids`` and ``mlm_labels`` (B, T) to a batch.

    The draws of a batch come from a generator seeded by ``(seed, batch_number)``, so they do not
    depend on which loader worker builds the batch, and a resumed run replays them.

    Args:
        mask_token_id: id of the tokenizer's mask token.
        vocab_size: tokenizer vocabulary size (for the 10% random replacements).
        mask_ratio: fraction of maskable tokens per sequence.
        whole_word: mask every word piece of a chosen word together.
        seed: the run's data seed.
        token_weights: (V,) draw weight per token id (:func:`mask_weights`), None for uniform draws.
    """

    def __init__(self, mask_token_id: int, vocab_size: int, mask_ratio: float, whole_word: bool, seed: int,
                 token_weights: torch.Tensor | None = None) -> None:
        self.mask_token_id = mask_token_id
        self.vocab_size = vocab_size
        self.mask_ratio = mask_ratio
        self.whole_word = whole_word
        self.seed = seed
        self.token_weights = token_weights

    def __call__(self, batch: dict[str, torch.Tensor], batch_number: int) -> dict[str, torch.Tensor]:
        """Add the masked copy to ``batch`` (input_ids, special_tokens_mask, word_ids: (B, T))."""
        generator = torch.Generator().manual_seed(_mix(self.seed, batch_number))
        batch["mlm_input_ids"], batch["mlm_labels"] = mask_tokens(
            batch["input_ids"], batch["special_tokens_mask"], self.mask_token_id, self.vocab_size, self.mask_ratio,
            batch["word_ids"] if self.whole_word else None, generator, self.token_weights,
        )
        return batch


def mask_weights(tokenizer, texts: list[str], max_length: int, kind: str) -> torch.Tensor:
    """MLM draw weights per token id, (V,), estimated from ``texts`` (``text.mask_weighting``).

    - ``idf``: inverse document frequency, ``log((1 + N) / (1 + df))`` for a token found in ``df``
      of the ``N`` texts: rare words over frequent ones.
    - ``surprisal``: how poorly the two neighbouring tokens predict the token, the mean over its
      occurrences of ``-log p(token | previous, next)`` from counts over ``texts`` with that very
      occurrence left out (smoothed towards the token's overall frequency). A token the text around
      it gives away ("the", "is", a full stop) weighs ~0; one it leaves open ("left" against "right"
      in "the _ lower zone", a finding's name) weighs the log of its alternatives: what the image
      has to supply.

    Each text is tokenised as training sees it (truncated at ``max_length``). Weights are floored at
    a tenth of the median weight of the tokens that occur, so no token is never masked; ids absent
    from ``texts`` get the largest weight.
    """
    if not texts:
        raise ValueError("mask_weights: no texts to estimate token weights from")
    sequences = []
    for start in range(0, len(texts), 1024):
        sequences += tokenizer(texts[start:start + 1024], truncation=True, max_length=max_length,
                               add_special_tokens=False)["input_ids"]
    vocab = len(tokenizer)
    occurrences = torch.zeros(vocab, dtype=torch.float64)
    if kind == "idf":
        for ids in sequences:
            occurrences[torch.tensor(sorted(set(ids)), dtype=torch.long)] += 1
        weights = torch.log((1.0 + len(sequences)) / (1.0 + occurrences))
    elif kind == "surprisal":
        triples: Counter[tuple[int, int, int]] = Counter()
        contexts: Counter[tuple[int, int]] = Counter()
        tokens: Counter[int] = Counter()
        for ids in sequences:
            padded = [-1, *ids, -2]  # -1 / -2: the text's start and end
            triples.update(zip(padded, padded[1:], padded[2:]))
            contexts.update(zip(padded, padded[2:]))
            tokens.update(ids)
        total = sum(tokens.values())
        surprisal = torch.zeros(vocab, dtype=torch.float64)
        for (prev, token, following), count in triples.items():
            # leave-one-out: the context's other occurrences predict this one, plus one pseudo-count spread by
            # the token's frequency (add-one on its left-out count, so never 0)
            chance = (count - 1 + tokens[token] / total) / contexts[prev, following]
            surprisal[token] -= count * math.log(chance)
        for token, count in tokens.items():
            occurrences[token] = count
        weights = surprisal / occurrences.clamp(min=1.0)
    else:
        raise ValueError(f"mask_weights: kind must be idf or surprisal, got {kind!r}")
    seen = occurrences > 0
    floor = 0.1 * float(weights[seen].median()) if seen.any() else 1.0
    weights = weights.clamp(min=max(floor, 1e-3))
    weights[~seen] = weights.max()
    return weights.float()


def _mix(seed: int, batch_number: int) -> int:
    """A 63-bit generator seed from (seed, batch number): nearby inputs give unrelated streams."""
    value = (seed * 0x9E3779B97F4A7C15 + batch_number * 0xBF58476D1CE4E5B9 + 0x94D049BB133111EB) % (1 << 64)
    value ^= value >> 31
    value = (value * 0xD6E9D5A4DF2F4F25) % (1 << 64)
    return (value ^ (value >> 29)) & ((1 << 63) - 1)
