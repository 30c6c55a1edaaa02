"""The task registry: every task is one registered class; the rest of mpma asks it, never a task name."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

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


PLANTED = '''
from mpma.tasks.base import Task, register


@register
class PlantedTask(Task):
    """A toy task: image classification under another name."""

    name = "planted_cls"
    help = "a task added as one file"
    selection_metric = "accuracy"
'''


def test_adding_a_task_is_one_file(tmp_path):
    """A new module in mpma/tasks/ registers itself: the registry, and so the CLI, know it."""
    planted = Path(mpma.tasks.__file__).parent / "_planted_for_test.py"
    planted.write_text(textwrap.dedent(PLANTED))
    try:
        code = "from mpma.tasks.base import get_task, task_names; print(task_names()); print(get_task('planted_cls').help)"
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                             env={**os.environ, "OMP_NUM_THREADS": "1"}).stdout
    finally:
        planted.unlink()
    assert "'planted_cls'" in out and "a task added as one file" in out
