"""Typed configuration: one dataclass per concern, YAML presets and dotted overrides.

A configuration is a tree of dataclasses rooted at :class:`Config`. Presets live as YAML files in
``mpma/presets/``; a user may pass a preset name or a YAML path, then ``key.sub=value`` overrides.
Unknown keys and values of the wrong type are errors that name the key.

Field names equal the constructor arguments of the modules they configure.
"""

from __future__ import annotations

import dataclasses
import json
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

PRESET_DIR = Path(__file__).parent / "presets"
_SCIENTIFIC = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


class ConfigError(ValueError):
    """A configuration key or value is invalid."""


@dataclass
class VisionConfig:
    """ViT image encoder (patch 16, CLS token, learned position embeddings)."""

    image_size: int = 224
    patch_size: int = 16
    channels: int = 3
    width: int = 768
    depth: int = 12
    heads: int = 12
    mlp_ratio: float = 4.0
    mask_ratio: float = 0.75  # share of patches hidden from the encoder during pre-training
    drop_path: float = 0.0
    init: str | None = None  # local path of weights to start from (CLIP folder/file or an mpma model)
    pre_norm: bool = False  # LayerNorm on the embeddings before the blocks (CLIP's ln_pre)
    activation: str = "gelu"  # MLP activation: "gelu" or "quick_gelu" (OpenAI CLIP)
    norm_eps: float = 1e-6  # LayerNorm epsilon (CLIP: 1e-5)


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
    val_size: int = 500  # synthrad only: held-out pairs for the zero-shot retrieval check
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
    keep_checkpoints: int = 2
    eval_size: int = 500  # held-out pairs for the end-of-run zero-shot retrieval check
    compile: bool = False
    threads: int = 0  # torch intra-op threads; 0 = torch default


@dataclass
class Config:
    """The complete configuration of a pre-training run."""

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


# --------------------------------------------------------------------------------------------
# Building from nested dicts with type checks


def _check_value(value: Any, annotation: Any, key: str) -> Any:
    """Return ``value`` converted to ``annotation`` or raise a ConfigError naming ``key``."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(annotation)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _check_value(value, option, key)
            except ConfigError as error:
                errors.append(str(error))
        raise ConfigError(errors[0] if errors else f"{key}: invalid value {value!r}")
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        (item_type,) = typing.get_args(annotation)
        return [_check_value(item, item_type, f"{key}[{i}]") for i, item in enumerate(value)]
    if annotation is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true/false, got {value!r}")
    if annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str) and _SCIENTIFIC.fullmatch(value.strip()):
            return float(value)  # YAML 1.1 reads "1e-4" (no dot, or no exponent sign) as a string
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if annotation is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    raise ConfigError(f"{key}: unsupported annotation {annotation!r}")


def _build(cls: type, values: dict[str, Any], prefix: str = "") -> Any:
    if not isinstance(values, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a mapping, got {values!r}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(
            f"unknown config key '{prefix}{unknown[0]}' (known keys under "
            f"'{prefix.rstrip('.') or 'config'}': {', '.join(sorted(known))})"
        )
    kwargs = {}
    for name, value in values.items():
        annotation = hints[name]
        if dataclasses.is_dataclass(annotation):
            kwargs[name] = _build(annotation, value, f"{prefix}{name}.")
        else:
            kwargs[name] = _check_value(value, annotation, f"{prefix}{name}")
    return cls(**kwargs)


def _merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def _read_yaml(source: str) -> dict[str, Any]:
    path = Path(source)
    if not path.suffix:
        path = PRESET_DIR / f"{source}.yaml"
        if not path.exists():
            raise ConfigError(f"unknown preset '{source}' (presets: {', '.join(preset_names())})")
    elif not path.exists():
        raise ConfigError(f"config file not found: {path}")
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    parent = data.pop("base", None)  # a preset may extend another preset or file
    if parent is not None:
        data = _merge(_read_yaml(str(parent)), data)
    return data


def parse_override(text: str) -> tuple[list[str], Any]:
    """Parse ``key.sub=value``; the value is read as YAML (``1e-4``, ``true``, ``null``, ``[0,1]``)."""
    if "=" not in text:
        raise ConfigError(f"override '{text}' is not of the form key.sub=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override '{text}' has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def overrides_to_dict(overrides: list[str]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for text in overrides:
        path, value = parse_override(text)
        node = result
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override '{text}' conflicts with another override")
        node[path[-1]] = value
    return result


def load_config(
    source: str | None = "tiny", overrides: list[str] | tuple[str, ...] = (), cls: type = Config
) -> Any:
    """Build a configuration from a preset name or YAML path plus ``key=value`` overrides.

    Args:
        source: preset name (``tiny``, ``small``, ``base``, ...) or a YAML file; None = defaults.
        overrides: dotted overrides such as ``optim.lr=3e-4``.
        cls: the root dataclass (``Config`` for pre-training; tasks have their own roots).
    """
    data = _read_yaml(source) if source else {}
    data = _merge(data, overrides_to_dict(list(overrides)))
    return _build(cls, data)


def config_from_dict(values: dict[str, Any], cls: type = Config) -> Any:
    """Rebuild a configuration saved with :meth:`Config.to_dict` (checked like any other)."""
    return _build(cls, values)
