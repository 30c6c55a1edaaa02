"""The MPMA backbone: ViT + text encoder + co-attention fusion with memory, plus pre-training heads.

The model returns features; it computes no losses. Heads whose loss weight is 0 are not built, so
their parameters do not exist (an M3AE-style configuration is a smaller model, not a masked one).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from mpma.config import Config
from mpma.models.fusion import CoAttentionFusion, FusionOutput
from mpma.models.heads import AlignmentHeads, ClassifierHead, MIMDecoder, MLMHead
from mpma.models.text import TextEncoder
from mpma.models.vision import VisionOutput, VisionTransformer


def masked_mean(tokens: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Mean of tokens (B, N, D) over positions where weights (B, N) are 1 -> (B, D)."""
    weights = weights.to(tokens.dtype)
    return (tokens * weights[..., None]).sum(1) / weights.sum(1, keepdim=True).clamp(min=1.0)


@dataclass
class MPMAOutput:
    """Everything one pre-training forward pass produces.

    vision: the (masked) vision-encoder output; tokens (B, 1+K, Dv).
    text: (B, T, Dt) text-encoder states of the (masked) text.
    fusion: fused streams and pooled (B, 2Df) feature; with ``mlm_positions`` given, its text holds the
        fused states at the masked positions only, (B, Q, Df) as :func:`padded_positions` orders them.
    image_embed / text_embed: (B, A) L2-normalised GLA-global embeddings, or None.
    image_local / text_local: (B, K, A) / (B, T, A) L2-normalised GLA-local features, or None.
    mlm_logits: (M, V) logits at the M positions selected by ``mlm_positions``, or None.
    mim_pred: (B, N, P*P*C) pixel predictions for every patch, or None.
    align_vision: the image view the GLA features come from (``vision`` itself unless
        ``vision.align_mask_ratio`` asks for a separately masked view).
    negative_pooled: (B', 2Df) pooled fused features of the mismatched pairs ``negative_pairs`` chose
        (fused in the same call as the B pairs), or None.
    """

    vision: VisionOutput
    text: torch.Tensor
    fusion: FusionOutput
    image_embed: torch.Tensor | None = None
    text_embed: torch.Tensor | None = None
    image_local: torch.Tensor | None = None
    text_local: torch.Tensor | None = None
    mlm_logits: torch.Tensor | None = None
    mim_pred: torch.Tensor | None = None
    negative_pooled: torch.Tensor | None = None
    align_vision: VisionOutput | None = None


PRETRAIN_HEADS = ("align", "mlm_head", "mim_decoder", "itm_head")


def padded_positions(selected: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's selected positions, in order, padded to the longest row's count.

    Args:
        selected: (B, T) bool.

    Returns:
        positions (B, Q) long with Q = the most positions any row selects (padding: position 0), and
        found (B, Q) bool, False at the padding; ``positions[found]`` lists ``selected.nonzero()``'s
        positions in its order, so ``states[selected] == gather(states, positions)[found]``.
    """
    counts = selected.sum(dim=1)
    width = int(counts.max()) if selected.numel() else 0  # the shape needs the count (one host sync on a GPU)
    order = torch.argsort((~selected).to(torch.uint8), dim=1, stable=True)[:, :width]  # selected first, in order
    found = torch.arange(width, device=selected.device) < counts[:, None]
    return torch.where(found, order, 0), found


def heads_for_objectives(config: Config) -> set[str]:
    """The pre-training heads the config's objectives use (a head whose loss weight is 0 is not built)."""
    o = config.objectives
    wanted = {"align": o.global_align > 0 or o.local_align > 0, "mlm_head": o.mlm > 0, "mim_decoder": o.mim > 0,
              "itm_head": o.itm > 0}
    return {name for name, used in wanted.items() if used}


class MPMAModel(nn.Module):
    """MPMA backbone and pre-training heads. Weights are random; :func:`mpma.models.factory.create_model`
    builds a model and loads weights (``*.init`` paths, checkpoints, model folders).

    Args:
        config: the full configuration (vision, text, fusion, decoder, objectives are read).
        vocab_size: tokenizer vocabulary size.
        pad_token_id: tokenizer padding id.
        heads: which of :data:`PRETRAIN_HEADS` to build; None: those the objectives use.
        align_parts: (global, local) GLA projections of the ``align`` head; None: those the objectives use.
        text_encoder: a ``transformers`` config of the text encoder (a saved model's or a checkpoint's exact
            architecture); None builds it from ``config.text``.
    """

    def __init__(self, config: Config, vocab_size: int, pad_token_id: int, heads: set[str] | None = None,
                 align_parts: tuple[bool, bool] | None = None, text_encoder=None) -> None:
        super().__init__()
        self.config = config
        objectives = config.objectives
        heads = heads_for_objectives(config) if heads is None else set(heads)
        unknown = heads - set(PRETRAIN_HEADS)
        if unknown:
            raise ValueError(f"unknown heads {sorted(unknown)} (heads: {', '.join(PRETRAIN_HEADS)})")
        self.vision = VisionTransformer(config.vision)
        self.text = TextEncoder(config.text, vocab_size, pad_token_id, text_encoder)
        self.fusion = CoAttentionFusion(config.fusion, self.text.width, self.vision.width)
        self.align = None
        if "align" in heads:
            global_, local = align_parts or (objectives.global_align > 0, objectives.local_align > 0)
            self.align = AlignmentHeads(self.vision.width, self.text.width, objectives.align_dim, objectives.temperature,
                                        local=local, global_=global_)
        self.mlm_head = MLMHead(config.fusion.width, vocab_size) if "mlm_head" in heads else None
        patch_pixels = config.vision.patch_size**2 * config.vision.channels
        self.mim_decoder = (MIMDecoder(config.decoder, config.fusion.width, self.vision.grid**2, patch_pixels)
                            if "mim_decoder" in heads else None)
        self.itm_head = ClassifierHead(2 * config.fusion.width, 2) if "itm_head" in heads else None

    @property
    def heads(self) -> set[str]:
        """The pre-training heads this model has."""
        return {name for name in PRETRAIN_HEADS if getattr(self, name) is not None}

    @property
    def align_parts(self) -> tuple[bool, bool]:
        """(global, local): which GLA projections the ``align`` head has."""
        if self.align is None:
            return (False, False)
        return (self.align.global_image is not None, self.align.local_image is not None)

    @property
    def has_global_alignment(self) -> bool:
        """True when the GLA-global projections exist (retrieval and zero-shot need them)."""
        return self.align is not None and self.align.global_image is not None

    # ---------------------------------------------------------------- unimodal features

    def encode_image(
        self, images: torch.Tensor, mask_ratio: float = 0.0, generator: torch.Generator | None = None
    ) -> VisionOutput:
        """images (B, C, H, W) -> VisionOutput with tokens (B, 1+K, Dv)."""
        return self.vision(images, mask_ratio=mask_ratio, generator=generator)

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(B, T) ids and mask -> (B, T, Dt)."""
        return self.text(input_ids, attention_mask)

    def _pool(self, tokens: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """CLS (position 0) or the mean of the valid non-CLS tokens: (B, N, D) -> (B, D)."""
        if self.config.objectives.align_pool == "cls":
            return tokens[:, 0]
        if self.config.objectives.align_pool != "mean":
            raise ValueError(f"objectives.align_pool must be 'cls' or 'mean', got {self.config.objectives.align_pool!r}")
        return masked_mean(tokens[:, 1:], valid[:, 1:])

    def image_embedding(self, vision: VisionOutput) -> torch.Tensor:
        """GLA-global image embedding (B, A), L2-normalised."""
        tokens = vision.tokens
        valid = torch.ones(tokens.shape[:2], device=tokens.device)
        return F.normalize(self.align.global_image(self._pool(tokens, valid)), dim=-1)

    def text_embedding(self, text: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """GLA-global text embedding (B, A), L2-normalised. text (B, T, Dt), attention_mask (B, T)."""
        return F.normalize(self.align.global_text(self._pool(text, attention_mask)), dim=-1)

    @torch.no_grad()
    def embed_image(self, images: torch.Tensor) -> torch.Tensor:
        """Unmasked images (B, C, H, W) -> normalised retrieval embeddings (B, A)."""
        return self.image_embedding(self.encode_image(images))

    @torch.no_grad()
    def embed_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Token ids (B, T) -> normalised retrieval embeddings (B, A)."""
        return self.text_embedding(self.encode_text(input_ids, attention_mask), attention_mask)

    # ---------------------------------------------------------------- fusion and heads

    def fuse(
        self, text: torch.Tensor, attention_mask: torch.Tensor, image_tokens: torch.Tensor,
        return_attention: bool = False, text_positions: torch.Tensor | None = None, token_rows: int | None = None,
    ) -> FusionOutput:
        """Fuse text states (B, T, Dt) with image tokens (B, 1+K, Dv). ``text_positions`` (N, Q) and
        ``token_rows`` N ask for only some fused states (:meth:`CoAttentionFusion.forward`; ``token_rows=0``:
        the pooled features alone, all ITM scoring needs)."""
        return self.fusion(text, attention_mask, image_tokens, return_attention=return_attention,
                           text_positions=text_positions, token_rows=token_rows)

    def itm_logits(self, pooled: torch.Tensor) -> torch.Tensor:
        """Pooled fused features (B, 2Df) -> matched/unmatched logits (B, 2)."""
        return self.itm_head(pooled)

    def forward(
        self,
        images: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        mask_ratio: float | None = None,
        mlm_positions: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        negative_pairs: Callable[[MPMAOutput], tuple[torch.Tensor, torch.Tensor]] | None = None,
    ) -> MPMAOutput:
        """One pass over a (masked) image-text pair batch: encoders, alignment features, fusion, heads.

        Args:
            images: (B, C, H, W) normalised pixels.
            input_ids: (B, T) token ids, already MLM-masked by the collate function.
            attention_mask: (B, T) 1 for real tokens.
            mask_ratio: image mask ratio; None uses ``vision.mask_ratio``.
            mlm_positions: (B, T) bool, where MLM logits are wanted (masked tokens).
            generator: RNG for the image mask.
            negative_pairs: given the unimodal and alignment outputs, the (B',) text and (B',) image
                indices of mismatched pairs (ITM negatives); they are fused in the same fusion call as
                the B pairs (one call on B + B' rows instead of two: larger, faster matrix products).
        """
        ratio = self.config.vision.mask_ratio if mask_ratio is None else mask_ratio
        vision = self.encode_image(images, ratio, generator)
        text = self.encode_text(input_ids, attention_mask)
        out = MPMAOutput(vision=vision, text=text, fusion=None)  # type: ignore[arg-type]
        if self.align is not None:
            out.align_vision = self._alignment_view(images, vision, mask_ratio, generator)
            self._align(out, out.align_vision, text, attention_mask)
        # the MLM head reads the fused text at the masked words only: the fusion computes just those
        text_positions = found = None
        if self.mlm_head is not None and mlm_positions is not None:
            text_positions, found = padded_positions(mlm_positions)
        if negative_pairs is None:
            out.fusion = self.fuse(text, attention_mask, vision.tokens, text_positions=text_positions)
        else:
            text_index, image_index = negative_pairs(out)
            rows = text.shape[0]
            both = self.fuse(torch.cat([text, text[text_index]]), torch.cat([attention_mask, attention_mask[text_index]]),
                             torch.cat([vision.tokens, vision.tokens[image_index]]),
                             text_positions=text_positions, token_rows=rows)
            out.fusion = FusionOutput(both.text, both.image, both.pooled[:rows], None)
            out.negative_pooled = both.pooled[rows:]
        if text_positions is not None:
            out.mlm_logits = self.mlm_head(out.fusion.text[found])
        if self.mim_decoder is not None and vision.ids_restore is not None:
            out.mim_pred = self.mim_decoder(out.fusion.image, vision.ids_restore)
        return out

    def _alignment_view(self, images: torch.Tensor, vision: VisionOutput, mask_ratio: float | None,
                        generator: torch.Generator | None) -> VisionOutput:
        """The image view GLA reads: the masked pass itself, or (``vision.align_mask_ratio`` set, and
        training-time masking in use) a second pass with that ratio. (B, 1+K', Dv) tokens."""
        align_ratio = self.config.vision.align_mask_ratio
        if align_ratio is None or (mask_ratio is not None and mask_ratio == 0.0):
            return vision
        return self.encode_image(images, align_ratio, generator)

    def _align(self, out: MPMAOutput, vision: VisionOutput, text: torch.Tensor, attention_mask: torch.Tensor) -> None:
        """GLA-global embeddings (B, A) and GLA-local features (B, K, A) / (B, T, A) into ``out``."""
        if self.align.global_image is not None:
            out.image_embed = self.image_embedding(vision)
            out.text_embed = self.text_embedding(text, attention_mask)
        if self.align.local_image is not None:
            out.image_local = F.normalize(self.align.local_image(vision.tokens[:, 1:]), dim=-1)
            out.text_local = F.normalize(self.align.local_text(text), dim=-1)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Activation checkpointing in every vision block, text layer and fusion layer: their
        activations are recomputed in the backward pass instead of kept (``run.activation_checkpointing``).
        The results and gradients are unchanged."""
        self.vision.set_grad_checkpointing(enable)
        self.text.set_grad_checkpointing(enable)
        self.fusion.set_grad_checkpointing(enable)

    def no_weight_decay(self) -> set[str]:
        """Parameter names exempt from weight decay besides biases and norms."""
        return {n for n, _ in self.named_parameters() if n.endswith(("pos_embed", "cls_token", "mask_token",
                                                                      "type_embed", "memory", "log_inv_temperature"))}

    def text_parameter_names(self) -> set[str]:
        """The text encoder's parameters, trained with ``optim.text_lr_mult``."""
        return {n for n, _ in self.named_parameters() if n.startswith("text.")}

    def head_parameter_names(self) -> set[str]:
        """Parameters trained with ``optim.head_lr_mult``: fusion and every head (M3AE's 5x rule)."""
        prefixes = ("fusion.", "align.", "mlm_head.", "mim_decoder.", "itm_head.")
        return {n for n, _ in self.named_parameters() if n.startswith(prefixes)}
