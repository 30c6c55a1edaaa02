"""``create_model``: the one place an MPMA backbone is built and given weights.

Constructors only build modules with random weights. This module reads weights from disk: the
``vision.init`` / ``text.init`` checkpoints of a new model, or a saved state (a checkpoint, a model
folder) loaded strictly, with every missing, unexpected or mis-shaped key named. Before anything is
allocated, the model's size is estimated from its configuration and a model that would not fit in
memory (or exceeds ``max_params``) is refused (:mod:`mpma.models.size`). A ``text.init`` folder is
read only from ``model.safetensors``: pickled weights (``pytorch_model.bin``) are refused.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn
from transformers import AutoConfig, AutoModel
from transformers.models.auto.configuration_auto import CONFIG_MAPPING

from mpma.config import Config, ConfigError, TextConfig
from mpma.models.conversion_report import ConversionReport
from mpma.models.convert import UnsafeCheckpointError, load_vision_weights
from mpma.models.mpma import MPMAModel
from mpma.models.size import check_model_size, estimate_parameters
from mpma.models.text import TextEncoder

log = logging.getLogger("mpma")

SAFE_TEXT_WEIGHTS = ("model.safetensors", "model.safetensors.index.json")
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".ckpt")


class WeightsMismatchError(ValueError):
    """A weights file does not match the model its folder describes (keys listed in the message)."""


def read_state(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file (never unpickles)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights not found: {path}")
    try:
        return load_file(str(path))
    except Exception as error:
        raise WeightsMismatchError(f"{path}: not a valid safetensors file ({error})") from None


def check_state_keys(module: nn.Module, state: dict[str, torch.Tensor], source: str | Path,
                     described: str = "the model described next to it") -> None:
    """Raise ``WeightsMismatchError`` naming every missing, unexpected or mis-shaped key of ``state``
    against ``module.state_dict()``; ``described`` says which model in the message."""
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = sorted(f"{k} {list(state[k].shape)} (expected {list(expected[k].shape)})"
                    for k in set(state) & set(expected) if state[k].shape != expected[k].shape)
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys: {', '.join(missing)}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys: {', '.join(unexpected)}")
        if shapes:
            parts.append(f"{len(shapes)} keys with another shape: {', '.join(shapes)}")
        raise WeightsMismatchError(f"{source} does not match {described}: " + "; ".join(parts))


def load_state_strict(module: nn.Module, state: dict[str, torch.Tensor], source: str | Path) -> None:
    """Load ``state`` into ``module``; any missing, unexpected or mis-shaped key is an error naming it."""
    check_state_keys(module, state, source)
    module.load_state_dict(state, strict=True)


def check_text_folder(path: str | Path, what: str = "text.init") -> Path:
    """A Hugging Face text-encoder folder that can be read without unpickling: config.json + safetensors.

    Args:
        path: the folder.
        what: how the user named it, for messages ("text.init", "--text").

    Raises:
        FileNotFoundError: not a folder, no config.json, or no weights at all.
        UnsafeCheckpointError: only pickled weights (``pytorch_model.bin``, ...): they are never loaded.
    """
    folder = Path(path)
    if not folder.is_dir():
        raise FileNotFoundError(f"{what} {folder}: not a folder (expected a Hugging Face model folder with config.json "
                                "and model.safetensors)")
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{what} {folder}: no config.json (expected a Hugging Face model folder)")
    if any((folder / name).is_file() for name in SAFE_TEXT_WEIGHTS):
        return folder
    pickled = sorted(p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES or p.name.endswith(".bin.index.json"))
    if pickled:
        raise UnsafeCheckpointError(
            f"{what} {folder}: its weights are pickled ({', '.join(pickled)}) and pickled weights are never loaded, "
            "because unpickling can run code. Save them as model.safetensors with a trusted tool first (e.g. "
            "AutoModel.from_pretrained(DIR).save_pretrained(DIR) in an environment you trust)")
    raise FileNotFoundError(f"{what} {folder}: no model.safetensors (the text encoder's weights)")


def hf_text_config(config: Config, text_encoder: dict | None):
    """The ``transformers`` config of the text encoder: a saved one (exact architecture), the
    ``text.init`` checkpoint's (with this run's dropout), or None (built from ``config.text``)."""
    if text_encoder:
        return AutoConfig.for_model(**{k: v for k, v in text_encoder.items() if k != "transformers_version"})
    if config.text.init:
        folder = check_text_folder(config.text.init)
        return AutoConfig.from_pretrained(str(folder), local_files_only=True, hidden_dropout_prob=config.text.dropout,
                                          attention_probs_dropout_prob=config.text.dropout)
    if config.text.model_type not in CONFIG_MAPPING:
        raise ConfigError(f"text.model_type: unknown transformers model type {config.text.model_type!r} "
                          "(a BERT-family type such as bert or roberta)")
    return None


def sync_text_config(config: Config, hf_config) -> None:
    """Shape fields of ``config.text`` from the text encoder's ``transformers`` config (the fusion reads the width)."""
    config.text.model_type = hf_config.model_type
    config.text.width = hf_config.hidden_size
    config.text.depth = hf_config.num_hidden_layers
    config.text.heads = hf_config.num_attention_heads
    config.text.intermediate = hf_config.intermediate_size


def _load_init_weights(model: MPMAModel, config: Config, vocab_size: int) -> dict[str, ConversionReport]:
    """Copy the ``vision.init`` / ``text.init`` checkpoints into a new model; returns the vision report."""
    reports = {}
    if config.vision.init:
        reports["vision"] = load_vision_weights(model.vision, config.vision.init)
        log.info(reports["vision"].summary())
    if config.text.init:
        load_text_init(model.text, config.text.init, vocab_size)
    return reports


def load_text_init(text: TextEncoder, init: str, vocab_size: int) -> None:
    """Copy the Hugging Face checkpoint folder ``init`` into ``text`` (built with that checkpoint's config)."""
    encoder_vocab = text.word_embeddings().num_embeddings
    if vocab_size > encoder_vocab:
        raise ValueError(f"the tokenizer has {vocab_size} tokens but text.init={init} embeds only "
                         f"{encoder_vocab}: set text.tokenizer to the tokenizer of that checkpoint")
    folder = check_text_folder(init)
    pretrained = AutoModel.from_pretrained(str(folder), add_pooling_layer=False, local_files_only=True,
                                           use_safetensors=True)
    load_state_strict(text.encoder, pretrained.state_dict(), init)


def create_text_encoder(config: TextConfig, vocab_size: int, pad_token_id: int) -> TextEncoder:
    """A text encoder alone: random, or ``config.init``'s architecture and weights when set."""
    hf_config = None
    if config.init:
        hf_config = AutoConfig.from_pretrained(str(check_text_folder(config.init)), local_files_only=True,
                                               hidden_dropout_prob=config.dropout,
                                               attention_probs_dropout_prob=config.dropout)
    encoder = TextEncoder(config, vocab_size, pad_token_id, hf_config)
    if config.init:
        load_text_init(encoder, config.init, vocab_size)
    return encoder


def create_model(config: Config, vocab_size: int, pad_token_id: int, *, heads: set[str] | None = None,
                 align_parts: tuple[bool, bool] | None = None, text_encoder: dict | None = None,
                 state: dict[str, torch.Tensor] | None = None, source: str | Path = "weights",
                 max_params: int | None = None) -> MPMAModel:
    """Build an MPMAModel and give it weights.

    Args:
        config: the backbone configuration.
        vocab_size, pad_token_id: of the tokenizer.
        heads, align_parts: which pre-training heads / GLA projections to build (see MPMAModel); None: the
            objectives decide.
        text_encoder: a saved ``transformers`` config dict of the text encoder (exact architecture).
        state: backbone weights to load strictly (``*.init`` paths are then not read); None: random weights,
            plus the ``vision.init`` / ``text.init`` checkpoints when set.
        source: where ``state`` came from, for error messages.
        max_params: refuse a configuration of more parameters (None: only the available-memory check).

    Returns:
        the model; ``model.init_reports`` holds what ``vision.init`` loading mapped, resized and ignored.

    Raises:
        ModelTooLargeError: the configuration describes a model above ``max_params`` or the available memory.
    """
    hf_config = hf_text_config(config, text_encoder)
    if hf_config is not None:
        sync_text_config(config, hf_config)
    parameters = estimate_parameters(config, vocab_size, heads, hf_config.to_dict() if hf_config is not None else None,
                                     pad_token_id, align_parts)
    check_model_size(parameters, max_params, f"the configuration of {source}" if state is not None else "the configuration")
    model = MPMAModel(config, vocab_size, pad_token_id, heads=heads, align_parts=align_parts, text_encoder=hf_config)
    model.init_reports = _load_init_weights(model, config, vocab_size) if state is None else {}
    if state is not None:
        load_state_strict(model, state, source)
    return model
