"""bf16 against fp32 for the Trainer's step on this host, interleaved in one process.

For each ``PRESET:BATCH`` it builds one PretrainTask (random weights) and one synthetic batch
(benchmarks/pretrain_step.py builds both) and two Trainers over it, ``run.precision=fp32`` and
``bf16`` (each with its own fused AdamW), then alternates their ``train_step`` repetition by
repetition, so that load from other processes hits both alike. It prints the median s/step of
each, the median of the per-repetition fp32/bf16 ratios (> 1: bf16 is faster), the bf16/fp32
speed-up of a square matmul measured between repetitions, what ``run.precision=auto`` resolves to,
and with ``--profile`` the share of self CPU time per op class in each precision.

    python benchmarks/bf16_step.py                                 # tiny:2 tiny:64 small:2 small:32 base:2
    python benchmarks/bf16_step.py --cases base:2 base:8 --threads 2 --repeats 5 --profile
    python benchmarks/bf16_step.py --cases tiny:64 small:32 base:8 --threads 2 --bf16-attention  # mpma's fp32 attention vs bf16
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import pretrain_step as ps  # noqa: E402

from mpma.engine.precision import describe_cpu_bf16, resolve_precision  # noqa: E402
from mpma.models.layers import Attention  # noqa: E402

PRECISIONS = ("fp32", "bf16")
# bf16 with the attention itself in bf16 too (mpma's Attention upcasts it to fp32 on CPU by default)
BF16_ATTENTION = "bf16_bf16_attention"
VARIANTS = PRECISIONS + (BF16_ATTENTION,)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cases", nargs="+", default=["tiny:2", "tiny:64", "small:2", "small:32", "base:2"],
                   help="PRESET:BATCH pairs")
    p.add_argument("--repeats", type=int, default=3, help="measured repetitions per case (after one warm-up)")
    p.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0 = torch default)")
    p.add_argument("--matmul-size", type=int, default=1024)
    p.add_argument("--profile", action="store_true", help="op-class shares of one step in each precision")
    p.add_argument("--bf16-attention", action="store_true",
                   help="also time bf16 with the attention kept in bf16 (mpma upcasts it to fp32 on CPU)")
    p.add_argument("--json", help="also write the figures to this JSON file")
    return p.parse_args(argv)


def bf16_attention_step(bf16_step) -> None:
    """The bf16 Trainer's step with mpma's attention left in bf16 on CPU (the pre-2026-12-04 behaviour)."""
    Attention.fp32_attention_on_cpu = False
    try:
        bf16_step()
    finally:
        Attention.fp32_attention_on_cpu = True


def measure_case(preset: str, batch_size: int, args, tokenizer, tmp: str) -> dict:
    """Interleaved fp32/bf16 timing of one (preset, batch) case."""
    bench = ps.parse_args(["--presets", preset, "--batch", str(batch_size)])
    config, task, batch_size, vocab = ps.build(preset, bench, tokenizer, torch.device("cpu"))
    batch = ps.synthetic_batch(config, batch_size, tokenizer, vocab, torch.device("cpu"))
    steps = {}
    for precision in PRECISIONS:
        run = dataclasses.replace(config.run, precision=precision)
        trainer = ps.make_trainer(task, dataclasses.replace(config, run=run), torch.device("cpu"), tmp)
        steps[precision] = lambda trainer=trainer: trainer.train_step(iter(lambda: batch, None))
    steps[BF16_ATTENTION] = functools.partial(bf16_attention_step, steps["bf16"])
    variants = VARIANTS if args.bf16_attention else PRECISIONS
    times: dict[str, list[float]] = {p: [] for p in variants}
    matmul: list[float] = []
    for rep in range(1 + args.repeats):
        for precision in variants if rep % 2 == 0 else variants[::-1]:
            seconds = ps.timed(steps[precision], torch.device("cpu"))
            times[precision] += [seconds] if rep else []
        matmul.append(ps.matmul_flops(torch.device("cpu"), torch.bfloat16, args.matmul_size)
                      / ps.matmul_flops(torch.device("cpu"), torch.float32, args.matmul_size))
        ps.log(f"{preset}:{batch_size} repetition {rep + 1} of {1 + args.repeats}")
    shares = {p: ps.profile_step(steps[p], torch.device("cpu"), 12) for p in variants} if args.profile else None
    extra = {"speedup_bf16_bf16_attention": statistics.median(f / b for f, b in zip(times["fp32"], times[BF16_ATTENTION]))
             } if args.bf16_attention else {}
    return {"preset": preset, "batch": batch_size, **{f"{p}_s_per_step": statistics.median(times[p]) for p in variants},
            "speedup_bf16": statistics.median(f / b for f, b in zip(times["fp32"], times["bf16"])), **extra,
            "matmul_speedup_bf16": statistics.median(matmul), "times": times, "profile_shares": shares}


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = ps.make_tokenizer(tmp)
        rows = [measure_case(c.split(":")[0], int(c.split(":")[1]), args, tokenizer, tmp) for c in args.cases]
    auto = resolve_precision("auto", torch.device("cpu"))
    print(f"\n{describe_cpu_bf16()}; threads {torch.get_num_threads()}, load average {load:.2f} at start, "
          f"{os.getloadavg()[0]:.2f} at end; run.precision=auto -> {auto}")
    print(f"{'case':<12}{'fp32 s/step':>13}{'bf16 s/step':>13}{'step speed-up':>15}{'matmul speed-up':>17}"
          + (f"{'bf16-attention s/step':>23}{'its speed-up':>14}" if args.bf16_attention else ""))
    for r in rows:
        print(f"{r['preset'] + ':' + str(r['batch']):<12}{r['fp32_s_per_step']:>13.3f}{r['bf16_s_per_step']:>13.3f}"
              f"{r['speedup_bf16']:>14.2f}x{r['matmul_speedup_bf16']:>16.1f}x"
              + (f"{r[BF16_ATTENTION + '_s_per_step']:>23.3f}{r['speedup_bf16_bf16_attention']:>13.2f}x"
                 if args.bf16_attention else ""))
        for precision, shares in (r["profile_shares"] or {}).items():
            print(f"    {precision}: " + ", ".join(f"{c} {100 * v:.0f}%" for c, v in shares.items()))
    print(f"speed-up: median of per-repetition fp32/bf16 step times; matmul: {args.matmul_size}^2 bf16/fp32 FLOP/s")
    if args.json:
        Path(args.json).write_text(json.dumps({"host": describe_cpu_bf16(), "auto": auto, "rows": rows}, indent=2))
    return rows


if __name__ == "__main__":
    main(sys.argv[1:])
