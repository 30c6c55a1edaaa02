"""The parts of ``mpma report`` that need the run's model, computed here and drawn by :mod:`mpma.viz.report`.

* a pre-training run with a checkpoint: reconstructions and word -> patch maps of a few held-out
  examples, and (synthrad data) the pointing game (:class:`~mpma.viz.report.PretrainExamples`);
* a fine-tuning run with an answer vocabulary (VQA) and test metrics: the best epoch's test
  predictions (:class:`~mpma.viz.report.VqaPredictions`).

A failure while computing them is recorded in the result (and warned about), never raised: the rest
of the report is still useful.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from mpma.config import FinetuneConfig, config_from_dict
from mpma.engine import checkpoint as ckpt
from mpma.eval.downstream import predict_scores
from mpma.pipelines.examples import pretrain_examples, report_failure
from mpma.pipelines.finetuning import FinetuneRun
from mpma.viz.report import VqaPredictions, is_finetuning_run, open_report_dir, write_report


def has_answer_vocabulary(run_dir: str | Path) -> bool:
    """The fine-tuning run answers questions from an answer vocabulary (``task.json["answer_vocab"]``)."""
    try:
        task = json.loads((Path(run_dir) / "task.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return False
    return bool(task.get("answer_vocab"))


def vqa_predictions(run_dir: str | Path) -> VqaPredictions:
    """The best epoch's predicted answer for every test example of a VQA fine-tuning run (on the CPU)."""
    run = Path(run_dir)
    try:
        config = config_from_dict(json.loads((run / "config.json").read_text()), FinetuneConfig)
        ft = FinetuneRun(config, torch.device("cpu"))
        ckpt.load_weights(ft.module, run / "best" / ckpt.WEIGHTS)
        examples = ft.data.splits["test"]
        scores = predict_scores(ft.module, examples, ft.collate, config.data.eval_batch_size, torch.device("cpu"))
        return VqaPredictions([ft.classes[i] for i in np.asarray(scores).argmax(1)], examples)  # scores (N, answers)
    except Exception as error:  # noqa: BLE001 - the rest of the report is still useful
        return VqaPredictions(error=report_failure("VQA breakdown", error))


def report_examples(run_dir: str | Path, out_dir: str | Path, examples: int = 3,
                    pointing_cases: int = 100) -> dict:
    """The keyword arguments ``examples`` / ``vqa`` of :func:`mpma.viz.report.write_report` for a run.

    ``examples`` held-out examples are drawn for a pre-training run (0: none, no model load); a
    fine-tuning run gets its VQA test predictions when it has an answer vocabulary, a best epoch
    and test metrics (and ``examples`` > 0).
    """
    run = Path(run_dir)
    if examples <= 0:
        return {}
    if not is_finetuning_run(run):
        return {"examples": pretrain_examples(run, out_dir, examples, pointing_cases)}
    if has_answer_vocabulary(run) and (run / "best").is_dir() and (run / "metrics.json").is_file():
        return {"vqa": vqa_predictions(run)}
    return {}


def write_run_report(run_dir: str | Path, out_dir: str | Path | None = None, examples: int = 3,
                     pointing_cases: int = 100) -> tuple[Path, Path]:
    """``mpma report``: compute what needs the model (:func:`report_examples`), then write the report.

    Args:
        run_dir: a pre-training or fine-tuning run folder.
        out_dir: where to write (default ``run_dir/report``).
        examples: held-out examples drawn (reconstructions, alignment maps); 0 skips them (no model load).
        pointing_cases: synthrad cases of the pointing game shown for a synthrad pre-training run (0: none).

    Returns:
        (HTML path, markdown path).
    """
    run, out = open_report_dir(run_dir, out_dir)
    return write_report(run, out, **report_examples(run, out, examples, pointing_cases))
