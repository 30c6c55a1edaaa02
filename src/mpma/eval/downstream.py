"""Evaluation of the downstream tasks with their standard metrics (each task picks its function: mpma.tasks)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from mpma.data.records import normalize_answer
from mpma.data.collate import ExampleList, TaskCollator
from mpma.data.text import tokenize
from mpma.eval import metrics as M


def _batches(examples: list[dict], collate: TaskCollator, batch_size: int, device: torch.device):
    for batch in DataLoader(ExampleList(examples), batch_size=batch_size, shuffle=False, collate_fn=collate):
        yield {k: v.to(device) for k, v in batch.items()}


@torch.inference_mode()
def predict_scores(module, examples, collate, batch_size: int, device) -> np.ndarray:
    """Concatenated ``module.predict`` scores (N, classes)."""
    was_training = module.training
    module.eval()
    scores = [module.predict(batch).cpu() for batch in _batches(examples, collate, batch_size, device)]
    module.train(was_training)
    return torch.cat(scores).numpy()


def evaluate_vqa(scores: np.ndarray, examples: list[dict], answers: list[str]) -> dict:
    """Open/closed/overall accuracy; answers outside the vocabulary count as wrong (share reported).
    Examples with a ``question_type`` (synthrad's side/location/kind/..., VQA-RAD's PRES/POS/...) also
    get ``by_question_type``: {type: {"accuracy", "n"}}, so a score can be read per kind of question."""
    predictions = [answers[i] for i in scores.argmax(1)]
    golds = [normalize_answer(e["answer"]) for e in examples]
    result = M.vqa_accuracy(predictions, golds, [e["answer_type"] for e in examples], set(answers))
    tallies: dict[str, list[int]] = {}  # question type -> [correct, count], in one pass
    for prediction, gold, example in zip(predictions, golds, examples):
        if example.get("question_type"):
            tally = tallies.setdefault(str(example["question_type"]), [0, 0])
            tally[0] += prediction == gold  # a prediction is always in the vocabulary
            tally[1] += 1
    if tallies:
        result["by_question_type"] = {kind: {"accuracy": correct / count, "n": count}
                                      for kind, (correct, count) in sorted(tallies.items())}
    return dict(result)


def evaluate_classification(scores: np.ndarray, examples: list[dict], labels: list[str], multi_label: bool) -> dict:
    """Single-label: accuracy + macro-F1 (+ macro AUC one-vs-rest). Multi-label: macro AUC + label accuracy."""
    index = {name: i for i, name in enumerate(labels)}
    if multi_label:
        targets = np.zeros_like(scores)
        for row, e in enumerate(examples):
            for label in e["labels"]:
                targets[row, index[label]] = 1
        auc = M.macro_auc(scores, targets, labels)
        top1 = scores.argmax(1)
        return {"macro_auc": auc["macro_auc"], "per_label_auc": auc["per_label"], "auc_skipped": auc["skipped"],
                "accuracy": float(((scores > 0) == (targets > 0)).mean()),
                "top1_accuracy": float(targets[np.arange(len(top1)), top1].mean())}
    target = np.array([index[e["labels"][0]] for e in examples])
    pred = scores.argmax(1)
    one_hot = np.eye(len(labels))[target]
    return {"accuracy": M.accuracy(pred, target), "macro_f1": M.macro_f1(pred, target, len(labels)),
            "macro_auc": M.macro_auc(scores, one_hot, labels)["macro_auc"]}


class FusionCallCounter:
    """Counts image-text pairs sent through the fusion (to prove re-ranking cost is N x k)."""

    def __init__(self) -> None:
        self.pairs = 0


@torch.inference_mode()
def evaluate_retrieval(model, examples, collate, batch_size: int, device, rerank_k: int = 0,
                       counter: FusionCallCounter | None = None) -> dict:
    """Embed every image and text once, rank by cosine similarity, optionally ITM-re-rank the top-k.

    Re-ranking fuses only the N x k (query, candidate) pairs of each direction, never N x N.
    """
    if not model.has_global_alignment:
        raise ValueError("retrieval evaluation needs the GLA-global projections (objectives.global_align > 0); "
                         "this backbone has none: fine-tune retrieval (epochs > 0) to train a new one")
    was_training = model.training
    model.eval()
    image_embeds, text_embeds, image_tokens, text_states, text_masks = [], [], [], [], []
    for batch in _batches(examples, collate, batch_size, device):
        vision = model.encode_image(batch["images"])
        text = model.encode_text(batch["input_ids"], batch["attention_mask"])
        image_embeds.append(model.image_embedding(vision).float())
        text_embeds.append(model.text_embedding(text, batch["attention_mask"]).float())
        if rerank_k > 0:
            image_tokens.append(vision.tokens)
            text_states += list(text)
            text_masks += list(batch["attention_mask"])
    image_embed, text_embed = torch.cat(image_embeds), torch.cat(text_embeds)
    similarity = (image_embed @ text_embed.t()).cpu()
    keys = [e["key"] for e in examples]
    relevant = np.asarray(keys, dtype=object)[:, None] == np.asarray(keys, dtype=object)[None, :]
    report = {"i2t": M.retrieval_metrics(similarity.numpy(), relevant), "t2i": M.retrieval_metrics(similarity.t().numpy(), relevant.T)}
    if rerank_k > 0:
        if model.itm_head is None:
            raise ValueError("head.rerank_k > 0 needs an ITM head (objectives.itm > 0 in the backbone config)")
        tokens = torch.cat(image_tokens)
        width = max(int(m.sum()) for m in text_masks)  # batches were padded to different lengths
        states = torch.stack([F.pad(s[:width], (0, 0, 0, width - min(width, s.shape[0]))) for s in text_states])
        masks = torch.stack([F.pad(m[:width], (0, width - min(width, m.shape[0]))) for m in text_masks])
        reranked = {}
        for direction, sim in (("i2t", similarity), ("t2i", similarity.t())):
            order = _itm_rerank(model, sim, tokens, states, masks, rerank_k, image_query=direction == "i2t",
                                batch_size=batch_size, counter=counter)
            rel = relevant if direction == "i2t" else relevant.T
            scores = np.zeros(sim.shape, dtype=np.float64)
            n_cand = sim.shape[1]
            scores[np.arange(sim.shape[0])[:, None], order] = np.arange(n_cand, 0, -1)[None, :]
            reranked[direction] = M.retrieval_metrics(scores, rel)
        report["itm_reranked"] = {"k": rerank_k, **reranked}
    report["mean_R@1"] = 0.5 * (report["i2t"]["R@1"] + report["t2i"]["R@1"])
    report["n_pairs"] = len(examples)
    model.train(was_training)
    return report


def _itm_rerank(model, sim, image_tokens, text_states, text_masks, k: int, image_query: bool, batch_size: int,
                counter: FusionCallCounter | None) -> np.ndarray:
    """Full ranking (Q, C) where each query's top-k by similarity is re-ordered by ITM match probability."""
    k = min(k, sim.shape[1])
    order = sim.argsort(dim=1, descending=True).numpy()
    top = order[:, :k]
    pairs = [(q, c) for q in range(sim.shape[0]) for c in top[q]]
    itm_scores = []
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start : start + batch_size]
        images = torch.tensor([q if image_query else c for q, c in chunk])
        texts = torch.tensor([c if image_query else q for q, c in chunk])
        fused = model.fuse(text_states[texts], text_masks[texts], image_tokens[images], token_rows=0)  # pooled only
        itm_scores.append(model.itm_logits(fused.pooled).float().softmax(-1)[:, 1].cpu())
        if counter is not None:
            counter.pairs += len(chunk)
    itm = torch.cat(itm_scores).view(sim.shape[0], k).numpy()
    reordered = np.take_along_axis(top, np.argsort(-itm, axis=1, kind="stable"), axis=1)
    return np.concatenate([reordered, order[:, k:]], axis=1)


@torch.inference_mode()
def evaluate_zero_shot(model, examples, collate, tokenizer, labels: list[str], prompt: str, max_length: int,
                       batch_size: int, device) -> dict:
    """Classify images by cosine similarity to the embedded prompt of each label (no training)."""
    if not model.has_global_alignment:
        raise ValueError("zero-shot classification needs the GLA alignment head (objectives.global_align > 0)")
    was_training = model.training
    model.eval()
    encoded = tokenize(tokenizer, [prompt.format(label=label) for label in labels], max_length)
    label_embed = model.embed_text(encoded["input_ids"].to(device), encoded["attention_mask"].to(device)).float()
    scores = [(model.embed_image(batch["images"]).float() @ label_embed.t()).cpu()
              for batch in _batches(examples, collate, batch_size, device)]
    model.train(was_training)
    result = evaluate_classification(torch.cat(scores).numpy(), examples, labels, multi_label=True)
    result.pop("accuracy")  # thresholding cosine similarities at 0 is meaningless
    return {**result, "prompt": prompt}
