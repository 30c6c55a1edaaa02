"""Classification tasks: image-text (``mm_cls``), image (``img_cls``) and text (``txt_cls``).

Their modules: :class:`FusedClassifier` (an MLP over the fused pair, also VQA's module) and
:class:`UnimodalClassifier` (a linear head on one encoder's CLS feature).

Batch keys (built by :class:`mpma.data.collate.TaskCollator`): images (B, 3, S, S); input_ids,
attention_mask (B, T); targets (B, A) float for soft / multi-label targets or (B,) long for
single-label targets (-100 = no valid class, e.g. an answer outside the vocabulary).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mpma.data.synthrad import text_pairs
from mpma.eval import downstream as evaluation
from mpma.models.heads import ClassifierHead
from mpma.models.mpma import MPMAModel
from mpma.tasks.base import Task, TaskRunContext, register
from mpma.tasks.pretrain import StepResult

POOLINGS = ("cls", "mean", "slot")


def pool_fused(fused, text_mask: torch.Tensor, pool: str, slot: torch.Tensor | None = None) -> torch.Tensor:
    """(B, 2D) pair feature from a fusion output.

    ``"cls"``: the two streams' tanh-pooled CLS states (M3AE's head input; these poolers learn only
    through ITM in pre-training). ``"mean"``: the mean of the fused text tokens (padding excluded)
    beside the mean of the fused image tokens; these are the states that MLM and MIM train.
    ``"slot"``: the fused text state at the answer slot (a [MASK] after the question,
    :func:`mpma.data.text.insert_answer_slot`: the kind of position MLM trains to read the image)
    beside the mean of the fused image tokens.

    Args:
        fused: :class:`~mpma.models.fusion.FusionOutput` with text (B, T, D) and image (B, 1+K, D).
        text_mask: (B, T), 1 for real tokens.
        pool: "cls", "mean" or "slot".
        slot: (B,) position of each row's answer slot (``pool="slot"`` only).
    """
    if pool == "cls":
        return fused.pooled
    if pool == "mean":
        weights = text_mask.to(fused.text.dtype).unsqueeze(-1)  # (B, T, 1)
        text_mean = (fused.text * weights).sum(1) / weights.sum(1).clamp_min(1.0)
        return torch.cat([text_mean, fused.image.mean(1)], dim=-1)
    if pool == "slot":
        if slot is None:
            raise ValueError("pool='slot' needs the answer slot's position per row")
        slot_state = fused.text[torch.arange(fused.text.shape[0], device=slot.device), slot]  # (B, D)
        return torch.cat([slot_state, fused.image.mean(1)], dim=-1)
    raise ValueError(f"pool must be one of {POOLINGS}, got {pool!r}")


class FusedClassifier(nn.Module):
    """VQA and image-text classification: MLP over the pooled fused output of the unmasked pair.

    Args:
        backbone: the MPMA model.
        classes: number of answers / labels.
        loss: "bce" (soft scores / multi-label targets) or "ce" (single label).
        hidden: MLP hidden width; None: twice the pooled width (the pooled width is 2 x fusion width).
        pool: how the pair feature is read from the fusion output (see :func:`pool_fused`).
        label_smoothing: share of the "ce" target spread evenly over all classes (training loss only).
    """

    def __init__(self, backbone: MPMAModel, classes: int, loss: str = "ce", hidden: int | None = None,
                 pool: str = "cls", label_smoothing: float = 0.0) -> None:
        super().__init__()
        if loss not in ("bce", "ce"):
            raise ValueError(f"loss must be 'bce' or 'ce', got {loss!r}")
        if pool not in POOLINGS:
            raise ValueError(f"head.pool must be one of {POOLINGS}, got {pool!r}")
        if label_smoothing and loss != "ce":
            raise ValueError(f"label_smoothing applies to the 'ce' loss only, got loss={loss!r}")
        self.backbone = backbone
        pooled = 2 * backbone.config.fusion.width
        hidden = hidden or 2 * pooled
        self.head = ClassifierHead(pooled, classes, hidden=hidden)
        self.loss = loss
        self.pool = pool
        self.classes = classes
        self.hidden = hidden
        self.label_smoothing = label_smoothing

    def logits(self, batch: dict[str, torch.Tensor], return_attention: bool = False):
        """(B, classes) logits (and the fusion output when ``return_attention``)."""
        if self.pool == "slot" and "answer_slot" not in batch:
            raise ValueError("head.pool=slot reads the fused state at each text's answer slot: the batch has no "
                             "'answer_slot' (collate with answer_slot=True, mpma.data.text.insert_answer_slot)")
        vision = self.backbone.encode_image(batch["images"])
        text = self.backbone.encode_text(batch["input_ids"], batch["attention_mask"])
        pooled_only = self.pool == "cls" and not return_attention  # the CLS heads read no fused token
        fused = self.backbone.fuse(text, batch["attention_mask"], vision.tokens, return_attention=return_attention,
                                   token_rows=0 if pooled_only else None)
        logits = self.head(pool_fused(fused, batch["attention_mask"], self.pool, batch.get("answer_slot")))
        return (logits, fused) if return_attention else logits

    def forward(self, batch: dict[str, torch.Tensor], generator: torch.Generator | None = None) -> StepResult:
        logits = self.logits(batch)
        targets = batch["targets"]
        if self.loss == "bce":
            # M3AE scales BCE by the number of classes so its magnitude does not vanish with large vocabularies.
            loss = F.binary_cross_entropy_with_logits(logits.float(), targets.float()) * targets.shape[1]
            correct = targets.gather(1, logits.argmax(1, keepdim=True)).squeeze(1) > 0
        else:
            loss = F.cross_entropy(logits.float(), targets, ignore_index=-100, label_smoothing=self.label_smoothing)
            correct = logits.argmax(1) == targets
        return StepResult({"task": loss}, {"acc": correct.float().mean().detach()})

    @torch.no_grad()
    def predict(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.logits(batch).float()

    def head_parameter_names(self) -> set[str]:
        """The new classifier only: the fusion trains at the backbone's rate. (At ``head_lr_mult``
        times the rate, the co-attention fusion could not fit VQA-RAD: docs/RESULTS.md section 3.)"""
        return {n for n, _ in self.named_parameters() if n.startswith("head.")}

    def settings(self) -> dict:
        return {"type": "fused", "loss": self.loss, "hidden": self.hidden, "outputs": self.classes, "pool": self.pool}

    @classmethod
    def from_settings(cls, backbone: MPMAModel, head: dict) -> FusedClassifier:
        return cls(backbone, head["outputs"], head["loss"], head["hidden"], head.get("pool", "cls"))


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

    def settings(self) -> dict:
        return {"type": "unimodal", "modality": self.modality, "linear_probe": self.linear_probe,
                "outputs": self.head.out_features}

    @classmethod
    def from_settings(cls, backbone: MPMAModel, head: dict, multi_label: bool) -> UnimodalClassifier:
        return cls(backbone, head["modality"], head["outputs"], multi_label, bool(head.get("linear_probe")))


def fused_hidden(config, backbone: MPMAModel) -> int:
    """The MLP hidden width of a fused head: ``head.hidden_mult`` x the pooled width (2 x fusion width)."""
    return int(config.head.hidden_mult * 2 * backbone.config.fusion.width)


class LabelTask(Task):
    """Shared parts of the trained label-classification tasks."""

    target = "labels"
    manifest_kind = "classification"
    label_fraction = True

    def evaluate(self, run: TaskRunContext, examples: list[dict]) -> dict:
        scores = evaluation.predict_scores(run.module, examples, run.collate, run.config.data.eval_batch_size, run.device)
        return evaluation.evaluate_classification(scores, examples, run.classes, run.multi_label)


@register
class ImageTextClassification(LabelTask):
    """MELINDA-style single-label classification of an image with its text."""

    name = "mm_cls"
    help = "image-text classification (fused pair, single label)"
    selection_metric = "accuracy"
    text_fields = ("text", "text_pair")
    smooths_labels = True

    def synthrad_examples(self, case, ref, index: int) -> list[dict]:
        # the kind of a single finding, or "normal"; two-finding cases are left out
        if len(case.findings) > 1:
            return []
        labels = tuple(name for name, y in zip(self.synthrad_label_names(), case.labels) if y > 0)
        return [{"image": ref, "text": case.report, "labels": (labels[0],)}]

    def build_module(self, config, backbone, classes, multi_label):
        return FusedClassifier(backbone, len(classes), "ce", fused_hidden(config, backbone), config.head.pool,
                               config.head.label_smoothing)

    def head_settings(self, module):
        return module.settings()

    def module_from_settings(self, backbone, task):
        return FusedClassifier.from_settings(backbone, task["head"])


@register
class ImageClassification(LabelTask):
    """Image classification (multi-label on synthrad) with a linear head on the ViT CLS feature."""

    name = "img_cls"
    help = "image classification (ViT CLS, fine-tune or linear probe)"
    selection_metric = "macro_auc"
    synthrad_multi_label = True

    def synthrad_examples(self, case, ref, index: int) -> list[dict]:
        return [{"image": ref, "labels": tuple(n for n, y in zip(self.synthrad_label_names(), case.labels) if y > 0)}]

    def build_module(self, config, backbone, classes, multi_label):
        if config.head.image_mode not in ("finetune", "linear_probe"):
            raise ValueError(f"head.image_mode must be 'finetune' or 'linear_probe', got {config.head.image_mode!r}")
        return UnimodalClassifier(backbone, "image", len(classes), multi_label, config.head.image_mode == "linear_probe")

    def head_settings(self, module):
        return module.settings()

    def module_from_settings(self, backbone, task):
        return UnimodalClassifier.from_settings(backbone, task["head"], bool(task.get("multi_label")))


@register
class TextClassification(LabelTask):
    """Text (or sentence-pair) classification with a linear head on the text CLS feature."""

    name = "txt_cls"
    help = "text / sentence-pair classification (text CLS)"
    selection_metric = "accuracy"
    reads_image = False
    text_fields = ("text", "text_pair")

    def synthrad_examples(self, case, ref, index: int) -> list[dict]:
        return [{"text": p["text"], "text_pair": p["text_pair"], "labels": (p["label"],)}
                for p in text_pairs(case) if p["task"] == "entailment"]

    def synthrad_label_names(self) -> list[str]:
        return ["contradiction", "entailment", "neutral"]

    def build_module(self, config, backbone, classes, multi_label):
        return UnimodalClassifier(backbone, "text", len(classes), multi_label)

    def head_settings(self, module):
        return module.settings()

    def module_from_settings(self, backbone, task):
        return UnimodalClassifier.from_settings(backbone, task["head"], bool(task.get("multi_label")))
