"""The fusion's last layer computing only what pre-training reads, against computing every state.

Pre-training reads the fused text at the masked words only (MLM) and, of the ITM negatives fused in
the same call, the pooled CLS only. ``CoAttentionFusion`` therefore computes just those states in its
last layer (``selective_last_layer``, on by default; the results are the full computation's, to
rounding: tests/models/test_selective_fusion.py). This script times ``Trainer.train_step`` of the
Trainer ``mpma pretrain`` builds, on collated synthrad batches masked as a run masks them, with the
switch on and off: one model, interleaved repetitions in alternating order (load from other processes
hits both alike), a different batch per repetition (the same batches for both settings). Prints
s/step, the speed-up (median of per-repetition ratios), the FLOPs per step of each, and the host.

    python benchmarks/selective_fusion.py                       # tiny, its batch 32, 2 threads
    python benchmarks/selective_fusion.py --preset small --batch 16 --threads 1
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from pretrain_step import count_flops, make_tokenizer, make_trainer, timed  # noqa: E402

from mpma.config import load_config  # noqa: E402
from mpma.data.pairs import PairCollator, SynthradPairs  # noqa: E402
from mpma.data.synthrad import SynthRad  # noqa: E402
from mpma.data.text import TextMasker  # noqa: E402
from mpma.engine.precision import describe_cpu_bf16  # noqa: E402
from mpma.models.fusion import CoAttentionFusion  # noqa: E402
from mpma.pipelines.pretraining import build_task  # noqa: E402

SETTINGS = {"selective": True, "full": False}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="tiny")
    p.add_argument("--batch", type=int, default=None, help="default: the preset's data.batch_size")
    p.add_argument("--repeats", type=int, default=12, help="measured repetitions per setting (default 12)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("overrides", nargs="*", help="config overrides, e.g. fusion.depth=4")
    return p.parse_args(argv)


def synthrad_batches(config, tokenizer, count: int, batch_size: int) -> list[dict]:
    """``count`` collated synthrad batches, MLM-masked by the collate step's TextMasker as in a run."""
    size = config.vision.image_size
    pairs = SynthradPairs(SynthRad(count * batch_size, seed=7, image_size=size), size)
    masker = TextMasker(tokenizer.mask_token_id, len(tokenizer), config.text.mask_ratio, config.text.whole_word, 0)
    collate = PairCollator(tokenizer, config.text.max_length, masker=masker)
    return [collate([pairs[i * batch_size + j] for j in range(batch_size)], i) for i in range(count)]


def main(argv=None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    config = load_config(args.preset, args.overrides)
    batch_size = args.batch or config.data.batch_size
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = make_tokenizer(tmp)
        torch.manual_seed(0)
        task = build_task(config, tokenizer).train()
        trainer = make_trainer(task, config, torch.device("cpu"), tmp)
        batches = synthrad_batches(config, tokenizer, args.repeats + 2, batch_size)
        lengths = [b["input_ids"].shape[1] for b in batches]
        masked = [int((b["mlm_labels"] != -100).sum(1).max()) for b in batches]

        def step(batch):
            return lambda: trainer.train_step(iter([batch]))

        flops, times = {}, {name: [] for name in SETTINGS}
        try:
            for name, selective in SETTINGS.items():
                CoAttentionFusion.selective_last_layer = selective
                flops[name] = count_flops(step(batches[0]))  # also a warm-up
                timed(step(batches[1]), torch.device("cpu"))
            for rep, batch in enumerate(batches[2:]):
                for name in list(SETTINGS) if rep % 2 == 0 else list(SETTINGS)[::-1]:  # alternate the order
                    CoAttentionFusion.selective_last_layer = SETTINGS[name]
                    times[name].append(timed(step(batch), torch.device("cpu")))
        finally:
            CoAttentionFusion.selective_last_layer = True
    print(f"host: {describe_cpu_bf16()}; threads {torch.get_num_threads()}; preset {args.preset} "
          f"{' '.join(args.overrides)}, batch {batch_size}, fp32; text length per batch {min(lengths)}-{max(lengths)} "
          f"tokens, masked words per row at most {min(masked)}-{max(masked)}")
    print(f"{'last fusion layer':<20}{'s/step':>9}{'GFLOP/step':>12}")
    for name in SETTINGS:
        print(f"{name:<20}{statistics.median(times[name]):>9.3f}{flops[name] / 1e9:>12.2f}")
    ratio = statistics.median(full / part for part, full in zip(times["selective"], times["full"]))
    print(f"speed-up selective over full: {ratio:.3f}x (median of {len(times['full'])} per-repetition ratios); "
          f"FLOPs full / selective: {flops['full'] / flops['selective']:.3f}x")


if __name__ == "__main__":
    main()
