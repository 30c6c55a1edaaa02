"""The training loop: one place, independent of the model. It only weights, sums and steps.

A task is any ``nn.Module`` whose ``forward(batch, generator)`` returns an object with a
``losses`` dict (raw loss terms) and a ``metrics`` dict. The same loop serves one process and
``torchrun`` (DDP), with autocast, gradient accumulation and clipping, AdamW with warm-up + cosine,
a larger learning rate for fusion/heads, per-step seeding (so a resumed run replays exactly),
atomic checkpoints and a JSONL log.
"""

from __future__ import annotations

import json
import logging
import math
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from pathlib import Path

import torch
from torch import nn

from mpma.config import OptimConfig, RunConfig
from mpma.engine import checkpoint as ckpt
from mpma.engine import parallel
from mpma.engine.allocator import retain_freed_memory
from mpma.engine.compiling import CUDA_GRAPH_MODES, compile_options, compile_repeated_blocks
from mpma.engine.distributed import DistEnv, barrier, mean_across_ranks
from mpma.engine.precision import cpu_bf16_features, resolve_precision
from mpma.engine.run_folder import RunFolderWarning, truncate_log
from mpma.engine.threads import poll_threads


class DivergenceError(ValueError, FloatingPointError):
    """Training diverged (a non-finite loss, or non-finite weights about to be checkpointed).

    The message names the step and the last good checkpoint; no non-finite checkpoint is ever written.
    """


def decay_start(warmup_steps: int, total_steps: int, decay_steps: int = 0) -> int:
    """The step at which the rate starts to decay: the warm-up's end, or ``total_steps - decay_steps``
    for a warm-up, stable, decay schedule (never before the warm-up's end)."""
    return warmup_steps if decay_steps <= 0 else max(warmup_steps, total_steps - decay_steps)


def decay_progress(step: int, warmup_steps: int, total_steps: int, decay_steps: int = 0) -> float:
    """How far ``step`` is through the rate's decay: 0 up to :func:`decay_start`, 1 at ``total_steps``."""
    start = decay_start(warmup_steps, total_steps, decay_steps)
    return min(max((step - start) / max(1, total_steps - start), 0.0), 1.0)


def lr_multiplier(step: int, warmup_steps: int, total_steps: int, min_ratio: float = 0.0, decay_steps: int = 0) -> float:
    """Linear warm-up from 0 to 1 over ``warmup_steps``, then cosine decay to ``min_ratio`` at ``total_steps``.

    ``decay_steps > 0`` is warm-up, stable, decay: the rate holds at its peak after warm-up and the cosine
    decay runs over the last ``decay_steps`` steps only (cut at the warm-up's end when it is longer).
    """
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = decay_progress(step, warmup_steps, total_steps, decay_steps)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def scheduled_loss_weights(weights: dict[str, float], end_weights: dict[str, float], progress: float) -> dict[str, float]:
    """Each loss's weight ``progress`` of the way (0 to 1) from ``weights`` to ``end_weights``, linearly.

    Losses ``end_weights`` does not name keep their weight; it may not name a loss ``weights`` lacks.
    """
    unknown = sorted(set(end_weights) - set(weights))
    if unknown:
        raise ValueError(f"end weights for losses the task does not compute: {unknown} (it computes {sorted(weights)})")
    return {name: w + (end_weights.get(name, w) - w) * progress for name, w in weights.items()}


def parameter_groups(
    module: nn.Module, optim: OptimConfig, head_names: set[str], no_decay_names: set[str],
    text_names: set[str] = frozenset(),
) -> list[dict]:
    """AdamW groups: {backbone, head, text encoder} x {decay, no decay}; biases, norms and 1-d tensors get
    no decay. The text encoder has groups of its own only when ``optim.text_lr_mult`` is not 1 (so the
    groups, and the optimizer state of a checkpoint, are those of earlier runs when it is).

    Args:
        module: the module whose parameters are optimised (names as in ``named_parameters``).
        head_names: parameter names trained at ``lr * head_lr_mult``.
        no_decay_names: extra parameter names exempt from weight decay.
        text_names: the text encoder's parameter names, trained at ``lr * text_lr_mult`` (a head name
            among them stays a head).
    """
    # group order: backbone, head, text encoder (the order of earlier runs' groups first)
    backbone, head, text = 0, 1, 2
    multiplier = {backbone: 1.0, head: optim.head_lr_mult, text: optim.text_lr_mult}
    separate_text = optim.text_lr_mult != 1.0
    groups: dict[tuple[int, bool], list] = {}
    for name, param in module.named_parameters():
        if not param.requires_grad:
            continue
        kind = head if name in head_names else text if separate_text and name in text_names else backbone
        decay = param.ndim >= 2 and name not in no_decay_names
        groups.setdefault((kind, decay), []).append(param)
    result = []
    for (kind, decay), params in sorted(groups.items()):
        lr = optim.lr * multiplier[kind]
        result.append({"params": params, "lr": lr, "base_lr": lr, "weight_decay": optim.weight_decay if decay else 0.0})
    return result


def step_seed(seed: int, step: int, rank: int, micro: int = 0) -> int:
    """A distinct, reproducible seed per (run seed, step, rank, micro-batch)."""
    return (seed * 1_000_003 + step * 7_919 + rank * 104_729 + micro * 15_485_863) % (2**63 - 1)


class Trainer:
    """Runs the optimisation of ``task`` and records it in ``run_dir``.

    Args:
        task: module with ``forward(batch, generator) -> result`` (``result.losses``, ``result.metrics``).
        loss_weights: weight per loss name; the total loss is the weighted sum.
        end_loss_weights: weights some losses move to, linearly from ``loss_weights`` over the rate's
            decay (:func:`decay_progress`, as the rate's cosine: the last step is ``(n - 1) / n`` of the
            way through an ``n``-step decay); None = constant weights.
        param_groups: AdamW parameter groups (see :func:`parameter_groups`), each with ``base_lr``.
        optim: optimisation settings.
        run: run settings (seed, precision, logging, checkpoints).
        run_dir: output folder (rank 0 writes ``log.jsonl`` and ``checkpoints/``).
        env: distributed environment; with world size > 1 the task is wrapped in DDP, or sharded
            in place with FSDP2 when ``run.parallel=fsdp`` (:mod:`mpma.engine.parallel`; ``param_groups``
            are then rebuilt on the sharded parameters). With ``run.compile`` each repeated block's
            forward is compiled (:func:`mpma.engine.compiling.compile_repeated_blocks`), or the
            (wrapped) task as a whole when it has no repeated blocks.
        on_checkpoint: called on rank 0 after each checkpoint with the step (e.g. to draw curves).
        on_log: called on rank 0 with each record written to ``log.jsonl`` (e.g. an experiment tracker,
            :class:`mpma.engine.tracking.Tracker`).
        weights_module: the module whose weights a checkpoint holds (e.g. the backbone inside a
            pre-training task); defaults to ``task``. It must hold every trained parameter.
        write_model: writes a checkpoint's weights as a model folder (see :func:`ckpt.save_checkpoint`).
        find_unused_parameters: let DDP tolerate parameters that get no gradient (e.g. the fusion
            poolers when no loss reads the pooled output); slower, so only when needed.
    """

    def __init__(
        self,
        task: nn.Module,
        loss_weights: dict[str, float],
        param_groups: list[dict],
        optim: OptimConfig,
        run: RunConfig,
        run_dir: str | Path,
        env: DistEnv,
        on_checkpoint: Callable[[int], None] | None = None,
        find_unused_parameters: bool = False,
        weights_module: nn.Module | None = None,
        write_model: Callable[[Path], None] | None = None,
        on_log: Callable[[dict], None] | None = None,
        end_loss_weights: dict[str, float] | None = None,
    ) -> None:
        self.task = task
        self.weights_module = task if weights_module is None else weights_module
        self.write_model = write_model
        self.loss_weights = loss_weights
        self.end_loss_weights = dict(end_loss_weights or {})
        scheduled_loss_weights(loss_weights, self.end_loss_weights, 0.0)  # names checked before step 1
        self.optim_cfg = optim
        self.run_cfg = run
        self.run_dir = Path(run_dir)
        self.env = env
        self.on_checkpoint = on_checkpoint
        self.on_log = on_log
        self.sharded = env.distributed and run.parallel == "fsdp"  # FSDP2 (mpma.engine.parallel), else DDP
        if self.sharded:
            param_groups = parallel.shard(task, param_groups, env.device, env.world_size)
        self.optimizer = torch.optim.AdamW(
            param_groups, betas=(optim.beta1, optim.beta2), eps=optim.eps,
            fused=True,  # one kernel for every tensor, on CPU as on GPU (3x faster than the per-tensor loop)
        )
        self.wrapped = task
        if env.distributed and not self.sharded:
            self.wrapped = parallel.wrap_ddp(task, env.device, find_unused_parameters)
        self.replays_cuda_graphs = run.compile and run.compile_mode in CUDA_GRAPH_MODES
        if run.compile:
            # Each repeated block's forward (mpma.engine.compiling): the task around the blocks breaks
            # the graph at its randomness, which left the whole-task compile no faster than eager. A
            # task without repeated blocks is compiled whole. Compilation is lazy, on the first steps;
            # checkpoints hold the bare module's names either way.
            if not compile_repeated_blocks(task, mode=run.compile_mode):
                self.wrapped = torch.compile(self.wrapped, **compile_options(run.compile_mode))
            if env.is_main:
                logging.getLogger("mpma").warning("run.compile=true: torch.compile adds start-up time while the "
                                                  "first steps compile (a minute or more on CPU)")
        if run.retain_freed_memory:
            retain_freed_memory()  # process-wide glibc malloc settings (mpma.engine.allocator)
        self.step = 0
        precision = resolve_precision(run.precision, env.device, sum(p.numel() for p in task.parameters()))  # auto
        self.precision = precision
        if precision == "bf16" and env.device.type == "cpu" and not cpu_bf16_features()["native"]:
            warnings.warn("run.precision=bf16 on a CPU without native bf16 (no AVX512-BF16/AMX): matmuls run ~50x "
                          "slower than fp32 here; use run.precision=fp32 or auto", stacklevel=2)
        self.autocast_dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
        self.scaler = torch.amp.GradScaler("cuda") if precision == "fp16" else None

    # ------------------------------------------------------------------ state

    def state_dict(self) -> dict:
        return {"step": self.step, "optimizer": self.optimizer.state_dict(),
                "scaler": self.scaler.state_dict() if self.scaler else {}}

    def resume(self, checkpoint: Path) -> None:
        """Load weights and optimizer state from a checkpoint folder; the next step is state['step'].

        The optimizer's hyper-parameters (base learning rates, weight decay, betas, eps) stay those of
        the configuration this trainer was built with, so a run resumed with changed ``optim.*``
        settings uses them; its moments and step counts come from the checkpoint.

        Raises:
            ckpt.BrokenCheckpointError: a file of the checkpoint cannot be read.
        """
        weights, state = ckpt.read_checkpoint(checkpoint)
        self._load(checkpoint, weights, state)

    def _load(self, checkpoint: Path, weights: dict[str, torch.Tensor], state: dict) -> None:
        settings = [{k: v for k, v in group.items() if k != "params"} for group in self.optimizer.param_groups]
        if self.sharded:  # every rank read the full checkpoint and keeps its shard
            parallel.load_full_state(self.weights_module, self.task, self.optimizer, weights, state["optimizer"],
                                     str(checkpoint / ckpt.WEIGHTS))
        else:
            ckpt.load_state_strict(self.weights_module, weights, checkpoint / ckpt.WEIGHTS)
            self.optimizer.load_state_dict(state["optimizer"])
        for group, own in zip(self.optimizer.param_groups, settings):
            group.update(own)
        if self.scaler and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.step = int(state["step"])
        if self.env.is_main:
            truncate_log(self.run_dir / "log.jsonl", self.step)

    def resume_latest(self, check: Callable[[Path], None] | None = None) -> Path | None:
        """Resume from the newest checkpoint of ``run_dir`` that can be read; None when there is none.

        A checkpoint whose files cannot be read is renamed ``step_<N>.broken`` (rank 0) with a
        :class:`RunFolderWarning` naming it and the reason, and the next older one is tried.

        Args:
            check: called with the chosen checkpoint folder before it is loaded (may raise, e.g. to
                refuse a checkpoint of an older format).

        Raises:
            ckpt.BrokenCheckpointError: the run has checkpoints but none can be read (all set aside).
        """
        candidates = ckpt.list_checkpoints(self.run_dir)
        broken: list[tuple[Path, str]] = []
        chosen = None
        for folder in reversed(candidates):
            try:
                weights, state = ckpt.read_checkpoint(folder)
            except ckpt.BrokenCheckpointError as error:
                broken.append((folder, str(error)))
                continue
            chosen = folder
            break
        barrier()  # every rank has read before rank 0 renames
        if self.env.is_main:
            for folder, reason in broken:
                moved = ckpt.set_aside(folder)
                fallback = f"resuming from {chosen.name}" if chosen is not None else "no older checkpoint is left"
                warnings.warn(f"{self.run_dir}: checkpoint {folder.name} is broken and was moved aside to "
                              f"{moved.name} ({reason}); {fallback}", RunFolderWarning, stacklevel=2)
        if chosen is None:
            if broken:
                raise ckpt.BrokenCheckpointError(
                    f"{self.run_dir}: none of its {len(broken)} checkpoints can be read (moved aside as *.broken "
                    f"under {self.run_dir / 'checkpoints'}); --resume again starts the run over from step 0 with "
                    "its config.json")
            return None
        if check is not None:
            check(chosen)
        self._load(chosen, weights, state)
        return chosen

    def last_good_checkpoint(self) -> str:
        """"the last good checkpoint is <folder>" or that there is none yet (for error messages)."""
        latest = ckpt.latest_checkpoint(self.run_dir)
        return f"the last good checkpoint is {latest}" if latest else f"{self.run_dir} has no good checkpoint"

    def _diverged(self, terms: dict[str, float]) -> None:
        """Raise DivergenceError for a non-finite loss at ``self.step``.

        A checkpoint of this very step holds the weights that gave the loss: resuming from it would
        fail the same way whatever the learning rate, so it is moved aside as ``step_<N>.diverged``
        (rank 0) and the message names the checkpoint before it.
        """
        latest = ckpt.latest_checkpoint(self.run_dir)
        note = ""
        if latest is not None and latest.name == ckpt.checkpoint_dir(self.run_dir, self.step).name:
            if self.env.is_main:
                moved = ckpt.set_aside(latest, ".diverged")
                note = (f"checkpoint {latest.name} holds the weights that gave it and was moved aside to {moved.name} "
                        "(rename it back to resume from it anyway); ")
        raise DivergenceError(f"training diverged: non-finite loss at step {self.step} ({terms}); {note}"
                              f"{self.last_good_checkpoint()}")

    def save(self) -> Path | None:
        """Checkpoint the current step (rank 0 writes; every rank checks the values first).

        Raises:
            DivergenceError: the weights or the optimizer state hold NaN or inf; nothing is written.
        """
        path, state, weights = None, self.state_dict(), {}
        try:
            if self.sharded:  # gathered in full on rank 0 (every rank takes part), checked there
                weights, state["optimizer"] = parallel.full_state(self.weights_module, self.task, self.optimizer)
                parallel.check_finite(weights, state["optimizer"])
            else:
                ckpt.check_finite(self.weights_module, state)
        except ckpt.NonFiniteError as error:
            raise DivergenceError(f"training diverged: after step {self.step} the model has {error}; no checkpoint "
                                  f"was written and {self.last_good_checkpoint()}") from None
        if self.env.is_main:
            with parallel.state_dict_view(self.weights_module, weights) if self.sharded else nullcontext():
                path = ckpt.save_checkpoint(self.run_dir, self.step, self.weights_module, state,
                                            self.run_cfg.keep_checkpoints, self.write_model)
            if self.on_checkpoint:
                self.on_checkpoint(self.step)
        if self.env.distributed:
            torch.distributed.barrier()
        return path


    # ------------------------------------------------------------------ loop

    def loss_weights_at(self, step: int) -> dict[str, float]:
        """The weight of each loss term at optimizer step ``step`` (0-based: the step about to be taken)."""
        if not self.end_loss_weights:
            return self.loss_weights
        progress = decay_progress(step, self.optim_cfg.warmup_steps, self.optim_cfg.steps, self.optim_cfg.decay_steps)
        return scheduled_loss_weights(self.loss_weights, self.end_loss_weights, progress)

    def _set_lr(self) -> float:
        mult = lr_multiplier(self.step, self.optim_cfg.warmup_steps, self.optim_cfg.steps, self.optim_cfg.min_lr_ratio,
                             self.optim_cfg.decay_steps)
        for group in self.optimizer.param_groups:
            group["lr"] = group["base_lr"] * mult
        return self.optim_cfg.lr * mult

    def _to_device(self, batch: dict) -> dict:
        return {k: v.to(self.env.device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}

    def _micro_step(self, batch: dict, micro: int, sync: bool) -> tuple[dict[str, float], dict[str, float], int]:
        seed = step_seed(self.run_cfg.seed, self.step, self.env.rank, micro)
        torch.manual_seed(seed)  # dropout etc. replay exactly after --resume
        generator = torch.Generator().manual_seed(seed)
        autocast = (
            torch.autocast(self.env.device.type, dtype=self.autocast_dtype) if self.autocast_dtype else nullcontext()
        )
        no_sync = parallel.gradient_sync(self.task if self.sharded else self.wrapped, self.sharded,
                                         skip=self.env.distributed and not sync)
        with no_sync:
            with autocast:
                result = self.wrapped(batch, generator)
            missing = set(self.loss_weights) - set(result.losses)
            if missing:
                raise RuntimeError(f"the task returned no value for the loss terms {sorted(missing)}")
            weights = self.loss_weights_at(self.step)
            total = sum(weights[name] * result.losses[name].float() for name in weights)
            if not torch.isfinite(total):
                self._diverged({k: float(v.detach()) for k, v in result.losses.items()})
            scaled = total / self.optim_cfg.accumulate
            (self.scaler.scale(scaled) if self.scaler else scaled).backward()
        losses = {k: float(v.detach()) for k, v in result.losses.items()}
        losses["loss"] = float(total.detach())
        metrics = {k: float(v) for k, v in result.metrics.items()}
        first = next(v for v in batch.values() if torch.is_tensor(v))
        return losses, metrics, int(first.shape[0])

    def train_step(self, data: Iterator[dict]) -> tuple[float, dict[str, list[float]], int, float | None]:
        """One optimizer step: ``optim.accumulate`` micro-batches from ``data``, clipping, AdamW; ``step`` + 1.

        :meth:`fit` adds only logging and checkpoints: a benchmark timing this times what a run does.

        Returns:
            (learning rate, loss terms and metrics per micro-batch by name, samples over all ranks,
            gradient norm before clipping or None when ``optim.grad_clip`` is 0).
        """
        lr = self._set_lr()
        self.optimizer.zero_grad(set_to_none=True)
        values: dict[str, list[float]] = {}
        samples = 0
        for micro in range(self.optim_cfg.accumulate):
            if self.replays_cuda_graphs:
                # a new forward/backward: CUDA-graph trees may reuse the previous one's output memory
                torch.compiler.cudagraph_mark_step_begin()
            batch = self._to_device(next(data))
            losses, metrics, n = self._micro_step(batch, micro, sync=micro == self.optim_cfg.accumulate - 1)
            for key, value in {**losses, **metrics}.items():
                values.setdefault(key, []).append(value)
            samples += n * self.env.world_size
        if self.scaler:
            self.scaler.unscale_(self.optimizer)
        grad_norm = None
        if self.optim_cfg.grad_clip > 0:
            norm = torch.nn.utils.clip_grad_norm_(self.task.parameters(), self.optim_cfg.grad_clip)
            grad_norm = parallel.full_norm(norm)  # a DTensor under FSDP
        if self.scaler:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.step += 1
        return lr, values, samples, grad_norm

    def fit(self, batches: Callable[[int], Iterator[dict]], progress: bool = True) -> None:
        """Train until ``optim.steps``.

        Args:
            batches: ``batches(start_step)`` yields this rank's batches from the micro-batch that
                belongs to ``start_step`` on (so a resumed run sees the same data it would have seen).
            progress: show a progress bar on rank 0.
        """
        from tqdm import tqdm

        self.task.train()
        total_steps = self.optim_cfg.steps
        data = batches(self.step * self.optim_cfg.accumulate)
        bar = tqdm(total=total_steps, initial=self.step, disable=not (progress and self.env.is_main),
                   dynamic_ncols=True, desc="train")
        window: dict[str, list[float]] = {}
        window_samples, window_start = 0, time.perf_counter()
        log_path = self.run_dir / "log.jsonl"
        threads_now = None  # the intra-op thread count the watch last set, logged with the window it fell in
        while self.step < total_steps:
            lr, values, samples, grad_norm = self.train_step(data)
            # run.threads=0: follow the cores other processes leave free (engine/threads.py)
            threads_now = poll_threads() or threads_now
            for key, value in values.items():
                window.setdefault(key, []).extend(value)
            window_samples += samples
            last = self.step == total_steps
            if self.step % self.run_cfg.log_every == 0 or last:
                elapsed = time.perf_counter() - window_start
                record = mean_across_ranks({k: sum(v) / len(v) for k, v in window.items()}, self.env.device)
                record = {"step": self.step, "lr": lr, **record, "samples_per_s": window_samples / max(elapsed, 1e-9)}
                if grad_norm is not None:
                    record["grad_norm"] = grad_norm
                if self.end_loss_weights:  # the scheduled weights of the last step in the window
                    last_weights = self.loss_weights_at(self.step - 1)
                    record.update({f"weight_{name}": last_weights[name] for name in self.end_loss_weights})
                if threads_now is not None:  # the watch changed the threads in this window: say so where speed is read
                    record["threads"], threads_now = threads_now, None
                if self.env.is_main:
                    with log_path.open("a") as handle:
                        handle.write(json.dumps(record) + "\n")
                    if self.on_log:
                        self.on_log(record)
                    shown = {k: f"{record[k]:.3f}" for k in ["loss", *self.loss_weights] if k in record}
                    shown["samples/s"] = f"{record['samples_per_s']:.0f}"
                    bar.set_postfix(shown, refresh=False)
                window, window_samples, window_start = {}, 0, time.perf_counter()
            bar.update(1)
            if self.step % self.run_cfg.checkpoint_every == 0 or last:
                self.save()
        bar.close()
