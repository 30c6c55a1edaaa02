"""Zero-shot image classification (``zero_shot_cls``): images ranked against label prompts by GLA-global
similarity. Nothing is trained; the backbone itself is the model."""

from __future__ import annotations

from mpma.eval import downstream as evaluation
from mpma.tasks.base import Task, TaskRunContext, register


@register
class ZeroShotClassification(Task):
    name = "zero_shot_cls"
    help = "zero-shot image classification from label prompts (no training)"
    selection_metric = "macro_auc"
    trains = False
    synthrad_multi_label = True

    def synthrad_examples(self, case, ref, index: int) -> list[dict]:
        return [{"image": ref, "labels": tuple(n for n, y in zip(self.synthrad_label_names(), case.labels) if y > 0)}]

    def head_settings(self, module):
        return {"type": "zero_shot"}

    def metadata(self, config) -> dict:
        return {"prompt": config.head.prompt}

    def extra_texts(self, config, classes: list[str]) -> list[str]:
        return [config.head.prompt.format(label=label) for label in classes]

    def evaluate(self, run: TaskRunContext, examples: list[dict]) -> dict:
        return evaluation.evaluate_zero_shot(run.backbone, examples, run.collate, run.tokenizer, run.classes,
                                             run.config.head.prompt, run.max_length, run.config.data.eval_batch_size,
                                             run.device)
