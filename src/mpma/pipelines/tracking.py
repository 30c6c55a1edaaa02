"""The pipelines' side of experiment tracking (``run.report_to``): what goes to the trackers and when.

:class:`mpma.engine.tracking.Tracker` writes; this module decides the content the engine cannot
draw itself (the engine does not import :mod:`mpma.viz`):

- every ``log.jsonl`` training record, through the trainer's ``on_log`` hook;
- validation metrics of fine-tuning epochs (:func:`log_validation`);
- at each pre-training checkpoint, a few held-out MAE reconstructions and word -> patch maps, drawn
  by the same code as ``mpma report`` (:func:`mpma.pipelines.examples.pretrain_examples`).

Trackers are flushed at every checkpoint and closed at the last one (the last step always checkpoints).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from mpma.engine.tracking import Tracker
from mpma.pipelines.examples import pretrain_examples

CHECKPOINT_EXAMPLES = 2  # held-out examples drawn at each checkpoint


def open_tracker(report_to: list[str], run_dir: Path, config: dict, is_main: bool) -> Tracker:
    """The run's tracker (inactive when ``report_to`` is empty or on ranks other than 0)."""
    return Tracker(run_dir, report_to, config, enabled=is_main)


def checkpoint_images(run_dir: Path, n: int = CHECKPOINT_EXAMPLES) -> dict[str, np.ndarray]:
    """{name: (H, W, 3|4) uint8} of the run's latest checkpoint: ``reconstructions`` (with a MIM decoder)
    and ``alignment_<i>`` for the first held-out examples; empty when they could not be drawn (warned)."""
    with tempfile.TemporaryDirectory(prefix="mpma-track-") as folder:
        examples = pretrain_examples(run_dir, folder, n, pointing_cases=0)
        paths = {"reconstructions": examples.reconstructions} if examples.reconstructions else {}
        paths.update({f"alignment_{i}": path for i, (path, _) in enumerate(examples.alignment)})
        return {name: np.asarray(Image.open(path).convert("RGB")) for name, path in paths.items()}


def track_pretrain_checkpoint(tracker: Tracker, run_dir: Path, step: int, last_step: int) -> None:
    """At a pre-training checkpoint: images of held-out examples, flush; close after the last step."""
    if not tracker.active:
        return
    tracker.log_images(checkpoint_images(run_dir), step)
    tracker.flush()
    if step >= last_step:
        tracker.close()


def log_validation(tracker: Tracker, step: int, epoch: int, metrics: dict, last_step: int) -> None:
    """A fine-tuning epoch's validation metrics (tags ``val/<metric>``, and ``epoch``); flush; close after
    the last step."""
    if not tracker.active:
        return
    tracker.log_record({"step": step, "epoch": epoch, "val": metrics})
    tracker.flush()
    if step >= last_step:
        tracker.close()
