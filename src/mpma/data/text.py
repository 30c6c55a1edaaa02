"""Text processing: offline WordPiece tokenizer training, tokenizer loading and MLM masking."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from pathlib import Path

import torch

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def cache_dir() -> Path:
    """``$MPMA_CACHE`` or ``~/.cache/mpma``: where tokenizers trained on the fly are kept."""
    return Path(os.environ.get("MPMA_CACHE", Path.home() / ".cache" / "mpma"))


def read_corpus(path: str | Path) -> list[str]:
    """Lines of text from a plain-text file, or the ``text`` fields of a JSONL manifest.

    Raises:
        FileNotFoundError: naming the path.
        ValueError: a JSONL line without a text field, naming path and line.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"corpus not found: {path} (pass a .txt file or a JSONL manifest)")
    texts = []
    if path.suffix in (".jsonl", ".json"):
        from mpma.data.records import read_jsonl

        for number, record in read_jsonl(path):
            fields = [record[k] for k in ("text", "question", "caption") if isinstance(record.get(k), str)]
            if not fields:
                raise ValueError(f"{path}:{number}: no 'text', 'question' or 'caption' field")
            texts.extend(fields)
        return texts
    with path.open(encoding="utf-8") as handle:
        for line in handle:
            line = line.rstrip("\n")
            if "\t" in line:  # ROCO-style "ID<TAB>caption"
                line = line.split("\t", 1)[1]
            if line.strip():
                texts.append(line.strip())
    return texts


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
    trainer = trainers.WordPieceTrainer(
        vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, min_frequency=1, show_progress=False
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
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
    key = hashlib.sha1(f"{name}-{vocab_size}".encode()).hexdigest()[:10]
    path = cache_dir() / "tokenizers" / f"{name}-{vocab_size}-{key}"
    if path.is_dir():
        return load_tokenizer(path)
    return train_tokenizer(texts_fn(), path, vocab_size=vocab_size, overwrite=False)


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


def mask_tokens(
    input_ids: torch.Tensor,
    special_tokens_mask: torch.Tensor,
    mask_token_id: int,
    vocab_size: int,
    mask_ratio: float = 0.15,
    word_ids: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT masking with an exact count per sequence: 80% [MASK], 10% random token, 10% unchanged.

    Each sequence gets ``max(1, round(mask_ratio * n))`` masked positions among its n maskable
    (non-special, non-padding) tokens. With ``word_ids`` whole words are masked together (words are
    drawn in random order until the count is reached, so a long last word may overshoot it).

    Args:
        input_ids: (B, T) token ids.
        special_tokens_mask: (B, T) 1 at special and padding tokens (never masked).
        word_ids: (B, T) word index per token (-1 for specials), enables whole-word masking.

    Returns:
        masked input ids (B, T) and labels (B, T): the original id at masked positions, -100 elsewhere.
    """
    device = input_ids.device
    maskable = special_tokens_mask == 0
    selected = torch.zeros_like(maskable)
    noise = torch.rand(input_ids.shape, generator=generator).to(device)
    for row in range(input_ids.shape[0]):
        n = int(maskable[row].sum())
        if n == 0:
            continue
        count = max(1, int(round(mask_ratio * n)))
        if word_ids is None:
            scores = noise[row].masked_fill(~maskable[row], 2.0)
            selected[row, scores.argsort()[:count]] = True
        else:
            words = word_ids[row].masked_fill(~maskable[row], -1)
            unique = words[words >= 0].unique()
            order = unique[torch.randperm(len(unique), generator=generator).to(device)]
            taken = 0
            for word in order.tolist():
                positions = words == word
                selected[row] |= positions
                taken += int(positions.sum())
                if taken >= count:
                    break
    labels = torch.where(selected, input_ids, torch.full_like(input_ids, -100))
    action = torch.rand(input_ids.shape, generator=generator).to(device)
    masked = input_ids.clone()
    masked[selected & (action < 0.8)] = mask_token_id
    random_positions = selected & (action >= 0.8) & (action < 0.9)
    random_ids = torch.randint(vocab_size, input_ids.shape, generator=generator).to(device)
    masked[random_positions] = random_ids[random_positions]
    return masked, labels
