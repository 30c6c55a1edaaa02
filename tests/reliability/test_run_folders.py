"""``--out`` is guarded: a folder holding another run, a finished run or other files is refused unless
``--overwrite``, which removes the run files only (issue 13, item 1)."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import pytest

from mpma.cli import main
from mpma.config import Config, FinetuneConfig
from mpma.engine.run_folder import (
    FINETUNE,
    PRETRAIN,
    RUN_FILES,
    RunFolderError,
    RunFolderWarning,
    clear_run_files,
    inspect_run_folder,
    prepare_run_folder,
)
from tests.reliability.conftest import snapshot


def _plant_run(folder: Path, config: dict, *names: str) -> Path:
    """A folder holding ``config.json`` and empty stand-ins for ``names`` (a trailing '/' makes a folder)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config))
    for name in names:
        if name.endswith("/"):
            (folder / name).mkdir(parents=True, exist_ok=True)
        else:
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            (folder / name).write_text("x")
    return folder


def _checkpoint(folder: Path, step: int) -> None:
    checkpoint = folder / "checkpoints" / f"step_{step:08d}"
    checkpoint.mkdir(parents=True)
    (checkpoint / "model.safetensors").write_text("x")
    (checkpoint / "state.pt").write_text("x")


# ------------------------------------------------------------------------------------- the guard itself


def test_inspect_tells_the_kinds_apart(tmp_path) -> None:
    assert inspect_run_folder(tmp_path / "missing").empty
    pre = inspect_run_folder(_plant_run(tmp_path / "pre", Config().to_dict(), "log.jsonl", "summary.json"))
    assert (pre.kind, pre.finished, pre.foreign) == (PRETRAIN, True, [])
    fine = inspect_run_folder(_plant_run(tmp_path / "fine", FinetuneConfig(task="vqa").to_dict(), "best/"))
    assert (fine.kind, fine.finished) == (FINETUNE, False) and "task vqa" in fine.describe()
    user = inspect_run_folder(_plant_run(tmp_path / "user", {"lr": 1}, "log.jsonl", "notes.txt"))
    assert user.kind is None and user.foreign == ["config.json", "notes.txt"] and user.run_files == ["log.jsonl"]
    model = inspect_run_folder(_plant_run(tmp_path / "model", {"mpma_format": 1}))
    assert model.kind is None and model.foreign == ["config.json"]


def test_an_empty_or_missing_folder_is_accepted(tmp_path) -> None:
    (tmp_path / "empty").mkdir()
    for folder in (tmp_path / "empty", tmp_path / "missing"):
        assert prepare_run_folder(folder, PRETRAIN, Config().to_dict()).empty


@pytest.mark.parametrize("kind, planted, expected", [
    (PRETRAIN, FinetuneConfig(task="vqa").to_dict(), "holds a fine-tuning run (task vqa), not a pre-training run"),
    (FINETUNE, Config().to_dict(), "holds a pre-training run, not a fine-tuning run"),
    (FINETUNE, FinetuneConfig(task="vqa").to_dict(), "holds another fine-tuning run (its config.json differs: task"),
])
def test_another_run_is_refused_naming_what_it_is(tmp_path, kind, planted, expected) -> None:
    folder = _plant_run(tmp_path / "run", planted, "log.jsonl", "best/model.safetensors")
    before = snapshot(folder)
    wanted = Config().to_dict() if kind == PRETRAIN else FinetuneConfig(task="img_cls").to_dict()
    with pytest.raises(RunFolderError, match="--overwrite") as info:
        prepare_run_folder(folder, kind, wanted)
    assert expected in str(info.value) and str(folder) in str(info.value)
    assert snapshot(folder) == before


def test_another_pretraining_configuration_is_refused_naming_the_keys(tmp_path) -> None:
    folder = _plant_run(tmp_path / "run", Config().to_dict(), "log.jsonl")
    _checkpoint(folder, 5)
    wanted = Config().to_dict()
    wanted["optim"]["lr"] = 0.5
    with pytest.raises(RunFolderError, match=r"another pre-training run \(its config.json differs: optim.lr") as info:
        prepare_run_folder(folder, PRETRAIN, wanted)
    assert "--resume" in str(info.value) and "1 checkpoints" in str(info.value)


def test_the_same_pretraining_run_with_checkpoints_needs_resume(tmp_path) -> None:
    folder = _plant_run(tmp_path / "run", Config().to_dict(), "log.jsonl")
    _checkpoint(folder, 5)
    with pytest.raises(RunFolderError, match="already holds checkpoints of this run: pass --resume"):
        prepare_run_folder(folder, PRETRAIN, Config().to_dict())


def test_the_same_finished_finetuning_run_is_refused(tmp_path) -> None:
    config = FinetuneConfig(task="vqa").to_dict()
    saved = json.loads(json.dumps(config))
    saved["optim"]["steps"], saved["run"]["checkpoint_every"] = 30, 3  # set from the epochs: not a difference
    folder = _plant_run(tmp_path / "run", saved, "metrics.json", "best/model.safetensors")
    with pytest.raises(RunFolderError, match=r"already holds this fine-tuning run, finished \(metrics.json\): pass "
                                             "--overwrite to run it again"):
        prepare_run_folder(folder, FINETUNE, config, ignore={"optim.steps", "run.checkpoint_every"})


def test_an_unfinished_run_of_the_same_configuration_starts_again(tmp_path) -> None:
    config = FinetuneConfig(task="vqa").to_dict()
    folder = _plant_run(tmp_path / "run", config, "log.jsonl", "best/model.safetensors", "notes.txt")
    with pytest.warns(RunFolderWarning, match="unfinished fine-tuning run of this configuration: starting it again"):
        prepare_run_folder(folder, FINETUNE, config)
    assert sorted(p.name for p in folder.iterdir()) == ["notes.txt"]  # the run's files only


def test_files_of_no_run_are_refused(tmp_path) -> None:
    folder = _plant_run(tmp_path / "user", {"my": "settings"}, "log.jsonl", "notes.txt")
    with pytest.raises(RunFolderError, match=r"holds files no mpma run writes \(config.json, notes.txt\)"):
        prepare_run_folder(folder, PRETRAIN, Config().to_dict())
    (tmp_path / "leftovers").mkdir()  # a log with no config.json (a run killed early): started again
    (tmp_path / "leftovers" / "log.jsonl").write_text("{}\n")
    prepare_run_folder(tmp_path / "leftovers", PRETRAIN, Config().to_dict())
    assert not list((tmp_path / "leftovers").iterdir())


def test_overwrite_removes_the_run_files_and_keeps_the_others(tmp_path) -> None:
    names = ["config.json", "log.jsonl", "tokenizer/vocab.txt", "checkpoints/step_00000001/state.pt", "best/x",
             "metrics.json", "summary.json.tmp", "report/index.html", "notes.txt", "data/images.txt"]
    folder = _plant_run(tmp_path / "run", FinetuneConfig().to_dict(), *names[1:])
    with pytest.warns(RunFolderWarning, match=r"--overwrite: removed .* kept: data, notes.txt"):
        prepare_run_folder(folder, PRETRAIN, Config().to_dict(), overwrite=True)
    assert sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) == ["data", "data/images.txt", "notes.txt"]
    assert set(clear_run_files(folder)) == set() and "checkpoints" in RUN_FILES


# ------------------------------------------------------------------------------------- through the CLI


@pytest.fixture()
def pretraining_run(micro_run, tmp_path) -> Path:
    """A copy of the session's 3-step micro pre-training run."""
    return Path(shutil.copytree(micro_run, tmp_path / "pretrain-run"))


@pytest.fixture(scope="module")
def vqa_run(tmp_path_factory, finetune_args) -> Path:
    out = tmp_path_factory.mktemp("vqa") / "run"
    assert main(["finetune", "vqa", "--out", str(out), *finetune_args]) == 0
    return out


@pytest.mark.slow
def test_finetune_into_a_pretraining_run_is_refused(pretraining_run, finetune_args, capsys) -> None:
    before = snapshot(pretraining_run)
    assert main(["finetune", "vqa", "--out", str(pretraining_run), *finetune_args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "holds a pre-training run, not a fine-tuning run" in err
    assert str(pretraining_run) in err and "--overwrite" in err and "Traceback" not in err
    assert snapshot(pretraining_run) == before  # config.json and log.jsonl untouched


@pytest.mark.slow
def test_finetune_into_another_finetuning_run_is_refused(vqa_run, finetune_args, capsys) -> None:
    before = snapshot(vqa_run)
    assert main(["finetune", "img_cls", "--out", str(vqa_run), *finetune_args]) == 2
    err = capsys.readouterr().err
    assert "holds another fine-tuning run (its config.json differs:" in err and "task 'vqa' -> 'img_cls'" in err
    assert snapshot(vqa_run) == before  # best/ untouched


@pytest.mark.slow
def test_rerunning_a_finished_finetuning_run_needs_overwrite(vqa_run, finetune_args, tmp_path, capsys) -> None:
    run = Path(shutil.copytree(vqa_run, tmp_path / "vqa"))
    before = snapshot(run)
    assert main(["finetune", "vqa", "--out", str(run), *finetune_args]) == 2
    err = capsys.readouterr().err
    assert "already holds this fine-tuning run, finished (metrics.json)" in err and "--overwrite" in err
    assert snapshot(run) == before
    (run / "notes.txt").write_text("mine")
    with pytest.warns(RunFolderWarning, match="--overwrite: removed"):
        assert main(["finetune", "vqa", "--out", str(run), "--overwrite", *finetune_args]) == 0
    assert (run / "notes.txt").read_text() == "mine"
    epochs = [line for line in (run / "log.jsonl").read_text().splitlines() if '"val"' in line]
    assert len(epochs) == 1  # a fresh log, not the old one appended to


@pytest.mark.slow
def test_pretrain_into_a_user_folder_is_refused_then_overwritten(pretrain_args, tmp_path, capsys) -> None:
    folder = tmp_path / "mine"
    folder.mkdir()
    for name, text in (("config.json", '{"mine": true}'), ("log.jsonl", "my log\n"), ("notes.txt", "my notes")):
        (folder / name).write_text(text)
    before = snapshot(folder)
    assert main(["pretrain", "--out", str(folder), "--no-progress", *pretrain_args]) == 2
    err = capsys.readouterr().err
    assert f"{folder} holds files no mpma run writes (config.json, notes.txt)" in err and "--overwrite" in err
    assert snapshot(folder) == before
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert main(["pretrain", "--out", str(folder), "--no-progress", "--overwrite", *pretrain_args]) == 0
    assert any("kept: notes.txt" in str(w.message) for w in caught)
    assert (folder / "notes.txt").read_text() == "my notes"
    assert "vision" in json.loads((folder / "config.json").read_text())
    assert not (folder / ".lock").exists()


def test_resume_and_overwrite_exclude_each_other(tmp_path, capsys) -> None:
    assert main(["pretrain", "--out", str(tmp_path), "--resume", "--overwrite"]) == 2
    assert "pass one of them" in capsys.readouterr().err


def test_resume_of_a_finetuning_run_is_refused(tmp_path, capsys) -> None:
    folder = _plant_run(tmp_path / "run", FinetuneConfig(task="vqa").to_dict())
    assert main(["pretrain", "--out", str(folder), "--resume"]) == 2
    assert "holds a fine-tuning run (task vqa), not a pre-training run" in capsys.readouterr().err
