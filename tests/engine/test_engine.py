"""Engine: learning-rate schedule, parameter groups, trainer bookkeeping, checkpoints and exact resume."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from mpma.engine import checkpoint as ckpt
from mpma.engine.compiling import repeated_blocks
from mpma.engine.distributed import DistEnv
from mpma.engine.trainer import (
    Trainer,
    decay_progress,
    lr_multiplier,
    parameter_groups,
    scheduled_loss_weights,
    step_seed,
)

# ------------------------------------------------------------------ schedule


def test_warmup_is_linear_from_zero_to_one() -> None:
    warmup = 10
    values = [lr_multiplier(step, warmup, 100) for step in range(warmup)]
    assert values == pytest.approx([(s + 1) / warmup for s in range(warmup)])
    assert all(b - a == pytest.approx(1 / warmup) for a, b in zip(values, values[1:]))
    assert lr_multiplier(warmup, warmup, 100) == pytest.approx(1.0)  # peak right after warm-up


@pytest.mark.parametrize("min_ratio", [0.0, 0.1])
def test_cosine_decay_shape_and_end_value(min_ratio: float) -> None:
    warmup, total = 10, 110
    assert lr_multiplier(total, warmup, total, min_ratio) == pytest.approx(min_ratio)
    assert lr_multiplier(total + 50, warmup, total, min_ratio) == pytest.approx(min_ratio)  # clamped after the end
    mid = warmup + (total - warmup) // 2
    assert lr_multiplier(mid, warmup, total, min_ratio) == pytest.approx(min_ratio + (1 - min_ratio) * 0.5)
    quarter = warmup + (total - warmup) // 4
    expected = min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi / 4))
    assert lr_multiplier(quarter, warmup, total, min_ratio) == pytest.approx(expected)
    decay = [lr_multiplier(s, warmup, total, min_ratio) for s in range(warmup, total + 1)]
    assert all(b <= a for a, b in zip(decay, decay[1:]))


def test_no_warmup_starts_at_the_peak() -> None:
    assert lr_multiplier(0, 0, 10) == pytest.approx(1.0)
    assert lr_multiplier(10, 0, 10) == pytest.approx(0.0)


@pytest.mark.parametrize("min_ratio", [0.0, 0.2])
def test_stable_then_decay_holds_the_peak_until_the_last_decay_steps(min_ratio: float) -> None:
    warmup, total, decay_steps = 10, 110, 20
    schedule = [lr_multiplier(s, warmup, total, min_ratio, decay_steps) for s in range(total + 1)]
    assert schedule[:warmup] == [lr_multiplier(s, warmup, total, min_ratio) for s in range(warmup)]  # same warm-up
    assert schedule[warmup:total - decay_steps + 1] == pytest.approx([1.0] * (total - decay_steps - warmup + 1))
    # the decay is the plain schedule's cosine, squeezed into the last decay_steps
    halfway = total - decay_steps // 2
    assert schedule[halfway] == pytest.approx(min_ratio + (1 - min_ratio) * 0.5)
    assert schedule[total] == pytest.approx(min_ratio)
    decay = schedule[total - decay_steps:]
    assert all(b < a for a, b in zip(decay, decay[1:]))
    # a decay longer than the steps after warm-up is the plain cosine schedule
    assert [lr_multiplier(s, warmup, total, min_ratio, 500) for s in range(total + 1)] == pytest.approx(
        [lr_multiplier(s, warmup, total, min_ratio) for s in range(total + 1)])


@pytest.mark.parametrize("decay_steps", [0, 20])
def test_decay_progress_runs_from_zero_to_one_over_the_rates_decay(decay_steps: int) -> None:
    warmup, total = 10, 110
    progress = [decay_progress(s, warmup, total, decay_steps) for s in range(total + 1)]
    start = warmup if decay_steps == 0 else total - decay_steps
    assert progress[:start + 1] == [0.0] * (start + 1)
    assert progress[total] == 1.0 and decay_progress(total + 5, warmup, total, decay_steps) == 1.0
    assert progress[start:] == pytest.approx([(s - start) / (total - start) for s in range(start, total + 1)])
    # the same decay the rate follows: the rate is at its peak exactly where progress is 0
    assert all((p == 0.0) == (lr_multiplier(s, warmup, total, 0.0, decay_steps) == pytest.approx(1.0))
               for s, p in enumerate(progress) if s >= warmup)


def test_scheduled_loss_weights_move_linearly_and_leave_the_others() -> None:
    weights = {"mlm": 1.0, "local_align": 0.5, "mim": 2.0}
    ends = {"local_align": 1.5, "mim": 0.0}
    assert scheduled_loss_weights(weights, ends, 0.0) == weights
    assert scheduled_loss_weights(weights, ends, 0.25) == pytest.approx({"mlm": 1.0, "local_align": 0.75, "mim": 1.5})
    assert scheduled_loss_weights(weights, ends, 1.0) == {"mlm": 1.0, "local_align": 1.5, "mim": 0.0}
    with pytest.raises(ValueError, match=r"\['itm'\]"):
        scheduled_loss_weights(weights, {"itm": 1.0}, 0.5)


def test_step_seeds_are_distinct() -> None:
    seeds = {step_seed(0, s, r, m) for s in range(50) for r in range(4) for m in range(3)}
    assert len(seeds) == 50 * 4 * 3
    assert step_seed(1, 0, 0) != step_seed(0, 0, 0)


# ------------------------------------------------------------------ parameter groups and the trainer


@pytest.fixture()
def task(micro_config, build_task):
    return build_task(micro_config())


def _groups(task, optim):
    model = task.model
    return parameter_groups(task, optim, {f"model.{n}" for n in model.head_parameter_names()},
                            {f"model.{n}" for n in model.no_weight_decay()})


def test_parameter_groups(task, micro_config) -> None:
    optim = micro_config("optim.lr=0.001", "optim.head_lr_mult=5", "optim.weight_decay=0.05").optim
    groups = _groups(task, optim)
    by_id = {id(p): g for g in groups for p in g["params"]}
    named = dict(task.named_parameters())
    assert len(by_id) == len(named) == sum(len(g["params"]) for g in groups)  # each parameter exactly once
    heads = {f"model.{n}" for n in task.model.head_parameter_names()}
    for name, param in named.items():
        group = by_id[id(param)]
        assert group["lr"] == group["base_lr"] == pytest.approx(0.005 if name in heads else 0.001), name
        no_decay = param.ndim < 2 or name.endswith(("pos_embed", "cls_token", "mask_token", "type_embed", "memory"))
        assert group["weight_decay"] == (0.0 if no_decay else 0.05), name
    assert by_id[id(named["model.vision.blocks.0.attn.q.weight"])]["weight_decay"] == 0.05
    assert by_id[id(named["model.vision.blocks.0.norm1.weight"])]["weight_decay"] == 0.0


@pytest.mark.parametrize("text_lr_mult", [1.0, 0.1, 0.0])
def test_text_encoder_learns_at_its_own_rate(task, micro_config, text_lr_mult) -> None:
    """optim.text_lr_mult scales the text encoder's rate (a head stays a head); at 1 the groups are exactly
    those without it, so earlier checkpoints' optimizer states still line up."""
    from mpma.pipelines.pretraining import pretrain_parameter_groups

    config = micro_config("optim.lr=0.001", "optim.head_lr_mult=5", f"optim.text_lr_mult={text_lr_mult}")
    groups = pretrain_parameter_groups(task, config)
    by_id = {id(p): g for g in groups for p in g["params"]}
    heads = {f"model.{n}" for n in task.model.head_parameter_names()}
    named = dict(task.named_parameters())
    assert len(by_id) == len(named)
    text = [n for n in named if n.startswith("model.text.")]
    assert text and not set(text) & heads
    for name, param in named.items():
        expected = 0.005 if name in heads else 0.001 * text_lr_mult if name.startswith("model.text.") else 0.001
        assert by_id[id(param)]["lr"] == by_id[id(param)]["base_lr"] == pytest.approx(expected), name
    if text_lr_mult == 1.0:
        assert [[id(p) for p in g["params"]] for g in groups] == [[id(p) for p in g["params"]]
                                                                  for g in _groups(task, config.optim)]
    else:
        assert len(groups) == len(_groups(task, config.optim)) + 2  # text encoder: decay and no-decay groups


def _trainer(task, config, run_dir: Path) -> Trainer:
    return Trainer(task, task.loss_weights, _groups(task, config.optim), config.optim, config.run, run_dir, DistEnv(),
                   end_loss_weights=config.objectives.end_weights)


def _endless(batch):
    def batches(start: int):
        while True:
            yield batch

    return batches


def test_trainer_sets_the_scheduled_lr_on_every_group(task, micro_config, tmp_path) -> None:
    config = micro_config("optim.lr=0.01", "optim.head_lr_mult=3", "optim.warmup_steps=4", "optim.steps=20")
    trainer = _trainer(task, config, tmp_path)
    for step in (0, 2, 4, 12, 19):
        trainer.step = step
        reported = trainer._set_lr()
        mult = lr_multiplier(step, 4, 20)
        assert reported == pytest.approx(0.01 * mult)
        assert sorted({round(g["lr"], 12) for g in trainer.optimizer.param_groups}) == pytest.approx(
            sorted({0.01 * mult, 0.03 * mult}))


def test_trainer_logs_every_term_and_the_weighted_total(micro_config, build_task, make_batch, tmp_path) -> None:
    config = micro_config("optim.steps=3", "optim.warmup_steps=1", "run.log_every=1", "run.checkpoint_every=2",
                          "objectives.mim=2.0", "objectives.local_align=0.25")
    task = build_task(config)
    trainer = _trainer(task, config, tmp_path)
    trainer.fit(_endless(make_batch(n=8)), progress=False)
    assert trainer.step == 3
    rows = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]
    weights = task.loss_weights
    assert weights["mim"] == 2.0 and weights["local_align"] == 0.25
    for row in rows:
        assert set(weights) | {"loss", "lr", "samples_per_s", "grad_norm"} <= set(row)
        assert row["loss"] == pytest.approx(sum(w * row[k] for k, w in weights.items()), rel=1e-5)
        assert all(math.isfinite(v) for v in row.values())
    assert rows[0]["lr"] == pytest.approx(config.optim.lr)  # warm-up of 1 step reaches the peak at once
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["step_00000002", "step_00000003"]


def test_trainer_weighs_each_step_with_the_scheduled_loss_weights(micro_config, build_task, make_batch,
                                                                  tmp_path) -> None:
    config = micro_config("optim.steps=6", "optim.warmup_steps=1", "optim.decay_steps=4", "run.log_every=1",
                          "run.checkpoint_every=100", "objectives.local_align=0.5",
                          "objectives.end_weights={local_align: 0.0, mim: 3.0}")
    task = build_task(config)
    _trainer(task, config, tmp_path).fit(_endless(make_batch(n=8)), progress=False)
    rows = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    # row k logs step k-1's weights: constant until the decay starts at step 2, then linear to the end weights
    progress = [0.0, 0.0, 0.0, 0.25, 0.5, 0.75]
    assert [r["weight_local_align"] for r in rows] == pytest.approx([0.5 * (1 - p) for p in progress])
    assert [r["weight_mim"] for r in rows] == pytest.approx([1.0 + 2.0 * p for p in progress])
    assert "weight_mlm" not in rows[0]  # only the scheduled weights are logged
    for row, p in zip(rows, progress):
        weights = {**task.loss_weights, "local_align": 0.5 * (1 - p), "mim": 1.0 + 2.0 * p}
        assert row["loss"] == pytest.approx(sum(w * row[k] for k, w in weights.items()), rel=1e-5)


def test_end_weights_for_a_loss_the_task_lacks_are_rejected(micro_config, build_task, tmp_path) -> None:
    config = micro_config("objectives.itm=0")
    task = build_task(config)
    with pytest.raises(ValueError, match="itm"):
        Trainer(task, task.loss_weights, _groups(task, config.optim), config.optim, config.run, tmp_path, DistEnv(),
                end_loss_weights={"itm": 1.0})


def test_gradient_accumulation_consumes_micro_batches(micro_config, build_task, make_batch, tmp_path) -> None:
    config = micro_config("optim.steps=2", "optim.accumulate=3", "run.log_every=1", "run.checkpoint_every=100")
    task = build_task(config)
    trainer = _trainer(task, config, tmp_path)
    batch = make_batch(n=4)
    drawn, starts = [], []

    def batches(start: int):
        starts.append(start)
        while True:
            drawn.append(1)
            yield batch

    trainer.fit(batches, progress=False)
    assert starts == [0] and len(drawn) == 6


def test_gradient_clipping_bounds_the_update(micro_config, build_task, make_batch, tmp_path) -> None:
    config = micro_config("optim.steps=1", "optim.warmup_steps=0", "optim.grad_clip=1e-6", "optim.lr=1.0",
                          "optim.weight_decay=0", "run.checkpoint_every=100")
    task = build_task(config)
    before = {n: p.detach().clone() for n, p in task.named_parameters()}
    trainer = _trainer(task, config, tmp_path)
    trainer.fit(_endless(make_batch(n=4)), progress=False)
    row = json.loads((tmp_path / "log.jsonl").read_text().splitlines()[0])
    assert row["grad_norm"] > 1e-3  # the logged norm is the one before clipping
    # Adam normalises the step, so a clipped gradient still moves parameters by about lr; check it ran
    assert any(not torch.equal(before[n], p) for n, p in task.named_parameters())


def test_non_finite_loss_stops_with_a_clear_error(micro_config, build_task, make_batch, tmp_path) -> None:
    config = micro_config("optim.steps=1")
    task = build_task(config)
    batch = make_batch(n=4)
    batch["images"] = batch["images"] * float("nan")
    with pytest.raises(FloatingPointError, match="non-finite loss at step 0"):
        _trainer(task, config, tmp_path).fit(_endless(batch), progress=False)


def test_unknown_precision_is_rejected(micro_config, build_task, tmp_path) -> None:
    task = build_task(micro_config())
    with pytest.raises(ValueError, match="run.precision"):
        _trainer(task, micro_config("run.precision=fp8"), tmp_path)
    with pytest.raises(ValueError, match="fp16 needs a GPU"):
        _trainer(task, micro_config("run.precision=fp16"), tmp_path)


def test_bf16_autocast_step_runs(micro_config, build_task, make_batch, tmp_path) -> None:
    config = micro_config("optim.steps=1", "run.precision=bf16", "run.checkpoint_every=100")
    task = build_task(config)
    _trainer(task, config, tmp_path).fit(_endless(make_batch(n=4)), progress=False)
    row = json.loads((tmp_path / "log.jsonl").read_text().splitlines()[0])
    assert math.isfinite(row["loss"])


def test_train_step_is_one_optimizer_step_over_the_accumulated_micro_batches(micro_config, build_task, make_batch,
                                                                             tmp_path) -> None:
    config = micro_config("optim.accumulate=2", "optim.warmup_steps=0")
    task = build_task(config)
    trainer = _trainer(task, config, tmp_path)
    before = [p.detach().clone() for p in task.parameters()]
    lr, values, samples, grad_norm = trainer.train_step(_endless(make_batch(n=4))(0))
    assert trainer.step == 1 and samples == 8 and lr == pytest.approx(config.optim.lr)
    assert len(values["loss"]) == 2 and grad_norm is not None and math.isfinite(grad_norm)
    assert any(not torch.equal(a, b) for a, b in zip(before, task.parameters()))
    assert not (tmp_path / "log.jsonl").exists()  # logging and checkpoints are fit's, not the step's


# ------------------------------------------------------------------ checkpoints


def _outputs(task, batch):
    task.eval()
    with torch.no_grad():
        out = task.model(batch["images"], batch["input_ids"], batch["attention_mask"],
                         mlm_positions=batch["special_tokens_mask"] == 0, generator=torch.Generator().manual_seed(0))
    return [out.vision.tokens, out.text, out.fusion.pooled, out.mlm_logits, out.mim_pred, out.image_embed,
            out.text_local]


def test_run_compile_compiles_each_repeated_block(task, micro_config, tmp_path, caplog) -> None:
    # only the wiring is checked here (tests/engine/test_compiling.py runs compiled blocks): a compiled
    # step costs ~1 min of compilation on CPU
    assert _trainer(task, micro_config(), tmp_path).wrapped is task  # run.compile=false (default)
    assert not [b for _, b in repeated_blocks(task) if "forward" in vars(b)]
    with caplog.at_level(logging.WARNING, logger="mpma"):
        trainer = _trainer(task, micro_config("run.compile=true"), tmp_path)
    assert trainer.wrapped is task  # the blocks are compiled, not the task around them
    blocks = repeated_blocks(task)
    assert len(blocks) == 4 and all(hasattr(vars(b)["forward"], "_torchdynamo_orig_callable") for _, b in blocks)
    assert [r.message for r in caplog.records if "torch.compile" in r.message]  # the start-up cost is announced
    path = trainer.save()  # checkpoints hold the bare module's names
    from safetensors.torch import load_file

    assert load_file(str(path / ckpt.WEIGHTS)).keys() == task.state_dict().keys()


def test_run_compile_compiles_a_task_without_repeated_blocks_whole(micro_config, tmp_path) -> None:
    class Linear(nn.Module):
        loss_weights = {"mse": 1.0}

        def __init__(self) -> None:
            super().__init__()
            self.layer = nn.Linear(2, 1)

    task = Linear()
    config = micro_config("run.compile=true")
    groups = [{"params": list(task.parameters()), "base_lr": 1e-3}]
    trainer = Trainer(task, task.loss_weights, groups, config.optim, config.run, tmp_path, DistEnv())
    assert type(trainer.wrapped).__name__ == "OptimizedModule" and trainer.wrapped._orig_mod is task


def test_checkpoint_save_then_load_gives_identical_outputs(micro_config, build_task, make_batch, tmp_path) -> None:
    config = micro_config("optim.steps=1", "optim.warmup_steps=0", "run.checkpoint_every=1")
    batch = make_batch(n=4)
    source = build_task(config, seed=0)
    trainer = _trainer(source, config, tmp_path)
    trainer.fit(_endless(batch), progress=False)  # trained weights, not the initialisation
    path = ckpt.latest_checkpoint(tmp_path)
    assert path == ckpt.checkpoint_dir(tmp_path, 1)
    target = build_task(config, seed=1)
    assert not torch.equal(_outputs(target, batch)[2], _outputs(source, batch)[2])
    ckpt.load_weights(target, path / ckpt.WEIGHTS)
    for a, b in zip(_outputs(source, batch), _outputs(target, batch)):
        assert torch.equal(a, b)
    # every tensor of the state dict round-trips bit for bit
    state_a, state_b = source.state_dict(), target.state_dict()
    assert state_a.keys() == state_b.keys()
    assert all(torch.equal(state_a[k], state_b[k]) for k in state_a)


def test_loading_mismatched_weights_names_the_keys(micro_config, build_task, tmp_path) -> None:
    ckpt.save_weights(build_task(micro_config()), tmp_path / "full.safetensors")
    smaller = build_task(micro_config("objectives.mim=0"))
    from mpma.models.factory import WeightsMismatchError

    with pytest.raises(WeightsMismatchError, match="unexpected keys.*mim_decoder"):  # load_weights is always strict
        ckpt.load_weights(smaller, tmp_path / "full.safetensors")
    with pytest.raises(FileNotFoundError, match="missing.safetensors"):
        ckpt.load_weights(smaller, tmp_path / "missing.safetensors")


def test_trainer_state_loads_with_weights_only(micro_config, build_task, make_batch, tmp_path) -> None:
    config = micro_config("optim.steps=2", "run.checkpoint_every=1")
    task = build_task(config)
    trainer = _trainer(task, config, tmp_path)
    trainer.fit(_endless(make_batch(n=4)), progress=False)
    state_path = ckpt.latest_checkpoint(tmp_path) / ckpt.STATE
    state = torch.load(state_path, map_location="cpu", weights_only=True)  # no pickled code needed
    assert state["step"] == 2
    assert set(state) == {"step", "optimizer", "scaler"}  # no RNG state: every micro-step reseeds from step_seed
    assert state["optimizer"]["state"]  # Adam moments are there
    assert ckpt.load_state(state_path)["step"] == 2
    # and resuming restores the step and the optimizer moments
    other = _trainer(build_task(config, seed=5), config, tmp_path)
    other.resume(ckpt.latest_checkpoint(tmp_path))
    assert other.step == 2
    mine, theirs = trainer.optimizer.state_dict()["state"], other.optimizer.state_dict()["state"]
    assert mine.keys() == theirs.keys()
    assert all(torch.equal(mine[k]["exp_avg"], theirs[k]["exp_avg"]) for k in mine)


def test_checkpoints_are_atomic_and_pruned(task, tmp_path) -> None:
    for step in (1, 2, 3):
        ckpt.save_checkpoint(tmp_path, step, task, {"step": step}, keep=2)
    root = tmp_path / "checkpoints"
    assert sorted(p.name for p in root.iterdir()) == ["step_00000002", "step_00000003"]
    assert not list(tmp_path.rglob("*.tmp"))  # no temp file or folder left behind
    for folder in root.iterdir():
        assert sorted(p.name for p in folder.iterdir()) == [ckpt.WEIGHTS, ckpt.STATE]
    # a killed save leaves a .tmp folder; an interrupted copy leaves a folder without state.pt
    leftover = root / "step_00000009.tmp"
    leftover.mkdir()
    (leftover / ckpt.WEIGHTS).write_bytes(b"partial")
    (leftover / ckpt.STATE).write_bytes(b"partial")
    incomplete = root / "step_00000010"
    incomplete.mkdir()
    (incomplete / ckpt.WEIGHTS).write_bytes(b"partial")
    assert ckpt.latest_checkpoint(tmp_path) == root / "step_00000003"
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["step_00000002", "step_00000003"]
    # steps sort numerically, not as text
    ckpt.save_checkpoint(tmp_path, 100000000, task, {"step": 100000000}, keep=0)
    assert ckpt.latest_checkpoint(tmp_path).name == "step_100000000"
    # saving over a leftover temp folder works
    ckpt.save_checkpoint(tmp_path, 9, task, {"step": 9}, keep=0)
    assert not leftover.exists() and (root / "step_00000009" / ckpt.STATE).exists()
    assert ckpt.latest_checkpoint(tmp_path / "nothing") is None


def test_save_weights_is_atomic(task, tmp_path, monkeypatch) -> None:
    target = tmp_path / "model.safetensors"
    ckpt.save_weights(task, target)
    good = target.read_bytes()
    import safetensors.torch

    def broken(tensors, path, *args, **kwargs):
        Path(path).write_bytes(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", broken)
    with pytest.raises(OSError):
        ckpt.save_weights(task, target)
    assert target.read_bytes() == good  # the previous file is intact


# ------------------------------------------------------------------ exact resume


class Interrupted(Exception):
    pass


@pytest.mark.slow
def test_resumed_run_matches_an_uninterrupted_run(micro_config, tokenizer_dir, tmp_path, monkeypatch) -> None:
    from mpma.pipelines.pretraining import run_pretraining

    k = 2
    overrides = ("optim.steps=4", "optim.warmup_steps=1", "run.log_every=1", f"run.checkpoint_every={k}",
                 "run.eval_size=16", f"text.tokenizer={tokenizer_dir}", "optim.lr=0.003",
                 "optim.decay_steps=3", "objectives.end_weights={local_align: 1.5}")  # weights scheduled from step 1
    straight, broken = tmp_path / "straight", tmp_path / "broken"
    run_pretraining(micro_config(*overrides), straight, progress=False)

    original_save = Trainer.save

    def save_then_die(self):
        path = original_save(self)
        if self.step == k:
            raise Interrupted
        return path

    monkeypatch.setattr(Trainer, "save", save_then_die)
    with pytest.raises(Interrupted):
        run_pretraining(micro_config(*overrides), broken, progress=False)
    monkeypatch.setattr(Trainer, "save", original_save)
    assert [p.name for p in ckpt.list_checkpoints(broken)] == [f"step_{k:08d}"]
    assert not (broken / "summary.json").exists()
    # the killed run may have logged past its last checkpoint: fake one extra line
    with (broken / "log.jsonl").open("a") as handle:
        handle.write(json.dumps({"step": k + 1, "loss": 123.0}) + "\n")

    run_pretraining(micro_config(), broken, resume=True, progress=False)  # the saved config wins

    def rows(run: Path) -> dict[int, dict]:
        lines = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
        lines = [r for r in lines if "grounding" not in r]  # the grounding diagnostics' own lines (tests/eval)
        steps = [r["step"] for r in lines]
        assert steps == sorted(set(steps)), f"duplicate or unordered log lines: {steps}"
        return {r["step"]: r for r in lines}

    a, b = rows(straight), rows(broken)
    assert sorted(a) == sorted(b) == [1, 2, 3, 4]
    terms = ["loss", "mlm", "mim", "global_align", "local_align", "itm"]
    for step in (k + 1, k + 2):
        for term in terms:
            assert b[step][term] == pytest.approx(a[step][term], abs=1e-5), (step, term)
        assert b[step]["lr"] == pytest.approx(a[step]["lr"])
    # the pipeline hands objectives.end_weights to the trainer, and a resumed run follows the same schedule
    assert [b[step]["weight_local_align"] for step in (1, 2, 3, 4)] == pytest.approx([0.5, 0.5, 5 / 6, 7 / 6])
    assert [a[step]["weight_local_align"] for step in (1, 2, 3, 4)] == pytest.approx([0.5, 0.5, 5 / 6, 7 / 6])
    # the steps before the interruption were not replayed or rewritten
    for term in terms:
        assert b[1][term] == pytest.approx(a[1][term], abs=1e-5)
    summary_a = json.loads((straight / "summary.json").read_text())
    summary_b = json.loads((broken / "summary.json").read_text())
    for term in terms:
        assert summary_b["losses"][term]["last"] == pytest.approx(summary_a["losses"][term]["last"], abs=1e-5)
    # final weights agree too
    wa = ckpt.latest_checkpoint(straight) / ckpt.WEIGHTS
    wb = ckpt.latest_checkpoint(broken) / ckpt.WEIGHTS
    from safetensors.torch import load_file

    sa, sb = load_file(str(wa)), load_file(str(wb))
    assert all(torch.allclose(sa[name], sb[name], atol=1e-5) for name in sa)


@pytest.mark.slow
def test_fresh_run_does_not_inherit_a_stale_log(micro_config, tokenizer_dir, tmp_path) -> None:
    """A run killed before its first checkpoint leaves a log; starting again must not append to it."""
    from mpma.pipelines.pretraining import run_pretraining

    run = tmp_path / "run"
    run.mkdir()
    (run / "log.jsonl").write_text(json.dumps({"step": 1, "loss": 99.0}) + "\n")
    config = micro_config("optim.steps=2", "run.log_every=1", "run.eval_size=16", f"text.tokenizer={tokenizer_dir}")
    run_pretraining(config, run, progress=False)
    steps = [json.loads(line)["step"] for line in (run / "log.jsonl").read_text().splitlines()
             if "grounding" not in line]
    assert steps == [1, 2]
