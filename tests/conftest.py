"""Shared fixtures: an isolated cache folder, a micro model configuration and a small tokenizer.

Every test session gets its own ``MPMA_CACHE`` (tokenizers trained on the fly land there, never in
``~/.cache``). The micro configuration is the ``tiny`` preset shrunk to a ~100k-parameter model on
32x32 images, so a forward/backward pass takes milliseconds on a CPU.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

# The tiny preset shrunk further: 32x32 images, patch 8 (16 patches), width 32, one layer each.
MICRO = [
    "vision.image_size=32", "vision.patch_size=8", "vision.width=32", "vision.depth=1", "vision.heads=2",
    "text.width=32", "text.depth=1", "text.heads=2", "text.intermediate=64",
    "fusion.width=32", "fusion.depth=1", "fusion.heads=2", "fusion.memory_slots=4",
    "decoder.width=16", "decoder.depth=1", "decoder.heads=2",
    "objectives.align_dim=16", "data.batch_size=8", "data.train_size=64", "run.eval_size=32",
]


@pytest.fixture(scope="session", autouse=True)
def torch_threads():
    """One intra-op thread (``MPMA_TEST_THREADS`` to change): the test models are tiny, and on a
    2-core machine shared with other processes two spinning OpenMP threads make each op ~50x slower."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(int(os.environ.get("MPMA_TEST_THREADS", "1")))
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session", autouse=True)
def mpma_cache(tmp_path_factory: pytest.TempPathFactory):
    """A session-wide ``MPMA_CACHE`` in a temp folder (inherited by subprocesses)."""
    path = tmp_path_factory.mktemp("mpma_cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MPMA_CACHE", str(path))
        yield path


@pytest.fixture(scope="session")
def micro_overrides() -> list[str]:
    """The dotted overrides that turn ``tiny`` into the micro model (a copy; safe to extend)."""
    return list(MICRO)


@pytest.fixture(scope="session")
def micro_config():
    """``micro_config(*overrides, preset="tiny")`` -> Config of the micro model plus overrides."""
    from mpma.config import load_config

    def make(*overrides: str, preset: str = "tiny"):
        return load_config(preset, [*MICRO, *overrides])

    return make


# The same micro shapes as a YAML preset, for CLI runs (``--config FILE`` / ``preset=FILE``).
MICRO_PRESET_YAML = """base: tiny
vision: {image_size: 32, patch_size: 8, width: 32, depth: 1, heads: 2}
text: {width: 32, depth: 1, heads: 2, intermediate: 64, max_length: 40}
fusion: {width: 32, depth: 1, heads: 2, memory_slots: 4}
decoder: {width: 16, depth: 1, heads: 2}
objectives: {align_dim: 16}
"""


@pytest.fixture(scope="session")
def micro_preset_text() -> str:
    """The micro model as preset YAML text; tests append their own data/optim/run sections."""
    return MICRO_PRESET_YAML


@pytest.fixture(scope="session")
def micro_run(tmp_path_factory: pytest.TempPathFactory, micro_config, tokenizer_dir: Path) -> Path:
    """A 3-step micro pre-training run (one checkpoint) using the session tokenizer."""
    from mpma.pipelines.pretraining import run_pretraining

    out = tmp_path_factory.mktemp("micro-run") / "run"
    config = micro_config("optim.steps=3", "optim.warmup_steps=1", "run.log_every=1", "run.checkpoint_every=3",
                          "run.threads=1", "run.eval_size=8", f"text.tokenizer={tokenizer_dir}")
    run_pretraining(config, out, progress=False)
    return out


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A WordPiece tokenizer folder trained on 300 synthrad reports."""
    from mpma.data.synthrad import SynthRad
    from mpma.data.text import train_tokenizer

    out = tmp_path_factory.mktemp("tok") / "synthrad-300"
    cases = SynthRad(300, seed=0, image_size=32)
    train_tokenizer([cases[i].report for i in range(len(cases))], out, vocab_size=400)
    return out


@pytest.fixture(scope="session")
def tokenizer(tokenizer_dir: Path):
    from mpma.data.text import load_tokenizer

    return load_tokenizer(tokenizer_dir)


@pytest.fixture(scope="session")
def make_batch(tokenizer):
    """``make_batch(n=8, image_size=32, seed=1, max_length=48)`` -> a collated synthrad pair batch."""
    from mpma.data.pairs import PairCollator, SynthradPairs
    from mpma.data.synthrad import SynthRad

    def make(n: int = 8, image_size: int = 32, seed: int = 1, max_length: int = 48) -> dict:
        pairs = SynthradPairs(SynthRad(n, seed=seed, image_size=image_size), image_size)
        return PairCollator(tokenizer, max_length)([pairs[i] for i in range(n)])

    return make


@pytest.fixture(scope="session")
def build_task(tokenizer):
    """``build_task(config, seed=0)`` -> PretrainTask with deterministic initial weights."""
    import torch

    from mpma.pipelines.pretraining import build_task as build

    def make(config, seed: int = 0):
        torch.manual_seed(seed)
        return build(config, tokenizer)

    return make


@pytest.fixture(scope="session")
def mpma_env() -> dict[str, str]:
    """Environment for ``mpma`` subprocesses (carries the session's ``MPMA_CACHE``)."""
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    return env


@pytest.fixture(scope="session")
def venv_bin() -> Path:
    """Folder of the running interpreter (holds the ``mpma`` and ``torchrun`` scripts)."""
    return Path(sys.executable).parent
