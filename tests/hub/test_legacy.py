"""Folders written by mpma 0.1.0 (tests/fixtures/v0_1_0, made by commit 4d591b6) still load, give the
same weights, and upgrade in place to the current model-folder format."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from mpma.cli import main
from mpma.engine.checkpoint import latest_checkpoint, list_checkpoints
from mpma.hub import is_model_folder, load_model
from mpma.hub.legacy import upgrade

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "v0_1_0"
EXPECTED = json.loads((FIXTURES / "expected.json").read_text())["folders"]
FOLDERS = sorted(EXPECTED)


@pytest.fixture
def fixtures(tmp_path: Path) -> Path:
    """A private copy of the fixture folders (loading or upgrading never touches the committed ones)."""
    root = tmp_path / "v0_1_0"
    shutil.copytree(FIXTURES, root)
    return root


def weights_summary(module: torch.nn.Module) -> tuple[int, float, float]:
    params = list(module.parameters())
    return (sum(p.numel() for p in params), sum(float(p.double().sum()) for p in params),
            sum(float(p.double().abs().sum()) for p in params))


def assert_matches(loaded, expected: dict) -> None:
    count, total, absolute = weights_summary(loaded.module)
    assert type(loaded.module).__name__ == expected["module_class"]
    assert count == expected["n_parameters"]
    assert total == pytest.approx(expected["param_sum"], abs=1e-9)
    assert absolute == pytest.approx(expected["param_abs_sum"], abs=1e-9)
    assert sorted({k.split(".")[0] for k in loaded.module.state_dict()}) == expected["state_dict_prefixes"]
    assert (loaded.task or {}).get("task") == expected["task"]
    assert (loaded.task or {}).get("classes") == expected["classes"]
    if expected["head"]:
        assert loaded.task["head"] == expected["head"]
    assert len(loaded.tokenizer) == expected["vocab_size"]


@pytest.mark.parametrize("name", FOLDERS)
def test_a_0_1_0_folder_loads_with_the_same_weights(fixtures, name):
    assert_matches(load_model(fixtures / name), EXPECTED[name])


@pytest.mark.parametrize("name", ["pretrain_run", "finetune_vqa_run", "finetune_img_cls_run"])
def test_convert_upgrade_rewrites_a_run_folder_in_place(fixtures, name, capsys):
    run = fixtures / name
    assert main(["convert", "--upgrade", str(run)]) == 0
    assert "upgraded 1 folder" in capsys.readouterr().out
    model_folder = run / "best" if (run / "best").is_dir() else latest_checkpoint(run)
    assert is_model_folder(model_folder)
    assert_matches(load_model(run), EXPECTED[name])
    assert upgrade(run) == []  # a second upgrade has nothing to do


def test_a_0_1_0_pretraining_run_resumes_only_after_the_upgrade(fixtures, capsys):
    run = fixtures / "pretrain_run"
    config = json.loads((run / "config.json").read_text())
    config["optim"]["steps"] = 6  # two more steps than the fixture ran
    (run / "config.json").write_text(json.dumps(config))
    assert main(["pretrain", "--out", str(run), "--resume", "--no-progress"]) == 2
    assert "mpma convert --upgrade" in capsys.readouterr().err
    assert main(["convert", "--upgrade", str(run)]) == 0
    assert main(["pretrain", "--out", str(run), "--resume", "--no-progress"]) == 0
    assert [c.name for c in list_checkpoints(run)][-1] == "step_00000006"
    assert is_model_folder(latest_checkpoint(run))
