"""run.retain_freed_memory: glibc's mallopt is set once with the documented values, skipped elsewhere,
and the Trainer applies it only when the config asks."""

from __future__ import annotations

import platform

import pytest

from mpma.engine import allocator
from mpma.engine import trainer as trainer_module
from mpma.engine.distributed import DistEnv
from mpma.engine.trainer import Trainer, parameter_groups


class FakeLibc:
    def __init__(self, accepts: bool = True) -> None:
        self.calls: list[tuple[int, int]] = []
        self.accepts = accepts

    def mallopt(self, parameter: int, value: int) -> int:
        self.calls.append((parameter, value))
        return 1 if self.accepts else 0


@pytest.fixture(autouse=True)
def fresh_cache():
    allocator.retain_freed_memory.cache_clear()
    yield
    allocator.retain_freed_memory.cache_clear()


def test_sets_trim_and_mmap_thresholds_once(monkeypatch) -> None:
    libc = FakeLibc()
    monkeypatch.setattr(allocator, "_glibc", lambda: libc)
    assert allocator.retain_freed_memory() is True
    assert allocator.retain_freed_memory() is True  # cached: mallopt is not called again
    assert libc.calls == [(allocator.M_TRIM_THRESHOLD, 2**31 - 1), (allocator.M_MMAP_THRESHOLD, 32 * 2**20)]


@pytest.mark.parametrize("libc", [None, FakeLibc(accepts=False)], ids=["not-glibc", "refused"])
def test_reports_false_without_glibc_or_when_refused(monkeypatch, caplog, libc) -> None:
    monkeypatch.setattr(allocator, "_glibc", lambda: libc)
    with caplog.at_level("INFO", logger="mpma"):
        assert allocator.retain_freed_memory() is False
    assert "run.retain_freed_memory" in caplog.text


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the real mallopt exists on glibc only")
def test_real_glibc_accepts_the_settings() -> None:
    assert allocator._glibc() is not None
    assert allocator.retain_freed_memory() is True


@pytest.mark.parametrize("retain", [True, False])
def test_trainer_applies_it_only_when_configured(monkeypatch, micro_config, build_task, tmp_path, retain) -> None:
    calls = []
    monkeypatch.setattr(trainer_module, "retain_freed_memory", lambda: calls.append(1))
    config = micro_config(f"run.retain_freed_memory={str(retain).lower()}")
    task = build_task(config)
    groups = parameter_groups(task, config.optim, set(), set())
    Trainer(task, task.loss_weights, groups, config.optim, config.run, tmp_path, DistEnv())
    assert calls == ([1] if retain else [])
