"""Diagnostics taken while a pre-training run trains (written into its log and summary)."""

from __future__ import annotations

import json
from pathlib import Path

from mpma.config import Config
from mpma.eval.grounding import flat_grounding, grounding_report
from mpma.hub import PretrainedModel, preprocess_settings


class GroundingDiagnostics:
    """The pointing game and the MLM image gap (:mod:`mpma.eval.grounding`) of the model being trained,
    appended to ``log.jsonl`` as ``{"step", "grounding": {...}}``; the last report is kept for the summary."""

    def __init__(self, model, tokenizer, config: Config, run_dir: Path) -> None:
        self.loaded = PretrainedModel(model, model, tokenizer, config, preprocess=preprocess_settings(config))
        self.run_dir = run_dir
        self.last: tuple[int, dict] | None = None

    def measure(self, step: int) -> dict:
        """The report at ``step``; logged unless the log already holds this step's (a resumed, finished run)."""
        report = grounding_report(self.loaded)
        if not self._logged(step):
            with (self.run_dir / "log.jsonl").open("a") as handle:
                handle.write(json.dumps({"step": step, "grounding": flat_grounding(report)}) + "\n")
        self.last = (step, report)
        return report

    def _logged(self, step: int) -> bool:
        log = self.run_dir / "log.jsonl"
        if not log.is_file():
            return False
        rows = (json.loads(line) for line in log.read_text().splitlines() if line.strip())
        return any(row.get("step") == step and "grounding" in row for row in rows)
