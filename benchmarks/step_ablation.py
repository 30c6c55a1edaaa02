"""Where the pre-training step's time goes: the full MPMA step against variants with one part removed.

Every variant trains on the SAME synthrad batches, one step of each in turn (the order reversed on
alternate rounds) so that load from other processes hits all alike; the figures are medians after
two warm-up rounds and ratios to the full step measured in the same run.

    python benchmarks/step_ablation.py                       # tiny, 2 threads
    python benchmarks/step_ablation.py --batch 64            # the batch the earlier tiny default used
    python benchmarks/step_ablation.py --threads 1 --rounds 20
    python benchmarks/step_ablation.py --variants "fusion.depth=1" "objectives.itm=0 fusion.memory_slots=0"
    python benchmarks/step_ablation.py --preset base --batch 2 --overrides vision.image_size=288 text.max_length=64 \
        --flops-only --threads 1                             # FLOPs per step of each variant, no timing

Each variant's FLOPs per step (forward and backward, ``torch.utils.flop_counter``) are counted on its first
step, which is also a warm-up step.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from mpma.config import load_config
from mpma.data.pairs import PairCollator
from mpma.pipelines.pretraining import build_pretrain_data, build_task, build_tokenizer

sys.path.insert(0, str(Path(__file__).resolve().parent))
from pretrain_step import CPU_SDPA_FLOPS  # noqa: E402  (attention FLOPs of SDPA's CPU kernels)

DEFAULT_VARIANTS = ["objectives.itm=0", "fusion.depth=1", "fusion.memory_slots=0", "objectives.local_align=0",
                    "fusion.mlp_ratio=2", "data.batch_size=half"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--batch", type=int, default=None, help="batch size (default: the preset's)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=14)
    parser.add_argument("--variants", nargs="*", default=DEFAULT_VARIANTS,
                        help="space-separated overrides per variant; data.batch_size=half halves the batch")
    parser.add_argument("--overrides", nargs="*", default=[], help="overrides of every variant, e.g. vision.image_size=288")
    parser.add_argument("--flops-only", action="store_true", help="count each variant's FLOPs per step; time nothing")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    base = load_config(args.preset, [*args.overrides, *([f"data.batch_size={args.batch}"] if args.batch else [])])
    data = build_pretrain_data(base)
    tokenizer = build_tokenizer(base, data)
    collate = PairCollator(tokenizer, base.text.max_length)
    size = base.data.batch_size
    batches = [collate([data.train[i] for i in range(k * size, (k + 1) * size)]) for k in range(4)]
    halves = [{key: value[: size // 2] if torch.is_tensor(value) else value for key, value in b.items()} for b in batches]

    def step(run: dict, round_index: int) -> None:
        result = run["task"](run["batches"][round_index % len(run["batches"])], torch.Generator().manual_seed(round_index))
        run["optimizer"].zero_grad(set_to_none=True)
        sum(result.losses.values()).backward()
        run["optimizer"].step()

    runs = []
    for variant in ["", *args.variants]:
        overrides = [o for o in variant.split() if o != "data.batch_size=half"]
        torch.manual_seed(0)
        task = build_task(load_config(args.preset, [*args.overrides, *overrides]), tokenizer)
        run = {"name": variant or "full MPMA step", "task": task, "times": [],
               "optimizer": torch.optim.AdamW(task.parameters(), lr=1e-4),
               "batches": halves if "data.batch_size=half" in variant else batches}
        with FlopCounterMode(display=False, custom_mapping=CPU_SDPA_FLOPS) as counter:
            step(run, 0)  # FLOPs of one step (forward + backward), also a warm-up step
        run["flops"] = counter.get_total_flops()
        if args.flops_only:  # one model at a time: base's weights + AdamW state are ~6 GB each
            del run["task"], run["optimizer"]
        runs.append(run)
    for round_index in range(0 if args.flops_only else args.rounds):
        for run in runs if round_index % 2 == 0 else reversed(runs):
            started = time.perf_counter()
            step(run, round_index)
            run["times"].append(time.perf_counter() - started)

    overrides = f", overrides {' '.join(args.overrides)}" if args.overrides else ""
    if args.flops_only:
        print(f"preset {args.preset}, batch {size}{overrides}: FLOPs per step (forward + backward)")
        print(f"{'variant':45s} {'GFLOP':>10s} {'ratio':>6s}")
        for run in runs:
            print(f"{run['name']:45s} {run['flops'] / 1e9:10.3f} {run['flops'] / runs[0]['flops']:6.2f}")
        return
    reference = statistics.median(runs[0]["times"][2:])
    print(f"preset {args.preset}, batch {size}{overrides}, {args.threads} thread(s), medians of {args.rounds - 2} rounds")
    print(f"{'variant':45s} {'s/step':>8s} {'ratio':>6s} {'GFLOP':>8s} {'ratio':>6s}")
    for run in runs:
        median = statistics.median(run["times"][2:])
        print(f"{run['name']:45s} {median:8.3f} {median / reference:6.2f} {run['flops'] / 1e9:8.1f} "
              f"{run['flops'] / runs[0]['flops']:6.2f}")


if __name__ == "__main__":
    main()
