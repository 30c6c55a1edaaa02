"""Checks of a model folder's ``config.json`` and ``task.json`` before anything is built from them.

A damaged or hand-edited file is an error that names the file and the key (``KeyError: 'backbone'``
or a RuntimeError from a negative width otherwise), and :func:`folder_parameters` gives the size of
the model the files describe, so that it can be refused before it is allocated.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from transformers.models.auto.configuration_auto import CONFIG_MAPPING

from mpma.config import Config, ConfigError, config_from_dict
from mpma.models.mpma import PRETRAIN_HEADS
from mpma.models.size import estimate_parameters, text_shape
from mpma.tasks.base import get_task

TEXT_ENCODER_SIZES = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size")
TEXT_ENCODER_OPTIONAL = ("vocab_size", "max_position_embeddings", "type_vocab_size")


class FolderError(ValueError):
    """A model or run folder's files are damaged or inconsistent (the message names the file and key)."""


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _positive_int(where: str, key: str, value: Any) -> int:
    if not (_is_int(value) and value >= 1):
        raise FolderError(f"{where}: '{key}' must be an integer >= 1, got {value!r}; the folder is damaged or was "
                          "edited by hand")
    return value


def checked_config(path: Path, values: Any, cls: type | None = None, key: str = "") -> Any:
    """``config_from_dict(values, cls)`` with any error prefixed by the file (and the key holding it)."""
    inside = f" in '{key}'" if key else ""
    if not isinstance(values, dict):
        raise FolderError(f"{path}: '{key or 'config'}' must be a mapping, got {type(values).__name__}")
    try:
        return config_from_dict(values, cls)
    except ConfigError as error:
        raise ConfigError(f"{path}{inside}: {error}") from None


def check_text_encoder(where: str, text_encoder: Any, vocab_size: int) -> None:
    """The saved ``transformers`` config of the text encoder: a known model type and a sane shape."""
    if text_encoder is None:
        return
    if not isinstance(text_encoder, dict):
        raise FolderError(f"{where}: 'text_encoder' must be a mapping (a transformers config), got "
                          f"{type(text_encoder).__name__}")
    model_type = text_encoder.get("model_type")
    if not isinstance(model_type, str) or model_type not in CONFIG_MAPPING:
        raise FolderError(f"{where}: 'text_encoder.model_type' is {model_type!r}, not a transformers model type "
                          "(bert, roberta, ...)")
    for name in TEXT_ENCODER_SIZES:
        _positive_int(where, f"text_encoder.{name}", text_encoder.get(name))
    for name in TEXT_ENCODER_OPTIONAL:
        if name in text_encoder:
            _positive_int(where, f"text_encoder.{name}", text_encoder[name])
    width, heads = text_encoder["hidden_size"], text_encoder["num_attention_heads"]
    if width % heads:
        raise FolderError(f"{where}: 'text_encoder.hidden_size' {width} is not divisible by "
                          f"'text_encoder.num_attention_heads' {heads}")
    if text_encoder.get("vocab_size", vocab_size) < vocab_size:
        raise FolderError(f"{where}: the tokenizer has {vocab_size} tokens ('vocab_size') but the text encoder embeds "
                          f"only {text_encoder['vocab_size']} ('text_encoder.vocab_size')")


def check_meta(folder: Path, meta: dict) -> Config:
    """Check a model folder's ``config.json`` (already read) and return its backbone Config.

    Raises:
        FolderError / ConfigError: naming ``folder/config.json`` and the key.
    """
    where = str(folder / "config.json")
    for key in ("backbone", "vocab_size", "pad_token_id"):
        if key not in meta:
            raise FolderError(f"{where} has no '{key}': the folder is damaged or was not written by mpma")
    vocab_size = _positive_int(where, "vocab_size", meta["vocab_size"])
    pad = meta["pad_token_id"]
    if not (_is_int(pad) and 0 <= pad < vocab_size):
        raise FolderError(f"{where}: 'pad_token_id' must be an integer in [0, vocab_size={vocab_size}), got {pad!r}")
    config = checked_config(folder / "config.json", meta["backbone"], key="backbone")
    check_text_encoder(where, meta.get("text_encoder"), vocab_size)
    modules = meta.get("backbone_modules", [])
    if not isinstance(modules, list) or not set(modules) <= set(PRETRAIN_HEADS):
        raise FolderError(f"{where}: 'backbone_modules' must list heads among {', '.join(PRETRAIN_HEADS)}, got {modules!r}")
    for key in ("align_global", "align_local"):
        if not isinstance(meta.get(key, True), bool):
            raise FolderError(f"{where}: '{key}' must be true or false, got {meta[key]!r}")
    _check_preprocess(where, meta.get("preprocess"))
    return config


def _check_preprocess(where: str, preprocess: Any) -> None:
    if preprocess is None:
        return
    if not isinstance(preprocess, dict):
        raise FolderError(f"{where}: 'preprocess' must be a mapping, got {type(preprocess).__name__}")
    for key in ("image_size", "max_length"):
        if key in preprocess:
            _positive_int(where, f"preprocess.{key}", preprocess[key])
    for key in ("mean", "std"):
        values = preprocess.get(key, [1.0, 1.0, 1.0])
        if not (isinstance(values, list) and len(values) == 3
                and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
                and (key == "mean" or all(v > 0 for v in values))):
            raise FolderError(f"{where}: 'preprocess.{key}' must be 3 numbers{' > 0' if key == 'std' else ''}, "
                              f"got {values!r}")


def check_task(folder: Path, task: Any) -> None:
    """A ``task.json``: a registered task; for a trained head, its settings (outputs = number of classes)."""
    where = str(folder / "task.json")
    if not isinstance(task, dict) or not isinstance(task.get("task"), str):
        raise FolderError(f"{where}: expected a mapping with a 'task' name, got {task!r}")
    try:
        get_task(task["task"])
    except ValueError as error:
        raise FolderError(f"{where}: {error}") from None
    head = task.get("head", {})
    if not isinstance(head, dict):
        raise FolderError(f"{where}: 'head' must be a mapping, got {head!r}")
    if head.get("type") in ("fused", "unimodal"):
        outputs = _positive_int(where, "head.outputs", head.get("outputs"))
        if head["type"] == "fused":
            _positive_int(where, "head.hidden", head.get("hidden"))
        classes = task.get("classes")
        if not isinstance(classes, list) or len(classes) != outputs:
            raise FolderError(f"{where}: 'head.outputs' is {outputs} but 'classes' lists "
                              f"{len(classes) if isinstance(classes, list) else classes!r}")


def folder_parameters(config: Config, meta: dict, heads: set[str], task: dict | None) -> int:
    """Parameters of the model a checked folder describes: the backbone and a task head."""
    count = estimate_parameters(config, meta["vocab_size"], heads, meta.get("text_encoder"), meta["pad_token_id"],
                                (meta.get("align_global", True), meta.get("align_local", True)))
    head = (task or {}).get("head") or {}
    outputs = head.get("outputs") if _is_int(head.get("outputs")) else 0
    if head.get("type") == "fused":
        pooled, hidden = 2 * config.fusion.width, head.get("hidden") or 0
        count += pooled * hidden + 3 * hidden + hidden * outputs + outputs
    elif head.get("type") == "unimodal":
        width = text_shape(config.text, meta["vocab_size"], 0, meta.get("text_encoder"))["width"]
        count += (max(width, config.vision.width) + 1) * outputs
    return count
