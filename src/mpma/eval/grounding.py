"""Grounding diagnostics of a pre-trained backbone on held-out synthrad data.

- **Pointing game** (:func:`mpma.eval.pointing.evaluate_pointing`): does the map of a finding phrase
  (GLA-local, fusion attention) peak inside the finding's box?
- **MLM image gap** (:func:`mlm_image_gap`): one content word per report (a finding, side, zone,
  size or "no") is masked and predicted from the full image and the rest of the report, once with
  the pair's own image and once with another case's image. ``own - shuffled`` is how much the fused
  text stream draws on the image; near 0, masked words are solved from the text alone.

Both need synthrad's ground truth and vocabulary; every fraction is in 0-1.
"""

from __future__ import annotations

import torch

from mpma.data.pairs import PairCollator, SynthradPairs
from mpma.data.synthrad import SynthRad
from mpma.eval.pointing import evaluate_pointing

CONTENT_WORDS = ("left", "right", "upper", "middle", "lower", "nodule", "opacity", "effusion", "pneumothorax",
                 "cardiomegaly", "small", "moderate", "large", "no")


def _mask_one_content_word(input_ids: torch.Tensor, content_ids: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """(B, T) bool: one content-word position per row, drawn uniformly (none in a row without one)."""
    candidates = torch.isin(input_ids, content_ids)
    positions = torch.zeros_like(candidates)
    for row in range(candidates.shape[0]):
        columns = candidates[row].nonzero().flatten()
        if len(columns):
            positions[row, columns[torch.randint(len(columns), (1,), generator=generator)]] = True
    return positions


@torch.no_grad()
def mlm_image_gap(model, tokenizer, config, n: int = 256, batch_size: int = 64, seed: int = 0) -> dict:
    """MLM accuracy on masked content words with the pair's own image and with a shuffled one.

    Args:
        model: an MPMAModel with its MLM head.
        tokenizer: the model's tokenizer; config: its Config (synthrad settings, image size, max length).
        n: held-out synthrad pairs (the cases after the training range, as the zero-shot retrieval check).
        seed: which word of each report is masked.

    Returns:
        {"own": accuracy, "shuffled": accuracy, "gap": own - shuffled, "masked_words": count,
         "by_word": {word: {"n", "own", "shuffled"}}}: the same accuracies per masked word, which show
        *what* the text stream reads from the image (e.g. the finding type but not its side).
    """
    if model.mlm_head is None:
        raise ValueError("the MLM image gap needs the MLM head (objectives.mlm > 0)")
    was_training = model.training
    model.eval()
    vocabulary = tokenizer.get_vocab()
    content_ids = torch.tensor(sorted(vocabulary[w] for w in CONTENT_WORDS if w in vocabulary))
    size = config.vision.image_size
    held_out = SynthradPairs(SynthRad(n, seed=config.data.seed, image_size=size, normal_fraction=config.data.normal_fraction,
                                      offset=config.data.train_size), size)
    collate = PairCollator(tokenizer, config.text.max_length)
    generator = torch.Generator().manual_seed(seed)
    device = next(model.parameters()).device
    hits = {"own": 0, "shuffled": 0}
    total = 0
    words = {int(i): tokenizer.convert_ids_to_tokens(int(i)) for i in content_ids}
    by_word = {word: {"n": 0, "own": 0, "shuffled": 0} for word in words.values()}
    for start in range(0, n, batch_size):
        batch = collate([held_out[i] for i in range(start, min(n, start + batch_size))])
        positions = _mask_one_content_word(batch["input_ids"], content_ids, generator)
        masked = batch["input_ids"].masked_fill(positions, tokenizer.mask_token_id).to(device)
        targets = batch["input_ids"][positions].to(device)
        images = batch["images"].to(device)
        for name, view in (("own", images), ("shuffled", images.roll(1, 0))):
            out = model(view, masked, batch["attention_mask"].to(device), mask_ratio=0.0, mlm_positions=positions.to(device))
            correct = out.mlm_logits.argmax(-1) == targets
            hits[name] += int(correct.sum())
            for word_id, right in zip(targets.tolist(), correct.tolist()):
                by_word[words[word_id]][name] += int(right)
        for word_id in targets.tolist():
            by_word[words[word_id]]["n"] += 1
        total += int(positions.sum())
    model.train(was_training)
    own, shuffled = hits["own"] / max(total, 1), hits["shuffled"] / max(total, 1)
    by_word = {word: {"n": c["n"], "own": c["own"] / c["n"], "shuffled": c["shuffled"] / c["n"]}
               for word, c in sorted(by_word.items(), key=lambda item: -item[1]["n"]) if c["n"]}
    return {"own": own, "shuffled": shuffled, "gap": own - shuffled, "masked_words": total, "by_word": by_word}


def grounding_report(loaded, pointing_cases: int = 128, mlm_pairs: int = 256) -> dict:
    """The pointing game and the MLM image gap of a backbone.

    Args:
        loaded: backbone, tokenizer, config and preprocess (``mpma.hub.PretrainedModel``).

    Returns:
        {"pointing_game": {"hit_rate" (GLA-local, None without it), "chance", "fusion_attention", "n"},
         "mlm_image_gap": {"own", "shuffled", "gap", "masked_words"} (absent without an MLM head)}.
    """
    model = loaded.backbone
    was_training = model.training
    model.eval()
    pointing = evaluate_pointing(loaded, n=pointing_cases)
    model.train(was_training)
    maps = pointing.get("maps", {})
    report = {"pointing_game": {"hit_rate": maps.get("local", {}).get("hit_rate"), "chance": pointing.get("chance_rate"),
                                "fusion_attention": maps.get("attention", {}).get("hit_rate"),
                                "n": pointing.get("n_mentions", 0)}}
    if model.mlm_head is not None:
        report["mlm_image_gap"] = mlm_image_gap(model, loaded.tokenizer, loaded.config, mlm_pairs)
    return report


def flat_grounding(report: dict) -> dict:
    """One-level dict of the report's numbers for ``log.jsonl`` (curves read one level of nesting)."""
    pointing, gap = report["pointing_game"], report.get("mlm_image_gap", {})
    flat = {"pointing_local": pointing["hit_rate"], "pointing_fusion": pointing["fusion_attention"],
            "pointing_chance": pointing["chance"], "mlm_own": gap.get("own"), "mlm_shuffled": gap.get("shuffled"),
            "mlm_gap": gap.get("gap")}
    return {k: v for k, v in flat.items() if v is not None}
