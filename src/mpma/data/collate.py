"""Batching of downstream examples: images from the :class:`ImageStore`, tokenised text, targets.

The collator is told what a task reads and predicts (``reads_image``, ``text_fields``, ``target``:
see :class:`mpma.tasks.base.Task`); it never looks at a task's name.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from mpma.data.bad_records import bad_item
from mpma.data.image import CLIP_MEAN, CLIP_STD, ImageError, ImageTransform, load_image, to_tensor
from mpma.data.pairs import grayscale_to_tensor, key_to_int, shrink_shorter_side
from mpma.data.records import normalize_answer
from mpma.data.text import encode_with_answer_slot, tokenize

TARGETS = ("answer", "labels", "key")


class ImageStore:
    """Image reference -> (3, S, S) tensor, decoded and resized once, then cached.

    A reference is ("synthrad", SynthRad, index) or an absolute file path. :meth:`augmented` gives
    a seeded random resized crop of a file image instead (training only). :meth:`drop_unreadable`
    checks every image of a run's splits up front (fine-tuning evaluates whole splits).
    """

    def __init__(self, image_size: int) -> None:
        self.image_size = image_size
        self._cache: dict = {}
        self._arrays: dict = {}  # file path -> decoded uint8, shorter side at most image_size (for crops)

    def augmented(self, ref, seed: tuple[int, ...]) -> torch.Tensor:
        """(3, S, S) random resized crop of ``ref`` drawn from ``seed`` (no flip: left/right matter).

        A synthrad reference is returned unaugmented (its cases are already drawn at random).
        """
        if not isinstance(ref, str):
            return self(ref)
        array = self._arrays.get(ref)
        if array is None:
            array = shrink_shorter_side(_load(ref), self.image_size)
            self._arrays[ref] = array
        return ImageTransform(size=self.image_size, train=True)(array, np.random.default_rng(list(seed)))

    def drop_unreadable(self, splits: dict[str, list[dict]]) -> tuple[list[dict], int]:
        """Decode (and cache) every file image of ``splits`` once; take out the examples whose image cannot
        be read, in place.

        Returns:
            One row per bad image, ``{"id": path, "image", "reason", "detail", "examples": {split: number
            left out}}`` in first-use order, and the number of distinct image files checked.

        Raises:
            ImageError: no image of a split can be read.
        """
        rows: dict[str, dict] = {}
        files: set[str] = set()
        for split, examples in splits.items():
            kept = []
            for example in examples:
                ref = example.get("image")
                files.update([ref] if isinstance(ref, str) else [])
                if isinstance(ref, str) and ref not in self._cache and ref not in rows:
                    try:
                        self(ref)
                    except ImageError as error:
                        rows[ref] = {**bad_item(ref, ref, error)["bad"], "examples": {}}
                if isinstance(ref, str) and ref in rows:
                    rows[ref]["examples"][split] = rows[ref]["examples"].get(split, 0) + 1
                else:
                    kept.append(example)
            if examples and not kept:
                raise ImageError(f"split '{split}': no example has an image that can be read "
                                 f"(first: {next(iter(rows.values()))['detail']})")
            splits[split] = kept
        return list(rows.values()), len(files)

    def __call__(self, ref) -> torch.Tensor:
        key = ref if isinstance(ref, str) else (id(ref[1]), ref[2])
        tensor = self._cache.get(key)
        if tensor is None:
            if isinstance(ref, str):
                tensor = to_tensor(_load(ref), self.image_size, CLIP_MEAN, CLIP_STD)
            else:
                tensor = grayscale_to_tensor(ref[1][ref[2]].image, self.image_size, CLIP_MEAN, CLIP_STD)
            self._cache[key] = tensor
        return tensor


def _load(path: str) -> np.ndarray:
    try:
        return load_image(path)
    except ImageError as error:
        raise type(error)(f"{error} (run `mpma data validate` on the manifest to list bad records)") from None


class ExampleList(Dataset):
    """A list of example dicts as a map-style dataset (collation does the work).

    With ``augment_seed`` set, every item carries ``"augment_seed": (seed, epoch, index)`` (the epoch
    is told by :func:`~mpma.data.sampling.iterate_batches` through :meth:`set_epoch`), and the
    collator crops its image from that seed, so a draw depends on (seed, epoch, index) only.
    """

    def __init__(self, examples: list[dict], augment_seed: int | None = None) -> None:
        self.examples = examples
        self.augment_seed = augment_seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> dict:
        if self.augment_seed is None:
            return self.examples[index]
        return {**self.examples[index], "augment_seed": (self.augment_seed, self.epoch, index)}


class TaskCollator:
    """Examples -> batch dict.

    Args:
        tokenizer: a Hugging Face tokenizer.
        max_length: text truncation length.
        images: image reference -> tensor.
        reads_image: batch["images"] (B, 3, S, S) from each example's ``image``.
        text_fields: example keys read as text, e.g. ("question",) or ("text", "text_pair"); a second
            field is encoded as the sentence pair. Empty: no text.
        target: "answer" (index into ``classes``, or (B, A) soft scores), "labels" ((B,) indices or
            (B, L) multi-hot), "key" (batch["match_key"] (B,) int64) or None.
        classes: answer vocabulary or label names.
        multi_label: label targets are (B, L) multi-hot instead of (B,) class indices.
        soft_targets: answer targets as (B, A) scores (BCE) instead of (B,) indices (CE).
        blank_images: every image is the blank (all-zero, i.e. mean-grey after normalisation) image,
            so a model sees the text alone: the no-image floor of a task.
        blank_text: every text (and sentence pair) is the empty string, so the encoded text is the
            special tokens alone and a model sees the image alone: the no-text floor of a task.
        answer_slot: put a [MASK] slot before each text's final [SEP] and give its position as
            batch["answer_slot"] (B,) (``head.pool=slot``; :func:`mpma.data.text.insert_answer_slot`).
    """

    def __init__(self, tokenizer, max_length: int, images: ImageStore, *, reads_image: bool,
                 text_fields: tuple[str, ...], target: str | None, classes: list[str] | None = None,
                 multi_label: bool = False, soft_targets: bool = False, blank_images: bool = False,
                 blank_text: bool = False, answer_slot: bool = False) -> None:
        if target is not None and target not in TARGETS:
            raise ValueError(f"target must be one of {TARGETS} or None, got {target!r}")
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.images = images
        self.reads_image = reads_image
        self.text_fields = tuple(text_fields)
        self.target = target
        self.classes = list(classes or [])
        self.index = {name: i for i, name in enumerate(self.classes)}
        self.multi_label = multi_label
        self.soft_targets = soft_targets
        self.blank_images = blank_images
        self.blank_text = blank_text
        self.answer_slot = answer_slot

    def _texts(self, examples: list[dict]) -> tuple[list[str], list[str] | None]:
        first, *rest = self.text_fields
        texts = [e[first] for e in examples]
        pairs = [e.get(rest[0]) for e in examples] if rest else []
        if not any(p is not None for p in pairs):
            return texts, None
        return texts, [p or "" for p in pairs]

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        batch: dict[str, torch.Tensor] = {}
        if self.reads_image:
            batch["images"] = torch.stack([self.images.augmented(e["image"], e["augment_seed"]) if "augment_seed" in e
                                           else self.images(e["image"]) for e in examples])
            if self.blank_images:
                batch["images"] = torch.zeros_like(batch["images"])
        if self.text_fields:
            texts, pairs = self._texts(examples)
            if self.blank_text:
                texts = [""] * len(texts)
                pairs = pairs and [""] * len(pairs)
            if self.answer_slot:
                batch.update(encode_with_answer_slot(self.tokenizer, texts, self.max_length, pairs))
            else:
                encoded = tokenize(self.tokenizer, texts, self.max_length, pairs)
                batch["input_ids"], batch["attention_mask"] = encoded["input_ids"], encoded["attention_mask"]
        if self.target == "key":
            batch["match_key"] = torch.tensor([key_to_int(str(e["key"])) for e in examples], dtype=torch.int64)
        elif self.target == "answer":
            batch["targets"] = self._answer_targets(examples)
        elif self.target == "labels" and self.classes:
            batch["targets"] = self._label_targets(examples)
        return batch

    def _answer_targets(self, examples: list[dict]) -> torch.Tensor:
        """(B,) answer indices (-100 outside the vocabulary) or (B, A) one-hot scores."""
        indices = [self.index.get(normalize_answer(e["answer"]), -100) for e in examples]
        if not self.soft_targets:
            return torch.tensor(indices, dtype=torch.int64)
        targets = torch.zeros(len(examples), len(self.classes))
        for row, i in enumerate(indices):
            if i >= 0:
                targets[row, i] = 1.0
        return targets

    def _label_targets(self, examples: list[dict]) -> torch.Tensor:
        """(B,) label indices or (B, L) multi-hot."""
        if not self.multi_label:
            return torch.tensor([self._label_index(e["labels"][0]) for e in examples], dtype=torch.int64)
        targets = torch.zeros(len(examples), len(self.classes))
        for row, e in enumerate(examples):
            for label in e["labels"]:
                targets[row, self._label_index(label)] = 1.0
        return targets

    def _label_index(self, label: str) -> int:
        if label not in self.index:
            raise ValueError(f"label '{label}' is not in the label set {self.classes}")
        return self.index[label]
