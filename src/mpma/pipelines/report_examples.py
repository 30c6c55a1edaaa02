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
import warnings
from pathlib import Path

import numpy as np
import torch

from mpma.config import FinetuneConfig, config_from_dict
from mpma.data.pairs import parse_data_spec
from mpma.data.records import read_manifest, resolve_image
from mpma.engine import checkpoint as ckpt
from mpma.eval.downstream import predict_scores
from mpma.eval.pointing import evaluate_pointing
from mpma.hub import load_model
from mpma.pipelines.finetuning import FinetuneRun
from mpma.viz.alignment import alignment_figure
from mpma.viz.common import case_tensor, preprocess_images, synthrad_cases
from mpma.viz.reconstruct import reconstruct_files
from mpma.viz.report import PretrainExamples, VqaPredictions, is_finetuning_run, open_report_dir, write_report


def _failure(what: str, error: Exception) -> str:
    """"ExceptionType: message" of ``error``, warned about as a skipped report part."""
    warnings.warn(f"report: {what} skipped: {error}", stacklevel=3)
    return f"{type(error).__name__}: {error}"


def example_inputs(loaded, n: int) -> tuple[torch.Tensor, list[str], list[str], list]:
    """(images (n, 3, S, S) normalised, texts, names, boxes) of ``n`` held-out examples of the model's data.

    Synthrad: test cases with their reports and lesion boxes; a manifest: its first ``n`` validation
    records (all records when none is marked validation), without boxes (None each).
    """
    pre = loaded.preprocess
    if loaded.config.data.dataset == "synthrad":
        cases = synthrad_cases(loaded.config, n, image_size=int(pre["image_size"]))
        images = torch.stack([case_tensor(c, pre) for c in cases])
        return images, [c.report for c in cases], [f"synthrad test case {i}" for i in range(n)], [list(c.boxes) for c in cases]
    manifest = Path(parse_data_spec(loaded.config.data.dataset)[1])
    records = read_manifest(manifest, "pretrain")
    held = [r for r in records if r.split in ("val", "validation")] or records
    held = held[:n]
    paths = [resolve_image(manifest, r) for r in held]
    return preprocess_images(paths, pre), [r.text for r in held], [p.name for p in paths], [None] * len(held)


def pretrain_examples(run_dir: str | Path, out_dir: str | Path, n: int, pointing_cases: int) -> PretrainExamples:
    """Draw ``n`` held-out examples with the run's latest checkpoint into ``out_dir``; run the pointing game.

    Writes ``reconstructions.png`` (when the model has a MIM decoder) and ``alignment_{i}.png`` for
    the first two examples; the pointing game runs on ``pointing_cases`` synthrad cases (synthrad
    data only; 0: none). A run without a checkpoint gives ``checkpoint=None`` and nothing else.
    """
    run, out = Path(run_dir), Path(out_dir)
    latest = ckpt.latest_checkpoint(run) if (run / "checkpoints").is_dir() else None
    examples = PretrainExamples(checkpoint=latest.name if latest else None, pointing_cases=pointing_cases)
    if latest is None:
        return examples
    try:
        loaded = load_model(run)
        images, texts, names, boxes = example_inputs(loaded, n)
        examples.has_mim_decoder = loaded.backbone.mim_decoder is not None
        if examples.has_mim_decoder:
            examples.reconstructions = reconstruct_files(loaded, images, texts, out / "reconstructions.png", names=names)
        for i in range(min(n, 2)):
            path, _ = alignment_figure(loaded, images[i:i + 1], texts[i], out / f"alignment_{i}.png",
                                       boxes=boxes[i] or None)
            examples.alignment.append((path, f"{names[i]}: word -> patch maps of each content word"))
        if loaded.config.data.dataset == "synthrad" and pointing_cases > 0:
            examples.pointing = evaluate_pointing(loaded, n=pointing_cases)
    except Exception as error:  # noqa: BLE001 - the rest of the report is still useful
        examples.error = _failure("examples", error)
    return examples


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
        return VqaPredictions(error=_failure("VQA breakdown", error))


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
