"""Batching of downstream examples: images from the :class:`ImageStore`, tokenised text, targets."""

from __future__ import annotations

import torch
from torch.utils.data import Dataset

from mpma.data.pairs import key_to_int
from mpma.data.records import normalize_answer
from mpma.data.tasks import ImageStore
from mpma.data.text import tokenize


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
    """Examples -> batch dict for one task.

    Args:
        task: task name (see :data:`mpma.finetune_config.TASKS`).
        tokenizer: a Hugging Face tokenizer.
        max_length: text truncation length.
        images: image reference -> tensor.
        classes: answer vocabulary (vqa) or label names (classification tasks).
        multi_label: targets are (B, L) multi-hot instead of (B,) class indices.
        soft_targets: VQA targets as (B, A) scores (BCE) instead of (B,) indices (CE).
        blank_images: every image is the blank (all-zero, i.e. mean-grey after normalisation) image,
            so a model sees the text alone: the no-image floor of a task.
    """

    def __init__(self, task: str, tokenizer, max_length: int, images: ImageStore, classes: list[str] | None = None,
                 multi_label: bool = False, soft_targets: bool = False, blank_images: bool = False) -> None:
        self.task = task
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.images = images
        self.classes = list(classes or [])
        self.index = {name: i for i, name in enumerate(self.classes)}
        self.multi_label = multi_label
        self.soft_targets = soft_targets
        self.blank_images = blank_images

    def _text(self, examples: list[dict]) -> tuple[list[str], list[str] | None]:
        if self.task == "vqa":
            return [e["question"] for e in examples], None
        pairs = [e.get("text_pair") for e in examples]
        return [e["text"] for e in examples], (pairs if any(p is not None for p in pairs) else None)

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        batch: dict[str, torch.Tensor] = {}
        if self.task != "txt_cls":
            batch["images"] = torch.stack([self.images.augmented(e["image"], e["augment_seed"]) if "augment_seed" in e
                                           else self.images(e["image"]) for e in examples])
            if self.blank_images:
                batch["images"] = torch.zeros_like(batch["images"])
        if self.task not in ("img_cls", "zero_shot_cls"):
            texts, pairs = self._text(examples)
            if pairs is not None:
                pairs = [p or "" for p in pairs]
            encoded = tokenize(self.tokenizer, texts, self.max_length, pairs)
            batch["input_ids"], batch["attention_mask"] = encoded["input_ids"], encoded["attention_mask"]
        if self.task == "retrieval":
            batch["match_key"] = torch.tensor([key_to_int(str(e["key"])) for e in examples], dtype=torch.int64)
        elif self.task == "vqa":
            indices = [self.index.get(normalize_answer(e["answer"]), -100) for e in examples]
            if self.soft_targets:
                targets = torch.zeros(len(examples), len(self.classes))
                for row, i in enumerate(indices):
                    if i >= 0:
                        targets[row, i] = 1.0
                batch["targets"] = targets
            else:
                batch["targets"] = torch.tensor(indices, dtype=torch.int64)
        elif self.classes:
            if self.multi_label:
                targets = torch.zeros(len(examples), len(self.classes))
                for row, e in enumerate(examples):
                    for label in e["labels"]:
                        targets[row, self._label_index(label)] = 1.0
                batch["targets"] = targets
            else:
                batch["targets"] = torch.tensor([self._label_index(e["labels"][0]) for e in examples], dtype=torch.int64)
        return batch

    def _label_index(self, label: str) -> int:
        if label not in self.index:
            raise ValueError(f"label '{label}' is not in the label set {self.classes}")
        return self.index[label]
