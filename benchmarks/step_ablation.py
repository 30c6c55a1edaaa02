"""Where the pre-training step's time goes: the full MPMA step against variants with one part removed.

Every variant trains on the SAME synthrad batches, one step of each in turn (the order reversed on
alternate rounds) so that load from other processes hits all alike; the figures are medians after
two warm-up rounds and ratios to the full step measured in the same run.

    python benchmarks/step_ablation.py                       # tiny, 2 threads
    python benchmarks/step_ablation.py --batch 64            # the batch the earlier tiny default used
    python benchmarks/step_ablation.py --threads 1 --rounds 20
    python benchmarks/step_ablation.py --variants "fusion.depth=1" "objectives.itm=0 fusion.memory_slots=0"
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from mpma.config import load_config
from mpma.data.pairs import PairCollator
from mpma.pipelines.pretraining import build_pretrain_data, build_task, build_tokenizer

DEFAULT_VARIANTS = ["objectives.itm=0", "fusion.depth=1", "fusion.memory_slots=0", "objectives.local_align=0",
                    "fusion.mlp_ratio=2", "data.batch_size=half"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--batch", type=int, default=None, help="batch size (default: the preset's)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=14)
    parser.add_argument("--variants", nargs="*", default=DEFAULT_VARIANTS,
                        help="space-separated overrides per variant; data.batch_size=half halves the batch")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    base = load_config(args.preset, [f"data.batch_size={args.batch}"] if args.batch else [])
    data = build_pretrain_data(base)
    tokenizer = build_tokenizer(base, data)
    collate = PairCollator(tokenizer, base.text.max_length)
    size = base.data.batch_size
    batches = [collate([data.train[i] for i in range(k * size, (k + 1) * size)]) for k in range(4)]
    halves = [{key: value[: size // 2] if torch.is_tensor(value) else value for key, value in b.items()} for b in batches]

    runs = []
    for variant in ["", *args.variants]:
        overrides = [o for o in variant.split() if o != "data.batch_size=half"]
        torch.manual_seed(0)
        task = build_task(load_config(args.preset, overrides), tokenizer)
        optimizer = torch.optim.AdamW(task.parameters(), lr=1e-4)
        runs.append({"name": variant or "full MPMA step", "task": task, "optimizer": optimizer, "times": [],
                     "batches": halves if "data.batch_size=half" in variant else batches})

    for round_index in range(args.rounds):
        for run in runs if round_index % 2 == 0 else reversed(runs):
            batch = run["batches"][round_index % len(run["batches"])]
            started = time.perf_counter()
            result = run["task"](batch, torch.Generator().manual_seed(round_index))
            run["optimizer"].zero_grad(set_to_none=True)
            sum(result.losses.values()).backward()
            run["optimizer"].step()
            run["times"].append(time.perf_counter() - started)

    reference = statistics.median(runs[0]["times"][2:])
    print(f"preset {args.preset}, batch {size}, {args.threads} thread(s), medians of {args.rounds - 2} rounds")
    print(f"{'variant':45s} {'s/step':>8s} {'ratio':>6s}")
    for run in runs:
        median = statistics.median(run["times"][2:])
        print(f"{run['name']:45s} {median:8.3f} {median / reference:6.2f}")


if __name__ == "__main__":
    main()
