"""The fine-tuning configuration: :class:`FinetuneConfig` (``mpma finetune`` / ``mpma evaluate``)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from mpma.config.pretrain import OptimConfig, RunConfig


@dataclass
class TaskDataConfig:
    """Downstream data: synthrad (default), ``vqa-rad:PATH`` or a manifest."""

    dataset: str = "synthrad"
    train_size: int = 2000  # synthrad cases per split (disjoint from the pre-training cases)
    val_size: int = 300
    test_size: int = 600
    val_fraction: float = 0.1  # held out of train (seeded) when the dataset has no validation split
    fraction: float = 1.0  # label fraction of the training set (seeded, label-stratified)
    batch_size: int = 32
    eval_batch_size: int = 128
    num_workers: int = 0
    seed: int = 0
    augment: bool = False  # training images: seeded random resized crop (no flip); val/test never
    blank_images: bool = False  # every image replaced by a blank one: a question/text-only model (a floor)


@dataclass
class HeadConfig:
    """Task-head settings."""

    vqa_loss: str = "bce"  # "bce" (soft-score, as M3AE) or "ce"
    answer_vocab: str = "train"  # "train" (train+val answers) or "all_splits" (M3AE's train+val+test)
    hidden_mult: float = 2.0  # MLP hidden width = hidden_mult x pooled width
    pool: str = "cls"  # vqa/mm_cls pair feature: "cls" (pooled CLS of both streams) or "mean" (token means)
    train_fit: bool = True  # also score the best weights on the training split ("train_fit" in metrics.json)
    shuffled_eval: bool = True  # vqa/mm_cls: also score test with images shuffled among examples (seeded)
    image_mode: str = "finetune"  # img_cls: "finetune" the vision encoder or "linear_probe"
    retrieval_itm: bool = False  # retrieval fine-tune: add the ITM loss (needs an ITM head)
    rerank_k: int = 0  # retrieval evaluation: re-rank the top-k by ITM (0 = off)
    prompt: str = "a chest radiograph showing {label}"  # zero_shot_cls template


@dataclass
class FinetuneConfig:
    """A fine-tuning run: task, initialisation, head, data, optimisation and run settings.

    ``init`` is "scratch" (a fresh model shaped like ``preset``) or a pre-training run folder /
    checkpoint folder whose config and tokenizer are used.
    """

    task: str = "vqa"
    init: str = "scratch"
    preset: str = "tiny"
    epochs: int = 10
    warmup_fraction: float = 0.1
    head: HeadConfig = field(default_factory=HeadConfig)
    data: TaskDataConfig = field(default_factory=TaskDataConfig)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=3e-4, head_lr_mult=3.0, weight_decay=0.01,
                                                                   steps=0, warmup_steps=0, beta2=0.999))
    run: RunConfig = field(default_factory=lambda: RunConfig(log_every=10, checkpoint_every=10**9))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)
