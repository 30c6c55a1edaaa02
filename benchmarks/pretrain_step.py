"""Pre-training step benchmark: the step a run takes against an M3AE-style three-pass step.

The MPMA step is ``Trainer.train_step`` of the Trainer ``mpma pretrain`` builds (its parameter
groups, fused AdamW, autocast, clipping; text masked beforehand, as its collate step does). The
reference M3AE-style step (masked-text, masked-image and ITM passes, each re-running both encoders
and the fusion) uses the same optimizer, autocast and clipping. Both run on the SAME model (random
weights) and batch, interleaved in alternating order so that load from other processes hits both
alike; figures are medians. Per preset: s/step, samples/s, the MPMA/M3AE speed ratio, FLOPs of a
step (``FlopCounterMode``), achieved FLOP/s as a share of the matmul FLOP/s measured between
repetitions, and per step kind in a fresh subprocess the peak memory, the weights + gradients +
AdamW state computed from the parameters, and the activations (peak - process baseline - state).

    python benchmarks/pretrain_step.py                                   # tiny (B=64) and base (B=2)
    python benchmarks/pretrain_step.py --presets base --base-overrides vision.image_size=288 text.max_length=64
    python benchmarks/pretrain_step.py --device cuda --precision bf16 --json runs/bench.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import nullcontext

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

from mpma.config import load_config
from mpma.data import text as text_data
from mpma.data.synthrad import build_report, sample_findings
from mpma.data.text import load_tokenizer, mask_tokens, train_tokenizer
from mpma.engine.distributed import DistEnv
from mpma.engine.precision import describe_cpu_bf16
from mpma.engine.trainer import Trainer
from mpma.models.mpma import MPMAModel
from mpma.objectives.matching import itm_loss
from mpma.objectives.reconstruction import mim_loss, mlm_loss
from mpma.pipelines.pretraining import pretrain_parameter_groups
from mpma.tasks.pretrain import PretrainTask

M3AE_IMAGE_MASK = 0.75  # M3AE's MIM pass hides 75% of the patches (whatever the preset's ratio)
KINDS = ("mpma", "m3ae")
aten = torch.ops.aten
# FlopCounterMode has no formula for the flash-attention kernels that SDPA dispatches to on CPU.
CPU_SDPA_FLOPS = {aten._scaled_dot_product_flash_attention_for_cpu: lambda q, k, v, *a, **kw: sdpa_flop_count(q, k, v),
                  aten._scaled_dot_product_flash_attention_for_cpu_backward:
                  lambda g, q, k, v, *a, **kw: sdpa_backward_flop_count(g, q, k, v)}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--presets", nargs="+", default=["tiny", "base"])
    p.add_argument("--batch-tiny", type=int, default=64)
    p.add_argument("--batch-base", type=int, default=None, help="default 2 on CPU, 64 on CUDA")
    p.add_argument("--batch", type=int, default=None, help="batch of every preset (over --batch-tiny/--batch-base)")
    p.add_argument("--tiny-overrides", nargs="*", default=[])
    p.add_argument("--base-overrides", nargs="*", default=[], help="e.g. vision.image_size=288 text.max_length=64")
    p.add_argument("--repeats", type=int, default=None, help="measured repetitions (default tiny 7, base 3)")
    p.add_argument("--warmup", type=int, default=2, help="warm-up repetitions, the FLOP-counted step included (default 2)")
    p.add_argument("--precision", choices=["fp32", "bf16", "auto"], default="fp32",
                   help="run.precision of the Trainer (auto: resolved for this host, mpma.engine.precision)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0 = torch default); 1 on a shared CPU")
    p.add_argument("--activation-checkpointing", action="store_true", help="run.activation_checkpointing=true")
    p.add_argument("--m3ae-itm-pairs", choices=["B", "2B"], default="B",
                   help="B: M3AE's released compute_itm (B pairs, half with a wrong image); 2B: B pos + B neg")
    p.add_argument("--matmul-size", type=int, default=None, help="default 2048 on CPU, 8192 on CUDA")
    p.add_argument("--no-memory", action="store_true", help="skip the per-kind memory subprocesses")
    p.add_argument("--profile", action="store_true", help="print a torch.profiler table of one MPMA step")
    p.add_argument("--profile-rows", type=int, default=25, help="rows of that table (ops by self time)")
    p.add_argument("--json", help="also write the figures to this JSON file")
    p.add_argument("--probe", help=argparse.SUPPRESS)  # internal: "KIND:PRESET" memory probe
    p.add_argument("--tokenizer", help=argparse.SUPPRESS)  # internal: tokenizer folder for probes
    return p.parse_args(argv)


def make_tokenizer(out_dir: str, n_reports: int = 400):
    """A WordPiece tokenizer trained on ``n_reports`` synthrad reports (text only, nothing rendered)."""
    rngs = [np.random.default_rng([0, i]) for i in range(n_reports)]
    texts = [build_report(sample_findings(rng), rng)[0] for rng in rngs]
    return train_tokenizer(texts, f"{out_dir}/tokenizer", vocab_size=1000)


def build(preset: str, args, tokenizer, device: torch.device):
    """Config, PretrainTask (random weights), batch size and model vocabulary for ``preset``."""
    checkpointing = ["run.activation_checkpointing=true"] if args.activation_checkpointing else []
    config = load_config(preset, [*getattr(args, f"{preset}_overrides", []), f"run.precision={args.precision}",
                                  *checkpointing])
    # Model vocabulary: the preset's (base: RoBERTa's 50265), at least the tokenizer's: real embedding/MLM sizes.
    vocab = max(len(tokenizer), config.text.vocab_size)
    torch.manual_seed(0)
    model = MPMAModel(config, vocab_size=vocab, pad_token_id=tokenizer.pad_token_id)
    model.set_grad_checkpointing(config.run.activation_checkpointing)  # as mpma pretrain does
    task = PretrainTask(model, config, tokenizer.mask_token_id, vocab).to(device).train()
    batch_size = {"tiny": args.batch_tiny, "base": args.batch_base or (64 if device.type == "cuda" else 2)}
    batch_size = args.batch or batch_size.get(preset, config.data.batch_size)
    if batch_size < 2:
        raise SystemExit("batch size must be at least 2 (in-batch negatives)")
    return config, task, batch_size, vocab


def synthetic_batch(config, batch_size: int, tokenizer, vocab: int, device: torch.device) -> dict:
    """Random normalised images; ``[CLS] random ids [SEP] [PAD]...`` of lengths in [T/2, T] (row 0: T)."""
    g = torch.Generator().manual_seed(0)
    size, length = config.vision.image_size, config.text.max_length
    images = torch.randn(batch_size, config.vision.channels, size, size, generator=g)
    lengths = torch.randint(length // 2, length + 1, (batch_size,), generator=g)
    lengths[0] = length
    pos = torch.arange(length)[None].expand(batch_size, -1)
    attention = (pos < lengths[:, None]).long()
    ids = torch.randint(max(tokenizer.all_special_ids) + 1, vocab, (batch_size, length), generator=g)
    ids[:, 0] = tokenizer.cls_token_id
    ids[torch.arange(batch_size), lengths - 1] = tokenizer.sep_token_id
    ids[attention == 0] = tokenizer.pad_token_id
    special = (pos == 0) | (pos == lengths[:, None] - 1) | (attention == 0)
    batch = {"images": images, "input_ids": ids, "attention_mask": attention, "special_tokens_mask": special.long(),
             "word_ids": torch.where(special, -1, pos), "match_key": torch.arange(batch_size)}
    if config.objectives.mlm > 0 and hasattr(text_data, "TextMasker"):  # a run masks in its collate step
        masker = text_data.TextMasker(tokenizer.mask_token_id, vocab, config.text.mask_ratio, config.text.whole_word, 0)
        batch = masker(batch, 0)
    return {k: v.to(device) for k, v in batch.items()}


def m3ae_losses(task: PretrainTask, batch: dict, g: torch.Generator, itm_pairs: str = "B") -> dict:
    """The M3AE step as M3AE ran it: a masked-text pass, a masked-image pass and an ITM pass.

    Each pass re-runs both encoders and the fusion. ITM ``B`` follows M3AE's compute_itm (B pairs,
    a random half of them with a wrong image); ``2B`` runs B positives plus B negatives (wrong text).
    """
    model, cfg = task.model, task.config
    images, ids, att = batch["images"], batch["input_ids"], batch["attention_mask"]
    size, dev = ids.shape[0], ids.device
    mask_g = g if dev.type == "cpu" else None
    # (i) masked text + full image -> MLM
    masked, labels = mask_tokens(ids, batch["special_tokens_mask"], task.mask_token_id, task.vocab_size,
                                 cfg.text.mask_ratio, None, g)
    where = labels != -100
    fused = model.fuse(model.encode_text(masked, att), att, model.encode_image(images).tokens)
    mlm = mlm_loss(model.mlm_head(fused.text[where]), ids[where])[0]
    # (ii) 75%-masked image + full text -> MIM
    vision = model.encode_image(images, M3AE_IMAGE_MASK, mask_g)
    fused = model.fuse(model.encode_text(ids, att), att, vision.tokens)
    mim = mim_loss(model.mim_decoder(fused.image, vision.ids_restore), images, vision.mask,
                   cfg.vision.patch_size, cfg.objectives.norm_pix_loss)
    # (iii) full image + full text, positives and random in-batch negatives -> ITM
    own = torch.arange(size)
    other = (own + int(torch.randint(1, size, (1,), generator=g))) % size  # never the own partner
    if itm_pairs == "2B":
        image_idx, text_idx = torch.cat([own, own]), torch.cat([own, other])
        targets = torch.cat([torch.ones(size), torch.zeros(size)])
    else:
        targets = (torch.randperm(size, generator=g) < size // 2).float()
        image_idx, text_idx = torch.where(targets > 0, own, other), own
    image_idx, text_idx = image_idx.to(dev), text_idx.to(dev)
    fused = model.fuse(model.encode_text(ids[text_idx], att[text_idx]), att[text_idx],
                       model.encode_image(images[image_idx]).tokens)
    itm = itm_loss(model.itm_logits(fused.pooled), targets.long().to(dev))[0]
    return {"mlm": mlm, "mim": mim, "itm": itm}


def make_trainer(task: PretrainTask, config, device: torch.device, run_dir: str) -> Trainer:
    """The Trainer ``mpma pretrain`` builds for ``task`` (its parameter groups, fused AdamW, autocast);
    nothing is written to ``run_dir`` unless ``fit``/``save`` is called."""
    return Trainer(task, task.loss_weights, pretrain_parameter_groups(task, config), config.optim, config.run,
                   run_dir, DistEnv(device=device), find_unused_parameters=task.model.itm_head is None,
                   weights_module=task.model)


def make_steps(task: PretrainTask, batch: dict, args, config, run_dir: str) -> tuple[dict, Trainer]:
    """One optimizer step per kind, and the Trainer: ``mpma`` is ``Trainer.train_step`` on ``batch``;
    ``m3ae`` runs the three passes under the same autocast, then the same clipping and optimizer."""
    device = batch["images"].device
    trainer = make_trainer(task, config, device, run_dir)
    g = torch.Generator().manual_seed(1)
    batches = iter(lambda: batch, None)  # the same batch, forever

    def m3ae_step() -> None:
        trainer.optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=trainer.autocast_dtype) if trainer.autocast_dtype else nullcontext():
            loss = sum(m3ae_losses(task, batch, g, args.m3ae_itm_pairs).values())
        loss.backward()
        if config.optim.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(task.parameters(), config.optim.grad_clip)
        trainer.optimizer.step()

    return {"mpma": lambda: trainer.train_step(batches), "m3ae": m3ae_step}, trainer


def state_bytes(task: torch.nn.Module) -> int:
    """Bytes of the weights and buffers, plus the gradient and AdamW's exp_avg and exp_avg_sq of
    every trainable parameter (each the parameter's size and dtype)."""
    weights = sum(t.numel() * t.element_size() for t in [*task.parameters(), *task.buffers()])
    return weights + 3 * sum(p.numel() * p.element_size() for p in task.parameters() if p.requires_grad)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def timed(fn, device: torch.device) -> float:
    """Wall seconds of ``fn()``, synchronising CUDA before and after."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    start = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - start


def matmul_flops(device: torch.device, dtype: torch.dtype, size: int, calls: int = 3) -> float:
    """FLOP/s of ``calls`` square ``size`` matmuls (after one untimed call)."""
    a, b = (torch.randn(size, size, device=device).to(dtype) for _ in range(2))
    a @ b
    return 2 * size**3 * calls / timed(lambda: [a @ b for _ in range(calls)], device)


def count_flops(fn) -> int:
    """FLOPs of one call of ``fn`` (matmuls, convolutions, attention; forward and backward)."""
    with FlopCounterMode(display=False, custom_mapping=CPU_SDPA_FLOPS) as counter:
        fn()
    return counter.get_total_flops()


def peak_memory(device: torch.device) -> dict:
    """Bytes: ``peak`` = CUDA max_memory_allocated, or this process's peak RSS (VmHWM of its own
    address space where /proc exists, else ru_maxrss, which after fork+exec starts at the parent's
    peak); ``now`` = CUDA memory_allocated, or the current RSS (VmRSS)."""
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)
    if device.type == "cuda":
        return {"peak": torch.cuda.max_memory_allocated(), "now": torch.cuda.memory_allocated()}
    try:
        with open("/proc/self/status") as status:
            found = {line[:5]: int(line.split()[1]) * 1024 for line in status if line.startswith(("VmHWM", "VmRSS"))}
    except OSError:
        found = {}
    return {"peak": found.get("VmHWM", maxrss), "now": found.get("VmRSS", maxrss)}


def memory_probe(args, device: torch.device) -> None:
    """Subprocess entry: build ``PRESET``, run two ``KIND`` steps, print the memory figures as JSON:
    ``baseline`` (the process before the model exists: interpreter, libraries, tokenizer; 0 on CUDA),
    ``state`` (:func:`state_bytes`), ``peak`` and ``activation`` = peak - baseline - state (the
    tensors a step holds for backward, autocast weight copies and allocator slack)."""
    kind, preset = args.probe.split(":")
    tokenizer = load_tokenizer(args.tokenizer)
    baseline = peak_memory(device)["now"]
    config, task, batch_size, vocab = build(preset, args, tokenizer, device)
    with tempfile.TemporaryDirectory() as run_dir:
        step = make_steps(task, synthetic_batch(config, batch_size, tokenizer, vocab, device), args, config,
                          run_dir)[0][kind]
        for _ in range(2):  # the second step holds parameters, gradients, AdamW state and activations at once
            step()
    state, peak = state_bytes(task), peak_memory(device)["peak"]
    print("PROBE " + json.dumps({"baseline": baseline, "state": state, "peak": peak,
                                 "activation": peak - baseline - state}))


def probe_in_subprocess(args, kind: str, preset: str, tokenizer_dir: str) -> dict:
    """Run :func:`memory_probe` in a fresh interpreter (its peak is its own, not this process's)."""
    log(f"memory probe: {kind} step, {preset}")
    command = [sys.executable, __file__, *args.argv, "--probe", f"{kind}:{preset}", "--tokenizer", tokenizer_dir]
    done = subprocess.run(command, capture_output=True, text=True)
    lines = [l for l in done.stdout.splitlines() if l.startswith("PROBE ")]
    if done.returncode or not lines:
        log(f"memory probe {kind}:{preset} failed:\n{done.stderr[-2000:]}")
        return {}
    return json.loads(lines[-1][6:])


OP_CLASSES = {"matmul": ("addmm", "aten::mm", "bmm", "linear", "matmul", "mkldnn", "conv"),  # first match wins
              "attention": ("scaled_dot_product", "flash_attention"), "norms": ("layer_norm",),
              "casts/copies": ("aten::to", "_to_copy", "copy_", "clone", "contiguous"),
              "softmax/losses": ("softmax", "cross_entropy", "nll_loss"), "optimizer": ("adam", "foreach", "norm")}


def profiled(step, device: torch.device, rows: int):
    """Run ``step`` once under torch.profiler (CPU ops, and the CUDA kernels on a GPU) and print its
    ops by self time (GPU time on a GPU); returns the profiler's ``key_averages()`` and the wall seconds."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    with profile(activities=activities) as prof:
        started = time.perf_counter()
        step()
        sync()
        wall = time.perf_counter() - started
    averages = prof.key_averages()
    sort = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    print(averages.table(sort_by=sort, row_limit=rows), flush=True)
    return averages, wall


def profile_step(step, device: torch.device, rows: int) -> dict[str, float]:
    """Print a torch.profiler table of one ``step`` (:func:`profiled`) and return each op class's
    share of the self time (:data:`OP_CLASSES`; the rest is ``other``: GELU, adds, indexing...)."""
    averages, _ = profiled(step, device, rows)
    shares: dict[str, float] = {}
    for event in averages:
        name = event.key.lower()
        cls = next((c for c, parts in OP_CLASSES.items() if any(p.lower() in name for p in parts)), "other")
        shares[cls] = shares.get(cls, 0.0) + event.self_cpu_time_total
    total = sum(shares.values()) or 1.0
    shares = {c: v / total for c, v in sorted(shares.items(), key=lambda kv: -kv[1])}
    print("self CPU time by op class: " + ", ".join(f"{c} {100 * v:.0f}%" for c, v in shares.items()))
    return shares


def benchmark_preset(preset: str, args, tokenizer, device: torch.device, memory: dict, run_dir: str) -> list[dict]:
    """Interleaved timing of both step kinds, with a matmul FLOP/s sample after each repetition."""
    config, task, batch_size, vocab = build(preset, args, tokenizer, device)
    steps, trainer = make_steps(task, synthetic_batch(config, batch_size, tokenizer, vocab, device), args, config,
                                run_dir)
    matmul_dtype = trainer.autocast_dtype or torch.float32
    warmup = args.warmup
    repeats = args.repeats if args.repeats is not None else (7 if preset == "tiny" else 3)
    flops = {kind: count_flops(steps[kind]) for kind in KINDS}  # also serves as the first warm-up
    times, matmul = {kind: [] for kind in KINDS}, [matmul_flops(device, matmul_dtype, args.matmul_size)]
    for rep in range(max(0, warmup - 1) + repeats):
        log(f"{preset}: repetition {rep + 1} of {max(0, warmup - 1) + repeats} ({warmup} warm-up incl. FLOP count)")
        for kind in KINDS if rep % 2 == 0 else KINDS[::-1]:  # alternate the order: drift hits both
            seconds = timed(steps[kind], device)
            times[kind] += [seconds] if rep >= warmup - 1 else []
        matmul.append(matmul_flops(device, matmul_dtype, args.matmul_size))
    shares = profile_step(steps["mpma"], device, args.profile_rows) if args.profile else None
    params, matmul = sum(p.numel() for p in task.parameters()), statistics.median(matmul)
    ratio = statistics.median(m3ae / mpma for mpma, m3ae in zip(times["mpma"], times["m3ae"]))
    flop_ratio = flops["m3ae"] / flops["mpma"]  # the speed ratio if both steps ran at the same FLOP/s
    rows = []
    for kind in KINDS:
        seconds = statistics.median(times[kind])
        mem = memory.get((kind, preset), {})
        rows.append({"preset": preset, "batch": batch_size, "kind": kind, "precision": trainer.precision,
                     "s_per_step": seconds, "samples_per_s": batch_size / seconds, "flops_per_step": flops[kind],
                     "flop_per_s": flops[kind] / seconds, "matmul_flop_per_s": matmul,
                     "mfu": flops[kind] / seconds / matmul, "speed_ratio_mpma_over_m3ae": ratio,
                     "flop_ratio_m3ae_over_mpma": flop_ratio,
                     "times": times[kind], "parameters": params, "state_memory": state_bytes(task),
                     "vocab": vocab, "image_size": config.vision.image_size, "text_length": config.text.max_length,
                     "peak_memory": mem.get("peak"), "activation_memory": mem.get("activation"),
                     "baseline_memory": mem.get("baseline"), "profile_shares": shares if kind == "mpma" else None})
    return rows


def print_table(rows: list[dict]) -> None:
    """One line per (preset, step kind), then the MPMA/M3AE ratios and the matmul references."""
    header = (f"{'preset':<7}{'batch':>6} {'step':<6}{'s/step':>9}{'samples/s':>11}{'peak mem':>10}{'state':>8}"
              f"{'activ.':>8}{'GFLOP/step':>12}{'GFLOP/s':>10}{'% matmul':>10}")
    print(header + "\n" + "-" * len(header))
    gib = lambda b: f"{b / 2**30:.2f}" if b is not None else "n/a"  # noqa: E731
    for r in rows:
        print(f"{r['preset']:<7}{r['batch']:>6} {r['kind']:<6}{r['s_per_step']:>9.3f}{r['samples_per_s']:>11.1f}"
              f"{gib(r['peak_memory']):>10}{gib(r['state_memory']):>8}{gib(r['activation_memory']):>8}"
              f"{r['flops_per_step'] / 1e9:>12.1f}{r['flop_per_s'] / 1e9:>10.1f}{100 * r['mfu']:>9.1f}%")
    print("memory in GiB: peak of a fresh process per step kind (build + 2 steps); state = weights + gradients + "
          "AdamW moments from the parameters; activ. = peak - process baseline before the model - state")
    for mpma, m3ae in zip(rows[::2], rows[1::2]):
        memory = (f", peak memory MPMA/M3AE {mpma['peak_memory'] / m3ae['peak_memory']:.2f}"
                  if mpma["peak_memory"] and m3ae["peak_memory"] else "")
        print(f"{mpma['preset']}: speed MPMA/M3AE {mpma['speed_ratio_mpma_over_m3ae']:.2f}x "
              f"(median of per-repetition ratios){memory}; "
              f"{mpma['precision']} matmul {mpma['matmul_flop_per_s'] / 1e9:.1f} GFLOP/s (median)")
        # speed ratio = FLOP ratio x (MPMA's FLOP/s / M3AE-style's): what a target ratio asks of each
        flop_ratio, efficiency = mpma["flop_ratio_m3ae_over_mpma"], mpma["mfu"] / m3ae["mfu"]
        print(f"{mpma['preset']}: FLOP ratio M3AE/MPMA {flop_ratio:.2f}x (the speed ratio at equal FLOP/s) x "
              f"MPMA's FLOP/s over M3AE-style's {efficiency:.2f} = {flop_ratio * efficiency:.2f}x; a 6x speed-up "
              f"needs MPMA at {600 * m3ae['mfu'] / flop_ratio:.0f}% of matmul beside M3AE-style's "
              f"{100 * m3ae['mfu']:.0f}%, or {flop_ratio / 6:.2f}x its FLOPs per step at the same FLOP/s")


def main(argv=None) -> None:
    args = parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    device = torch.device("cuda" if cuda else "cpu")
    args.matmul_size = args.matmul_size or (8192 if device.type == "cuda" else 2048)
    if args.probe:
        return memory_probe(args, device)
    load, cores = os.getloadavg()[0], os.cpu_count() or 1
    if device.type == "cpu" and torch.get_num_threads() > 1 and load > cores - 1:
        log(f"warning: load average {load:.1f} on {cores} cores; with {torch.get_num_threads()} threads, "
            "OpenMP regions stall on descheduled threads (seen here: 20-30x slower steps); try --threads 1")
    host = describe_cpu_bf16() if device.type == "cpu" else torch.cuda.get_device_name(device)
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = make_tokenizer(tmp)
        # Probes first, while this process is still small.
        memory = {} if args.no_memory else {(k, p): probe_in_subprocess(args, k, p, f"{tmp}/tokenizer")
                                            for p in args.presets for k in KINDS}
        rows = [row for p in args.presets for row in benchmark_preset(p, args, tokenizer, device, memory, tmp)]
    fp32 = matmul_flops(device, torch.float32, args.matmul_size) if rows[0]["precision"] != "fp32" else None
    print(f"\ndevice {device} ({host}), precision {args.precision} -> {rows[0]['precision']}, "
          f"threads {torch.get_num_threads()}, load average {load:.2f}, M3AE ITM pairs {args.m3ae_itm_pairs}; "
          "both steps: the Trainer's fused AdamW over the pre-training parameter groups; "
          "peak mem: " + ("not measured" if args.no_memory else "CUDA max_memory_allocated" if device.type == "cuda"
                          else "peak RSS (VmHWM)"))
    print_table(rows)
    if fp32:
        print(f"fp32 matmul (end of run): {fp32 / 1e9:.1f} GFLOP/s")
    if args.json:
        with open(args.json, "w") as out:
            json.dump({"device": str(device), "host": host, "precision": args.precision,
                       "resolved_precision": rows[0]["precision"], "threads": torch.get_num_threads(),
                       "load_average": load, "torch": torch.__version__, "m3ae_itm_pairs": args.m3ae_itm_pairs,
                       "optimizer": "Trainer (fused AdamW, pre-training parameter groups)",
                       "activation_checkpointing": args.activation_checkpointing,
                       "matmul_size": args.matmul_size, "matmul_fp32_flop_per_s_at_end": fp32, "rows": rows,
                       "overrides": {"tiny": args.tiny_overrides, "base": args.base_overrides}}, out, indent=2)


if __name__ == "__main__":
    main()
