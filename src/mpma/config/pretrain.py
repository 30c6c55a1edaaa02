"""The pre-training configuration: :class:`Config` and one dataclass per concern.

Each module takes its section whole (``VisionTransformer(config.vision)``, ``TextEncoder(config.text,
...)``, ``CoAttentionFusion(config.fusion, ...)``, ``MIMDecoder(config.decoder, ...)``); the
trainer reads ``optim`` and ``run``, the pre-training pipeline ``data`` and ``objectives``. Every
field is read somewhere: a field that nothing reads is a bug, not a placeholder.
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from mpma.config import checks
from mpma.config.errors import ConfigError

PRECISIONS = ("fp32", "bf16", "fp16", "auto")  # auto: mpma.engine.precision.resolve_precision
DEVICES = ("auto", "cpu", "cuda")
PARALLEL = ("ddp", "fsdp")  # run.parallel: mpma.engine.parallel shards for fsdp
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")  # torch.compile(mode=...)
ACTIVATIONS = ("gelu", "quick_gelu")  # mpma.models.layers.ACTIVATIONS
ALIGN_POOLS = ("cls", "mean")
MASK_WEIGHTINGS = ("uniform", "idf", "surprisal")  # text.mask_weighting: mpma.data.text.mask_weights
_MODEL_TYPE = re.compile(r"[a-z][a-z0-9_\-]*")


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
        for name in ("image_size", "patch_size", "channels", "width", "depth", "heads"):
            checks.positive(f"vision.{name}", getattr(self, name))
        if self.image_size % self.patch_size:
            raise ConfigError(f"vision.patch_size: {self.patch_size} does not divide vision.image_size={self.image_size}; "
                              "the image must split into whole patches")
        checks.multiple_of_four("vision.width", self.width)
        checks.divisible("vision.width", self.width, "vision.heads", self.heads)
        checks.positive("vision.mlp_ratio", self.mlp_ratio)
        checks.in_range("vision.mask_ratio", self.mask_ratio, 0.0, 1.0, note="the share of patches hidden")
        if self.align_mask_ratio is not None and not 0.0 <= self.align_mask_ratio < 1.0:
            raise ConfigError(f"vision.align_mask_ratio: expected a ratio in [0, 1) or null, got {self.align_mask_ratio}")
        if not 0.0 <= self.drop_path < 1.0:
            raise ConfigError(f"vision.drop_path: expected a rate in [0, 1), got {self.drop_path}")
        checks.choice("vision.activation", self.activation, ACTIVATIONS)
        checks.positive("vision.norm_eps", self.norm_eps)


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
    mask_weighting: str = "uniform"  # which tokens MLM masks: uniform, idf or surprisal (mpma.data.text.mask_weights)
    dropout: float = 0.1  # hidden and attention dropout of the text encoder (BERT/RoBERTa default 0.1)
    init: str | None = None

    def __post_init__(self) -> None:
        if not _MODEL_TYPE.fullmatch(self.model_type):
            raise ConfigError(f"text.model_type: expected a transformers model type such as bert or roberta, "
                              f"got {self.model_type!r}")
        for name in ("vocab_size", "width", "depth", "heads", "intermediate"):
            checks.positive(f"text.{name}", getattr(self, name))
        checks.divisible("text.width", self.width, "text.heads", self.heads)
        checks.at_least("text.max_length", self.max_length, 4, "tokens per text, special tokens included")
        checks.in_range("text.mask_ratio", self.mask_ratio, 0.0, 1.0, note="the share of tokens masked for MLM")
        checks.choice("text.mask_weighting", self.mask_weighting, MASK_WEIGHTINGS)
        checks.in_range("text.dropout", self.dropout, 0.0, 1.0)
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

    def __post_init__(self) -> None:
        for name in ("width", "heads"):
            checks.positive(f"fusion.{name}", getattr(self, name))
        checks.at_least("fusion.depth", self.depth, 0, "0: the projections and final norms only, an ablation")
        checks.divisible("fusion.width", self.width, "fusion.heads", self.heads)
        checks.positive("fusion.mlp_ratio", self.mlp_ratio)
        checks.at_least("fusion.memory_slots", self.memory_slots, 0, "0 = no memory")
        if self.memory_layers is not None:
            bad = [i for i in self.memory_layers if not 0 <= i < self.depth]
            if bad:
                raise ConfigError(f"fusion.memory_layers: {bad} outside 0..{self.depth - 1} (fusion.depth={self.depth}); "
                                  "list layer indices, or null for all layers")
            if len(set(self.memory_layers)) != len(self.memory_layers):
                raise ConfigError(f"fusion.memory_layers: {self.memory_layers} lists a layer twice")


@dataclass
class DecoderConfig:
    """MAE-style pixel decoder for masked image modelling."""

    width: int = 384
    depth: int = 4  # 0 = a linear pixel predictor on the fused tokens
    heads: int = 6

    def __post_init__(self) -> None:
        checks.positive("decoder.width", self.width)
        checks.at_least("decoder.depth", self.depth, 0, "0 = no decoder blocks")
        checks.positive("decoder.heads", self.heads)
        checks.multiple_of_four("decoder.width", self.width)
        checks.divisible("decoder.width", self.width, "decoder.heads", self.heads)


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
    # GLA-local's late-interaction score: (1 - w) * each word's best patch + w * each patch's best word
    # (0.5: FILIP's symmetric score; 0: words only, so background patches need not match any word)
    local_patch_to_token: float = 0.5
    # the weights some losses move to, linearly from the weights above over the rate's decay (the last
    # optim.decay_steps steps; every step after warm-up when that is 0), e.g. {local_align: 1.0};
    # null = every weight constant
    end_weights: dict[str, float] | None = None

    WEIGHTS: ClassVar[tuple[str, ...]] = ("mlm", "mim", "global_align", "local_align", "itm")

    def __post_init__(self) -> None:
        for name in self.WEIGHTS:
            checks.at_least(f"objectives.{name}", getattr(self, name), 0, "a loss weight; 0 switches the loss off")
        checks.positive("objectives.align_dim", self.align_dim)
        checks.choice("objectives.align_pool", self.align_pool, ALIGN_POOLS)
        checks.positive("objectives.temperature", self.temperature)
        checks.in_range("objectives.local_patch_to_token", self.local_patch_to_token, 0.0, 1.0, high_open=False,
                        note="the patch->token share of GLA-local's score")
        for name, weight in (self.end_weights or {}).items():
            if name not in self.WEIGHTS:
                raise ConfigError(f"objectives.end_weights: unknown loss {name!r} (the losses: {', '.join(self.WEIGHTS)})")
            checks.at_least(f"objectives.end_weights.{name}", weight, 0, "the weight at the end of the rate's decay")
            if getattr(self, name) == 0:
                raise ConfigError(f"objectives.end_weights.{name}: objectives.{name} is 0, so the loss and its head "
                                  f"are not built; give objectives.{name} a weight > 0 or drop {name} from end_weights")


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
    # records that fail to load are skipped and listed in the run's rejects.jsonl; the run stops once
    # more than this share of the training records is bad (mpma.data.bad_records)
    max_bad_fraction: float = 0.001

    def __post_init__(self) -> None:
        checks.not_empty("data.dataset", self.dataset, "synthrad, a manifest path or name:path")
        checks.in_range("data.max_bad_fraction", self.max_bad_fraction, 0.0, 1.0,
                        note="the share of records that may fail to load before the run stops")
        checks.positive("data.train_size", self.train_size)
        checks.in_range("data.normal_fraction", self.normal_fraction, 0.0, 1.0, high_open=False)
        checks.positive("data.batch_size", self.batch_size)
        checks.at_least("data.num_workers", self.num_workers, 0)
        checks.at_least("data.seed", self.seed, 0)
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
    """AdamW with linear warm-up and cosine decay (over every later step, or over the last ``decay_steps``)."""

    lr: float = 1e-4
    head_lr_mult: float = 5.0  # learning-rate multiplier for fusion and heads (M3AE: 5)
    # learning-rate multiplier for the text encoder: below 1 for a pre-trained one (text.init), so that the
    # new heads' first gradients do not wash out what it knows; 0 freezes it
    text_lr_mult: float = 1.0
    weight_decay: float = 0.01
    beta1: float = 0.9
    beta2: float = 0.98
    eps: float = 1e-6
    steps: int = 100000
    warmup_steps: int = 2000
    min_lr_ratio: float = 0.0
    # 0: cosine decay from the end of warm-up to the last step; N > 0: the rate holds at its peak and the
    # cosine decay runs over the last N steps only (warm-up, stable, decay)
    decay_steps: int = 0
    grad_clip: float = 1.0  # 0 disables clipping
    accumulate: int = 1

    def __post_init__(self) -> None:
        checks.at_least("optim.lr", self.lr, 0, "0 freezes the weights (an evaluation-only baseline)")
        checks.positive("optim.head_lr_mult", self.head_lr_mult)
        checks.at_least("optim.text_lr_mult", self.text_lr_mult, 0, "0 freezes the text encoder")
        checks.at_least("optim.weight_decay", self.weight_decay, 0)
        checks.in_range("optim.beta1", self.beta1, 0.0, 1.0)
        checks.in_range("optim.beta2", self.beta2, 0.0, 1.0)
        checks.positive("optim.eps", self.eps)
        checks.at_least("optim.steps", self.steps, 0, "pre-training: >= 1; fine-tuning: 0, set from the epochs")
        checks.at_least("optim.warmup_steps", self.warmup_steps, 0)
        checks.at_least("optim.decay_steps", self.decay_steps, 0, "0 decays over every step after warm-up")
        checks.in_range("optim.min_lr_ratio", self.min_lr_ratio, 0.0, 1.0, high_open=False)
        checks.at_least("optim.grad_clip", self.grad_clip, 0, "0 disables clipping")
        checks.positive("optim.accumulate", self.accumulate, "micro-batches per optimizer step")


@dataclass
class RunConfig:
    """Run bookkeeping: seeds, precision, logging and checkpoints."""

    seed: int = 0
    precision: str = "fp32"  # "fp32" | "bf16" | "fp16" | "auto" (bf16 where the host runs it fast, else fp32)
    device: str = "auto"  # "auto" | "cpu" | "cuda"
    log_every: int = 10
    checkpoint_every: int = 500
    keep_checkpoints: int = 2  # newest checkpoints kept; 0 = keep all
    eval_size: int = 500  # synthrad only: held-out pairs of the end-of-run zero-shot retrieval check
    #                       (a manifest source uses its whole val split)
    # synthrad pre-training: the pointing game and the MLM image gap (mpma.eval.grounding) at each checkpoint
    # whose step is a multiple of this (0 = off), into log.jsonl, and at the end into summary.json
    grounding_every: int = 0
    compile: bool = False  # torch.compile each repeated block (engine/compiling.py): slower start, not yet faster
    # torch.compile's mode with run.compile: "reduce-overhead" replays each compiled block as a CUDA graph
    # (GPU; for a step bound by kernel launches, as the base step on an H200 is), "max-autotune" also
    # searches matmul kernels (long start-up)
    compile_mode: str = "default"
    threads: int = 0  # torch intra-op threads; 0 = auto: the cores free at start (mpma.engine.threads)
    # keep the memory each step frees inside the process instead of handing it back to the kernel (glibc's
    # malloc settings, mpma.engine.allocator): CPU steps 1.07-1.18x faster on an idle machine, base's bf16
    # step 1.44x beside other jobs; resident memory stays at its peak between steps. A no-op on other C
    # libraries. Process-wide once set.
    retain_freed_memory: bool = True
    # under torchrun: "ddp" replicates the model on every rank; "fsdp" shards weights, gradients and AdamW
    # state over the ranks (FSDP2, one unit per encoder/fusion block); ignored in one process
    parallel: str = "ddp"
    # recompute each vision block's, text layer's and fusion layer's activations in the backward pass
    # instead of keeping them: less memory at a batch where activations dominate, ~1/3 more compute
    activation_checkpointing: bool = False
    # experiment trackers beside log.jsonl (mpma.engine.tracking): "none", "tensorboard" (the [track] extra),
    # "wandb" (offline; when installed); a list or a comma-separated string; stored as a list ([] = none)
    report_to: str | list[str] = "none"

    def __post_init__(self) -> None:
        checks.at_least("run.seed", self.seed, 0)
        checks.choice("run.precision", self.precision, PRECISIONS)
        checks.choice("run.device", self.device, DEVICES)
        checks.choice("run.parallel", self.parallel, PARALLEL)
        checks.choice("run.compile_mode", self.compile_mode, COMPILE_MODES)
        if self.compile_mode != "default" and not self.compile:
            raise ConfigError(f"run.compile_mode={self.compile_mode} has no effect without torch.compile; "
                              "add run.compile=true (or leave run.compile_mode at default)")
        if self.parallel == "fsdp" and self.precision == "fp16":
            raise ConfigError("run.parallel=fsdp trains in fp32 or bf16 (no fp16 loss scaling); use run.precision=bf16")
        checks.positive("run.log_every", self.log_every, "steps between log lines")
        checks.positive("run.checkpoint_every", self.checkpoint_every, "steps between checkpoints")
        checks.at_least("run.keep_checkpoints", self.keep_checkpoints, 0, "0 = keep all")
        checks.positive("run.eval_size", self.eval_size)
        checks.at_least("run.grounding_every", self.grounding_every, 0, "0 = off")
        checks.at_least("run.threads", self.threads, 0, "0 = auto, the free cores")
        self.report_to = checks.report_targets("run.report_to", self.report_to)


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

    def __post_init__(self) -> None:
        checks.positive("optim.steps", self.optim.steps, "pre-training steps")
        if not any(getattr(self.objectives, name) > 0 for name in ObjectivesConfig.WEIGHTS):
            raise ConfigError(f"objectives: every loss weight ({', '.join(ObjectivesConfig.WEIGHTS)}) is 0, so nothing "
                              "would train; give at least one a weight > 0")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")
