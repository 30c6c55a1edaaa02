"""Fixtures of the reliability tests: micro pre-training arguments and a micro fine-tuning preset."""

from __future__ import annotations

from pathlib import Path

import pytest

FINETUNE_DATA = ["data.train_size=24", "data.val_size=8", "data.test_size=12", "data.batch_size=8", "epochs=1"]


@pytest.fixture(scope="session")
def pretrain_args(micro_overrides, tokenizer_dir) -> list[str]:
    """``key=value`` arguments of a 1-step micro pre-training run (session tokenizer, one thread)."""
    return [*micro_overrides, f"text.tokenizer={tokenizer_dir}", "optim.steps=1", "optim.warmup_steps=1",
            "run.log_every=1", "run.threads=1", "run.eval_size=8"]


@pytest.fixture(scope="session")
def finetune_preset(tmp_path_factory, micro_preset_text) -> Path:
    """The micro model as a preset file for ``mpma finetune ... preset=FILE``."""
    path = tmp_path_factory.mktemp("reliability-preset") / "micro.yaml"
    path.write_text(micro_preset_text + "data: {batch_size: 8, train_size: 64}\nrun: {eval_size: 32}\n")
    return path


@pytest.fixture(scope="session")
def finetune_args(finetune_preset) -> list[str]:
    """Arguments of a 1-epoch micro fine-tuning run from scratch on synthrad."""
    return ["--no-progress", f"preset={finetune_preset}", *FINETUNE_DATA, "run.threads=1"]


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (relative path -> bytes): equal snapshots mean nothing was touched."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}
