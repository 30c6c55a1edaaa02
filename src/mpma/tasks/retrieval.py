"""Image-text retrieval (``retrieval``): GLA-global contrastive fine-tuning, optional ITM, evaluated
by recall@k in both directions (optionally ITM re-ranking of the top-k)."""

from __future__ import annotations

import torch
from torch import nn

from mpma.eval import downstream as evaluation
from mpma.models.heads import AlignmentHeads
from mpma.models.mpma import MPMAModel
from mpma.objectives.alignment import global_alignment_loss
from mpma.objectives.matching import itm_loss, sample_hard_negatives
from mpma.tasks.base import Task, TaskRunContext, register
from mpma.tasks.pretrain import StepResult


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
        """batch: images (B, 3, S, S), input_ids / attention_mask (B, T), match_key (B,)."""
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
            pos = model.fuse(text, batch["attention_mask"], vision.tokens, token_rows=0)  # ITM reads the pooled only
            neg = model.fuse(text[wrong_text], batch["attention_mask"][wrong_text], vision.tokens, token_rows=0)
            logits = model.itm_logits(torch.cat([pos.pooled, neg.pooled]))
            targets = torch.cat([torch.ones(b), torch.zeros(b)]).long().to(logits.device)
            result.losses["itm"], result.metrics["itm_acc"] = itm_loss(logits, targets)
        return result

    def head_parameter_names(self) -> set[str]:
        return {n for n, _ in self.named_parameters() if n.startswith(("backbone.align.", "backbone.itm_head.", "backbone.fusion."))}

    def settings(self) -> dict:
        return {"type": "retrieval", "use_itm": self.use_itm}


@register
class Retrieval(Task):
    name = "retrieval"
    help = "image-text retrieval (GLA-global, optional ITM re-ranking)"
    selection_metric = "mean_R@1"
    text_fields = ("text",)
    target = "key"
    manifest_kind = "pretrain"

    def synthrad_examples(self, case, ref, index: int) -> list[dict]:
        return [{"image": ref, "text": case.report, "key": case.finding_key}]

    def synthrad_label_names(self) -> list[str]:
        return []

    def prepare_backbone(self, config, backbone) -> bool:
        """A backbone without GLA-global projections (e.g. M3AE-style) gets a fresh one to fine-tune."""
        if backbone.has_global_alignment or config.epochs <= 0:
            return False
        objectives = backbone.config.objectives
        backbone.align = AlignmentHeads(backbone.vision.width, backbone.text.width, objectives.align_dim,
                                        objectives.temperature, local=False)
        return True

    def build_module(self, config, backbone, classes, multi_label):
        return RetrievalTrainer(backbone, config.head.retrieval_itm)

    def head_settings(self, module):
        return module.settings() if isinstance(module, RetrievalTrainer) else {"type": "retrieval", "use_itm": False}

    def module_from_settings(self, backbone, task):
        return RetrievalTrainer(backbone, bool(task["head"].get("use_itm")))

    def loss_names(self, config) -> list[str]:
        return ["global_align", "itm"] if config.head.retrieval_itm else ["global_align"]

    def starts_from_pretrained_model(self, config, backbone) -> bool:
        # a pre-trained GLA head is already a retrieval model: scored as "epoch 0", so a fine-tune that
        # does not beat zero-shot on val keeps the zero-shot weights (best_epoch 0)
        return config.init != "scratch" and backbone.has_global_alignment

    def evaluate(self, run: TaskRunContext, examples: list[dict]) -> dict:
        return evaluation.evaluate_retrieval(run.backbone, examples, run.collate, run.config.data.eval_batch_size,
                                             run.device, run.config.head.rerank_k)
