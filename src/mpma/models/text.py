"""BERT-family text encoder built with Hugging Face ``transformers`` from a config (never downloaded)."""

from __future__ import annotations

import torch
from torch import nn
from transformers import AttentionInterface, AutoConfig, AutoModel
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from mpma.config import TextConfig
from mpma.models.layers import upcasts_cpu_attention

# The attention implementation mpma's text encoders run with: transformers' own "sdpa", except that
# bf16 inputs on a CPU are attended in fp32, as mpma.models.layers.attend does for the image side.
SDPA_FP32_ON_CPU = "mpma_sdpa_fp32_on_cpu"


def _sdpa_fp32_on_cpu(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                      attention_mask: torch.Tensor | None, **kwargs) -> tuple[torch.Tensor, None]:
    """transformers' sdpa attention ((B, H, T, Dh) query/key/value -> (B, T, H, Dh)), in fp32 when
    the inputs are bf16 on a CPU (there torch's flash attention is slower in bf16 than in fp32)."""
    if upcasts_cpu_attention(query):
        with torch.autocast("cpu", enabled=False):
            out, weights = sdpa_attention_forward(module, query.float(), key.float(), value.float(),
                                                  attention_mask, **kwargs)
        return out.to(query.dtype), weights
    return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)


AttentionInterface.register(SDPA_FP32_ON_CPU, _sdpa_fp32_on_cpu)
# and sdpa's padding masks: transformers builds no mask at all for an implementation it has no mask function for
AttentionMaskInterface.register(SDPA_FP32_ON_CPU, sdpa_mask)


def build_hf_text_config(config: TextConfig, vocab_size: int, pad_token_id: int):
    """A ``transformers`` config of ``config.model_type`` with the preset's shape."""
    extra = {}
    if config.model_type == "roberta":
        # RoBERTa offsets its position ids by padding_idx + 1.
        extra["max_position_embeddings"] = config.max_length + pad_token_id + 2
    else:
        extra["max_position_embeddings"] = max(config.max_length, 16)
    return AutoConfig.for_model(
        config.model_type,
        vocab_size=vocab_size,
        hidden_size=config.width,
        num_hidden_layers=config.depth,
        num_attention_heads=config.heads,
        intermediate_size=config.intermediate,
        pad_token_id=pad_token_id,
        type_vocab_size=2 if config.model_type == "bert" else 1,
        hidden_dropout_prob=config.dropout,
        attention_probs_dropout_prob=config.dropout,
        **extra,
    )


class TextEncoder(nn.Module):
    """Wraps a ``transformers`` encoder (``AutoModel``, no pooler, random weights): token ids -> token features.

    Args:
        config: text configuration (``model_type`` is a transformers model type such as "bert").
        vocab_size: tokenizer vocabulary size.
        pad_token_id: tokenizer padding id.
        hf_config: the exact ``transformers`` config to build (a checkpoint's); None: built from ``config``.
    """

    def __init__(self, config: TextConfig, vocab_size: int, pad_token_id: int, hf_config=None) -> None:
        super().__init__()
        self.config = config
        self.encoder = AutoModel.from_config(hf_config or build_hf_text_config(config, vocab_size, pad_token_id),
                                             add_pooling_layer=False)
        if self.encoder.config._attn_implementation == "sdpa":
            self.encoder.set_attn_implementation(SDPA_FP32_ON_CPU)
        self.width = self.encoder.config.hidden_size

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(B, T) ids and (B, T) 1/0 mask -> (B, T, D) last hidden states."""
        return self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Activation checkpointing per encoder layer, through ``transformers``' own switch."""
        if not self.encoder.supports_gradient_checkpointing:
            raise ValueError(f"the {self.encoder.config.model_type} text encoder does not support activation "
                             "checkpointing; set run.activation_checkpointing=false")
        if enable:
            self.encoder.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            self.encoder.activation_checkpointing_disable()

    def word_embeddings(self) -> nn.Embedding:
        return self.encoder.get_input_embeddings()
