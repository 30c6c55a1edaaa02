"""Held-out examples drawn with a pre-training run's latest checkpoint: MAE reconstructions and word -> patch maps.

Used by ``mpma report`` (:mod:`mpma.pipelines.report_examples`) and, at each checkpoint, by the
experiment trackers (:mod:`mpma.pipelines.tracking`). A failure is recorded in the result (and
warned about), never raised.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

from mpma.data.pairs import parse_data_spec
from mpma.data.records import read_manifest, resolve_image
from mpma.engine import checkpoint as ckpt
from mpma.eval.pointing import evaluate_pointing
from mpma.hub import load_model
from mpma.viz.alignment import alignment_figure
from mpma.viz.common import case_tensor, preprocess_images, synthrad_cases
from mpma.viz.reconstruct import reconstruct_files
from mpma.viz.report import PretrainExamples


def report_failure(what: str, error: Exception) -> str:
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
        examples.error = report_failure("examples", error)
    return examples
