"""The Trainer's step with and without ``run.retain_freed_memory`` (glibc malloc settings), side by side.

The setting is process-wide and cannot be undone within a process (the heap keeps what it kept), so
each (case, setting) runs in a fresh child process, and the two settings alternate round by round so
that load from other processes hits both alike. Each child builds one PretrainTask (random weights)
and one synthetic batch (benchmarks/pretrain_step.py builds both), takes one warm-up step and times
``--steps`` more; it reports the median s/step and its peak resident memory. Prints, per case, the
median over rounds of each setting and of the per-round ratio (> 1: retaining is faster), with the
host's CPU features.

    python benchmarks/allocator.py                                   # base:2 in fp32 and bf16, small:32 fp32
    python benchmarks/allocator.py --cases base:2:bf16 tiny:64:fp32 --rounds 3 --threads 1
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SETTINGS = (False, True)  # run.retain_freed_memory


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cases", nargs="+", default=["base:2:fp32", "base:2:bf16", "small:32:fp32"],
                   help="PRESET:BATCH:PRECISION triples")
    p.add_argument("--rounds", type=int, default=2, help="alternating rounds (one child per setting each)")
    p.add_argument("--steps", type=int, default=5, help="timed steps per child (after one warm-up step)")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads in each child")
    p.add_argument("--json", help="also write the figures to this JSON file")
    p.add_argument("--child", nargs=2, metavar=("CASE", "RETAIN"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    for case in args.cases:
        parts = case.split(":")
        if len(parts) != 3 or not parts[1].isdigit() or parts[2] not in ("fp32", "bf16"):
            p.error(f"--cases: {case!r} is not PRESET:BATCH:PRECISION (e.g. base:2:bf16; precision fp32 or bf16)")
    return args


def child(case: str, retain: bool, steps: int, threads: int) -> dict:
    """Time ``steps`` Trainer steps of ``case`` in this (fresh) process; the JSON line the parent reads."""
    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import pretrain_step as ps

    torch.set_num_threads(threads)
    preset, batch_size, precision = case.split(":")
    device = torch.device("cpu")
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = ps.make_tokenizer(tmp)
        bench = ps.parse_args(["--presets", preset, "--batch", batch_size])
        config, task, batch_size, vocab = ps.build(preset, bench, tokenizer, device)
        batch = ps.synthetic_batch(config, batch_size, tokenizer, vocab, device)
        run = dataclasses.replace(config.run, precision=precision, retain_freed_memory=retain)
        trainer = ps.make_trainer(task, dataclasses.replace(config, run=run), device, tmp)
        step = lambda: trainer.train_step(iter(lambda: batch, None))  # noqa: E731
        step()
        times = []
        for _ in range(steps):
            start = time.perf_counter()
            step()
            times.append(time.perf_counter() - start)
    return {"s_per_step": statistics.median(times),
            "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}


def run_child(case: str, retain: bool, args) -> dict:
    command = [sys.executable, __file__, "--child", case, str(int(retain)), "--steps", str(args.steps),
               "--threads", str(args.threads)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"the {case} child (run.retain_freed_memory={retain}) failed with exit code "
                         f"{done.returncode}:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child[0], bool(int(args.child[1])), args.steps, args.threads)))
        return {}
    from mpma.engine.precision import describe_cpu_bf16

    load = os.getloadavg()[0]
    rows = {}
    for case in args.cases:
        runs: dict[bool, list[dict]] = {s: [] for s in SETTINGS}
        for round_ in range(args.rounds):
            for retain in SETTINGS if round_ % 2 == 0 else SETTINGS[::-1]:
                runs[retain].append(run_child(case, retain, args))
                print(f"[{time.strftime('%H:%M:%S')}] {case} round {round_ + 1}: retain={retain} "
                      f"{runs[retain][-1]['s_per_step']:.3f} s/step", file=sys.stderr, flush=True)
        per_round = [d["s_per_step"] / r["s_per_step"] for d, r in zip(runs[False], runs[True])]
        rows[case] = {
            "default_s_per_step": statistics.median(r["s_per_step"] for r in runs[False]),
            "retain_s_per_step": statistics.median(r["s_per_step"] for r in runs[True]),
            "speedup_retain": statistics.median(per_round),
            "default_peak_rss_gib": max(r["peak_rss_gib"] for r in runs[False]),
            "retain_peak_rss_gib": max(r["peak_rss_gib"] for r in runs[True]),
            "runs": {str(k): v for k, v in runs.items()},
        }
    host = describe_cpu_bf16()
    print(f"\n{host}; {args.threads} thread(s) per child, load average {load:.2f} at start, "
          f"{os.getloadavg()[0]:.2f} at end")
    print(f"{'case':<16}{'glibc default s/step':>22}{'retained s/step':>17}{'speed-up':>10}{'peak RSS GiB (default / retained)':>36}")
    for case, r in rows.items():
        print(f"{case:<16}{r['default_s_per_step']:>22.3f}{r['retain_s_per_step']:>17.3f}{r['speedup_retain']:>9.2f}x"
              f"{r['default_peak_rss_gib']:>20.2f} / {r['retain_peak_rss_gib']:.2f}")
    print("speed-up: median over rounds of default / retained s/step (fresh child processes, alternated)")
    result = {"host": host, "threads": args.threads, "steps": args.steps, "rounds": args.rounds, "rows": rows}
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
