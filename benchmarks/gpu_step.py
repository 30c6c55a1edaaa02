"""The pre-training step on a GPU: base, batch 64, 224 px, bf16, eager and ``torch.compile``d.

Modes: ``eager``; ``compile`` (``run.compile=true``: each repeated block compiled); ``cudagraphs``
(the same with ``run.compile_mode=reduce-overhead``: each compiled block replayed as a CUDA graph, the
lever for a step bound by kernel launches, as the base step on an H200 is); ``bf16_weights`` (weights,
gradients, AdamW state and the batch in bf16, no autocast: the ceiling of dropping autocast's casts; a
measurement only, since training without fp32 master weights loses small updates).

Times ``Trainer.train_step`` (the step ``mpma pretrain`` runs: one forward of the five losses,
backward, clipping, fused AdamW) on one synthetic batch, built by ``benchmarks/pretrain_step.py``'s
helpers so that both benchmarks measure the same step. Prints, per mode: s/step, samples/s, the
first step's extra time (compilation), FLOP/step (``FlopCounterMode``, counted in eager mode), MFU
against the GPU's dense bf16 peak (a table keyed by ``torch.cuda.get_device_name``; a measured
matmul where the GPU is not in it) and peak memory (``torch.cuda.max_memory_allocated``).

Usage::

    benchmarks/gpu_step.sh                                   # the figures (needs CUDA; ~2-4 min)
    python benchmarks/gpu_step.py --json runs/gpu_step.json  # the same, figures also as JSON
    python benchmarks/gpu_step.py --device cpu --preset tiny --steps 2 --batch 4 --precision fp32  # smoke
"""

from __future__ import annotations

import argparse
import functools
import gc
import importlib.util
import itertools
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

from mpma.engine.precision import describe_cpu_bf16

# Dense (no sparsity) bf16 tensor-core peaks from the vendor data sheets, FLOP/s; first match wins.
BF16_PEAK = [("H200", 989e12), ("H100 PCIe", 756e12), ("H100", 989e12), ("A100", 312e12)]


# mode -> the run.* overrides that make it
MODES = {"eager": ["run.compile=false"], "compile": ["run.compile=true"],
         "cudagraphs": ["run.compile=true", "run.compile_mode=reduce-overhead"], "bf16_weights": ["run.compile=false"]}


def _pretrain_step():
    """``benchmarks/pretrain_step.py`` as a module (its batch, model and Trainer helpers)."""
    path = Path(__file__).resolve().with_name("pretrain_step.py")
    spec = importlib.util.spec_from_file_location("pretrain_step", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda", help="cpu: a smoke run only")
    p.add_argument("--preset", default="base")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--precision", choices=["bf16", "fp32"], default="bf16")
    p.add_argument("--steps", type=int, default=10, help="timed steps per mode")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps per mode (the first one compiles)")
    p.add_argument("--modes", nargs="+", choices=list(MODES), default=["eager", "compile"])
    p.add_argument("--overrides", nargs="*", default=[], help="more dotted config overrides")
    p.add_argument("--profile", action="store_true", help="profile one eager step: GPU-busy share of the wall "
                   "time, operator count, the ops that take the most GPU time")
    p.add_argument("--json", help="also write the figures to this JSON file")
    return p.parse_args(argv)


def bf16_peak(device: torch.device, measured_matmul) -> tuple[float, str]:
    """(peak FLOP/s, where it comes from): the data-sheet table for a known GPU, else ``measured_matmul()``."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, peak in BF16_PEAK:
            if key in name:
                return peak, f"{key} data sheet (dense bf16)"
    return measured_matmul(), "measured matmul"


def peak_bytes(device: torch.device) -> int:
    """CUDA ``max_memory_allocated`` since the last reset, or this process's peak RSS on the CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def profile_step(helpers, step, device: torch.device, rows: int = 12) -> dict:
    """Profile one ``step`` (``pretrain_step.profiled``: prints its ops by GPU time); return the wall
    seconds, the summed kernel seconds (``gpu_busy_share`` = their ratio: well under 1 means the host
    cannot launch the kernels as fast as the GPU runs them) and the number of operator calls."""
    from torch.autograd import DeviceType

    events, wall = helpers.profiled(step, device, rows)
    operator_calls = sum(e.count for e in events if e.key.startswith("aten::"))
    # the kernels' own rows (the ops that launch them carry the same time again)
    kernel_s = sum(e.self_device_time_total for e in events if e.device_type == DeviceType.CUDA) / 1e6
    print(f"profiled step: {wall:.3f} s wall, {kernel_s:.3f} s of kernels ({100 * kernel_s / wall:.0f}% busy), "
          f"{operator_calls} aten operator calls", flush=True)
    return {"profiled_wall_s": wall, "kernel_s": kernel_s, "gpu_busy_share": kernel_s / wall,
            "aten_operator_calls": operator_calls}


def _call(fn, times: int) -> None:
    """``fn()`` ``times`` times."""
    for _ in range(times):
        fn()


def run_mode(helpers, mode: str, args, tokenizer, device: torch.device, run_dir: str,
             flops: int | None) -> tuple[dict, int]:
    """Time ``args.steps`` Trainer steps in ``mode`` after ``args.warmup``; returns (row, FLOP/step)."""
    overrides = [f"vision.image_size={args.image_size}", *MODES[mode], *args.overrides]
    options = helpers.parse_args([])  # pretrain_step.py's defaults, with this run's shapes and precision
    precision = "fp32" if mode == "bf16_weights" else args.precision  # no autocast around bf16 weights
    for key, value in {"precision": precision, "batch": args.batch, "batch_tiny": args.batch,
                       "batch_base": args.batch, f"{args.preset}_overrides": overrides}.items():
        setattr(options, key, value)
    config, task, batch_size, vocab = helpers.build(args.preset, options, tokenizer, device)
    batch = helpers.synthetic_batch(config, batch_size, tokenizer, vocab, device)
    if mode == "bf16_weights":
        task.to(torch.bfloat16)  # before the optimizer exists: its state is bf16 too
        batch = {k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in batch.items()}
    trainer = helpers.make_trainer(task, config, device, run_dir)
    step = functools.partial(trainer.train_step, itertools.repeat(batch))  # the same batch, forever
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    first = helpers.timed(step, device)
    for _ in range(max(0, args.warmup - 1)):
        step()
    if flops is None:  # counted running eagerly (FlopCounterMode does not see compiled kernels)
        with torch.compiler.set_stance("force_eager"):
            flops = helpers.count_flops(step)
    seconds = helpers.timed(functools.partial(_call, step, args.steps), device) / args.steps
    busy = profile_step(helpers, step, device) if args.profile and mode == "eager" else {}
    row = {**busy, "mode": mode, "preset": args.preset, "batch": batch_size, "image_size": config.vision.image_size,
           "precision": "bf16 weights" if mode == "bf16_weights" else trainer.precision,
           "s_per_step": seconds, "samples_per_s": batch_size / seconds,
           "first_step_s": first, "startup_s": max(0.0, first - seconds), "flops_per_step": flops,
           "peak_memory_bytes": peak_bytes(device)}
    del step, trainer, task, batch
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return row, flops


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("benchmarks/gpu_step.py: no CUDA GPU here (torch.cuda.is_available() is False, torch "
                         f"{torch.__version__}); run it on a GPU host, or smoke-test it on the CPU with "
                         "--device cpu --preset tiny --steps 2 --batch 4 --precision fp32")
    if args.batch < 2:
        raise SystemExit("--batch must be at least 2 (in-batch negatives)")
    device = torch.device(args.device)
    helpers = _pretrain_step()
    dtype = torch.bfloat16 if args.precision == "bf16" else torch.float32
    size = 8192 if device.type == "cuda" else 1024
    peak, source = bf16_peak(device, lambda: helpers.matmul_flops(device, dtype, size))
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    rows, flops = [], None
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = helpers.make_tokenizer(tmp)
        for mode in args.modes:
            helpers.log(f"{mode}: {args.warmup} warm-up + {args.steps} timed steps")
            row, flops = run_mode(helpers, mode, args, tokenizer, device, tmp, flops)
            row["mfu"] = row["flops_per_step"] / row["s_per_step"] / peak
            rows.append(row)
            helpers.log(f"{mode}: {row['s_per_step']:.4f} s/step, {row['samples_per_s']:.1f} samples/s, "
                        f"MFU {100 * row['mfu']:.1f}%, peak {row['peak_memory_bytes'] / 2**30:.2f} GiB, "
                        f"first step {row['first_step_s']:.1f} s")  # kept if a later mode runs out of time
    print(f"\n{name}: {args.preset}, batch {args.batch}, {args.image_size} px, {rows[0]['precision']}; "
          f"MFU against {peak / 1e12:.3g} TFLOP/s ({source}); torch {torch.__version__}")
    print(f"{'mode':<13}{'s/step':>9}{'samples/s':>11}{'start-up s':>12}{'TFLOP/step':>12}{'MFU':>8}{'peak GiB':>10}")
    for r in rows:
        print(f"{r['mode']:<13}{r['s_per_step']:>9.3f}{r['samples_per_s']:>11.1f}{r['startup_s']:>12.1f}"
              f"{r['flops_per_step'] / 1e12:>12.2f}{100 * r['mfu']:>7.1f}%{r['peak_memory_bytes'] / 2**30:>10.2f}")
    print(f"total {time.perf_counter() - started:.0f} s")
    if args.json:
        host = {"threads": torch.get_num_threads(), "cpu_bf16": describe_cpu_bf16()} if device.type == "cpu" else {}
        figures = {"device": name, **host, "peak_flop_per_s": peak, "peak_source": source,
                   "torch": torch.__version__, "rows": rows}
        Path(args.json).write_text(json.dumps(figures, indent=2) + "\n")
    return rows


if __name__ == "__main__":
    main(sys.argv[1:])
