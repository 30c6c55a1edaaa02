"""End to end: ``mpma pretrain`` writes every run-folder file; bad input fails naming the culprit."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from mpma.cli import main

TERMS = ["mlm", "mim", "global_align", "local_align", "itm"]
KS = (1, 5, 10)


def _run(args: list[str], env: dict, timeout: int = 240) -> subprocess.CompletedProcess:
    return subprocess.run(args, env=env, capture_output=True, text=True, timeout=timeout)


def _check_retrieval(report: dict, n_pairs: int) -> None:
    assert report["n_pairs"] == n_pairs and 1 <= report["n_distinct_keys"] <= n_pairs
    for direction in ("i2t", "t2i"):
        block = report[direction]
        for k in KS:
            assert 0.0 <= block[f"R@{k}"] <= 1.0
            assert 0.0 < block[f"chance@{k}"] <= 1.0
        assert block["R@1"] <= block["R@5"] <= block["R@10"]
        assert block["chance@1"] <= block["chance@5"] <= block["chance@10"]
        # repeated finding sets make chance@1 larger than 1/N
        assert block["chance@1"] >= 1.0 / n_pairs - 1e-9


@pytest.mark.slow
def test_pretrain_writes_every_run_folder_file(micro_overrides, mpma_env, venv_bin, tmp_path, capsys) -> None:
    out = tmp_path / "run"
    overrides = [*micro_overrides, "optim.steps=3", "run.log_every=1", "run.threads=1"]
    proc = _run([str(venv_bin / "mpma"), "pretrain", "--out", str(out), "--no-progress", *overrides], mpma_env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "zero-shot retrieval" in proc.stdout and "global_align" in proc.stdout

    # config.json: the resolved configuration, loadable again
    from mpma.config import config_from_dict, load_config

    saved = config_from_dict(json.loads((out / "config.json").read_text()))
    assert saved == load_config("tiny", overrides)

    # the tokenizer the run used
    from transformers import AutoTokenizer

    assert AutoTokenizer.from_pretrained(str(out / "tokenizer")).mask_token == "[MASK]"

    # log.jsonl: one line per logged step with every loss term
    rows = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    rows = [r for r in rows if "grounding" not in r]  # the grounding diagnostics' own lines (tests/eval)
    assert [r["step"] for r in rows] == [1, 2, 3]
    for row in rows:
        for key in [*TERMS, "loss", "lr", "samples_per_s"]:
            assert isinstance(row[key], float), key

    # checkpoints/step_*/: a model folder (mpma.hub) + state.pt
    checkpoints = sorted((out / "checkpoints").iterdir())
    assert [p.name for p in checkpoints] == ["step_00000003"]
    assert sorted(p.name for p in checkpoints[0].iterdir()) == ["MODEL_CARD.md", "config.json", "model.safetensors",
                                                                 "provenance.json", "state.pt", "tokenizer"]
    import torch

    assert torch.load(checkpoints[0] / "state.pt", weights_only=True)["step"] == 3
    assert not list(out.rglob("*.tmp"))

    # summary.json with the documented shape
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["losses"]) == {"loss", *TERMS}
    for term, values in summary["losses"].items():
        assert set(values) >= {"first", "last"}
    assert summary["losses"]["mlm"]["first"] == pytest.approx(rows[0]["mlm"])  # 5% of 3 steps = step 1
    assert summary["losses"]["mlm"]["last"] == pytest.approx(rows[-1]["mlm"])
    _check_retrieval(summary["retrieval"], n_pairs=32)

    # the same folder again without --resume is refused (in process: same code path as the console script)
    assert main(["pretrain", "--out", str(out), "--no-progress", *overrides]) == 2
    err = capsys.readouterr().err
    assert "already holds checkpoints" in err and "--resume" in err

    # --resume may change optim.* / run.* only: an override of the model is refused, naming the key
    config_before = (out / "config.json").read_bytes()
    assert main(["pretrain", "--out", str(out), "--resume", "vision.width=64"]) == 2
    err = capsys.readouterr().err
    assert "vision.width cannot change in a resumed run" in err and "optim.*" in err
    assert (out / "config.json").read_bytes() == config_before

    # --resume of the finished run: nothing left to train, the summary is rewritten
    (out / "summary.json").unlink()
    assert main(["pretrain", "--out", str(out), "--resume", "--no-progress"]) == 0
    assert json.loads((out / "summary.json").read_text())["losses"]["mlm"] == summary["losses"]["mlm"]
    lines = (out / "log.jsonl").read_text().splitlines()
    assert len([line for line in lines if "grounding" not in line]) == 3
    assert len([line for line in lines if "grounding" in line]) == 1  # the last step's, not measured twice into the log


def test_resume_without_a_run_folder_is_a_clear_error(tmp_path, capsys) -> None:
    empty = tmp_path / "not_a_run"
    empty.mkdir()
    assert main(["pretrain", "--out", str(empty), "--resume", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "config.json" in err and str(empty) in err
    assert main(["pretrain", "--out", str(tmp_path / "missing"), "--resume"]) == 2
    assert "config.json" in capsys.readouterr().err


@pytest.mark.parametrize("args, culprit", [
    (["vision.widht=3"], "vision.widht"),
    (["optim.lr=abc"], "optim.lr"),
    (["--config", "nosuchpreset"], "nosuchpreset"),
    (["--config", "missing/file.yaml"], "missing/file.yaml"),
    (["fusion.memory_layers=[9]"], "memory_layers"),
    (["vision.image_size=30"], "image_size"),
])
def test_bad_overrides_fail_naming_the_key(
    args: list[str], culprit: str, micro_overrides, tokenizer_dir, tmp_path, capsys
) -> None:
    out = tmp_path / "run"
    good = [*micro_overrides, "optim.steps=1", f"text.tokenizer={tokenizer_dir}"]
    assert main(["pretrain", "--out", str(out), "--no-progress", *good, *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and culprit in err
    assert "Traceback" not in err
    assert not (out / "checkpoints").exists()


def test_override_that_is_not_key_value_is_an_error(tmp_path, capsys) -> None:
    assert main(["pretrain", "--out", str(tmp_path / "run"), "optim.steps"]) == 2
    assert "optim.steps" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:  # an unknown option is an argparse usage error
        main(["pretrain", "--out", str(tmp_path / "run"), "--stepz", "3"])
    assert info.value.code == 2


@pytest.mark.parametrize("argv", [["--help"], ["pretrain", "--help"], ["tokenizer", "train", "--help"]])
def test_help_runs_without_importing_torch(argv: list[str], mpma_env) -> None:
    code = (
        "import sys\n"
        "from mpma.cli import main\n"
        "try:\n"
        f"    main({argv!r})\n"
        "except SystemExit as exit:\n"
        "    assert exit.code in (0, None), exit.code\n"
        "heavy = sorted(m for m in ('torch', 'transformers', 'tokenizers', 'numpy') if m in sys.modules)\n"
        "print('HEAVY', heavy)\n"
    )
    proc = _run([sys.executable, "-c", code], mpma_env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "usage: mpma" in proc.stdout
    assert "HEAVY []" in proc.stdout, proc.stdout.splitlines()[-1]


def test_console_script_help(venv_bin, mpma_env) -> None:
    proc = _run([str(venv_bin / "mpma"), "--help"], mpma_env, timeout=60)
    assert proc.returncode == 0
    for command in ("pretrain", "tokenizer", "data"):
        assert command in proc.stdout


@pytest.mark.slow
def test_m3ae_preset_pretrains_and_skips_retrieval(micro_overrides, tokenizer_dir, tmp_path) -> None:
    from mpma.config import load_config
    from mpma.pipelines.pretraining import run_pretraining

    overrides = [o for o in micro_overrides if "memory" not in o]
    config = load_config("tiny_m3ae", [*overrides, "optim.steps=2", "run.log_every=1", f"text.tokenizer={tokenizer_dir}"])
    summary = run_pretraining(config, tmp_path / "m3ae", progress=False)
    assert set(summary["losses"]) == {"loss", "mlm", "mim", "itm"}
    assert "skipped" in summary["retrieval"]
    rows = [json.loads(line) for line in (tmp_path / "m3ae" / "log.jsonl").read_text().splitlines()]
    assert all("global_align" not in r and "local_align" not in r for r in rows)


@pytest.mark.slow
def test_pretrain_from_a_manifest(micro_overrides, tmp_path) -> None:
    """``data.dataset=PATH`` trains on a JSONL manifest and evaluates retrieval on its 'val' split."""
    from mpma.config import load_config
    from mpma.data.synthrad import write_synthrad
    from mpma.pipelines.pretraining import run_pretraining

    paths = write_synthrad(tmp_path / "synth", n=60, image_size=32)
    config = load_config("tiny", [*micro_overrides, f"data.dataset={paths['pretrain']}", "optim.steps=2",
                                  "run.log_every=1", "text.vocab_size=300"])
    summary = run_pretraining(config, tmp_path / "run", progress=False)
    assert set(summary["losses"]) == {"loss", *TERMS}
    assert "i2t" in summary["retrieval"], summary["retrieval"]
    _check_retrieval(summary["retrieval"], n_pairs=6)
