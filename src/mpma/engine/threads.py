"""``run.threads``: how many intra-op threads a run uses, so that other busy processes cost little.

Why the default is not torch's (one thread per core): torch's OpenMP parallel regions end in a
barrier, so a step runs at the pace of its slowest thread. When another process keeps one core
busy, the thread sharing that core gets a time slice only now and then and every one of the
thousands of parallel regions per step waits for it. Measured on a 2-core machine (issue 14):
``mpma pretrain optim.steps=60 run.eval_size=100`` took 18.4 s idle, 232.5 s (12.6x) beside one
busy single-threaded process with torch's 2 threads, and 26.6 s (1.45x) with 1 thread.

``run.threads=0`` (the default) therefore means *auto*: one thread per core that is free when the
run starts, found by sampling ``/proc/stat`` over :data:`SAMPLE_SECONDS` for the cores this process
may run on (``os.sched_getaffinity``), at least 1 and at most the thread count set before (torch's
default, ``OMP_NUM_THREADS``, or the calling program's choice: see :func:`thread_cap`). Where ``/proc/stat``
cannot be read the 1-minute load average stands in for the busy cores. A positive ``run.threads``
is used as given. Under auto the choice is then re-made while the run trains (:class:`ThreadWatch`,
every :data:`WATCH_SECONDS`): a process that starts competing later would otherwise slow the run as
badly as torch's default does (measured: a quickstart VQA fine-tune on 2 auto threads went from 0.4 to
8 s per step when one 1-thread pre-training started beside it), so the threads drop to the cores
other processes leave, and come back (up to the first choice's cap) when they leave them again.

The wait policy is left to OpenMP's default (spin a while at a barrier, then sleep). Setting
``OMP_WAIT_POLICY=PASSIVE`` (waiting threads sleep at once) helped when a competing process started
*after* the run chose its threads (until :class:`ThreadWatch` re-made the choice), but it costs an
idle machine: an 80-step ``mpma pretrain`` on this 2-core machine, idle, took 48.0 and 50.7 s with PASSIVE against 38.8 and 37.1 s with spinning
threads (1.3x), so it is not the default; set it in the environment where that trade is right.
Figures of both policies beside a busy process: benchmarks/README.md, "Shared CPU".
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass

SAMPLE_SECONDS = 0.2  # /proc/stat sampling window of free_cores()
WATCH_SECONDS = 5.0  # how often a running auto-threaded job re-measures what other processes use
_STAT = "/proc/stat"
# What configure_threads last set ("set") and the setting it found before ("cap"): auto never goes above
# the caller's setting (torch's default, OMP_NUM_THREADS, or what the embedding program set).
_OURS: dict[str, int] = {}


@dataclass
class ThreadChoice:
    """The outcome of :func:`configure_threads`.

    Attributes:
        threads: intra-op threads set (``torch.get_num_threads()`` afterwards).
        requested: ``run.threads`` as configured (0 = auto).
        allowed: cores this process may run on.
        free: cores found free (None when a positive ``run.threads`` made sampling unnecessary).
        source: how ``free`` was measured: ``"/proc/stat"``, ``"loadavg"`` or ``"given"``.
    """

    threads: int
    requested: int
    allowed: int
    free: float | None
    source: str

    def describe(self) -> str:
        """One line for the run's log."""
        if self.source == "given":
            return f"{self.threads} intra-op threads (run.threads={self.requested})"
        return (f"{self.threads} intra-op threads (run.threads=0: auto, {self.free:.1f} of {self.allowed} cores "
                f"free by {self.source})")


def allowed_cpus() -> list[int]:
    """The CPU ids this process may run on (all of ``os.cpu_count()`` where affinity is unknown)."""
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))


def _cpu_times(cpus: list[int]) -> dict[int, tuple[int, int]] | None:
    """(idle ticks, total ticks) per CPU id of ``cpus`` from /proc/stat; None where it cannot be read."""
    try:
        with open(_STAT) as stat:
            lines = stat.readlines()
    except OSError:
        return None
    wanted, times = set(cpus), {}
    for line in lines:
        name, *fields = line.split()
        if not name.startswith("cpu") or name == "cpu":
            continue
        cpu = int(name[3:])
        if cpu in wanted:
            ticks = [int(f) for f in fields[:8]]  # user nice system idle iowait irq softirq steal
            times[cpu] = (ticks[3] + ticks[4], sum(ticks))
    return times if set(times) == wanted else None


def free_cores(seconds: float = SAMPLE_SECONDS, cpus: list[int] | None = None) -> tuple[float, str]:
    """How many of ``cpus`` (default: :func:`allowed_cpus`) other processes leave idle.

    Args:
        seconds: sampling window; the caller should be idle meanwhile (it sleeps here).
        cpus: CPU ids to look at.

    Returns:
        (free cores, a fraction summed over ``cpus``; the source: ``"/proc/stat"`` or ``"loadavg"``).
    """
    cpus = allowed_cpus() if cpus is None else cpus
    before = _cpu_times(cpus)
    if before is not None:
        time.sleep(seconds)
        after = _cpu_times(cpus)
        if after is not None:
            free = 0.0
            for cpu in cpus:
                total = after[cpu][1] - before[cpu][1]
                free += (after[cpu][0] - before[cpu][0]) / total if total > 0 else 1.0
            return free, "/proc/stat"
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    return max(0.0, len(cpus) - load), "loadavg"


def auto_threads(free: float, allowed: int, default: int) -> int:
    """Threads for ``free`` free cores: ``round(free)`` clamped to [1, min(allowed, default)].

    A half-busy core (free 0.5) still counts as busy: its thread would make every barrier wait.
    """
    return max(1, min(int(free + 0.4), allowed, default))


def thread_cap() -> int:
    """The most threads auto may pick: the current setting, unless it is the one this module set (then
    the setting found before it, so that a second run in the same process may use more threads again)."""
    import torch

    current = torch.get_num_threads()
    if _OURS.get("set") != current:  # never set here, or changed since by someone else: theirs is the cap
        _OURS["cap"] = current
    return _OURS["cap"]


def configure_threads(requested: int, log: logging.Logger | None = None) -> ThreadChoice:
    """Set torch's intra-op threads for ``run.threads=requested`` and return what was chosen.

    Args:
        requested: a positive count is used as given; 0 = auto (see the module docstring).
        log: where to log the choice (info level); None = the ``mpma`` logger.

    Raises:
        ValueError: a negative ``requested``.
    """
    if requested < 0:
        raise ValueError(f"run.threads must be >= 0 (0 = auto: the free cores), got {requested}")
    cpus, cap = allowed_cpus(), thread_cap()
    if requested > 0:
        choice = ThreadChoice(requested, requested, len(cpus), None, "given")
    else:
        free, source = free_cores(cpus=cpus)
        choice = ThreadChoice(auto_threads(free, len(cpus), cap), 0, len(cpus), free, source)
    import torch

    torch.set_num_threads(choice.threads)
    _OURS["set"] = choice.threads
    most = min(len(cpus), cap)  # with one thread at most there is nothing to re-choose: no watch
    _WATCH["watch"] = ThreadWatch(choice.threads, most, cpus) if requested == 0 and most > 1 else None
    (log or logging.getLogger("mpma")).info(choice.describe())
    return choice


class ThreadWatch:
    """Re-makes an auto thread choice while the job runs, from what *other* processes use.

    Every ``interval`` seconds (checked by :meth:`poll`, which the Trainer calls after each step) it
    reads the busy ticks of ``cpus`` from ``/proc/stat`` and this process's own CPU time
    (``time.process_time``, all its threads) over the window: other processes' cores = busy cores minus
    our own. Threads for the rest follow :func:`auto_threads`, at most ``cap``. A lower count is set at
    once (a thread sharing a busy core stalls every barrier); a higher one only when two windows in a
    row ask for it, so a short burst of another job does not make the count flap.

    Args:
        threads: the count set now.
        cap: the most threads it may set (the auto choice's own cap).
        cpus: CPU ids this process may run on.
        interval: seconds between measurements.
        clock, cpu_clock: wall and process-CPU clocks (injectable for tests).
    """

    def __init__(self, threads: int, cap: int, cpus: list[int], interval: float = WATCH_SECONDS,
                 clock=time.monotonic, cpu_clock=time.process_time) -> None:
        self.threads, self.cap, self.cpus, self.interval = threads, cap, cpus, interval
        self.clock, self.cpu_clock = clock, cpu_clock
        self._wants_more = 0
        self._last = self._sample()

    def _sample(self) -> tuple[float, float, int, int] | None:
        """(wall s, own CPU s, busy ticks, total ticks) summed over ``cpus``; None without /proc/stat."""
        times = _cpu_times(self.cpus)
        if times is None:
            return None
        idle, total = sum(t[0] for t in times.values()), sum(t[1] for t in times.values())
        return self.clock(), self.cpu_clock(), total - idle, total

    def poll(self) -> int | None:
        """Measure if ``interval`` has passed; return the new thread count when it changed, else None."""
        if self._last is None or self.clock() - self._last[0] < self.interval:
            return None
        now = self._sample()
        if now is None:
            return None
        wall, own, busy, total = (b - a for a, b in zip(self._last, now))
        self._last = now
        if wall <= 0 or total <= 0:
            return None
        others = max(0.0, len(self.cpus) * busy / total - own / wall)
        wanted = auto_threads(len(self.cpus) - others, len(self.cpus), self.cap)
        if wanted > self.threads:
            self._wants_more += 1
            if self._wants_more < 2:
                return None
        self._wants_more = 0
        if wanted == self.threads:
            return None
        import torch

        logging.getLogger("mpma").info(
            "other processes now keep %.1f of %d cores busy: %d -> %d intra-op threads (run.threads=0: auto)",
            others, len(self.cpus), self.threads, wanted)
        torch.set_num_threads(wanted)
        self.threads = _OURS["set"] = wanted
        return wanted


_WATCH: dict[str, ThreadWatch | None] = {"watch": None}  # the auto choice being watched (configure_threads)


def poll_threads() -> int | None:
    """Let the watch of the last auto :func:`configure_threads` re-measure (cheap between measurements);
    the new thread count when it changed it, else None. A no-op after a positive ``run.threads``."""
    watch = _WATCH["watch"]
    return watch.poll() if watch is not None else None
