"""Does the fusion use the image to fill masked report words? MLM accuracy with the right image vs a shuffled one.

For held-out synthrad pairs, one content word per report (a finding, side, zone, size or "no") is
replaced by [MASK]; the pre-trained model predicts it from the full image and the rest of the report,
once with the pair's own image and once with another case's image (the batch rolled by one). The gap
is how much the fused text stream draws on the image; a small gap means masked-word reconstruction is
mostly solved from the text alone.

    python benchmarks/mlm_image_dependence.py runs/pretrain                  # a pre-training run folder
    python benchmarks/mlm_image_dependence.py runs/pretrain --n 1024 --threads 1
"""

from __future__ import annotations

import argparse

import torch

from mpma.eval.grounding import mlm_image_gap
from mpma.hub import load_model


def masked_word_accuracy(run: str, n: int, batch_size: int = 128, seed: int = 0) -> dict[str, float]:
    """{"own image": acc, "shuffled image": acc, "masked words": count} on ``n`` held-out pairs
    (:func:`mpma.eval.grounding.mlm_image_gap`, the measure pre-training logs with run.grounding_every)."""
    loaded = load_model(run)
    gap = mlm_image_gap(loaded.backbone, loaded.tokenizer, loaded.config, n, batch_size, seed)
    return {"own image": gap["own"], "shuffled image": gap["shuffled"], "masked words": gap["masked_words"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", help="pre-training run folder (its newest checkpoint is used)")
    parser.add_argument("--n", type=int, default=512, help="held-out synthrad pairs")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    result = masked_word_accuracy(args.run, args.n)
    print(f"{args.run}: masked content words {result['masked words']}; MLM accuracy with the own image "
          f"{result['own image'] * 100:.1f}%, with a shuffled image {result['shuffled image'] * 100:.1f}% "
          f"(gap {100 * (result['own image'] - result['shuffled image']):.1f} points)")


if __name__ == "__main__":
    main()
