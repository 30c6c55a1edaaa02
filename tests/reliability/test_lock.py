"""One process per run folder: ``FOLDER/.lock`` holds the pid and host of the process writing there
(issue 13, item 2)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mpma.cli import main
from mpma.engine.run_folder import LOCK, RunFolderLockedError, RunFolderWarning, RunLock, read_lock


def _dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def _plant_lock(folder: Path, pid: int, host: str | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK
    path.write_text(json.dumps({"pid": pid, "host": host or socket.gethostname(), "started": "earlier"}))
    return path


def test_a_second_lock_on_the_same_folder_is_refused(tmp_path) -> None:
    with RunLock(tmp_path / "run") as first:
        assert read_lock(first.path) == first.owner
        with pytest.raises(RunFolderLockedError, match=rf"{tmp_path / 'run'} is in use by process {os.getpid()}"):
            RunLock(tmp_path / "run").acquire()
    assert not (tmp_path / "run" / LOCK).exists()  # released on leaving


def test_the_lock_is_released_on_an_error(tmp_path) -> None:
    with pytest.raises(KeyError):
        with RunLock(tmp_path):
            raise KeyError("boom")
    assert not (tmp_path / LOCK).exists()


def test_a_lock_of_a_running_process_is_refused_by_the_cli(pretrain_args, tmp_path, capsys) -> None:
    run = tmp_path / "run"
    lock = _plant_lock(run, os.getpid())  # this very process: alive
    assert main(["pretrain", "--out", str(run), "--no-progress", *pretrain_args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and f"{run} is in use by process {os.getpid()}" in err and str(lock) in err
    assert lock.exists() and sorted(p.name for p in run.iterdir()) == [LOCK]  # nothing written, the lock kept


@pytest.mark.parametrize("content, expected", [
    ({"pid": 1234, "host": "another-host", "started": "x"}, "in use by process 1234 on another-host"),
    (None, "cannot be read; a run may be starting"),
])
def test_a_lock_of_another_host_or_unreadable_is_refused(tmp_path, content, expected) -> None:
    (tmp_path / LOCK).write_text("" if content is None else json.dumps(content))
    with pytest.raises(RunFolderLockedError, match=expected):
        RunLock(tmp_path).acquire()


def test_a_stale_lock_is_taken_over_with_a_message(pretrain_args, tmp_path) -> None:
    run = tmp_path / "run"
    pid = _dead_pid()
    _plant_lock(run, pid)
    with pytest.warns(RunFolderWarning, match=rf"{run}: taking over the lock of process {pid} .* no longer running"):
        assert main(["pretrain", "--out", str(run), "--no-progress", *pretrain_args]) == 0
    assert (run / "summary.json").exists() and not (run / LOCK).exists()


def test_finetune_takes_the_lock_too(finetune_args, tmp_path, capsys) -> None:
    run = tmp_path / "run"
    _plant_lock(run, os.getpid())
    assert main(["finetune", "vqa", "--out", str(run), *finetune_args]) == 2
    assert f"in use by process {os.getpid()}" in capsys.readouterr().err


@pytest.mark.slow
def test_two_pretraining_processes_on_one_folder(pretrain_args, mpma_env, venv_bin, tmp_path, capsys) -> None:
    """A running ``mpma pretrain`` keeps a second one out; killed, its lock is taken over by ``--resume``."""
    run = tmp_path / "run"
    long_run = [*pretrain_args, "optim.steps=100000", "run.checkpoint_every=100000"]
    first = subprocess.Popen([str(venv_bin / "mpma"), "pretrain", "--out", str(run), "--no-progress", *long_run],
                             env=mpma_env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (run / "log.jsonl").exists():  # training: lock taken, config.json written
            assert first.poll() is None, first.stderr.read()[-2000:]
            assert time.monotonic() < deadline, "the first run did not start training within 120 s"
            time.sleep(0.2)
        assert main(["pretrain", "--out", str(run), "--no-progress", *long_run]) == 2
        err = capsys.readouterr().err
        assert f"{run} is in use by process {first.pid}" in err
        assert main(["pretrain", "--out", str(run), "--resume", "--no-progress"]) == 2  # --resume too
        assert f"in use by process {first.pid}" in capsys.readouterr().err
    finally:
        first.kill()  # SIGKILL: no clean-up, the lock stays behind
        first.wait()
    assert read_lock(run / LOCK)["pid"] == first.pid
    with pytest.warns(RunFolderWarning, match=f"taking over the lock of process {first.pid}"):
        assert main(["pretrain", "--out", str(run), "--resume", "--no-progress", "optim.steps=2"]) == 0
    steps = [json.loads(line)["step"] for line in (run / "log.jsonl").read_text().splitlines()
             if "grounding" not in line and "config_change" not in line]
    assert steps == [1, 2]  # once each: the killed run's lines were dropped, the run restarted from step 0
    assert not (run / LOCK).exists()
