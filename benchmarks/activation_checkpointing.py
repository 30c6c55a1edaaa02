"""Activation checkpointing: what it saves and what it costs on the MPMA pre-training step.

    python benchmarks/activation_checkpointing.py                       # base, batch 16, 224 px
    python benchmarks/activation_checkpointing.py --preset tiny --batch 256 --threads 1

Time: ONE model and batch in one process; ``run.activation_checkpointing`` is switched on and off
between repetitions (alternating which goes first), so load from other processes hits both alike;
the ratio is the median of per-repetition ratios. Memory: per setting, a fresh subprocess (the probe
of ``pretrain_step.py``) builds the model and runs two steps; it reports the peak, the weights +
gradients + AdamW state computed from the parameters, and the activations = peak - process baseline -
state. Everything else is ``pretrain_step.py``'s MPMA step: the Trainer ``mpma pretrain`` builds
(fused AdamW, its parameter groups), random weights, a synthetic batch.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import pretrain_step  # noqa: E402  (the step, the batch and the memory probe are shared with it)

from mpma.engine.precision import describe_cpu_bf16  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="base")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--overrides", nargs="*", default=[], help="config overrides, e.g. vision.image_size=288")
    p.add_argument("--repeats", type=int, default=3, help="measured repetitions of each setting")
    p.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0 = torch default)")
    p.add_argument("--no-memory", action="store_true", help="skip the two memory subprocesses")
    p.add_argument("--json", help="also write the figures to this JSON file")
    return p.parse_args(argv)


def step_args(args, checkpointing: bool) -> list[str]:
    """``pretrain_step.py`` arguments that build this benchmark's model and batch."""
    overrides = [f"--{args.preset}-overrides", *args.overrides] if args.overrides else []  # main: tiny/base only
    return ["--presets", args.preset, "--batch", str(args.batch), *overrides,
            *(["--threads", str(args.threads)] if args.threads else []),
            *(["--activation-checkpointing"] if checkpointing else [])]


def memory(args, checkpointing: bool, tokenizer_dir: str) -> dict:
    """The probe's figures (bytes) for one setting, from a fresh interpreter."""
    command = [sys.executable, pretrain_step.__file__, *step_args(args, checkpointing), "--probe",
               f"mpma:{args.preset}", "--tokenizer", tokenizer_dir]
    done = subprocess.run(command, capture_output=True, text=True)
    lines = [line for line in done.stdout.splitlines() if line.startswith("PROBE ")]
    if done.returncode or not lines:
        raise SystemExit(f"memory probe (checkpointing={checkpointing}) failed:\n{done.stderr[-2000:]}")
    return json.loads(lines[-1][6:])


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.preset not in ("tiny", "base") and args.overrides:
        raise SystemExit("--overrides apply to the tiny and base presets")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cpu")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = pretrain_step.make_tokenizer(tmp)
        mem = {} if args.no_memory else {on: memory(args, on, f"{tmp}/tokenizer") for on in (False, True)}
        bench = pretrain_step.parse_args(step_args(args, False))
        config, task, batch_size, vocab = pretrain_step.build(args.preset, bench, tokenizer, device)
        batch = pretrain_step.synthetic_batch(config, batch_size, tokenizer, vocab, device)
        steps, _ = pretrain_step.make_steps(task, batch, bench, config, tmp)
        step = steps["mpma"]
        times = {False: [], True: []}
        for rep in range(1 + args.repeats):  # repetition 0 warms up both settings
            for on in (False, True) if rep % 2 == 0 else (True, False):
                task.model.set_grad_checkpointing(on)
                seconds = pretrain_step.timed(step, device)
                pretrain_step.log(f"repetition {rep} checkpointing={on}: {seconds:.2f} s")
                times[on] += [seconds] if rep > 0 else []
    ratio = statistics.median(on / off for off, on in zip(times[False], times[True]))
    rows = {}
    for on in (False, True):
        m = mem.get(on, {})
        rows["on" if on else "off"] = {"s_per_step": statistics.median(times[on]), "times": times[on],
                                        "peak_memory": m.get("peak"), "state_memory": m.get("state"),
                                        "activation_memory": m.get("activation"), "baseline_memory": m.get("baseline")}
    host = describe_cpu_bf16()
    gib = lambda b: f"{b / 2**30:.2f}" if b is not None else "n/a"  # noqa: E731
    print(f"\n{args.preset}, batch {batch_size}, {config.vision.image_size} px, {config.text.max_length} text tokens, "
          f"fp32, threads {torch.get_num_threads()}; host {host}")
    print(f"{'checkpointing':<14}{'s/step':>9}{'peak GiB':>10}{'state GiB':>11}{'activ. GiB':>12}")
    for name, row in rows.items():
        print(f"{name:<14}{row['s_per_step']:>9.2f}{gib(row['peak_memory']):>10}{gib(row['state_memory']):>11}"
              f"{gib(row['activation_memory']):>12}")
    saving = (rows["on"]["activation_memory"] / rows["off"]["activation_memory"]
              if rows["on"]["activation_memory"] and rows["off"]["activation_memory"] else None)
    print(f"time on/off {ratio:.2f}x (median of per-repetition ratios)"
          + (f"; activations on/off {saving:.2f}x, peak on/off "
             f"{rows['on']['peak_memory'] / rows['off']['peak_memory']:.2f}x" if saving else ""))
    wall = time.perf_counter() - started
    print(f"wall time {wall:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "preset": args.preset, "batch": batch_size, "image_size": config.vision.image_size,
            "text_length": config.text.max_length, "overrides": args.overrides, "threads": torch.get_num_threads(),
            "host": host, "torch": torch.__version__, "rows": rows, "time_ratio_on_over_off": ratio,
            "activation_ratio_on_over_off": saving, "wall_time_s": round(wall, 1),
            "command": "python benchmarks/activation_checkpointing.py " + " ".join(sys.argv[1:] if argv is None else argv)},
            indent=2) + "\n")


if __name__ == "__main__":
    main()
