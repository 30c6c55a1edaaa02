"""The pre-training configuration: :class:`Config` and one dataclass per concern.

Each module takes its section whole (``VisionTransformer(config.vision)``, ``TextEncoder(config.text,
...)``, ``CoAttentionFusion(config.fusion, ...)``, ``MIMDecoder(config.decoder, ...)``); the
trainer reads ``optim`` and ``run``, the pre-training pipeline ``data`` and ``objectives``. Every
field is read somewhere: a field that nothing reads is a bug, not a placeholder.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from mpma.config.errors import ConfigError


@dataclass
class VisionConfig:
    """ViT image encoder: patch embedding, CLS token, learned position embeddings, pre-norm blocks."""

    image_size: int = 224
    patch_size: int = 16
    channels: int = 3
    width: int = 768
    depth: int = 12
    heads: int = 12
    mlp_ratio: float = 4.0
    mask_ratio: float = 0.75  # share of patches hidden from the encoder during pre-training
    # alignment path (GLA): None = the same masked pass as MIM and the fusion; a number = a second,
    # separately masked view of the image for GLA only (0.0: the whole image)
    align_mask_ratio: float | None = None
    drop_path: float = 0.0  # stochastic depth in training: block i's rate is drop_path * i / (depth - 1)
    init: str | None = None  # local path of weights to start from (CLIP folder/file or an mpma model)
    pre_norm: bool = False  # LayerNorm on the embeddings before the blocks (CLIP's ln_pre)
    activation: str = "gelu"  # MLP activation: "gelu" or "quick_gelu" (OpenAI CLIP)
    norm_eps: float = 1e-6  # LayerNorm epsilon (CLIP: 1e-5)

    def __post_init__(self) -> None:
        if not 0.0 <= self.drop_path < 1.0:
            raise ConfigError(f"vision.drop_path: expected a rate in [0, 1), got {self.drop_path}")
        if self.align_mask_ratio is not None and not 0.0 <= self.align_mask_ratio < 1.0:
            raise ConfigError(f"vision.align_mask_ratio: expected a ratio in [0, 1) or null, got {self.align_mask_ratio}")


@dataclass
class TextConfig:
    """BERT-family text encoder built from a Hugging Face config.

    ``tokenizer_corpora`` adds texts to those a tokenizer trained on the fly learns from (the run's
    own training texts, first 20,000): typically the downstream text, so that fine-tuning questions
    are not [UNK]. Each entry is a JSONL manifest or prepare folder (VQA: questions; pre-training:
    ``text``; classification: ``text`` + ``text_pair``; "train" split records only), a JSON list
    such as VQA-RAD's ``trainset.json``, ``vqa-rad:FOLDER`` (its ``trainset.json`` questions, never
    the test split), ``roco:PATH`` (a ROCO ``captions.txt`` or a folder of them) or a text file (one
    text per line, ``ID<TAB>text`` accepted); the first 100,000 texts of each are used. The cached
    tokenizer is keyed on the corpora's texts; a missing or unreadable entry is an error naming it.
    """

    model_type: str = "roberta"  # a transformers model_type: "bert", "roberta", ...
    tokenizer: str | None = None  # local tokenizer folder; None trains one on the data (cached)
    vocab_size: int = 8000  # size of a tokenizer trained on the fly
    tokenizer_corpora: list[str] | None = None  # extra texts for that tokenizer (see the docstring)
    width: int = 768
    depth: int = 12
    heads: int = 12
    intermediate: int = 3072
    max_length: int = 64
    mask_ratio: float = 0.15
    whole_word: bool = False
    dropout: float = 0.1  # hidden and attention dropout of the text encoder (BERT/RoBERTa default 0.1)
    init: str | None = None

    def __post_init__(self) -> None:
        if self.tokenizer_corpora is None:
            return
        seen = set()
        for i, entry in enumerate(self.tokenizer_corpora):
            where = f"text.tokenizer_corpora[{i}] {entry!r}"
            spec = entry.strip()
            if not spec or spec.endswith(":"):
                raise ConfigError(f"{where}: empty corpus; give a manifest, a text file, vqa-rad:PATH or roco:PATH")
            if spec in seen:
                raise ConfigError(f"{where}: listed twice")
            seen.add(spec)
        if self.tokenizer_corpora and (self.tokenizer or self.init):
            raise ConfigError("text.tokenizer_corpora only shapes a tokenizer trained on the fly; text.tokenizer / "
                              "text.init bring their own tokenizer: drop one of them")


@dataclass
class FusionConfig:
    """Two-stream co-attention fusion with MA-CMF memory."""

    width: int = 768
    depth: int = 6
    heads: int = 12
    mlp_ratio: float = 4.0
    memory_slots: int = 64  # 0 disables the memory: plain co-attention
    memory_layers: list[int] | None = None  # fusion layers with memory; None = all


@dataclass
class DecoderConfig:
    """MAE-style pixel decoder for masked image modelling."""

    width: int = 384
    depth: int = 4
    heads: int = 6


@dataclass
class ObjectivesConfig:
    """Weights of the pre-training losses (0 switches a loss and its head off) and their knobs."""

    mlm: float = 1.0
    mim: float = 1.0
    global_align: float = 1.0
    local_align: float = 0.5
    itm: float = 1.0
    align_dim: int = 256
    align_pool: str = "mean"  # "cls" or "mean" of the visible/valid tokens
    temperature: float = 0.07  # initial InfoNCE temperature (learnable)
    norm_pix_loss: bool = True
    itm_exclude_same_text: bool = True  # never draw a negative whose text equals the positive's


@dataclass
class DataConfig:
    """Where the data comes from and how it is batched.

    ``sources`` mixes several pair sources in one pre-training run and, when set, replaces
    ``dataset``. Each entry is ``"SPEC@WEIGHT"``: SPEC is anything ``dataset`` accepts (``synthrad``,
    a manifest path or prepare folder, ``name:path``) and WEIGHT a positive number, the source's
    share of the draws (``@WEIGHT`` may be left out: 1). The held-out set of the zero-shot retrieval
    check is the first source with a validation split (synthrad always has one).
    """

    dataset: str = "synthrad"  # "synthrad" or a manifest path ("name:path" also accepted)
    sources: list[str] | None = None  # ["SPEC@WEIGHT", ...]: a weighted mixture; replaces dataset
    mixture_size: int = 0  # draws per epoch of a sources mixture; 0 = the sources' sizes summed
    image_cache_mb: int = 512  # decoded, downsized manifest training images kept in memory (per process)
    train_size: int = 20000  # synthrad only
    normal_fraction: float = 0.1
    batch_size: int = 64
    num_workers: int = 0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.mixture_size < 0:
            raise ConfigError(f"data.mixture_size: expected >= 0 (0 = the sources' sizes summed), got {self.mixture_size}")
        if self.image_cache_mb < 0:
            raise ConfigError(f"data.image_cache_mb: expected >= 0 (0 = no cache), got {self.image_cache_mb}")
        if self.sources is not None:
            self.parsed_sources()

    def parsed_sources(self) -> list[tuple[str, float]]:
        """``sources`` as ``(spec, weight)`` pairs (syntax only; the build step checks the files).

        Raises:
            ConfigError: An empty list, an empty SPEC, a WEIGHT that is not a positive finite number,
                or a SPEC listed twice; the message names the entry.
        """
        import math

        if not self.sources:
            raise ConfigError("data.sources: empty list; give entries like [medpix.jsonl@1, synthrad@0.5] "
                              "or leave it null to use data.dataset")
        parsed: list[tuple[str, float]] = []
        for i, entry in enumerate(self.sources):
            where = f"data.sources[{i}] {entry!r}"
            spec, at, tail = entry.strip().rpartition("@")
            if not at:
                spec, tail = tail, "1"
            spec = spec.strip()
            try:
                weight = float(tail)
            except ValueError:
                raise ConfigError(f"{where}: expected SPEC@WEIGHT with a number after the last '@', "
                                  f"got {tail!r}") from None
            if not spec:
                raise ConfigError(f"{where}: empty SPEC before '@' (synthrad, a manifest path or name:path)")
            if not (math.isfinite(weight) and weight > 0):
                raise ConfigError(f"{where}: the weight must be a positive number, got {tail!r}")
            if spec in (s for s, _ in parsed):
                raise ConfigError(f"{where}: {spec!r} is listed twice; give it one entry with the summed weight")
            parsed.append((spec, weight))
        return parsed


@dataclass
class OptimConfig:
    """AdamW with linear warm-up and cosine decay."""

    lr: float = 1e-4
    head_lr_mult: float = 5.0  # learning-rate multiplier for fusion and heads (M3AE: 5)
    weight_decay: float = 0.01
    beta1: float = 0.9
    beta2: float = 0.98
    eps: float = 1e-6
    steps: int = 100000
    warmup_steps: int = 2000
    min_lr_ratio: float = 0.0
    grad_clip: float = 1.0  # 0 disables clipping
    accumulate: int = 1


@dataclass
class RunConfig:
    """Run bookkeeping: seeds, precision, logging and checkpoints."""

    seed: int = 0
    precision: str = "fp32"  # "fp32" | "bf16" | "fp16"
    device: str = "auto"  # "auto" | "cpu" | "cuda"
    log_every: int = 10
    checkpoint_every: int = 500
    keep_checkpoints: int = 2  # newest checkpoints kept; 0 = keep all
    eval_size: int = 500  # synthrad only: held-out pairs of the end-of-run zero-shot retrieval check
    #                       (a manifest source uses its whole val split)
    # synthrad pre-training: the pointing game and the MLM image gap (mpma.eval.grounding) at each checkpoint
    # whose step is a multiple of this (0 = off), into log.jsonl, and at the end into summary.json
    grounding_every: int = 0
    compile: bool = False  # torch.compile the trained module (the DDP wrapper, if any): start-up +1 min or more on CPU
    threads: int = 0  # torch intra-op threads; 0 = torch default


@dataclass
class Config:
    """The complete configuration of a pre-training run."""

    # Keys older versions wrote into config.json: dropped with a warning when such a file is read,
    # an error when given as an override (see mpma.config.base.drop_removed_keys).
    REMOVED_KEYS: ClassVar[dict[str, str]] = {
        "data.val_size": "the held-out pairs of the zero-shot retrieval check are run.eval_size",
    }

    vision: VisionConfig = field(default_factory=VisionConfig)
    text: TextConfig = field(default_factory=TextConfig)
    fusion: FusionConfig = field(default_factory=FusionConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    objectives: ObjectivesConfig = field(default_factory=ObjectivesConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")
