"""Experiment trackers beside ``log.jsonl``: TensorBoard event files and (offline) Weights & Biases runs.

``run.report_to`` names them (``none`` by default). The trainer hands each ``log.jsonl`` record to
:meth:`Tracker.log_record` (every loss term, metrics, ``lr``, ``samples_per_s``, ``grad_norm``);
the pipelines add validation metrics (``{"val": {...}}`` records) and, at each checkpoint, images
(:meth:`Tracker.log_images`: MAE reconstructions, word -> patch maps drawn by :mod:`mpma.viz`).

Tags: a training record's keys become ``train/<key>`` (``train/mlm``, ``train/lr``,
``train/samples_per_s``); nested dicts are flattened with ``/`` (``val/accuracy``,
``val/closed/accuracy``); images are ``images/<name>``. Only rank 0 writes.

- ``tensorboard``: ``RUN/tensorboard/`` (``tensorboard --logdir RUN``); needs the ``track`` extra.
- ``wandb``: ``RUN/wandb/``, always offline (``WANDB_MODE=offline``: nothing is sent; ``wandb sync``
  uploads later if you choose); needs ``pip install wandb``. Never a dependency of mpma.

A tracker asked for but not installed is a :class:`MissingTrackerError` (a ``ConfigError`` and an
``ImportError``: ``mpma`` prints it as one ``error:`` line) naming the ``pip install`` that brings it,
raised when the run starts (before any training).
"""

from __future__ import annotations

import atexit
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mpma.config import ConfigError

TENSORBOARD_DIR = "tensorboard"
TENSORBOARD_HINT = ('run.report_to=tensorboard needs the "track" extra: pip install -e ".[track]" '
                    '(or pip install "mpma[track]")')
WANDB_HINT = "run.report_to=wandb needs wandb, which mpma never installs: pip install wandb (it runs offline)"


class MissingTrackerError(ConfigError, ImportError):
    """``run.report_to`` names a tracker whose package is not installed (the message names the install)."""


def flatten(record: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """Finite numbers of a (nested) record as ``{"a/b": value}``; strings, lists, None and non-finite values
    are left out. A top-level ``"step"`` key is not a value."""
    out: dict[str, float] = {}
    for key, value in record.items():
        if not prefix and key == "step":
            continue
        tag = f"{prefix}/{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            out.update(flatten(value, tag))
        elif isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool):
            if math.isfinite(float(value)):
                out[tag] = float(value)
    return out


def _as_hwc_uint8(image: np.ndarray) -> np.ndarray:
    """(H, W), (H, W, 3|4) uint8 or floats in [0, 1] -> (H, W, 3) uint8."""
    array = np.asarray(image)
    if array.dtype != np.uint8:
        array = (np.clip(array.astype(np.float32), 0, 1) * 255).round().astype(np.uint8)
    if array.ndim == 2:
        array = np.repeat(array[:, :, None], 3, axis=2)
    if array.ndim != 3 or array.shape[2] not in (3, 4):
        raise ValueError(f"an image must be (H, W), (H, W, 3) or (H, W, 4), got shape {array.shape}")
    return array[:, :, :3]


class Tracker:
    """Writes records and images to the trackers named in ``report_to`` (no-op when there are none).

    Args:
        run_dir: the run folder (event files under ``run_dir/tensorboard``, wandb under ``run_dir/wandb``).
        report_to: tracker names, already checked (``RunConfig.report_to``): "tensorboard", "wandb".
        config: the run's resolved configuration (recorded by wandb as the run config).
        enabled: False on ranks other than 0 (nothing is opened or written).

    Raises:
        MissingTrackerError: a named tracker is not installed (one line naming the pip install).
    """

    def __init__(self, run_dir: str | Path, report_to: Sequence[str], config: Mapping | None = None,
                 enabled: bool = True) -> None:
        self.run_dir = Path(run_dir)
        self.names = list(report_to) if enabled else []
        self._tensorboard = None
        self._wandb = None
        if "tensorboard" in self.names:
            self._tensorboard = _open_tensorboard(self.run_dir / TENSORBOARD_DIR)
        if "wandb" in self.names:
            self._wandb = _open_wandb(self.run_dir, config)
        if self.active:
            atexit.register(self.close)

    @property
    def active(self) -> bool:
        return self._tensorboard is not None or self._wandb is not None

    def log_record(self, record: Mapping[str, Any], step: int | None = None, prefix: str | None = None) -> None:
        """One ``log.jsonl`` record at ``step`` (default: ``record["step"]``).

        ``prefix`` defaults to "train" for a training-step record and none for a record whose values are
        nested under names of their own (``{"step", "epoch", "val": {...}}``: tags ``val/...``, ``epoch``).
        """
        if not self.active:
            return
        step = int(record["step"] if step is None else step)
        nested = any(isinstance(v, Mapping) for v in record.values())
        values = flatten(record, "" if (prefix is None and nested) else (prefix or "train"))
        values.pop("train/step", None)
        if self._tensorboard is not None:
            for tag, value in values.items():
                self._tensorboard.add_scalar(tag, value, step)
        if self._wandb is not None:
            self._wandb.log(values, step=step)

    def log_images(self, images: Mapping[str, np.ndarray], step: int) -> None:
        """Images ``{name: (H, W[, 3|4]) uint8 or [0, 1] floats}`` at ``step`` as ``images/<name>``; flushed."""
        if not self.active or not images:
            return
        for name, image in images.items():
            pixels = _as_hwc_uint8(image)
            if self._tensorboard is not None:
                self._tensorboard.add_image(f"images/{name}", pixels, step, dataformats="HWC")
            if self._wandb is not None:
                import wandb  # installed: _open_wandb imported it

                self._wandb.log({f"images/{name}": wandb.Image(pixels)}, step=step)
        self.flush()

    def flush(self) -> None:
        """Write what is buffered to disk (the trainer calls it at each checkpoint through the pipelines)."""
        if self._tensorboard is not None:
            self._tensorboard.flush()

    def close(self) -> None:
        """Flush and close every tracker (idempotent; also registered to run at exit)."""
        if self._tensorboard is not None:
            self._tensorboard.close()
            self._tensorboard = None
        if self._wandb is not None:
            self._wandb.finish()
            self._wandb = None


def _open_tensorboard(folder: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as error:  # torch's writer imports the tensorboard package
        raise MissingTrackerError(TENSORBOARD_HINT) from error
    folder.mkdir(parents=True, exist_ok=True)
    return SummaryWriter(log_dir=str(folder), flush_secs=30)


def _open_wandb(run_dir: Path, config: Mapping | None):
    os.environ["WANDB_MODE"] = "offline"  # never contacts a server, whatever the user's settings say
    os.environ.setdefault("WANDB_SILENT", "true")
    try:
        import wandb
    except ImportError as error:
        raise MissingTrackerError(WANDB_HINT) from error
    run_dir.mkdir(parents=True, exist_ok=True)
    return wandb.init(project="mpma", name=run_dir.name, dir=str(run_dir), mode="offline", config=dict(config or {}),
                      reinit="finish_previous")
