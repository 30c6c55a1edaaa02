"""Run folders: what a folder holds, the guard a training command passes before it writes, and the lock.

- :func:`inspect_run_folder` says what a folder holds: a pre-training run, a fine-tuning run (told
  apart by their ``config.json``), other files, checkpoints, whether the run finished;
- :func:`prepare_run_folder` is the guard of ``mpma pretrain`` and ``mpma finetune`` (``--out``): it
  refuses a folder that holds another run or files no mpma run writes, unless ``overwrite``;
- :data:`RUN_FILES` lists what ``--overwrite`` removes (and all it removes): the files an mpma run
  writes into its folder. Every other file is kept;
- :class:`RunLock` keeps a second process out of a folder while a run writes there.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from mpma.config import Config, ConfigError, FinetuneConfig, config_from_dict
from mpma.engine import checkpoint as ckpt

PRETRAIN = "pretrain"
FINETUNE = "finetune"
KIND_NAMES = {PRETRAIN: "pre-training", FINETUNE: "fine-tuning"}
_CONFIG_CLASSES = {PRETRAIN: Config, FINETUNE: FinetuneConfig}

# Every name an mpma run (pre-training or fine-tuning) writes into its folder: what --overwrite removes.
RUN_FILES: dict[str, str] = {
    "config.json": "the resolved configuration",
    "rejects.jsonl": "records that failed to load, with their reasons",
    "backbone.json": "fine-tuning: the backbone configuration",
    "task.json": "fine-tuning: task metadata",
    "tokenizer": "the tokenizer folder",
    "log.jsonl": "the training log",
    "log.tmp": "the training log being rewritten (--resume)",
    "curves.png": "the training curves",
    "curves.tmp.png": "the training curves being drawn",
    "checkpoints": "the training checkpoints (including *.broken ones set aside by --resume)",
    "best": "fine-tuning: the model folder of the best epoch",
    "summary.json": "pre-training: the summary",
    "metrics.json": "fine-tuning: the test metrics",
    "metrics.md": "fine-tuning: the test metrics as a table",
    "report": "the default output folder of `mpma report`",
    "tensorboard": "run.report_to=tensorboard: the TensorBoard event files",
    "wandb": "run.report_to=wandb: the offline Weights & Biases run",
}  # and each of these names + ".tmp" (a file being written atomically)
LOCK = ".lock"


def is_run_file(name: str) -> bool:
    """A name of :data:`RUN_FILES`, or one of them + ``.tmp``."""
    return name in RUN_FILES or (name.endswith(".tmp") and name[: -len(".tmp")] in RUN_FILES)


class RunFolderError(FileExistsError):
    """A folder cannot take this run (it holds another run or other files); the message says what to do."""


class RunFolderLockedError(RunFolderError):
    """Another process holds the folder's lock (its pid and host are in the message)."""


class RunFolderWarning(UserWarning):
    """Something in a run folder was repaired or replaced: a stale lock, a broken checkpoint, a partial log line."""


@dataclass
class RunFolder:
    """What a folder holds.

    Attributes:
        path: the folder.
        kind: ``PRETRAIN`` or ``FINETUNE`` when its ``config.json`` is a run's; None otherwise.
        config: that ``config.json`` (None unless ``kind`` is set).
        run_files: names in the folder that mpma runs write (:data:`RUN_FILES`).
        foreign: the other names (``config.json`` too when it is not a run's); the lock is neither.
        checkpoints: complete checkpoint folders, oldest first.
        finished: the run wrote its final file (``summary.json`` / ``metrics.json``).
    """

    path: Path
    kind: str | None = None
    config: dict | None = None
    run_files: list[str] = field(default_factory=list)
    foreign: list[str] = field(default_factory=list)
    checkpoints: list[Path] = field(default_factory=list)
    finished: bool = False

    @property
    def empty(self) -> bool:
        return not self.run_files and not self.foreign

    def describe(self) -> str:
        """"a pre-training run", "a fine-tuning run (task vqa)", ..."""
        if self.kind is None:
            return "files of no mpma run"
        text = f"a {KIND_NAMES[self.kind]} run"
        if self.kind == FINETUNE:
            text += f" (task {self.config.get('task')})"
        return text


def _run_kind(config: object) -> str | None:
    if not isinstance(config, dict) or "mpma_format" in config:  # a model folder's config.json is no run's
        return None
    if {"task", "init", "epochs"} <= set(config):
        return FINETUNE
    if {"vision", "text", "fusion", "optim"} <= set(config) and "task" not in config:
        return PRETRAIN
    return None


def inspect_run_folder(folder: str | Path) -> RunFolder:
    """What ``folder`` holds (a missing folder holds nothing); reads only ``config.json`` and names."""
    path = Path(folder)
    found = RunFolder(path)
    if not path.is_dir():
        return found
    for entry in sorted(path.iterdir()):
        if entry.name == LOCK:
            continue
        (found.run_files if is_run_file(entry.name) else found.foreign).append(entry.name)
    if "config.json" in found.run_files:
        try:
            config = json.loads((path / "config.json").read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            config = None
        found.kind = _run_kind(config)
        if found.kind is None:  # not a run's configuration: someone else's file
            found.run_files.remove("config.json")
            found.foreign.insert(0, "config.json")
        else:
            found.config = config
    found.checkpoints = ckpt.list_checkpoints(path)
    final = {PRETRAIN: "summary.json", FINETUNE: "metrics.json"}.get(found.kind)
    found.finished = final is not None and (path / final).is_file()
    return found


def _flatten(values: dict, prefix: str = "") -> dict[str, object]:
    flat = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def changed_values(old: dict, new: dict) -> dict[str, tuple[object, object]]:
    """``{dotted key: (old value, new value)}`` for every key whose value differs between two nested dicts."""
    flat_old, flat_new = _flatten(old), _flatten(new)
    return {key: (flat_old.get(key), flat_new.get(key)) for key in sorted(set(flat_old) | set(flat_new))
            if flat_old.get(key) != flat_new.get(key)}


def config_differences(saved: dict, wanted: dict, kind: str, ignore: set[str] = frozenset()) -> list[str]:
    """``"key saved -> wanted"`` for every dotted key whose value differs (keys in ``ignore`` left out),
    the top-level keys first (a task's recipe changes several ``head.*`` / ``optim.*`` keys at once, and a
    listing cut at four names must still show the task that changed).

    ``saved`` is rebuilt through the configuration class of ``kind`` first, so that keys a newer
    version added (with their defaults) or removed do not count as differences.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # removed keys: the run's own loading warns about them
            saved = config_from_dict(saved, _CONFIG_CLASSES[kind]).to_dict()
    except (ConfigError, TypeError):
        return ["config.json (it is not a valid configuration of this version)"]
    changed = [(key, values) for key, values in changed_values(saved, wanted).items() if key not in ignore]
    changed.sort(key=lambda item: "." in item[0])  # top-level keys (task, init, preset, epochs) first: what the run is
    return [f"{key} {old!r} -> {new!r}" for key, (old, new) in changed]


def clear_run_files(folder: str | Path) -> list[str]:
    """Remove the run files (:func:`is_run_file`) from ``folder``; returns their names. Nothing else is touched
    (a symbolic link is removed, never followed)."""
    path = Path(folder)
    removed = sorted(entry.name for entry in path.iterdir() if is_run_file(entry.name)) if path.is_dir() else []
    for name in removed:
        target = path / name
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        else:
            target.unlink()
    return removed


def _listing(names: list[str], limit: int = 6) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def prepare_run_folder(folder: str | Path, kind: str, config: dict, overwrite: bool = False,
                       ignore: set[str] = frozenset()) -> RunFolder:
    """The guard of a new run of ``kind`` with ``config`` (``to_dict()``) into ``folder``; returns what it held.

    Accepted: a missing or empty folder; an unfinished run of the same kind and configuration (keys
    in ``ignore`` left out) that has no checkpoints to resume, started again (its run files are
    removed); a folder holding only run files and no ``config.json`` (what a run killed before it wrote
    one leaves), likewise. With ``overwrite`` any folder is accepted and the run files in it
    (:func:`is_run_file`: the names of :data:`RUN_FILES`, whoever wrote them, since the run writes
    them again) are removed first; every other file is kept. The lock file is never touched.

    Raises:
        RunFolderError: anything else (another run, a finished run, files of no mpma run,
            checkpoints to resume), naming the folder, what it holds and what to do.
    """
    found = inspect_run_folder(folder)
    path, what = found.path, KIND_NAMES[kind]
    if found.empty:
        return found
    if overwrite:
        removed = clear_run_files(path)  # a file of these names goes, whoever wrote it: the run writes it again
        left = [name for name in found.foreign if name not in removed]
        kept = f"; kept: {_listing(left)}" if left else ""
        warnings.warn(f"--overwrite: removed {_listing(removed) or 'nothing'} from {path}{kept}", RunFolderWarning,
                      stacklevel=2)
        return found
    choose = "choose another --out, or pass --overwrite to replace the run files in it (other files are kept)"
    if found.kind is None:
        if found.foreign:
            raise RunFolderError(f"{path} holds files no mpma run writes ({_listing(found.foreign)}): {choose}")
        if found.checkpoints or "best" in found.run_files:
            raise RunFolderError(f"{path} holds checkpoints but no config.json of a run: {choose}")
        clear_run_files(path)  # leftovers of a run killed before it wrote config.json
        return found
    if found.kind != kind:
        raise RunFolderError(f"{path} holds {found.describe()}, not a {what} run: {choose}")
    differences = config_differences(found.config, config, kind, ignore)
    if differences:
        raise RunFolderError(f"{path} holds another {what} run (its config.json differs: {_listing(differences, 4)}"
                             f"{f'; {len(found.checkpoints)} checkpoints' if found.checkpoints else ''}): "
                             + (f"pass --resume to continue it with its own configuration, or {choose}"
                                if kind == PRETRAIN and found.checkpoints else choose))
    if kind == PRETRAIN and found.checkpoints:
        raise RunFolderError(f"{path} already holds checkpoints of this run: pass --resume to continue it, "
                             "--overwrite to start it again from step 0, or choose another --out")
    if found.finished:
        final = "summary.json" if kind == PRETRAIN else "metrics.json"
        raise RunFolderError(f"{path} already holds this {what} run, finished ({final}): pass --overwrite to run it "
                             "again (its results are replaced), or choose another --out")
    removed = clear_run_files(path)  # the same run, unfinished and not resumable: it starts again
    warnings.warn(f"{path} holds an unfinished {what} run of this configuration: starting it again "
                  f"(removed {_listing(removed)})", RunFolderWarning, stacklevel=2)
    return found


def resumable_run(folder: str | Path, kind: str) -> RunFolder:
    """What ``folder`` holds, checked to be a run of ``kind`` that ``--resume`` can continue.

    Raises:
        FileNotFoundError: no ``config.json`` (not a run folder).
        RunFolderError: the ``config.json`` of another kind of run or of no run.
    """
    found = inspect_run_folder(folder)
    if not (found.path / "config.json").is_file():
        raise FileNotFoundError(f"--resume: {found.path} has no config.json (is it a run folder?)")
    if found.kind != kind:
        raise RunFolderError(f"--resume: {found.path} holds {found.describe()}, not a {KIND_NAMES[kind]} run")
    return found


# ------------------------------------------------------------------------------------------------ lock


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: it exists, under another user
        return True
    return True


def read_lock(path: str | Path) -> dict | None:
    """The holder recorded in a lock file ({"pid", "host", "started"}); None when unreadable."""
    try:
        holder = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not isinstance(holder, dict) or not isinstance(holder.get("pid"), int) or holder["pid"] <= 0:
        return None
    return holder


class RunLock:
    """``FOLDER/.lock`` while a run writes into ``FOLDER``, holding this process's pid and host.

    The file is created with ``O_CREAT | O_EXCL``, so of two processes exactly one gets it. A lock
    whose process is gone (same host, pid not running) is taken over with a :class:`RunFolderWarning`.
    Use as a context manager: the lock is released on leaving, also on an error.
    """

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.path = self.folder / LOCK
        self.owner = {"pid": os.getpid(), "host": socket.gethostname(),
                      "started": time.strftime("%Y-%m-%d %H:%M:%S")}
        self.held = False

    def acquire(self) -> None:
        """Take the lock.

        Raises:
            RunFolderLockedError: a running process (or one on another host) holds it, or the lock
                file cannot be read; the message names the folder, the pid and what to do.
        """
        self.folder.mkdir(parents=True, exist_ok=True)
        for attempt in range(2):
            try:
                descriptor = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = read_lock(self.path)
                if attempt == 0 and holder is not None and self._stale(holder):
                    warnings.warn(f"{self.folder}: taking over the lock of process {holder['pid']} on "
                                  f"{holder['host']} (started {holder.get('started')}), which is no longer running",
                                  RunFolderWarning, stacklevel=2)
                    self.path.unlink(missing_ok=True)
                    continue
                raise RunFolderLockedError(self._held_message(holder)) from None
            with os.fdopen(descriptor, "w") as handle:
                handle.write(json.dumps(self.owner) + "\n")
            self.held = True
            return
        raise RunFolderLockedError(self._held_message(read_lock(self.path)))

    def _stale(self, holder: dict) -> bool:
        return holder.get("host") == self.owner["host"] and not _pid_alive(holder["pid"])

    def _held_message(self, holder: dict | None) -> str:
        if holder is None:
            return (f"{self.folder} is locked ({self.path} cannot be read; a run may be starting): if no run uses "
                    f"this folder, delete {self.path}")
        return (f"{self.folder} is in use by process {holder['pid']} on {holder['host']} (since "
                f"{holder.get('started')}): wait for it to finish or choose another --out; if that process is "
                f"gone, delete {self.path}")

    def release(self) -> None:
        """Remove the lock file if this process holds it."""
        if self.held and read_lock(self.path) == self.owner:
            self.path.unlink(missing_ok=True)
        self.held = False

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def truncate_log(log: Path, step: int) -> None:
    """Resuming at ``step``: drop the lines of ``log`` (a run's log.jsonl) that the interrupted run
    wrote after it (they will be replayed), and a partial last line (a killed write) with a
    :class:`RunFolderWarning`.

    Raises:
        ValueError: a line other than the last cannot be parsed (named by file and line number).
    """
    if not log.exists():
        return
    lines = [line for line in log.read_text().splitlines() if line.strip()]
    kept = []
    for number, line in enumerate(lines, start=1):
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            if number < len(lines):
                raise ValueError(f"{log}, line {number}: not valid JSON ({error.msg}); fix or delete that line, "
                                 "then --resume again") from None
            warnings.warn(f"{log}: dropped its partial last line (line {number}, {len(line)} characters, "
                          "left by a killed write)", RunFolderWarning, stacklevel=3)
            continue
        if row.get("step", 0) <= step:
            kept.append(line)
    tmp = log.with_suffix(".tmp")
    tmp.write_text("".join(line + "\n" for line in kept))
    tmp.replace(log)
