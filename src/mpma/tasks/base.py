"""The downstream task registry: one :class:`Task` subclass per task, registered by name.

A task says what it reads (image, which text fields), what it predicts (an answer, labels or a
match key), how its module is built, saved and rebuilt, how it is scored and which metric selects
the best epoch. Everything else (the CLI's choices, the collate step, saving and loading model
folders, evaluation) asks the registry; nothing outside ``mpma.tasks`` compares task names.

Adding a task is one file in this package::

    @register
    class MyTask(Task):
        name = "my_task"
        ...

Every module of the package is imported when the registry is first read, so the new file needs no
other edit.
"""

from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Protocol

import torch
from torch import nn

from mpma.data.synthrad import LABELS

if TYPE_CHECKING:  # typing only: the run context is built by mpma.pipelines
    from mpma.config import FinetuneConfig


class TaskRunContext(Protocol):
    """What :meth:`Task.evaluate` reads from a fine-tuning run (``mpma.pipelines.finetuning.FinetuneRun``)."""

    config: FinetuneConfig
    module: nn.Module | None
    backbone: nn.Module
    collate: object
    tokenizer: object
    classes: list[str]
    device: torch.device
    multi_label: bool
    max_length: int


class Task:
    """A downstream task. Subclasses set the class attributes and override what differs.

    Attributes:
        name: the task's name (CLI argument, ``task.json``).
        help: one line for ``mpma finetune --help``.
        selection_metric: the validation metric (higher is better) that picks the best epoch.
        reads_image: the model reads an image per example.
        text_fields: example keys read as text: ``("question",)`` or ``("text", "text_pair")`` (the
            second, optional, is encoded as a sentence pair); empty for image-only tasks.
        target: what a batch's targets are made of: ``"answer"`` (an answer-vocabulary index),
            ``"labels"`` (label names), ``"key"`` (retrieval match keys).
        manifest_kind: the record kind read from a prepared manifest (``mpma.data.records``).
        trains: whether the task has a trainable module (zero-shot classification has none).
        label_fraction: ``data.fraction`` subsamples the training labels (label-efficiency runs).
        synthrad_multi_label: synthrad labels of this task are multi-hot.
        smooths_labels: its module takes ``head.label_smoothing`` (a single-label cross-entropy loss;
            see :meth:`soft_targets` for a task whose loss depends on the config).
        recipe: the task's own defaults, as ``key=value`` settings of :class:`FinetuneConfig`; they
            replace the dataclass defaults beneath a ``--config`` file and the command line's
            overrides (``mpma.pipelines.finetuning.finetune_config``), and the run's ``config.json``
            records the values used.
    """

    name: ClassVar[str]
    help: ClassVar[str] = ""
    selection_metric: ClassVar[str]
    reads_image: ClassVar[bool] = True
    text_fields: ClassVar[tuple[str, ...]] = ()
    target: ClassVar[str] = "labels"
    manifest_kind: ClassVar[str] = "classification"
    trains: ClassVar[bool] = True
    label_fraction: ClassVar[bool] = False
    synthrad_multi_label: ClassVar[bool] = False
    smooths_labels: ClassVar[bool] = False
    recipe: ClassVar[tuple[str, ...]] = ()

    @property
    def reads_pair(self) -> bool:
        """The prediction reads an image and a text together (its test score is also taken with shuffled images)."""
        return self.reads_image and bool(self.text_fields) and self.target != "key"

    # ------------------------------------------------------------------ data

    def synthrad_examples(self, case, ref, index: int) -> list[dict]:
        """Examples of one synthrad case (``ref`` is its image reference, ``index`` its position in the split)."""
        raise NotImplementedError

    def synthrad_label_names(self) -> list[str]:
        return list(LABELS)

    def classes(self, config: FinetuneConfig, data) -> list[str]:
        """The output classes: label names by default (VQA: the answer vocabulary)."""
        return list(data.label_names)

    # ------------------------------------------------------------------ model

    def build_module(self, config: FinetuneConfig, backbone: nn.Module, classes: list[str], multi_label: bool) -> nn.Module | None:
        """The trainable task module around ``backbone`` (None when the task does not train)."""
        return None

    def prepare_backbone(self, config: FinetuneConfig, backbone: nn.Module) -> bool:
        """Adapt a backbone before the module is built; True when a fresh alignment head was started."""
        return False

    def head_settings(self, module: nn.Module | None) -> dict:
        """Everything needed to rebuild ``module`` around a backbone (saved in ``task.json["head"]``)."""
        return {"type": "none"}

    def module_from_settings(self, backbone: nn.Module, task: dict) -> nn.Module:
        """Rebuild the module :meth:`head_settings` described (``task`` is a ``task.json``)."""
        return backbone

    def soft_targets(self, config: FinetuneConfig) -> bool:
        """Targets as (B, classes) scores for a BCE head instead of (B,) indices."""
        return False

    def loss_names(self, config: FinetuneConfig) -> list[str]:
        return ["task"]

    def extra_texts(self, config: FinetuneConfig, classes: list[str]) -> list[str]:
        """Texts the model reads besides the examples' (zero-shot: the label prompts)."""
        return []

    def metadata(self, config: FinetuneConfig) -> dict:
        """Task-specific keys of ``task.json`` (e.g. the answer-vocabulary convention)."""
        return {}

    def starts_from_pretrained_model(self, config: FinetuneConfig, backbone: nn.Module) -> bool:
        """The initial backbone is already a model of this task, scored as epoch 0 before training."""
        return False

    # ------------------------------------------------------------------ evaluation

    def evaluate(self, run: TaskRunContext, examples: list[dict]) -> dict:
        """The task's metrics on ``examples`` (the selection metric among them)."""
        raise NotImplementedError


REGISTRY: dict[str, Task] = {}
_LOADED = False


def register(cls: type[Task]) -> type[Task]:
    """Class decorator: add an instance of ``cls`` to the registry under ``cls.name``."""
    if cls.name in REGISTRY and type(REGISTRY[cls.name]) is not cls:
        raise ValueError(f"task '{cls.name}' is registered twice ({type(REGISTRY[cls.name]).__name__} and {cls.__name__})")
    REGISTRY[cls.name] = cls()
    return cls


def _load_task_modules() -> None:
    """Import every module of ``mpma.tasks`` once, so each file's ``@register`` has run."""
    global _LOADED
    if _LOADED:
        return
    for info in pkgutil.iter_modules([str(Path(__file__).parent)]):  # this package's folder
        importlib.import_module(f"{__package__}.{info.name}")
    _LOADED = True


def task_names() -> list[str]:
    """Registered task names, in registration order."""
    _load_task_modules()
    return list(REGISTRY)


def get_task(name: str) -> Task:
    """The registered task called ``name``; a clear error listing the tasks otherwise."""
    _load_task_modules()
    if name not in REGISTRY:
        raise ValueError(f"unknown task '{name}' (tasks: {', '.join(REGISTRY)})")
    return REGISTRY[name]
