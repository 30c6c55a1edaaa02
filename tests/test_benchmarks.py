"""The diagnostic benchmark scripts run on a micro pre-training run (their figures are not asserted)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_mlm_image_dependence_masks_one_content_word_per_report(micro_run):
    result = _script("mlm_image_dependence").masked_word_accuracy(str(micro_run), n=24, batch_size=8)
    assert 20 <= result["masked words"] <= 24  # normal reports still name "no ..." words
    assert 0.0 <= result["own image"] <= 1.0 and 0.0 <= result["shuffled image"] <= 1.0
