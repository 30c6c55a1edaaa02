"""The page in a real browser: benchmarks/demo_screenshot.py drives headless Chromium through one VQA question.

Skips (with the reason) when gradio, Playwright or a system Chromium is missing.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "demo_screenshot.py"


def _script():
    spec = importlib.util.spec_from_file_location("demo_screenshot", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_one_vqa_question_in_headless_chromium(demo_models, tmp_path):
    script = _script()
    reason = script.skip_reason()
    if reason:
        pytest.skip(reason)
    result = script.screenshot(demo_models["vqa"], tmp_path / "demo.png")  # raises on a non-local request
    answers = result["answers"].split()
    assert any(answer in answers for answer in ("yes", "no", "left", "right", "two"))
    assert any(word.endswith("%") for word in answers)  # probabilities shown
    from PIL import Image

    assert Image.open(tmp_path / "demo.png").size[0] == 1280


def test_the_script_skips_cleanly_without_chromium(monkeypatch, capsys):
    script = _script()
    monkeypatch.setattr(script.shutil, "which", lambda name: None)  # no browser on PATH
    assert script.find_chromium() is None
    assert script.main(["--out", "unused.png"]) == 0  # a skip, not a failure (CI without the extras)
    out = capsys.readouterr().out
    assert out.startswith("SKIPPED: ") and ("apt-get install chromium" in out or 'pip install -e ".[demo-browser]"' in out)
    assert not Path("unused.png").exists()
