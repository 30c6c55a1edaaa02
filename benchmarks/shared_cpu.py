"""Training beside a busy process: how much one competing single-threaded process slows a run.

Each measurement is a fresh subprocess (so that thread settings and ``OMP_WAIT_POLICY``, which
OpenMP reads when torch loads, apply from the start), run twice per round: alone, and beside a
synthetic busy process (``python3 -c "while True: pass"``). The slowdown of a policy is the median
over rounds of (time beside the busy process / time alone) within the same round, so drifting load
from other jobs mostly cancels; the order of policies and conditions alternates between rounds.

Policies:

- ``default``: torch's default threads (one per core): mpma before ``run.threads=0`` meant auto;
- ``passive``: the same with ``OMP_WAIT_POLICY=PASSIVE`` (waiting threads sleep instead of spinning);
- ``auto``: ``run.threads=0``, the cores found free at start (:func:`mpma.engine.threads.configure_threads`),
  re-measured every 5 s while it trains (``ThreadWatch``);
- ``auto+passive``: both (``auto`` alone is the ``mpma`` default: PASSIVE costs an idle machine ~1.3x).

Modes: ``step`` (default) times ``--steps`` Trainer steps of ``--preset`` at ``--batch`` on a
synthetic batch (benchmarks/pretrain_step.py builds them); ``cli`` times the whole command
``mpma pretrain optim.steps=60 run.eval_size=100`` (tokenizer, data, training and evaluation).

    python benchmarks/shared_cpu.py                          # step mode, 3 rounds, about 5 minutes on 2 cores
    python benchmarks/shared_cpu.py --mode cli --rounds 2    # the command of issue 14 (about 10 min idle)
    python benchmarks/shared_cpu.py --mode cli --rounds 1 --policies default auto --busy-after 8  # busy from 8 s in

``--busy-after S`` (cli mode) starts the busy process S seconds *after* the measured command, when an
auto run has already chosen its threads on an idle machine: ``default`` then behaves as auto did before
it re-measured while training (2 threads kept), ``auto`` shows the re-measuring (engine/threads.py,
``ThreadWatch``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from real_vqa import cpu_features  # noqa: E402

POLICIES = ("default", "passive", "auto", "auto+passive")
BUSY = [sys.executable, "-c", "while True: pass"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mode", choices=["step", "cli"], default="step")
    p.add_argument("--policies", nargs="+", choices=POLICIES, default=list(POLICIES))
    p.add_argument("--rounds", type=int, default=3, help="rounds of (alone, busy) per policy")
    p.add_argument("--steps", type=int, default=20, help="step mode: timed steps per measurement (after 2 warm-up)")
    p.add_argument("--preset", default="tiny", help="step mode: preset")
    p.add_argument("--batch", type=int, default=32, help="step mode: batch size")
    p.add_argument("--cli-args", nargs="*", default=["optim.steps=60", "run.eval_size=100"],
                   help="cli mode: overrides of `mpma pretrain`")
    p.add_argument("--busy-after", type=float, default=0.0,
                   help="cli mode: start the busy process this many seconds after the command (0: before it)")
    p.add_argument("--json", help="also write the figures to this JSON file")
    p.add_argument("--child", help=argparse.SUPPRESS)  # internal: run one step-mode measurement of POLICY
    return p.parse_args(argv)


def child_step(policy: str, args) -> dict:
    """Step mode, in the measured subprocess: build, warm up, time ``args.steps`` Trainer steps."""
    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import pretrain_step as ps

    from mpma.engine.threads import configure_threads

    if policy.startswith("auto"):
        configure_threads(0)
    bench = ps.parse_args(["--presets", args.preset, "--batch", str(args.batch)])
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = ps.make_tokenizer(tmp)
        config, task, batch_size, vocab = ps.build(args.preset, bench, tokenizer, torch.device("cpu"))
        batch = ps.synthetic_batch(config, batch_size, tokenizer, vocab, torch.device("cpu"))
        step = ps.make_steps(task, batch, bench, config, tmp)[0]["mpma"]
        for _ in range(2):
            step()
        start = time.perf_counter()
        for _ in range(args.steps):
            step()
        seconds = (time.perf_counter() - start) / args.steps
    return {"seconds": seconds, "threads": torch.get_num_threads()}


def measure(policy: str, busy: bool, args) -> dict:
    """One fresh-process measurement of ``policy``, beside a busy process or not: {"seconds", "threads"}.

    Step mode: seconds per step; cli mode: seconds of the whole command.
    """
    env = dict(os.environ)
    env.pop("OMP_NUM_THREADS", None)  # the policies decide the threads
    env.pop("OMP_WAIT_POLICY", None)  # OpenMP's default: spin a while, then sleep
    if policy.endswith("passive"):
        env["OMP_WAIT_POLICY"] = "PASSIVE"
    late = busy and args.mode == "cli" and args.busy_after > 0
    hog = subprocess.Popen(BUSY) if busy and not late else None
    try:
        if hog is not None:
            time.sleep(0.5)  # let it run before the measured process looks at the free cores
        if args.mode == "step":
            command = [sys.executable, __file__, "--child", policy, "--preset", args.preset, "--batch",
                       str(args.batch), "--steps", str(args.steps)]
            done = subprocess.run(command, env=env, capture_output=True, text=True)
            lines = [line for line in done.stdout.splitlines() if line.startswith("CHILD ")]
            if done.returncode or not lines:
                raise RuntimeError(f"{policy} measurement failed:\n{done.stderr[-2000:]}")
            return json.loads(lines[-1][6:])
        import torch

        threads = 0 if policy.startswith("auto") else torch.get_num_threads()  # before: torch's default, one per core
        with tempfile.TemporaryDirectory() as tmp:
            env["MPMA_CACHE"] = f"{tmp}/cache"  # every measurement trains its tokenizer: equal work
            command = [sys.executable, "-m", "mpma.cli", "pretrain", "--out", f"{tmp}/run", "--no-progress",
                       *args.cli_args, f"run.threads={threads}"]
            start = time.perf_counter()
            if late:  # the run chooses its threads on an idle machine; the busy process arrives later
                proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                try:
                    proc.wait(timeout=args.busy_after)
                except subprocess.TimeoutExpired:
                    hog = subprocess.Popen(BUSY)
                stdout, stderr = proc.communicate()
                done = subprocess.CompletedProcess(command, proc.returncode, stdout, stderr)
            else:
                done = subprocess.run(command, env=env, capture_output=True, text=True)
            seconds = time.perf_counter() - start
        if done.returncode:
            raise RuntimeError(f"{policy} measurement failed:\n{done.stderr[-2000:]}")
        return {"seconds": seconds, "threads": threads or "auto"}
    finally:
        if hog is not None:
            hog.kill()
            hog.wait()


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.child:
        print("CHILD " + json.dumps(child_step(args.child, args)))
        return {}
    load_before = os.getloadavg()
    runs: dict[str, list[dict]] = {policy: [] for policy in args.policies}
    for round_ in range(args.rounds):
        policies = args.policies if round_ % 2 == 0 else args.policies[::-1]
        for policy in policies:
            conditions = (False, True) if round_ % 2 == 0 else (True, False)
            result = {busy: measure(policy, busy, args) for busy in conditions}
            runs[policy].append({"alone": result[False], "busy": result[True]})
            print(f"[{time.strftime('%H:%M:%S')}] round {round_ + 1}, {policy}: alone "
                  f"{result[False]['seconds']:.3f} s, beside a busy process {result[True]['seconds']:.3f} s",
                  file=sys.stderr, flush=True)
    unit = "s/step" if args.mode == "step" else "s/run"
    what = f"{args.preset} batch {args.batch}, {args.steps} steps" if args.mode == "step" else " ".join(args.cli_args)
    if args.mode == "cli" and args.busy_after > 0:
        what += f", the busy process starting {args.busy_after:g} s into the run"
    print(f"\n{args.mode} mode ({what}), {os.cpu_count()} cores, {args.rounds} rounds; load average "
          f"{load_before[0]:.2f} at start, {os.getloadavg()[0]:.2f} at end (other jobs included)")
    print(f"{'policy':<9}{'threads alone/busy':>20}{'alone ' + unit:>15}{'busy ' + unit:>15}{'slowdown':>10}")
    summary = {}
    for policy, rows in runs.items():
        ratio = statistics.median(r["busy"]["seconds"] / r["alone"]["seconds"] for r in rows)
        alone = statistics.median(r["alone"]["seconds"] for r in rows)
        busy = statistics.median(r["busy"]["seconds"] for r in rows)
        threads = f"{rows[-1]['alone']['threads']}/{rows[-1]['busy']['threads']}"
        summary[policy] = {"slowdown": ratio, "alone": alone, "busy": busy, "rounds": rows}
        print(f"{policy:<9}{threads:>20}{alone:>15.3f}{busy:>15.3f}{ratio:>9.2f}x")
    print("slowdown: median over rounds of (beside one busy process / alone) in the same round")
    result = {"mode": args.mode, "busy_after_s": args.busy_after, "cores": os.cpu_count(), "cpu_features": cpu_features(), "load_average_start": load_before,
              "load_average_end": os.getloadavg(), "policies": summary}
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
