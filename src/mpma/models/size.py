"""Parameter counts from a configuration, before anything is allocated.

:func:`estimate_parameters` adds up the tensors an :class:`~mpma.models.mpma.MPMAModel` would hold
(ViT, BERT-family text encoder, fusion layers, pre-training heads) from the configuration alone;
:func:`check_model_size` refuses a model that would not fit: 4 bytes (fp32) per parameter above the
memory the machine has free (``MemAvailable`` of ``/proc/meminfo``; no check where that is unknown)
or above a caller's ``max_params``. A ``config.json`` that says ``vision.width=1000000000`` is then a
clear error instead of an attempt to allocate terabytes.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from mpma.config import Config, DecoderConfig, FusionConfig, TextConfig, VisionConfig

BYTES_PER_PARAMETER = 4  # fp32 weights
MEMINFO = Path("/proc/meminfo")


class ModelTooLargeError(ValueError):
    """The configuration describes a model larger than the memory available or a ``max_params`` limit."""


def _linear(n_in: int, n_out: int, bias: bool = True) -> int:
    return n_in * n_out + (n_out if bias else 0)


def _attention(width: int) -> int:
    """q (D x D), kv (D x 2D) and proj (D x D) with biases (:class:`mpma.models.layers.Attention`)."""
    return _linear(width, width) + _linear(width, 2 * width) + _linear(width, width)


def _mlp(width: int, ratio: float) -> int:
    hidden = int(width * ratio)
    return _linear(width, hidden) + _linear(hidden, width)


def _block(width: int, mlp_ratio: float) -> int:
    """A pre-norm transformer block: two LayerNorms, attention, MLP."""
    return 4 * width + _attention(width) + _mlp(width, mlp_ratio)


def vision_parameters(config: VisionConfig) -> int:
    """The ViT: patch embedding, CLS token, positions, blocks, final (and CLIP's pre-) LayerNorm."""
    width, grid = config.width, config.image_size // config.patch_size
    count = config.channels * config.patch_size**2 * width + width  # patch embedding (conv) + bias
    count += width + (1 + grid * grid) * width  # CLS token, position table
    count += 2 * width * (2 if config.pre_norm else 1)
    return count + config.depth * _block(width, config.mlp_ratio)


def text_shape(config: TextConfig, vocab_size: int, pad_token_id: int = 0, text_encoder: dict | None = None) -> dict:
    """The text encoder's shape: {vocab, width, depth, intermediate, positions, types}, from a saved
    ``transformers`` config when given, else as :func:`mpma.models.text.build_hf_text_config` builds it."""
    if text_encoder:
        return {"vocab": int(text_encoder.get("vocab_size", vocab_size)), "width": int(text_encoder["hidden_size"]),
                "depth": int(text_encoder["num_hidden_layers"]), "intermediate": int(text_encoder["intermediate_size"]),
                "positions": int(text_encoder.get("max_position_embeddings", 512)),
                "types": int(text_encoder.get("type_vocab_size", 2))}
    roberta = config.model_type == "roberta"
    return {"vocab": vocab_size, "width": config.width, "depth": config.depth, "intermediate": config.intermediate,
            "positions": config.max_length + pad_token_id + 2 if roberta else max(config.max_length, 16),
            "types": 2 if config.model_type == "bert" else 1}


def text_parameters(shape: dict) -> int:
    """A BERT-like encoder without pooler: embeddings (words, positions, token types, LayerNorm) + layers."""
    width, inner = shape["width"], shape["intermediate"]
    embeddings = (shape["vocab"] + shape["positions"] + shape["types"]) * width + 2 * width
    layer = 4 * _linear(width, width) + 2 * width + _linear(width, inner) + _linear(inner, width) + 2 * width
    return embeddings + shape["depth"] * layer


def fusion_parameters(config: FusionConfig, text_width: int, image_width: int) -> int:
    """Projections, type embeddings, co-attention layers (with memory where set), norms and poolers."""
    width = config.width
    memory_layers = set(range(config.depth)) if config.memory_layers is None else set(config.memory_layers)
    stream = 8 * width + 2 * _attention(width) + _mlp(width, config.mlp_ratio)  # 4 LayerNorms, self+cross, MLP
    count = _linear(text_width, width) + _linear(image_width, width) + 2 * width
    for i in range(config.depth):
        count += 2 * stream
        if config.memory_slots > 0 and i in memory_layers:
            count += config.memory_slots * width + 2 * width + _attention(width)  # memory, its norm and attention
            count += _linear(width, width)  # the text stream's gate
    return count + 4 * width + 2 * _linear(width, width)


def decoder_parameters(config: DecoderConfig, in_width: int, n_patches: int, patch_pixels: int) -> int:
    width = config.width
    count = _linear(in_width, width) + width + (1 + n_patches) * width
    return count + config.depth * _block(width, 4.0) + 2 * width + _linear(width, patch_pixels)


def estimate_parameters(config: Config, vocab_size: int, heads: Iterable[str] | None = None,
                        text_encoder: dict | None = None, pad_token_id: int = 0,
                        align_parts: tuple[bool, bool] | None = None) -> int:
    """The number of parameters of ``MPMAModel(config, vocab_size, ...)``, computed without building it.

    Args:
        config: the backbone configuration.
        vocab_size: the tokenizer's size (the text embeddings and the MLM head).
        heads: the pre-training heads built (``align``, ``mlm_head``, ``mim_decoder``, ``itm_head``);
            None: those the objectives use.
        text_encoder: a saved ``transformers`` config of the text encoder (its shape wins over ``config.text``).
        pad_token_id: the tokenizer's padding id (RoBERTa's position table depends on it).
        align_parts: (global, local) GLA projections; None: those the objectives use.

    Returns:
        the count (exact for the architectures mpma builds; BERT-family variants within a few percent).
    """
    objectives = config.objectives
    if heads is None:
        wanted = {"align": objectives.global_align > 0 or objectives.local_align > 0, "mlm_head": objectives.mlm > 0,
                  "mim_decoder": objectives.mim > 0, "itm_head": objectives.itm > 0}
        heads = {name for name, used in wanted.items() if used}
    heads = set(heads)
    shape = text_shape(config.text, vocab_size, pad_token_id, text_encoder)
    image_width, text_width, fused = config.vision.width, shape["width"], config.fusion.width
    count = vision_parameters(config.vision) + text_parameters(shape)
    count += fusion_parameters(config.fusion, text_width, image_width)
    if "align" in heads:
        global_, local = align_parts or (objectives.global_align > 0, objectives.local_align > 0)
        count += (int(global_) + int(local)) * (image_width + text_width) * objectives.align_dim + 1
    if "mlm_head" in heads:
        count += _linear(fused, fused) + 2 * fused + _linear(fused, vocab_size)
    if "mim_decoder" in heads:
        grid = config.vision.image_size // config.vision.patch_size
        count += decoder_parameters(config.decoder, fused, grid * grid,
                                    config.vision.patch_size**2 * config.vision.channels)
    if "itm_head" in heads:
        count += _linear(2 * fused, 2 * fused) + 4 * fused + _linear(2 * fused, 2)
    return count


def available_memory() -> int | None:
    """Bytes of memory the machine has available (``MemAvailable``); None where unknown."""
    try:
        for line in MEMINFO.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def check_model_size(parameters: int, max_params: int | None = None, source: str = "the configuration") -> None:
    """Refuse a model of ``parameters`` above ``max_params`` or above the available memory (4 bytes each).

    Raises:
        ModelTooLargeError: naming ``source``, the count and the limit.
    """
    if max_params is not None and parameters > max_params:
        raise ModelTooLargeError(f"{source} describes a model of {parameters:,} parameters, above the limit of "
                                 f"{max_params:,} (max_params / --max-params); check its widths and depths, or raise "
                                 "the limit")
    available = available_memory()
    needed = BYTES_PER_PARAMETER * parameters
    if available is not None and needed > available:
        raise ModelTooLargeError(f"{source} describes a model of {parameters:,} parameters ({_gib(needed)} in fp32), "
                                 f"more than the {_gib(available)} of memory available; check its widths and depths "
                                 "(vision, text, fusion, decoder) and vocab_size")


def _gib(n: int) -> str:
    return f"{n / 2**30:,.1f} GiB"
