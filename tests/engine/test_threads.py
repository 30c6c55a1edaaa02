"""run.threads: the free cores found from /proc/stat (or the load average) and the thread count set."""

from __future__ import annotations

import json

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


class _Clocks:
    """Wall and process-CPU clocks a test moves by hand."""

    def __init__(self) -> None:
        self.wall, self.cpu = 100.0, 10.0

    def advance(self, wall: float, own_cores: float) -> None:
        self.wall += wall
        self.cpu += wall * own_cores


def _watched(tmp_path, monkeypatch, threads_now: int = 2):
    """A ThreadWatch over 2 fake CPUs (100 ticks/s each) and a function that moves time on."""
    stat, clocks, ticks = tmp_path / "stat", _Clocks(), {"idle": [0, 0], "busy": [0, 0]}
    stat.write_text(_stat(ticks["idle"], ticks["busy"]))
    monkeypatch.setattr(threads, "_STAT", str(stat))
    monkeypatch.setattr(threads, "_OURS", {})
    torch.set_num_threads(threads_now)
    watch = threads.ThreadWatch(threads_now, 2, [0, 1], interval=5.0, clock=lambda: clocks.wall,
                                cpu_clock=lambda: clocks.cpu)

    def run(seconds: float, own_cores: float, other_cores: float) -> None:
        """``seconds`` pass with this process on ``own_cores`` and others on ``other_cores`` (of 2)."""
        busy = min(2.0, own_cores + other_cores)
        for cpu in (0, 1):
            ticks["busy"][cpu] += round(100 * seconds * busy / 2)
            ticks["idle"][cpu] += round(100 * seconds * (1 - busy / 2))
        stat.write_text(_stat(ticks["idle"], ticks["busy"]))
        clocks.advance(seconds, own_cores)

    return watch, run


def test_thread_watch_drops_to_the_free_cores_when_another_process_starts_and_returns_after(
        tmp_path, monkeypatch, keep_threads) -> None:
    watch, run = _watched(tmp_path, monkeypatch)
    run(5.0, own_cores=2.0, other_cores=0.0)  # alone: both cores are ours
    assert watch.poll() is None and torch.get_num_threads() == 2
    run(2.0, own_cores=2.0, other_cores=0.0)
    assert watch.poll() is None  # not yet time to measure
    run(3.0, own_cores=1.1, other_cores=0.9)  # a busy process arrives: it holds ~a core
    assert watch.poll() == 1 and torch.get_num_threads() == 1 and watch.threads == 1
    run(5.0, own_cores=1.0, other_cores=1.0)
    assert watch.poll() is None and torch.get_num_threads() == 1  # still busy: stays at 1
    run(5.0, own_cores=1.0, other_cores=0.0)  # it has left: one window is not enough to go back up
    assert watch.poll() is None and torch.get_num_threads() == 1
    run(5.0, own_cores=1.0, other_cores=0.0)
    assert watch.poll() == 2 and torch.get_num_threads() == 2
    run(5.0, own_cores=2.0, other_cores=0.0)
    assert watch.poll() is None and torch.get_num_threads() == 2


def test_thread_watch_never_goes_above_its_cap(tmp_path, monkeypatch, keep_threads) -> None:
    watch, run = _watched(tmp_path, monkeypatch, threads_now=1)
    watch.cap = 1  # e.g. OMP_NUM_THREADS=1: the auto choice's cap
    for _ in range(3):
        run(5.0, own_cores=1.0, other_cores=0.0)
        assert watch.poll() is None and torch.get_num_threads() == 1


def test_only_an_auto_choice_is_watched(monkeypatch, keep_threads) -> None:
    monkeypatch.setattr(threads, "_OURS", {})
    monkeypatch.setattr(threads, "allowed_cpus", lambda: [0, 1])
    monkeypatch.setattr(threads, "free_cores", lambda cpus: (2.0, "/proc/stat"))
    torch.set_num_threads(2)
    configure_threads(0)
    assert isinstance(threads._WATCH["watch"], threads.ThreadWatch)
    assert threads._WATCH["watch"].cap == 2
    configure_threads(1)
    assert threads._WATCH["watch"] is None and threads.poll_threads() is None


def test_the_trainer_polls_the_thread_watch_every_step(micro_config, monkeypatch, tmp_path) -> None:
    from mpma.engine import trainer as trainer_module

    calls = []

    def poll() -> int | None:  # the watch changes the count once, after step 2
        calls.append(1)
        return 1 if len(calls) == 2 else None

    monkeypatch.setattr(trainer_module, "poll_threads", poll)
    from mpma.pipelines.pretraining import run_pretraining

    run = tmp_path / "run"
    run_pretraining(micro_config("optim.steps=3", "run.grounding_every=0", "run.log_every=1"), run, progress=False)
    assert len(calls) == 3
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    steps = [record for record in records if "loss" in record]
    assert [record.get("threads") for record in steps] == [None, 1, None]  # logged with the window it fell in
