"""The fine-tuning configuration: :class:`FinetuneConfig` (``mpma finetune`` / ``mpma evaluate``)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from mpma.config import checks
from mpma.config.errors import ConfigError
from mpma.config.pretrain import OptimConfig, RunConfig

VQA_LOSSES = ("bce", "ce")
ANSWER_VOCABS = ("train", "all_splits")
POOLS = ("cls", "mean", "slot")  # mpma.tasks.classification.POOLINGS
IMAGE_MODES = ("finetune", "linear_probe")
# keep=: which epoch's weights become best/ and are tested -> how metrics.md and `mpma report` name the rule
KEEP_EPOCHS = {"best_val": "best validation", "last": "the last"}


@dataclass
class TaskDataConfig:
    """Downstream data: synthrad (default), ``vqa-rad:PATH`` or a manifest."""

    dataset: str = "synthrad"
    train_size: int = 2000  # synthrad cases per split (disjoint from the pre-training cases)
    val_size: int = 300
    test_size: int = 600
    # held out of train (seeded) when the dataset has no validation split; 0: none is held out, the model
    # trains on all of train and no epoch is validated (needs keep=last)
    val_fraction: float = 0.1
    fraction: float = 1.0  # label fraction of the training set (seeded, label-stratified)
    batch_size: int = 32
    eval_batch_size: int = 128
    num_workers: int = 0
    seed: int = 0
    augment: bool = False  # training images: seeded random resized crop (no flip); val/test never
    blank_images: bool = False  # every image replaced by a blank one: a question/text-only model (a floor)
    blank_text: bool = False  # every text (question, caption) replaced by an empty one: an image-only model
    # examples whose image fails to load are left out and listed in the run's rejects.jsonl; the run
    # stops when more than this share of the examples is bad (mpma.data.bad_records)
    max_bad_fraction: float = 0.001

    def __post_init__(self) -> None:
        checks.not_empty("data.dataset", self.dataset, "synthrad, vqa-rad:PATH or a manifest")
        for name in ("train_size", "val_size", "test_size", "batch_size", "eval_batch_size"):
            checks.positive(f"data.{name}", getattr(self, name))
        checks.in_range("data.val_fraction", self.val_fraction, 0.0, 1.0,
                        note="the share of train held out for validation; 0 = none (with keep=last)")
        checks.in_range("data.fraction", self.fraction, 0.0, 1.0, low_open=True, high_open=False,
                        note="the share of the training labels used")
        checks.at_least("data.num_workers", self.num_workers, 0)
        checks.at_least("data.seed", self.seed, 0)
        checks.in_range("data.max_bad_fraction", self.max_bad_fraction, 0.0, 1.0,
                        note="the share of examples that may fail to load before the run stops")
        if self.blank_images and self.blank_text:
            raise ConfigError("data.blank_images=true with data.blank_text=true leaves the model nothing to read; "
                              "set one of them (the no-image or the no-text floor)")


@dataclass
class HeadConfig:
    """Task-head settings."""

    # the dataclass defaults; the vqa task's recipe (mpma.tasks.vqa.VQA.recipe) sets vqa_loss=ce, pool=mean
    vqa_loss: str = "bce"  # "bce" (soft-score, as M3AE) or "ce"
    answer_vocab: str = "train"  # "train" (train+val answers) or "all_splits" (M3AE's train+val+test)
    hidden_mult: float = 2.0  # MLP hidden width = hidden_mult x pooled width
    # vqa/mm_cls pair feature: "cls" (pooled CLS of both streams), "mean" (token means) or "slot" (the fused
    # state of a [MASK] slot put after the text, beside the image tokens' mean: mpma.tasks.classification.pool_fused)
    pool: str = "cls"
    label_smoothing: float = 0.0  # vqa (vqa_loss=ce) / mm_cls training loss: share of the target spread over all classes
    train_fit: bool = True  # also score the best weights on the training split ("train_fit" in metrics.json)
    shuffled_eval: bool = True  # vqa/mm_cls: also score test with images shuffled among examples (seeded)
    image_mode: str = "finetune"  # img_cls: "finetune" the vision encoder or "linear_probe"
    retrieval_itm: bool = False  # retrieval fine-tune: add the ITM loss (needs an ITM head)
    rerank_k: int = 0  # retrieval evaluation: re-rank the top-k by ITM (0 = off)
    prompt: str = "a chest radiograph showing {label}"  # zero_shot_cls template

    def __post_init__(self) -> None:
        checks.choice("head.vqa_loss", self.vqa_loss, VQA_LOSSES)
        checks.choice("head.answer_vocab", self.answer_vocab, ANSWER_VOCABS)
        checks.positive("head.hidden_mult", self.hidden_mult, "MLP hidden width = hidden_mult x pooled width")
        checks.choice("head.pool", self.pool, POOLS)
        checks.in_range("head.label_smoothing", self.label_smoothing, 0.0, 1.0,
                        note="the share of the cross-entropy target spread over all classes")
        checks.choice("head.image_mode", self.image_mode, IMAGE_MODES)
        checks.at_least("head.rerank_k", self.rerank_k, 0, "0 = off")
        if "{label}" not in self.prompt:
            raise ConfigError(f"head.prompt: the template must contain {{label}}, got {self.prompt!r}")


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
    # which epoch's weights are kept in best/ and tested: "best_val" (the first epoch with the best
    # validation metric) or "last" (the final epoch; validation is still scored and logged). "last"
    # when the validation split is a poor guide to test (VQA-RAD's held-out images: docs/RESULTS.md section 3)
    keep: str = "best_val"
    warmup_fraction: float = 0.1
    head: HeadConfig = field(default_factory=HeadConfig)
    data: TaskDataConfig = field(default_factory=TaskDataConfig)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=3e-4, head_lr_mult=3.0, weight_decay=0.01,
                                                                   steps=0, warmup_steps=0, beta2=0.999))
    run: RunConfig = field(default_factory=lambda: RunConfig(log_every=10, checkpoint_every=10**9))

    def __post_init__(self) -> None:
        checks.not_empty("task", self.task)
        checks.not_empty("init", self.init, "scratch or a pre-training run / model folder")
        checks.not_empty("preset", self.preset)
        checks.at_least("epochs", self.epochs, 0, "0 = evaluate without training")
        checks.choice("keep", self.keep, KEEP_EPOCHS)
        checks.in_range("warmup_fraction", self.warmup_fraction, 0.0, 1.0, note="the share of the steps warmed up")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)
