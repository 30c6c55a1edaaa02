"""Compare two pre-training runs value by value: did a change keep the behaviour?

    python benchmarks/compare_runs.py RUN_A RUN_B

Prints every ``log.jsonl`` value that differs (timing fields left out) and, for the newest checkpoint
of each run, how many weight tensors are bit-identical and the largest absolute difference. Either
run may be a 0.1.0 run folder (checkpoint keys prefixed ``model.``). Exit status 0 when both the
logs and the weights are identical, 1 otherwise.

How the restructure of issue 10 was checked: the default ``mpma pretrain`` for 20 steps
(``optim.steps=20 run.log_every=5 run.checkpoint_every=20 run.eval_size=64 run.threads=1``) from
commit 4d591b6 and from the restructured code, then this script.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

TIMING = {"samples_per_s"}


def latest_weights(run: Path) -> dict[str, torch.Tensor]:
    steps = [p for p in (run / "checkpoints").glob("step_*")  # not step_N.tmp / .broken / .diverged
             if p.name.removeprefix("step_").isdigit() and (p / "model.safetensors").is_file()]
    steps = sorted(steps, key=lambda p: int(p.name.split("_")[1]))
    if not steps:
        raise SystemExit(f"{run}: no checkpoint with model.safetensors")
    return {k.removeprefix("model."): v for k, v in load_file(str(steps[-1] / "model.safetensors")).items()}


def compare_logs(a: Path, b: Path) -> int:
    rows_a = [json.loads(line) for line in (a / "log.jsonl").read_text().splitlines() if line.strip()]
    rows_b = [json.loads(line) for line in (b / "log.jsonl").read_text().splitlines() if line.strip()]
    compared = differing = 0
    for x, y in zip(rows_a, rows_b):
        for key in sorted((set(x) | set(y)) - TIMING):
            compared += 1
            if x.get(key) != y.get(key):
                differing += 1
                print(f"log step {x.get('step')}: {key} {x.get(key)!r} != {y.get(key)!r}")
    if len(rows_a) != len(rows_b):
        differing += 1
        print(f"log lengths differ: {len(rows_a)} != {len(rows_b)}")
    print(f"log.jsonl: {compared} values compared, {differing} differ")
    return differing


def compare_weights(a: Path, b: Path) -> int:
    wa, wb = latest_weights(a), latest_weights(b)
    if set(wa) != set(wb):
        print(f"weights: the key sets differ ({len(set(wa) ^ set(wb))} keys in one only)")
        return 1
    same = sum(torch.equal(wa[k], wb[k]) for k in wa)
    worst = max(float((wa[k].float() - wb[k].float()).abs().max()) for k in wa)
    print(f"weights: {same} of {len(wa)} tensors bit-identical, largest absolute difference {worst:.3g}")
    return len(wa) - same


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_a", type=Path)
    parser.add_argument("run_b", type=Path)
    args = parser.parse_args()
    differing = compare_logs(args.run_a, args.run_b) + compare_weights(args.run_a, args.run_b)
    sys.exit(1 if differing else 0)


if __name__ == "__main__":
    main()
