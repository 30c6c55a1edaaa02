"""run.threads: the free cores found from /proc/stat (or the load average) and the thread count set."""

from __future__ import annotations


import pytest
import torch

from mpma.engine import threads
from mpma.engine.threads import auto_threads, configure_threads, free_cores


def _stat(idle: list[int], busy: list[int]) -> str:
    """A /proc/stat text: per CPU, ``busy`` user ticks and ``idle`` idle ticks."""
    lines = [f"cpu  {sum(busy)} 0 0 {sum(idle)} 0 0 0 0 0 0"]
    lines += [f"cpu{i} {b} 0 0 {d} 0 0 0 0 0 0" for i, (d, b) in enumerate(zip(idle, busy))]
    return "\n".join([*lines, "intr 1 2 3", "ctxt 4"]) + "\n"


@pytest.fixture
def keep_threads():
    previous = torch.get_num_threads()
    yield
    torch.set_num_threads(previous)


def test_free_cores_sums_the_idle_share_of_each_allowed_cpu(tmp_path, monkeypatch) -> None:
    stat = tmp_path / "stat"
    stat.write_text(_stat(idle=[100, 100, 100], busy=[100, 100, 100]))
    # over the window: cpu0 fully busy, cpu1 idle, cpu2 a quarter busy (but not allowed)
    monkeypatch.setattr(threads, "_STAT", str(stat))
    monkeypatch.setattr(threads.time, "sleep", lambda s: stat.write_text(_stat([100, 120, 115], [120, 100, 105])))
    free, source = free_cores(cpus=[0, 1])
    assert source == "/proc/stat" and free == pytest.approx(1.0)


def test_free_cores_falls_back_to_the_load_average(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(threads, "_STAT", str(tmp_path / "missing"))
    monkeypatch.setattr(threads.os, "getloadavg", lambda: (1.25, 0.0, 0.0))
    assert free_cores(cpus=[0, 1]) == (pytest.approx(0.75), "loadavg")
    monkeypatch.setattr(threads.os, "getloadavg", lambda: (5.0, 0.0, 0.0))
    assert free_cores(cpus=[0, 1])[0] == 0.0


@pytest.mark.parametrize(("free", "allowed", "cap", "expected"), [
    (2.0, 2, 2, 2), (1.9, 2, 2, 2), (1.0, 2, 2, 1), (1.5, 2, 2, 1),  # a half-busy core counts as busy
    (0.0, 2, 2, 1),  # always at least one thread
    (8.0, 8, 4, 4),  # never above the caller's setting
])
def test_auto_threads_rounds_and_clamps(free: float, allowed: int, cap: int, expected: int) -> None:
    assert auto_threads(free, allowed, cap) == expected


def test_configure_threads_sets_what_it_reports(monkeypatch, keep_threads) -> None:
    monkeypatch.setattr(threads, "_OURS", {})  # as in a fresh process
    torch.set_num_threads(2)
    monkeypatch.setattr(threads, "allowed_cpus", lambda: [0, 1])
    monkeypatch.setattr(threads, "free_cores", lambda cpus: (1.0, "/proc/stat"))  # one core busy elsewhere
    choice = configure_threads(0)
    assert (choice.threads, choice.source, torch.get_num_threads()) == (1, "/proc/stat", 1)
    assert "auto, 1.0 of 2 cores free" in choice.describe()
    # a later auto run in the same process may use both cores again: the cap is the setting found before
    monkeypatch.setattr(threads, "free_cores", lambda cpus: (2.0, "/proc/stat"))
    assert configure_threads(0).threads == 2 and torch.get_num_threads() == 2
    given = configure_threads(1)
    assert (given.threads, given.source, given.free, torch.get_num_threads()) == (1, "given", None, 1)
    with pytest.raises(ValueError, match="run.threads must be >= 0"):
        configure_threads(-1)
