"""``mpma report``: HTML + markdown of pre-training and fine-tuning runs, finished or in progress."""

from __future__ import annotations

import base64
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mpma.cli import main
from mpma.pipelines.report_examples import write_run_report
from mpma.viz.report import VqaPredictions, vqa_breakdown, write_report


@pytest.fixture(scope="module")
def vqa_run(tmp_path_factory, micro_run) -> Path:
    from mpma.pipelines.finetuning import finetune_config, run_finetune

    out = tmp_path_factory.mktemp("report") / "vqa"
    config = finetune_config("vqa", str(micro_run), None, None,
                             ["data.train_size=12", "data.val_size=4", "data.test_size=6", "data.batch_size=8",
                              "data.eval_batch_size=64", "epochs=1", "run.threads=1"])
    run_finetune(config, out, progress=False)
    return out


def _check_references(html_path: Path, md_path: Path) -> list[str]:
    """Every file the HTML or markdown references exists; embedded images are real, non-constant PNGs."""
    page = html_path.read_text()
    refs = re.findall(r"(?:src|href)='([^']*)'", page)
    files = [r for r in refs if not r.startswith("data:")]
    for ref in files:
        assert not re.match(r"^[a-z]+://", ref) and (html_path.parent / ref).is_file(), ref
    for ref in refs:
        if ref.startswith("data:image/png;base64,"):
            data = base64.b64decode(ref.split(",", 1)[1])
            assert data[:8] == b"\x89PNG\r\n\x1a\n"
    md_refs = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md_path.read_text())
    assert sorted(set(md_refs)) == sorted(set(files))  # the twins show the same figures
    for ref in md_refs:
        pixels = np.asarray(Image.open(md_path.parent / ref).convert("L"), dtype=np.float32)
        assert pixels.std() > 1.0, ref
    return md_refs


def test_pretraining_report(micro_run, tmp_path):
    html_path, md_path = write_run_report(micro_run, tmp_path / "rep", examples=2, pointing_cases=8)
    figures = _check_references(html_path, md_path)
    assert {"curves.png", "reconstructions.png", "alignment_0.png"} <= set(figures)
    markdown = md_path.read_text()
    for section in ("Training curves", "Loss: first vs last", "Zero-shot retrieval", "Examples", "Pointing game",
                    "Configuration"):
        assert f"## {section}" in markdown, section
    assert "finished" in markdown and "| mlm |" in markdown


def test_report_of_a_run_still_being_written(micro_run, tmp_path, capsys):
    run = tmp_path / "running"
    run.mkdir()
    shutil.copy(micro_run / "config.json", run / "config.json")
    lines = (micro_run / "log.jsonl").read_text().splitlines()
    (run / "log.jsonl").write_text(lines[0] + "\n" + lines[1][:25])  # a partial last line, no checkpoint yet
    assert main(["report", "--run", str(run)]) == 0
    html_path, md_path = (Path(p) for p in capsys.readouterr().out.split())
    assert html_path.parent == run / "report"
    _check_references(html_path, md_path)
    markdown = md_path.read_text()
    assert "in progress" in markdown and "No checkpoint yet" in markdown and "1 unreadable line" in markdown


def test_finetuning_writes_curves_and_vqa_report(vqa_run, tmp_path):
    assert (vqa_run / "curves.png").is_file()  # drawn after the epoch's validation line
    html_path, md_path = write_run_report(vqa_run, tmp_path / "rep", examples=1)
    figures = _check_references(html_path, md_path)
    assert set(figures) == {"curves.png", "vqa_confusion.png"}
    markdown = md_path.read_text()
    for section in ("Validation per epoch", "Test metrics (kept epoch)", "VQA test breakdown", "Backbone"):
        assert f"## {section}" in markdown, section
    assert "| true \\ predicted | yes | no | other |" in markdown and "| presence |" in markdown


def test_report_draws_only_what_it_is_given(micro_run, vqa_run, tmp_path):
    """viz.report reads files and draws: without computed examples no model is loaded and no section is made up."""
    _, md_path = write_report(micro_run, tmp_path / "bare")
    markdown = md_path.read_text()
    assert "## Training curves" in markdown and "## Examples" not in markdown and "Pointing game" not in markdown
    examples = [{"answer": "yes", "answer_type": "CLOSED", "question_type": "presence"},
                {"answer": "no", "answer_type": "CLOSED", "question_type": "presence"}]
    _, md_path = write_report(vqa_run, tmp_path / "given", vqa=VqaPredictions(["yes", "yes"], examples))
    _check_references(md_path.with_name("index.html"), md_path)
    assert "| yes | 1 | 0 | 0 |" in md_path.read_text() and "| presence | 2 | 0.5 |" in md_path.read_text()
    _, md_path = write_report(vqa_run, tmp_path / "failed", vqa=VqaPredictions(error="OSError: no weights"))
    assert "VQA breakdown skipped: OSError: no weights" in md_path.read_text()


def test_report_of_a_folder_that_is_not_a_run(tmp_path, capsys):
    assert main(["report", "--run", str(tmp_path)]) == 2
    assert "config.json" in capsys.readouterr().err


def test_vqa_breakdown_on_known_predictions():
    examples = [{"answer": "yes", "answer_type": "CLOSED", "question_type": "presence"},
                {"answer": "no", "answer_type": "CLOSED", "question_type": "presence"},
                {"answer": "no", "answer_type": "CLOSED", "question_type": "location"},
                {"answer": "left", "answer_type": "OPEN", "question_type": "side"}]
    confusion, rows = vqa_breakdown(["yes", "yes", "left", "Left"], examples)
    assert confusion == {"yes": {"yes": 1, "no": 0, "other": 0}, "no": {"yes": 1, "no": 0, "other": 1}}
    assert rows == [["location", 1, 0.0], ["presence", 2, 0.5], ["side", 1, 1.0]]


@pytest.mark.parametrize("argv", [["visualize", "--help"], ["visualize", "alignment", "--help"], ["report", "--help"]])
def test_help_imports_no_heavy_module(argv):
    code = ("import sys\nfrom mpma.cli import main\ntry:\n    main(%r)\nexcept SystemExit:\n    pass\n"
            "print('HEAVY', sorted(m for m in ('torch', 'matplotlib', 'numpy') if m in sys.modules))\n" % argv)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "HEAVY []" in proc.stdout
