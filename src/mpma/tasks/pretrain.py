"""The MPMA pre-training task: ONE forward pass over the masked pair yields every loss.

The task owns the model and turns a batch into a dict of named losses and metrics; the trainer
weights, sums and steps. Per pass:

1. text is MLM-masked (exact 15% per sequence, 80/10/10; in the collate step, or here if the batch
   comes unmasked) and the image is patch-masked;
2. both encoders run once (the ViT only on visible patches);
3. GLA global + local losses on the unimodal features of that pass;
4. the fusion runs once on the masked pairs and the ITM negatives -> MLM logits, MIM pixels, ITM;
5. ITM negatives re-use the same unimodal features; they are fused in the same fusion call (2B rows).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial

import torch
from torch import nn

from mpma.config import Config
from mpma.data.text import mask_tokens
from mpma.models.mpma import MPMAModel, MPMAOutput
from mpma.objectives.alignment import global_alignment_loss, local_alignment_loss
from mpma.objectives.matching import itm_loss, sample_hard_negatives
from mpma.objectives.reconstruction import mlm_loss, mim_loss


@dataclass
class StepResult:
    """losses: raw (unweighted) loss terms by name; metrics: detached diagnostics."""

    losses: dict[str, torch.Tensor] = field(default_factory=dict)
    metrics: dict[str, torch.Tensor] = field(default_factory=dict)


class PretrainTask(nn.Module):
    """Wraps :class:`MPMAModel` with the MPMA objectives.

    Args:
        model: the backbone with its pre-training heads.
        config: the run configuration (objective weights, mask ratios).
        mask_token_id: id of the tokenizer's mask token.
        vocab_size: tokenizer vocabulary size (for 10% random replacement).
    """

    def __init__(self, model: MPMAModel, config: Config, mask_token_id: int, vocab_size: int) -> None:
        super().__init__()
        self.model = model
        self.config = config
        self.mask_token_id = mask_token_id
        self.vocab_size = vocab_size
        # (V,) MLM draw weights (text.mask_weighting idf / surprisal) for text masked here, not in the collate step
        self.token_mask_weights: torch.Tensor | None = None

    @property
    def loss_weights(self) -> dict[str, float]:
        """Weight of each active loss term (terms with weight 0 are never computed)."""
        o = self.config.objectives
        weights = {"mlm": o.mlm, "mim": o.mim, "global_align": o.global_align, "local_align": o.local_align, "itm": o.itm}
        return {name: w for name, w in weights.items() if w > 0}

    def forward(self, batch: dict[str, torch.Tensor], generator: torch.Generator | None = None) -> StepResult:
        """Compute every active loss from one pass.

        Args:
            batch: images (B, C, H, W); input_ids, attention_mask, special_tokens_mask, word_ids (B, T);
                match_key (B,) int64 — samples sharing a key are never used as each other's negatives;
                optionally mlm_input_ids, mlm_labels (B, T): the MLM view masked by the collate step
                (:class:`mpma.data.text.TextMasker`); without them the text is masked here.
            generator: RNG for text/image masks and negative sampling (CPU generator).
        """
        weights = self.loss_weights
        text_cfg = self.config.text
        input_ids, labels = batch["input_ids"], None
        if "mlm" in weights and "mlm_labels" in batch:  # masked by the collate step (TextMasker)
            input_ids, labels = batch["mlm_input_ids"], batch["mlm_labels"]
        elif "mlm" in weights:
            if text_cfg.mask_weighting != "uniform" and self.token_mask_weights is None:
                raise ValueError(f"text.mask_weighting={text_cfg.mask_weighting} needs token_mask_weights set on the task "
                                 "(mpma.data.text.mask_weights), or batches masked by a TextMasker")
            input_ids, labels = mask_tokens(
                batch["input_ids"], batch["special_tokens_mask"], self.mask_token_id, self.vocab_size,
                text_cfg.mask_ratio, batch["word_ids"] if text_cfg.whole_word else None, generator,
                self.token_mask_weights if text_cfg.mask_weighting != "uniform" else None,
            )
        mlm_positions = labels != -100 if labels is not None else None
        images = batch["images"]
        device = images.device
        mask_generator = None
        if generator is not None and device.type != "cpu":
            mask_generator = torch.Generator(device).manual_seed(int(torch.randint(2**62, (1,), generator=generator)))
        step_generator = mask_generator if device.type != "cpu" else generator
        # ITM negatives are chosen from the alignment similarities, then fused in the pairs' fusion call
        pick_negatives = partial(self._negatives, batch=batch, generator=step_generator) if "itm" in weights else None
        out = self.model(
            images, input_ids, batch["attention_mask"], mlm_positions=mlm_positions, generator=step_generator,
            negative_pairs=pick_negatives,
        )
        result = StepResult()
        if "mlm" in weights:
            result.losses["mlm"], result.metrics["mlm_acc"] = mlm_loss(out.mlm_logits, batch["input_ids"][mlm_positions])
        if "mim" in weights and out.mim_pred is not None:
            result.losses["mim"] = mim_loss(
                out.mim_pred, images, out.vision.mask, self.config.vision.patch_size, self.config.objectives.norm_pix_loss
            )
        if "global_align" in weights:
            loss, metrics = global_alignment_loss(out.image_embed, out.text_embed, self.model.align.logit_scale())
            result.losses["global_align"] = loss
            result.metrics.update(metrics)
        if "local_align" in weights:
            text_valid = (batch["special_tokens_mask"] == 0)
            if mlm_positions is not None:
                text_valid = text_valid & ~mlm_positions
            result.losses["local_align"] = local_alignment_loss(
                out.text_local, out.image_local, text_valid, self.model.align.logit_scale(),
                self.config.objectives.local_patch_to_token,
            )
        if "itm" in weights:
            batch_size = input_ids.shape[0]
            pooled = torch.cat([out.fusion.pooled, out.negative_pooled], dim=0)  # (2B, 2Df)
            targets = (torch.arange(2 * batch_size, device=device) < batch_size).long()  # B ones, then B zeros
            result.losses["itm"], result.metrics["itm_acc"] = itm_loss(self.model.itm_logits(pooled), targets)
        return result

    def _negatives(self, out: MPMAOutput, batch: dict[str, torch.Tensor],
                   generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
        """ITM hard negatives, one per pair: even rows keep their image and take a wrong text, odd rows
        keep their text and take a wrong image. Returns the (B,) text and (B,) image indices."""
        batch_size = batch["input_ids"].shape[0]
        device = batch["input_ids"].device
        forbidden = torch.eye(batch_size, dtype=torch.bool, device=device)
        if "match_key" in batch:
            keys = batch["match_key"]
            forbidden |= keys[:, None] == keys[None, :]
        if self.config.objectives.itm_exclude_same_text:
            same = (batch["input_ids"][:, None, :] == batch["input_ids"][None, :, :]).all(-1)
            forbidden |= same
        if out.image_embed is not None:
            # negatives ~ softmax(cosine): a mild preference for similar pairs. ALBEF samples at the InfoNCE
            # temperature (much harder negatives); the gentler form is the one the measured runs used.
            similarity = out.image_embed @ out.text_embed.t()  # (B images, B texts)
        else:
            similarity = torch.zeros(batch_size, batch_size, device=device)
        # on the batch's device with a generator there: no host sync in the step
        wrong_text = sample_hard_negatives(similarity, forbidden, generator)
        wrong_image = sample_hard_negatives(similarity.t(), forbidden.t(), generator)
        even = torch.arange(batch_size, device=device) % 2 == 0
        own = torch.arange(batch_size, device=device)
        return torch.where(even, wrong_text, own), torch.where(even, own, wrong_image)
