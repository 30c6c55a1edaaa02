"""Retrieval evaluation cost: embeddings + ITM re-ranking of the top-k against scoring all N x N pairs.

M3AE evaluates retrieval by sending every (image, text) pair through the fusion and its ITM head:
N^2 fused pairs (its evaluation took 40 minutes for 756 pairs). mpma's retrieval evaluation
(:func:`mpma.eval.downstream.evaluate_retrieval` with ``head.rerank_k=k``) embeds each image and
text once, ranks by cosine similarity and fuses only each query's top-k candidates: 2 x N x k pairs
(both directions), so its fusion work is a share 2k/N of M3AE's (0.5% for k=5, N=2000). This
script times both on the same N synthrad pairs and model:

- **embed + re-rank**: one timed call of ``evaluate_retrieval(..., rerank_k=k)`` over all N pairs
  (encoding included; images are decoded into the collator's cache beforehand, for both methods);
- **all pairs**: the encoders once over the N pairs (timed) plus N^2 x the per-pair cost of fusion +
  ITM head, measured by scoring every pair of a sub-gallery of ``--subset`` images x ``--subset``
  texts in batches (the unimodal encodings cached, which favours this method).

Recall: the all-pairs ranking is only computed on the sub-gallery, so recall is reported for both
methods on that sub-gallery (a hit = same finding key), and for embed + re-rank on all N as well.
With a random model (the default) recall is at chance for both; ``--init`` takes a trained model
folder or run (``mpma.hub.load_model``), whose recall means something.

    python benchmarks/retrieval_cost.py                          # N=2000, k=5, tiny random model
    python benchmarks/retrieval_cost.py --init runs/pretrain --n 2000 --k 5 --threads 1
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from mpma.config import load_config
from mpma.data.collate import ImageStore, TaskCollator
from mpma.data.synthrad import SynthRad
from mpma.data.text import train_tokenizer
from mpma.eval import metrics as M
from mpma.eval.downstream import FusionCallCounter, evaluate_retrieval
from mpma.models.factory import create_model

OFFSET = 5_000_000  # synthrad case offset: far from the cases any pre-training run draws


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=2000, help="pairs (N images x N texts)")
    p.add_argument("--k", type=int, default=5, help="candidates per query re-ranked by ITM (fusion share ~2k/N)")
    p.add_argument("--subset", type=int, default=100, help="sub-gallery side for the timed all-pairs sample")
    p.add_argument("--preset", default="tiny", help="random model preset when --init is not given")
    p.add_argument("--overrides", nargs="*", default=[], help="config overrides of that preset")
    p.add_argument("--init", help="a trained model folder or run (its tokenizer and image size are used)")
    p.add_argument("--batch", type=int, default=256, help="images/texts/pairs per forward")
    p.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0 = torch default)")
    p.add_argument("--json", help="also write the figures to this JSON file")
    return p.parse_args(argv)


def build_model(args, tmp: str):
    """(backbone in eval mode, tokenizer, image size, text length): ``--init`` or a random ``--preset``."""
    if args.init:
        from mpma.hub import load_model

        loaded = load_model(args.init)
        return loaded.backbone.eval(), loaded.tokenizer, loaded.config.vision.image_size, loaded.config.text.max_length
    config = load_config(args.preset, args.overrides)
    texts = SynthRad(2000, seed=1, offset=OFFSET).reports()
    tokenizer = train_tokenizer(texts, f"{tmp}/tokenizer", vocab_size=min(config.text.vocab_size, 1000))
    torch.manual_seed(0)
    model = create_model(config, vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id)
    if model.itm_head is None or not model.has_global_alignment:
        raise SystemExit("the model needs a GLA-global head and an ITM head (objectives.global_align, itm > 0)")
    return model.eval(), tokenizer, config.vision.image_size, config.text.max_length


def synthrad_examples(n: int, image_size: int) -> list[dict]:
    """``n`` retrieval examples (image reference, report, finding key) from held-out synthrad cases."""
    cases = SynthRad(n, seed=1, image_size=image_size, offset=OFFSET, cache_size=-1)
    return [{"image": ("synthrad", cases, i), "text": cases[i].report, "key": cases[i].finding_key} for i in range(n)]


@torch.inference_mode()
def all_pairs_scores(model, collate: TaskCollator, examples: list[dict], batch: int) -> tuple[np.ndarray, float]:
    """ITM match probability of every (image i, text j) pair of ``examples``, M3AE's way.

    Returns:
        scores (S, S) with S = len(examples) (row: image, column: text), and the seconds spent in
        the fusion + ITM head (the unimodal encodings are computed once, untimed).
    """
    data = collate(examples)
    tokens = model.encode_image(data["images"]).tokens  # (S, P, D)
    states = model.encode_text(data["input_ids"], data["attention_mask"])  # (S, T, D)
    size = len(examples)
    pairs = torch.cartesian_prod(torch.arange(size), torch.arange(size))  # (S*S, 2): (image, text)
    scores, start = [], time.perf_counter()
    for chunk in pairs.split(batch):
        image, text = chunk[:, 0], chunk[:, 1]
        fused = model.fuse(states[text], data["attention_mask"][text], tokens[image])
        scores.append(model.itm_logits(fused.pooled).float().softmax(-1)[:, 1])
    seconds = time.perf_counter() - start
    return torch.cat(scores).view(size, size).numpy(), seconds


@torch.inference_mode()
def encode_seconds(model, collate: TaskCollator, examples: list[dict], batch: int) -> float:
    """Seconds to run both encoders once over ``examples`` (what any retrieval evaluation pays)."""
    start = time.perf_counter()
    for i in range(0, len(examples), batch):
        data = collate(examples[i : i + batch])
        model.encode_image(data["images"])
        model.encode_text(data["input_ids"], data["attention_mask"])
    return time.perf_counter() - start


def recall_of_scores(scores: np.ndarray, keys: list) -> dict[str, dict[str, float]]:
    """R@K both ways of an image x text score matrix; a hit is a candidate with the query's key."""
    relevant = np.asarray(keys, dtype=object)[:, None] == np.asarray(keys, dtype=object)[None, :]
    return {"i2t": M.retrieval_metrics(scores, relevant), "t2i": M.retrieval_metrics(scores.T, relevant.T)}


def measure(args) -> dict:
    """Every figure of the benchmark (see the module docstring) as a dict."""
    with tempfile.TemporaryDirectory() as tmp:
        model, tokenizer, image_size, length = build_model(args, tmp)
    examples = synthrad_examples(args.n, image_size)
    collate = TaskCollator(tokenizer, length, ImageStore(image_size), reads_image=True, text_fields=("text",),
                           target="key")
    for example in examples:  # decode every image once, outside every timing
        collate.images(example["image"])
    device = torch.device("cpu")
    subset = examples[: min(args.subset, args.n)]
    # the all-pairs sample and the encoders are timed before and after the re-ranking evaluation and
    # averaged, so that load drifting during the run weighs on both methods alike
    encode = encode_seconds(model, collate, examples, args.batch)
    scores, fuse_seconds = all_pairs_scores(model, collate, subset, args.batch)
    counter, start = FusionCallCounter(), time.perf_counter()
    fast = evaluate_retrieval(model, examples, collate, args.batch, device, rerank_k=args.k, counter=counter)
    fast_seconds = time.perf_counter() - start
    encode = (encode + encode_seconds(model, collate, examples, args.batch)) / 2
    fuse_seconds = (fuse_seconds + all_pairs_scores(model, collate, subset, args.batch)[1]) / 2
    per_pair = fuse_seconds / len(subset) ** 2
    full_seconds = encode + per_pair * args.n**2
    small = evaluate_retrieval(model, subset, collate, args.batch, device, rerank_k=args.k)
    return {
        "n": args.n, "k": args.k, "subset": len(subset), "threads": torch.get_num_threads(),
        "model": args.init or args.preset, "parameters": sum(p.numel() for p in model.parameters()),
        "embed_rerank": {"seconds": fast_seconds, "fused_pairs": counter.pairs,
                         "recall_all_n": fast["itm_reranked"], "recall_embedding_only_all_n": {
                             "i2t": fast["i2t"], "t2i": fast["t2i"]},
                         "recall_subset": small["itm_reranked"]},
        "all_pairs": {"seconds_extrapolated": full_seconds, "encode_seconds": encode,
                      "fuse_seconds_per_pair": per_pair, "fused_pairs": args.n**2, "timed_pairs": len(subset) ** 2,
                      "recall_subset": recall_of_scores(scores, [e["key"] for e in subset])},
        "cost_ratio": fast_seconds / full_seconds,
    }


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    result = measure(args)
    fast, full = result["embed_rerank"], result["all_pairs"]
    r1 = lambda report: 0.5 * (report["i2t"]["R@1"] + report["t2i"]["R@1"])  # noqa: E731
    print(f"retrieval on N={result['n']} synthrad pairs, {result['model']} ({result['parameters'] / 1e6:.1f}M "
          f"parameters), {result['threads']} threads, load average {os.getloadavg()[0]:.2f}")
    print(f"  embed + ITM re-rank top-{result['k']}: {fast['seconds']:.1f} s measured, {fast['fused_pairs']:,} fused "
          f"pairs; mean R@1 {r1(fast['recall_all_n']):.3f} on all N (embedding only "
          f"{r1(fast['recall_embedding_only_all_n']):.3f})")
    print(f"  all N^2 pairs through the fusion: {full['seconds_extrapolated']:.0f} s extrapolated = encoders "
          f"{full['encode_seconds']:.1f} s + {full['fused_pairs']:,} pairs x {1e3 * full['fuse_seconds_per_pair']:.3f} "
          f"ms (timed on {full['timed_pairs']:,} pairs)")
    print(f"  cost ratio: {100 * result['cost_ratio']:.2f}% of all-pairs scoring")
    print(f"  mean R@1 on the {result['subset']} x {result['subset']} sub-gallery: all pairs "
          f"{r1(full['recall_subset']):.3f}, embed + re-rank {r1(fast['recall_subset']):.3f}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
