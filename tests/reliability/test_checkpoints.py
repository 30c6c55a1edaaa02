"""Checkpoints are never non-finite, ``--resume`` falls back past a broken checkpoint and a partial log
line, and a diverged run continues with a lower learning rate (issue 13, items 3 and 4)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from mpma.cli import main
from mpma.engine import checkpoint as ckpt
from mpma.engine.distributed import DistEnv
from mpma.engine.run_folder import RunFolderWarning
from mpma.engine.trainer import DivergenceError, Trainer, parameter_groups
from mpma.viz.curves import read_log


def _trainer(task, config, run_dir: Path) -> Trainer:
    model = task.model
    groups = parameter_groups(task, config.optim, {f"model.{n}" for n in model.head_parameter_names()},
                              {f"model.{n}" for n in model.no_weight_decay()})
    return Trainer(task, task.loss_weights, groups, config.optim, config.run, run_dir, DistEnv(), weights_module=model)


def _endless(batch):
    def batches(start: int):
        while True:
            yield batch

    return batches


def _steps(run: Path) -> list[int]:
    rows = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    return [r["step"] for r in rows if "grounding" not in r and "config_change" not in r]


# ------------------------------------------------------------------------------- divergence (item 3)


def test_non_finite_weights_are_never_checkpointed(micro_config, build_task, make_batch, tmp_path) -> None:
    config = micro_config("optim.steps=1", "run.checkpoint_every=1")
    task = build_task(config)
    trainer = _trainer(task, config, tmp_path)
    trainer.fit(_endless(make_batch(n=4)), progress=False)
    good = tmp_path / "checkpoints" / "step_00000001"
    assert ckpt.list_checkpoints(tmp_path) == [good]
    with torch.no_grad():
        task.model.vision.patch_embed.weight.fill_(float("inf"))
    trainer.step = 2
    with pytest.raises(DivergenceError, match=rf"after step 2 the model has non-finite values in vision.patch_embed"
                                              rf".*no checkpoint was written and the last good checkpoint is {good}"):
        trainer.save()
    assert ckpt.list_checkpoints(tmp_path) == [good] and not list((tmp_path / "checkpoints").glob("*.tmp"))


def test_a_non_finite_loss_names_the_step_and_the_last_good_checkpoint(micro_config, build_task, make_batch,
                                                                          tmp_path) -> None:
    config = micro_config("optim.steps=3", "run.checkpoint_every=1", "run.keep_checkpoints=0")
    task = build_task(config)
    trainer = _trainer(task, config, tmp_path)
    batch = make_batch(n=4)
    poisoned = {**batch, "images": batch["images"] * float("nan")}

    def batches(start: int):
        yield from (batch, batch)
        while True:
            yield poisoned

    root = tmp_path / "checkpoints"
    with pytest.raises(DivergenceError, match=rf"non-finite loss at step 2 .*; checkpoint step_00000002 holds the "
                                              rf"weights that gave it and was moved aside to step_00000002.diverged "
                                              rf".*the last good checkpoint is {root / 'step_00000001'}$"):
        trainer.fit(batches, progress=False)
    assert sorted(p.name for p in root.iterdir()) == ["step_00000001", "step_00000002.diverged"]
    assert ckpt.latest_checkpoint(tmp_path).name == "step_00000001"  # what --resume starts from
    assert issubclass(DivergenceError, ValueError)  # the CLI prints it as "error: ..." (exit 2)


@pytest.mark.slow
def test_a_diverged_run_stops_cleanly_and_resumes_with_a_lower_lr(pretrain_args, tmp_path, capsys) -> None:
    run = tmp_path / "run"
    diverging = [*pretrain_args, "optim.steps=3", "optim.lr=1e39", "optim.grad_clip=0", "run.checkpoint_every=1"]
    assert main(["pretrain", "--out", str(run), "--no-progress", *diverging]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: training diverged: after step 1 the model has non-finite values")
    assert "no checkpoint was written" in err and f"{run} has no good checkpoint" in err and "Traceback" not in err
    assert f"mpma pretrain --out {run} --resume optim.lr=" in err
    assert ckpt.list_checkpoints(run) == [] and not (run / ".lock").exists()
    # continue with a lower learning rate: optim.* may change on --resume, written to config.json and logged
    assert main(["pretrain", "--out", str(run), "--resume", "--no-progress", "optim.lr=1e-3"]) == 0
    assert json.loads((run / "config.json").read_text())["optim"]["lr"] == 1e-3
    change = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines() if "config_change" in line]
    assert change == [{"step": 0, "config_change": {"optim.lr": {"from": 1e39, "to": 1e-3}}}]
    assert _steps(run) == [1, 2, 3]
    for checkpoint in ckpt.list_checkpoints(run):
        weights, _ = ckpt.read_checkpoint(checkpoint)
        assert all(torch.isfinite(t).all() for t in weights.values() if t.is_floating_point())


# ------------------------------------------------------------------------------- resume overrides (item 3)


@pytest.mark.parametrize("override", ["vision.width=64", "data.batch_size=4", "objectives.mlm=0", "text.depth=2"])
def test_resume_refuses_overrides_of_the_model_or_data(micro_run, tmp_path, override, capsys) -> None:
    run = Path(shutil.copytree(micro_run, tmp_path / "run"))
    config_before = (run / "config.json").read_bytes()
    assert main(["pretrain", "--out", str(run), "--resume", "--no-progress", override]) == 2
    err = capsys.readouterr().err
    assert f"--resume: {override.split('=')[0]} cannot change in a resumed run" in err and "optim.*, run.*" in err
    assert (run / "config.json").read_bytes() == config_before


def test_resume_accepts_the_runs_own_values_of_the_model_and_data(micro_run, tmp_path) -> None:
    """The first command line again with --resume added: its model/data overrides equal the saved ones."""
    run = Path(shutil.copytree(micro_run, tmp_path / "run"))
    saved = json.loads((run / "config.json").read_text())
    same = [f"vision.width={saved['vision']['width']}", f"data.batch_size={saved['data']['batch_size']}",
            f"data.num_workers={saved['data']['num_workers']}"]
    assert main(["pretrain", "--out", str(run), "--resume", "--no-progress", *same, "optim.steps=4"]) == 0
    after = json.loads((run / "config.json").read_text())
    assert after["optim"]["steps"] == 4 and {k: v for k, v in after.items() if k != "optim"} == \
        {k: v for k, v in saved.items() if k != "optim"}
    assert _steps(run)[-1] == 4


def test_resume_uses_changed_optimiser_settings(micro_config, build_task, make_batch, tmp_path) -> None:
    """The optimizer's saved hyper-parameters do not override the (changed) configuration's."""
    config = micro_config("optim.steps=1", "run.checkpoint_every=1", "optim.lr=0.001", "optim.weight_decay=0.05")
    _trainer(build_task(config), config, tmp_path).fit(_endless(make_batch(n=4)), progress=False)
    lower = micro_config("optim.steps=1", "optim.lr=0.0001", "optim.weight_decay=0.01", "optim.head_lr_mult=3")
    resumed = _trainer(build_task(lower), lower, tmp_path)
    resumed.resume_latest()
    assert resumed.step == 1 and resumed.optimizer.state_dict()["state"]  # moments restored
    rates = sorted({group["base_lr"] for group in resumed.optimizer.param_groups})
    assert rates == pytest.approx([0.0001, 0.0003])
    assert {group["weight_decay"] for group in resumed.optimizer.param_groups} == {0.0, 0.01}


@pytest.mark.slow
def test_resume_extends_a_finished_run_with_more_steps(micro_run, tmp_path) -> None:
    run = Path(shutil.copytree(micro_run, tmp_path / "run"))
    assert main(["pretrain", "--out", str(run), "--resume", "--no-progress", "optim.steps=4"]) == 0
    assert _steps(run) == [1, 2, 3, 4] and ckpt.latest_checkpoint(run).name == "step_00000004"
    assert json.loads((run / "config.json").read_text())["optim"]["steps"] == 4


# ------------------------------------------------------------------------------- broken checkpoints (item 4)


@pytest.fixture(scope="module")
def two_checkpoint_run(tmp_path_factory, pretrain_args) -> Path:
    """A 3-step micro run with checkpoints step 2 and step 3."""
    out = tmp_path_factory.mktemp("two-checkpoints") / "run"
    assert main(["pretrain", "--out", str(out), "--no-progress", *pretrain_args, "optim.steps=3",
                 "run.checkpoint_every=1", "run.keep_checkpoints=2"]) == 0
    assert [p.name for p in ckpt.list_checkpoints(out)] == ["step_00000002", "step_00000003"]
    return out


def _truncate(path: Path, keep: int) -> None:
    os.truncate(path, min(keep, path.stat().st_size - 1))


@pytest.mark.slow
@pytest.mark.parametrize("name, keep", [(ckpt.WEIGHTS, 5), (ckpt.WEIGHTS, 2000), (ckpt.STATE, 3000),
                                        ("config.json", 10)])
def test_resume_falls_back_past_a_broken_checkpoint(two_checkpoint_run, tmp_path, name, keep) -> None:
    run = Path(shutil.copytree(two_checkpoint_run, tmp_path / "run"))
    (run / "summary.json").unlink()
    newest = run / "checkpoints" / "step_00000003"
    _truncate(newest / name, keep)
    with pytest.warns(RunFolderWarning, match=rf"{run}: checkpoint step_00000003 is broken and was moved aside to "
                                              rf"step_00000003.broken \({newest / name}: cannot be read .*\); "
                                              "resuming from step_00000002"):
        assert main(["pretrain", "--out", str(run), "--resume", "--no-progress"]) == 0
    assert (run / "checkpoints" / "step_00000003.broken" / name).exists()  # kept for inspection
    assert [p.name for p in ckpt.list_checkpoints(run)] == ["step_00000002", "step_00000003"]  # step 3 trained again
    assert _steps(run) == [1, 2, 3] and (run / "summary.json").exists()


@pytest.mark.slow
def test_resume_with_every_checkpoint_broken_is_a_clear_error(two_checkpoint_run, tmp_path, capsys) -> None:
    run = Path(shutil.copytree(two_checkpoint_run, tmp_path / "run"))
    for checkpoint in ckpt.list_checkpoints(run):
        _truncate(checkpoint / ckpt.STATE, 100)
    log_before = (run / "log.jsonl").read_bytes()
    with pytest.warns(RunFolderWarning, match="no older checkpoint is left"):
        assert main(["pretrain", "--out", str(run), "--resume", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert f"error: {run}: none of its 2 checkpoints can be read" in err and "Traceback" not in err
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step_00000002.broken", "step_00000003.broken"]
    assert (run / "log.jsonl").read_bytes() == log_before  # nothing lost


def test_broken_and_temporary_folders_are_not_checkpoints(task_weights_folder) -> None:
    run = task_weights_folder
    root = run / "checkpoints"
    for name in ("step_00000007.broken", "step_00000008.tmp", "step_00000009.broken.2"):
        shutil.copytree(root / "step_00000001", root / name)
    assert [p.name for p in ckpt.list_checkpoints(run)] == ["step_00000001"]
    moved = ckpt.set_aside(root / "step_00000001")
    assert moved.name == "step_00000001.broken" and ckpt.list_checkpoints(run) == []


@pytest.fixture()
def task_weights_folder(micro_config, build_task, tmp_path) -> Path:
    task = build_task(micro_config())
    ckpt.save_checkpoint(tmp_path, 1, task, {"step": 1, "optimizer": {}})
    return tmp_path


# ------------------------------------------------------------------------------- partial log lines (item 4)


@pytest.mark.slow
def test_resume_drops_a_partial_last_log_line_with_a_warning(two_checkpoint_run, tmp_path) -> None:
    run = Path(shutil.copytree(two_checkpoint_run, tmp_path / "run"))
    (run / "summary.json").unlink()
    with (run / "log.jsonl").open("a") as handle:
        handle.write('{"step": 4, "loss": 1.2')  # a write killed half-way
    with pytest.warns(RunFolderWarning, match=rf"{run / 'log.jsonl'}: dropped its partial last line"):
        assert main(["pretrain", "--out", str(run), "--resume", "--no-progress"]) == 0
    assert _steps(run) == [1, 2, 3]


def test_a_corrupt_line_inside_the_log_is_an_error_naming_it(tmp_path) -> None:
    from mpma.engine.run_folder import truncate_log

    (tmp_path / "log.jsonl").write_text('{"step": 1}\n{"step": 2, "lo\n{"step": 3}\n')
    with pytest.raises(ValueError, match=rf"{tmp_path / 'log.jsonl'}, line 2: not valid JSON"):
        truncate_log(tmp_path / "log.jsonl", 3)
    assert (tmp_path / "log.jsonl").read_text().count("\n") == 3  # untouched


def test_curves_skip_a_partial_last_line(tmp_path) -> None:
    (tmp_path / "log.jsonl").write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "loss": 1.5}\n{"step": 3, "lo')
    log = read_log(tmp_path)
    assert log.skipped == 1 and list(log.series["loss"][0]) == [1.0, 2.0]
