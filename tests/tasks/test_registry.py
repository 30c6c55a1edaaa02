"""The task registry: every task is one registered class; the rest of mpma asks it, never a task name."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import mpma.tasks
from mpma.cli import main
from mpma.data.collate import TARGETS
from mpma.tasks.base import REGISTRY, Task, get_task, register, task_names

BUILT_IN = {"vqa", "mm_cls", "img_cls", "txt_cls", "retrieval", "zero_shot_cls"}


def test_the_built_in_tasks_are_registered():
    assert BUILT_IN <= set(task_names())


@pytest.mark.parametrize("name", sorted(BUILT_IN))
def test_each_task_declares_what_the_rest_of_mpma_reads(name):
    task = get_task(name)
    assert task.name == name and task.help and task.selection_metric
    assert task.target in TARGETS
    assert task.manifest_kind in ("pretrain", "vqa", "classification")
    assert set(task.text_fields) <= {"question", "text", "text_pair"}
    assert task.reads_image or task.text_fields, "a task must read something"
    assert task.trains or name == "zero_shot_cls"


def test_reads_pair_marks_the_tasks_scored_with_shuffled_images():
    assert {n for n in BUILT_IN if get_task(n).reads_pair} == {"vqa", "mm_cls"}


def test_an_unknown_task_is_an_error_naming_the_registered_ones(capsys):
    with pytest.raises(ValueError, match="unknown task 'vqa2'.*vqa"):
        get_task("vqa2")
    assert main(["finetune", "vqa2", "--out", "unused"]) == 2
    assert "retrieval" in capsys.readouterr().err


def test_a_name_registered_twice_by_another_class_is_refused():
    class Clash(Task):
        name = "vqa"
        selection_metric = "overall"

    with pytest.raises(ValueError, match="registered twice"):
        register(Clash)
    assert type(REGISTRY["vqa"]).__name__ == "VQA"


# The README's "Adding a task" example, verbatim.
PLANTED = '''
from mpma.tasks.base import register
from mpma.tasks.classification import LabelTask, UnimodalClassifier


@register
class OrganClassification(LabelTask):
    name = "organ_cls"
    help = "organ from the image"
    selection_metric = "accuracy"

    def build_module(self, config, backbone, classes, multi_label):
        return UnimodalClassifier(backbone, "image", len(classes), multi_label)

    def head_settings(self, module):
        return module.settings()

    def module_from_settings(self, backbone, task):
        return UnimodalClassifier.from_settings(backbone, task["head"], bool(task.get("multi_label")))
'''


def classification_manifest(folder: Path) -> Path:
    """Images labelled by brightness ("liver" bright, "brain" dark), train and test splits."""
    rows = []
    for i in range(24):
        label = "liver" if i % 2 else "brain"
        path = folder / f"img{i}.png"
        Image.fromarray(np.full((40, 40), 200 if i % 2 else 40, dtype=np.uint8)).save(path)
        rows.append({"id": str(i), "image": path.name, "labels": [label], "split": "test" if i >= 16 else "train"})
    manifest = folder / "organs.jsonl"
    manifest.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return manifest


def test_adding_a_task_is_one_file(tmp_path, micro_preset_text):
    """The README's example, dropped into mpma/tasks/, is a task of the registry and of the CLI: it
    fine-tunes, evaluates and saves a model folder that loads back."""
    planted = Path(mpma.tasks.__file__).parent / "_planted_for_test.py"
    planted.write_text(textwrap.dedent(PLANTED))
    preset = tmp_path / "micro.yaml"
    preset.write_text(micro_preset_text)
    manifest = classification_manifest(tmp_path)
    code = ("import sys; from mpma.cli import main; from mpma.hub import load_model; "
            f"assert main(['finetune', 'organ_cls', '--data', {str(manifest)!r}, '--out', {str(tmp_path / 'run')!r}, "
            f"'--no-progress', 'preset={preset}', 'epochs=1', 'data.batch_size=8']) == 0; "
            f"print(load_model({str(tmp_path / 'run')!r}).task)")
    try:
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              env={**os.environ, "OMP_NUM_THREADS": "1"})
    finally:
        planted.unlink()
    assert done.returncode == 0, done.stderr[-2000:]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["task"] == "organ_cls" and 0 <= metrics["test"]["accuracy"] <= 1
    assert "'task': 'organ_cls'" in done.stdout and "'classes': ['brain', 'liver']" in done.stdout
