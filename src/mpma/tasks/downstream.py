"""Downstream task modules: backbone + head + loss, one forward per step, and ``predict`` for evaluation.

Each module's ``forward(batch, generator)`` returns a :class:`StepResult` (the trainer sums and
steps) and ``predict(batch)`` returns scores for the evaluation metrics.

Batch keys (built by :class:`mpma.data.task_batches.TaskCollator`):
images (B, 3, S, S); input_ids, attention_mask (B, T); targets (B, A) float for soft/multi-label
targets or (B,) long for single-label targets (-100 = no valid class, e.g. an answer outside the
vocabulary); match_key (B,) for retrieval.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mpma.models.heads import ClassifierHead
from mpma.models.mpma import MPMAModel
from mpma.objectives.alignment import global_alignment_loss
from mpma.objectives.matching import itm_loss, sample_hard_negatives
from mpma.tasks.pretrain import StepResult


POOLINGS = ("cls", "mean")


def pool_fused(fused, text_mask: torch.Tensor, pool: str) -> torch.Tensor:
    """(B, 2D) pair feature from a fusion output.

    ``"cls"``: the two streams' tanh-pooled CLS states (M3AE's head input; these poolers learn only
    through ITM in pre-training). ``"mean"``: the mean of the fused text tokens (padding excluded)
    beside the mean of the fused image tokens; these are the states that MLM and MIM train.

    Args:
        fused: :class:`~mpma.models.fusion.FusionOutput` with text (B, T, D) and image (B, 1+K, D).
        text_mask: (B, T), 1 for real tokens.
        pool: "cls" or "mean".
    """
    if pool == "cls":
        return fused.pooled
    if pool == "mean":
        weights = text_mask.to(fused.text.dtype).unsqueeze(-1)  # (B, T, 1)
        text_mean = (fused.text * weights).sum(1) / weights.sum(1).clamp_min(1.0)
        return torch.cat([text_mean, fused.image.mean(1)], dim=-1)
    raise ValueError(f"pool must be one of {POOLINGS}, got {pool!r}")


class FusedClassifier(nn.Module):
    """VQA and image-text classification: MLP over the pooled fused output of the unmasked pair.

    Args:
        backbone: the MPMA model.
        classes: number of answers / labels.
        loss: "bce" (soft scores / multi-label targets) or "ce" (single label).
        hidden_mult: MLP hidden width as a multiple of the pooled width (2 x fusion width).
        pool: how the pair feature is read from the fusion output (see :func:`pool_fused`).
    """

    def __init__(self, backbone: MPMAModel, classes: int, loss: str = "ce", hidden_mult: float = 2.0,
                 pool: str = "cls") -> None:
        super().__init__()
        if loss not in ("bce", "ce"):
            raise ValueError(f"loss must be 'bce' or 'ce', got {loss!r}")
        if pool not in POOLINGS:
            raise ValueError(f"head.pool must be one of {POOLINGS}, got {pool!r}")
        self.backbone = backbone
        pooled = 2 * backbone.config.fusion.width
        self.head = ClassifierHead(pooled, classes, hidden=int(hidden_mult * pooled))
        self.loss = loss
        self.pool = pool

    def logits(self, batch: dict[str, torch.Tensor], return_attention: bool = False):
        """(B, classes) logits (and the fusion output when ``return_attention``)."""
        vision = self.backbone.encode_image(batch["images"])
        text = self.backbone.encode_text(batch["input_ids"], batch["attention_mask"])
        fused = self.backbone.fuse(text, batch["attention_mask"], vision.tokens, return_attention=return_attention)
        logits = self.head(pool_fused(fused, batch["attention_mask"], self.pool))
        return (logits, fused) if return_attention else logits

    def forward(self, batch: dict[str, torch.Tensor], generator: torch.Generator | None = None) -> StepResult:
        logits = self.logits(batch)
        targets = batch["targets"]
        if self.loss == "bce":
            # M3AE scales BCE by the number of classes so its magnitude does not vanish with large vocabularies.
            loss = F.binary_cross_entropy_with_logits(logits.float(), targets.float()) * targets.shape[1]
            correct = targets.gather(1, logits.argmax(1, keepdim=True)).squeeze(1) > 0
        else:
            loss = F.cross_entropy(logits.float(), targets, ignore_index=-100)
            correct = logits.argmax(1) == targets
        return StepResult({"task": loss}, {"acc": correct.float().mean().detach()})

    @torch.no_grad()
    def predict(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.logits(batch).float()

    def head_parameter_names(self) -> set[str]:
        """The new classifier only: the fusion trains at the backbone's rate. (At ``head_lr_mult``
        times the rate, the co-attention fusion could not fit VQA-RAD: docs/RESULTS.md section 3.)"""
        return {n for n, _ in self.named_parameters() if n.startswith("head.")}


class UnimodalClassifier(nn.Module):
    """Linear head on the CLS feature of one encoder (image: ViT CLS; text: text-encoder CLS).

    Args:
        backbone: the MPMA model.
        modality: "image" or "text".
        classes: number of labels.
        multi_label: sigmoid/BCE per label instead of softmax/CE.
        linear_probe: freeze the encoder and train only the head.
    """

    def __init__(self, backbone: MPMAModel, modality: str, classes: int, multi_label: bool, linear_probe: bool = False) -> None:
        super().__init__()
        if modality not in ("image", "text"):
            raise ValueError(f"modality must be 'image' or 'text', got {modality!r}")
        self.backbone = backbone
        self.modality = modality
        self.multi_label = multi_label
        self.linear_probe = linear_probe
        width = backbone.vision.width if modality == "image" else backbone.text.width
        self.head = nn.Linear(width, classes)
        if linear_probe:
            for param in backbone.parameters():
                param.requires_grad_(False)

    def features(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """(B, D) CLS feature of the chosen encoder."""
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.linear_probe):
            if self.modality == "image":
                return self.backbone.encode_image(batch["images"]).tokens[:, 0]
            return self.backbone.encode_text(batch["input_ids"], batch["attention_mask"])[:, 0]

    def forward(self, batch: dict[str, torch.Tensor], generator: torch.Generator | None = None) -> StepResult:
        if self.linear_probe:
            self.backbone.eval()  # frozen encoder: no dropout
        logits = self.head(self.features(batch)).float()
        targets = batch["targets"]
        if self.multi_label:
            loss = F.binary_cross_entropy_with_logits(logits, targets.float())
            acc = ((logits > 0) == (targets > 0.5)).float().mean()
        else:
            loss = F.cross_entropy(logits, targets)
            acc = (logits.argmax(1) == targets).float().mean()
        return StepResult({"task": loss}, {"acc": acc.detach()})

    @torch.no_grad()
    def predict(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.head(self.features(batch)).float()

    def head_parameter_names(self) -> set[str]:
        return {n for n, _ in self.named_parameters() if n.startswith("head.")}


class RetrievalTrainer(nn.Module):
    """Retrieval fine-tuning: GLA-global contrastive loss on unmasked pairs, optionally ITM too."""

    def __init__(self, backbone: MPMAModel, use_itm: bool = False) -> None:
        super().__init__()
        if not backbone.has_global_alignment:
            raise ValueError("retrieval needs the GLA alignment head: this backbone was built with "
                             "objectives.global_align=0; fine-tune from a run with global alignment or from scratch")
        if use_itm and backbone.itm_head is None:
            raise ValueError("head.retrieval_itm=true needs an ITM head (objectives.itm > 0 in the backbone config)")
        self.backbone = backbone
        self.use_itm = use_itm

    def forward(self, batch: dict[str, torch.Tensor], generator: torch.Generator | None = None) -> StepResult:
        model = self.backbone
        vision = model.encode_image(batch["images"])
        text = model.encode_text(batch["input_ids"], batch["attention_mask"])
        image_embed, text_embed = model.image_embedding(vision), model.text_embedding(text, batch["attention_mask"])
        loss, metrics = global_alignment_loss(image_embed, text_embed, model.align.logit_scale())
        result = StepResult({"global_align": loss}, metrics)
        if self.use_itm:
            b = image_embed.shape[0]
            forbidden = batch["match_key"][:, None] == batch["match_key"][None, :]
            wrong_text = sample_hard_negatives((image_embed @ text_embed.t()).cpu(), forbidden.cpu(), generator)
            pos = model.fuse(text, batch["attention_mask"], vision.tokens)
            neg = model.fuse(text[wrong_text], batch["attention_mask"][wrong_text], vision.tokens)
            logits = model.itm_logits(torch.cat([pos.pooled, neg.pooled]))
            targets = torch.cat([torch.ones(b), torch.zeros(b)]).long().to(logits.device)
            result.losses["itm"], result.metrics["itm_acc"] = itm_loss(logits, targets)
        return result

    def head_parameter_names(self) -> set[str]:
        return {n for n, _ in self.named_parameters() if n.startswith(("backbone.align.", "backbone.itm_head.", "backbone.fusion."))}
