"""MODEL_CARD.md of a model folder: architecture, training data and steps, results, intended use and limits."""

from __future__ import annotations

import json

from mpma.eval.metrics import scalar_items


def model_card(meta: dict, task: dict | None, metrics: dict | None, provenance: dict, n_params: int) -> str:
    """MODEL_CARD.md: architecture, pre-training data and steps, results, intended use and limits."""
    config = meta["backbone"]
    v, t, f, o = config["vision"], meta["text_encoder"], config["fusion"], config["objectives"]
    title = f"mpma {task['task']} model" if task else "mpma backbone"
    lines = [f"# {title}", "",
             "MPMA (Multi-task Paired Masking with Alignment) medical vision-language model, saved by `mpma` "
             f"(folder format {meta['mpma_format']}). Load it with `mpma.inference.Predictor.from_pretrained(PATH)` "
             "or `mpma.hub.from_pretrained(PATH)`; nothing is downloaded.", "",
             "## Architecture", "",
             f"- parameters: {n_params:,}",
             f"- vision: ViT, image {v['image_size']}px, patch {v['patch_size']}, width {v['width']}, depth {v['depth']}, "
             f"{v['heads']} heads{', CLIP-style pre-norm' if v.get('pre_norm') else ''}, activation {v.get('activation', 'gelu')}",
             f"- text: {t.get('model_type')} encoder, width {t.get('hidden_size')}, depth {t.get('num_hidden_layers')}, "
             f"{t.get('num_attention_heads')} heads, vocabulary {t.get('vocab_size')}, max length {config['text']['max_length']}",
             f"- fusion: {f['depth']} co-attention layers, width {f['width']}, memory slots {f['memory_slots']} (MA-CMF)",
             f"- heads in the backbone: {', '.join(meta['backbone_modules']) or 'none'}",
             f"- pre-processing: images resized to {meta['preprocess']['image_size']}px, CLIP mean/std; text truncated to "
             f"{meta['preprocess']['max_length']} tokens"]
    if task:
        head = task.get("head", {})
        lines += [f"- task head: {task['task']} ({head.get('type')}), {len(task.get('classes') or [])} classes"
                  + (" (multi-label)" if task.get("multi_label") else "")]
    lines += ["", "## Training", ""]
    pre = provenance.get("pretrain")
    if pre:
        lines.append(f"- pre-training: data `{pre.get('data')}`, {pre.get('steps')} steps, batch {pre.get('batch_size')}, "
                     f"lr {pre.get('lr')}; loss weights {o}")
        if pre.get("vision_init") or pre.get("text_init"):
            lines.append(f"- initialised from: vision {pre.get('vision_init')}, text {pre.get('text_init')}")
    converted = provenance.get("converted")
    if converted:
        lines.append(f"- converted (not trained) from: vision {converted.get('vision')}, text {converted.get('text')}; "
                     "the fusion and heads are randomly initialised")
    fine = provenance.get("finetune")
    if fine:
        lines.append(f"- fine-tuning: task {fine.get('task')}, init `{fine.get('init')}`, {fine.get('epochs')} epochs, "
                     f"data {json.dumps(fine.get('data'), default=str)}, split sizes {fine.get('split_sizes')}")
    if not (pre or converted or fine):
        lines.append("- not recorded")
    lines += ["", "## Evaluation", ""]
    rows = scalar_items(metrics.get("test", metrics)) if metrics else []
    if rows:
        lines += ["| metric | value |", "|---|---|"] + [
            f"| {name} | {value:.4f} |" if isinstance(value, float) and not value.is_integer() else f"| {name} | {value:g} |"
            for name, value in rows]
        if "synthrad" in json.dumps(provenance, default=str):
            lines += ["", "The data is `synthrad`, a synthetic generator: these numbers say nothing about real images."]
    else:
        lines.append("No evaluation results were saved with this model.")
    lines += ["", "## Intended use and limits", "",
              "- For research on medical vision-language methods only. **Not a medical device; not for clinical "
              "decisions**, diagnosis or triage.",
              "- Outputs can be wrong with high confidence; they were not validated on a clinical population, across "
              "scanners, sites or demographic groups.",
              "- VQA answers are restricted to the answer vocabulary of the training set; zero-shot labels depend on "
              "the prompt wording.",
              "- Training data may contain biases and, for real datasets, is subject to the datasets' own licences and "
              "usage agreements.", ""]
    return "\n".join(lines)
