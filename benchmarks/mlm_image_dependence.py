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

from mpma.data.pairs import PairCollator, SynthradPairs
from mpma.data.synthrad import SynthRad
from mpma.hub import load_model

CONTENT_WORDS = ("left", "right", "upper", "middle", "lower", "nodule", "opacity", "effusion", "pneumothorax",
                 "cardiomegaly", "small", "moderate", "large", "no")


@torch.no_grad()
def masked_word_accuracy(run: str, n: int, batch_size: int = 128, seed: int = 0) -> dict[str, float]:
    """{"own image": acc, "shuffled image": acc, "masked words": count} on ``n`` held-out pairs."""
    loaded = load_model(run)
    model, tokenizer, config = loaded.backbone, loaded.tokenizer, loaded.config
    if model.mlm_head is None:
        raise ValueError(f"{run} has no MLM head (objectives.mlm=0 or not a pre-training run)")
    model.eval()
    vocabulary = tokenizer.get_vocab()
    content_ids = torch.tensor(sorted(vocabulary[w] for w in CONTENT_WORDS if w in vocabulary))
    held_out = SynthradPairs(SynthRad(n, seed=config.data.seed, image_size=config.vision.image_size,
                                      normal_fraction=config.data.normal_fraction, offset=config.data.train_size),
                             config.vision.image_size)
    collate = PairCollator(tokenizer, config.text.max_length)
    generator = torch.Generator().manual_seed(seed)
    hits = {"own image": 0, "shuffled image": 0}
    total = 0
    for start in range(0, n, batch_size):
        batch = collate([held_out[i] for i in range(start, min(n, start + batch_size))])
        candidates = torch.isin(batch["input_ids"], content_ids)  # (B, T)
        positions = torch.zeros_like(candidates)
        for row in range(candidates.shape[0]):
            columns = candidates[row].nonzero().flatten()
            if len(columns):
                positions[row, columns[torch.randint(len(columns), (1,), generator=generator)]] = True
        masked = batch["input_ids"].masked_fill(positions, tokenizer.mask_token_id)
        targets = batch["input_ids"][positions]
        for name, images in (("own image", batch["images"]), ("shuffled image", batch["images"].roll(1, 0))):
            out = model(images, masked, batch["attention_mask"], mask_ratio=0.0, mlm_positions=positions)
            hits[name] += int((out.mlm_logits.argmax(-1) == targets).sum())
        total += int(positions.sum())
    return {**{name: count / max(total, 1) for name, count in hits.items()}, "masked words": total}


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
