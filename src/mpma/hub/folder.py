"""Model folders: ONE format for training checkpoints, fine-tuning bests and exported models.

Folder layout::

    config.json        {"mpma_format": 1, "kind": "backbone"|"task", "backbone": <Config>, "text_encoder":
                        <transformers config of the text encoder>, "backbone_modules": [...], "align_global",
                        "align_local", "vocab_size", "pad_token_id", "preprocess": {image_size, mean, std, max_length}}
    model.safetensors  the weights: the backbone's keys, or ``backbone.*`` + ``head.*`` for a task model
    tokenizer/         the Hugging Face tokenizer files
    task.json          task models: task, classes (answer vocabulary / label names), head settings
    metrics.json       evaluation results, when known
    provenance.json    how it was made (pre-training data and steps, fine-tuning run, converted sources)
    MODEL_CARD.md      architecture, training data and steps, results, intended use and limits

A pre-training run's ``checkpoints/step_N/`` and a fine-tuning run's ``best/`` are such folders (a
checkpoint adds the trainer's ``state.pt``). Loading is strict (a missing or unexpected key is an
error naming every one) and never unpickles: weights are read only from ``model.safetensors``. The
folder is self-contained: the text encoder is rebuilt from the saved ``transformers`` config, and
``*.init`` paths recorded at training time are not read: loading reads nothing outside the folder.
``config.json`` is checked before anything is built (every key of the backbone config, the text
encoder's shape, vocabulary and padding id, heads, pre-processing): a damaged or hand-edited file is
an error naming the folder and the key, and a model too large for the memory available (or for
``max_params``) is refused before it is allocated. Run folders written by mpma 0.1.0 load through
:mod:`mpma.hub.legacy` (or are rewritten by ``mpma convert --upgrade``).
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mpma.config import Config, config_from_dict
from mpma.data.image import CLIP_MEAN, CLIP_STD
from mpma.data.text import load_tokenizer
from mpma.engine import checkpoint as ckpt
from mpma.models.factory import WeightsMismatchError, create_model, load_state_strict, read_state
from mpma.models.mpma import MPMAModel
from mpma.models.size import check_model_size
from mpma.tasks.base import get_task
from mpma.hub.card import model_card
from mpma.hub.checks import check_meta, check_task, folder_parameters

FORMAT_VERSION = 1
WEIGHTS = ckpt.WEIGHTS
CARD = "MODEL_CARD.md"

@dataclass
class PretrainedModel:
    """A loaded model folder.

    module: what the weights file describes: the task module (FusedClassifier, UnimodalClassifier,
        RetrievalTrainer) or the backbone itself.
    backbone: the MPMAModel inside ``module``.
    tokenizer: the Hugging Face tokenizer.
    config: the backbone Config.
    task: task metadata (task, classes, multi_label, head) or None for a bare backbone.
    preprocess: image_size, mean, std (CLIP normalisation) and max_length.
    """

    module: nn.Module
    backbone: MPMAModel
    tokenizer: Any
    config: Config
    task: dict | None = None
    preprocess: dict = field(default_factory=dict)
    metrics: dict | None = None
    provenance: dict = field(default_factory=dict)
    path: Path | None = None

    def save_pretrained(self, out_dir: str | Path) -> Path:
        return save_pretrained(self.module, out_dir, self.tokenizer, task=self.task, metrics=self.metrics,
                               provenance=self.provenance, config=self.config)


# ------------------------------------------------------------------------------------------ saving


def backbone_of(module: nn.Module) -> MPMAModel:
    """The MPMAModel of a backbone or of a task module (``module.backbone``)."""
    if isinstance(module, MPMAModel):
        return module
    backbone = getattr(module, "backbone", None)
    if not isinstance(backbone, MPMAModel):
        raise TypeError(f"save_pretrained expects an MPMAModel or a task module with .backbone, got {type(module).__name__}")
    return backbone


def preprocess_settings(config: Config) -> dict:
    return {"image_size": config.vision.image_size, "mean": list(CLIP_MEAN), "std": list(CLIP_STD),
            "max_length": config.text.max_length}


def describe_task(module: nn.Module, task: dict) -> dict:
    """``task`` completed with the head settings the registry reads from ``module`` (checked against the classes)."""
    task = dict(task)
    spec = get_task(task.get("task", ""))
    task["head"] = spec.head_settings(None if isinstance(module, MPMAModel) else module)
    outputs = task["head"].get("outputs")
    if outputs is not None and len(task.get("classes") or []) != outputs:
        raise ValueError(f"the head has {outputs} outputs but task['classes'] names {len(task.get('classes') or [])}")
    task.setdefault("multi_label", False)
    return task


def folder_metadata(backbone: MPMAModel, tokenizer, config: Config, kind: str) -> dict:
    """The ``config.json`` of a model folder (``*.init`` paths cleared: the weights are in the folder)."""
    saved = config_from_dict(config.to_dict())
    saved.vision.init = saved.text.init = None
    global_, local = backbone.align_parts
    return {"mpma_format": FORMAT_VERSION, "kind": kind, "backbone": saved.to_dict(),
            "text_encoder": backbone.text.encoder.config.to_dict(), "backbone_modules": sorted(backbone.heads),
            "align_global": global_, "align_local": local, "vocab_size": len(tokenizer),
            "pad_token_id": tokenizer.pad_token_id, "preprocess": preprocess_settings(config)}


def save_pretrained(
    module: nn.Module, out_dir: str | Path, tokenizer, task: dict | None = None, metrics: dict | None = None,
    provenance: dict | None = None, config: Config | None = None, extra_files: dict[str, Any] | None = None,
) -> Path:
    """Write a self-contained model folder (see the module docstring), atomically: it is assembled
    under a temporary name and then replaces ``out_dir``.

    Args:
        module: an MPMAModel, or a task module (FusedClassifier, UnimodalClassifier, RetrievalTrainer).
        out_dir: the folder (replaced if it exists).
        tokenizer: the tokenizer the model was trained with.
        task: for task models and zero-shot backbones: ``{"task": name, "classes": [...], ...}`` (extra keys kept).
        metrics: evaluation results for the card (e.g. a run's metrics.json).
        provenance: how the model was made (pre-training data/steps, init, sources) for the card.
        config: the backbone Config; defaults to ``backbone.config``.
        extra_files: name -> callable(path) writing more files into the folder (a checkpoint's ``state.pt``).

    Returns:
        the folder.
    """
    backbone = backbone_of(module)
    config = config or backbone.config
    if task is None and module is not backbone:
        raise ValueError("save_pretrained of a task module needs task={'task': ..., 'classes': [...]}")
    task = describe_task(module, task) if task is not None else None
    out = Path(out_dir)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    meta = folder_metadata(backbone, tokenizer, config, "backbone" if task is None else "task")
    write_json(tmp / "config.json", meta)
    ckpt.save_weights(module, tmp / WEIGHTS)
    tokenizer.save_pretrained(str(tmp / "tokenizer"))
    for name, value in (("task.json", task), ("metrics.json", metrics), ("provenance.json", provenance)):
        if value:
            write_json(tmp / name, value)
    n_params = sum(p.numel() for p in module.parameters())
    (tmp / CARD).write_text(model_card(meta, task, metrics, provenance or {}, n_params))
    for name, writer in (extra_files or {}).items():
        writer(tmp / name)
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    return out


def write_json(path: Path, value) -> None:
    """JSON via a temp file + rename."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(value, indent=2, default=float) + "\n")
    os.replace(tmp, path)


# ------------------------------------------------------------------------------------------ loading


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not valid JSON ({error.msg} at line {error.lineno})") from None


def is_model_folder(path: str | Path) -> bool:
    """True for a folder whose config.json says it is a model folder."""
    config = Path(path) / "config.json"
    if not config.is_file():
        return False
    values = read_json(config)
    return isinstance(values, dict) and "mpma_format" in values


def resolve_model_folder(path: str | Path) -> Path | None:
    """The model folder of ``path``: itself, a fine-tuning run's ``best/``, or a pre-training run's
    newest complete checkpoint; None when there is none in the current format."""
    folder = Path(path)
    if is_model_folder(folder):
        return folder
    if is_model_folder(folder / "best"):
        return folder / "best"
    latest = ckpt.latest_checkpoint(folder)
    if latest is not None and is_model_folder(latest):
        return latest
    return None


def _refuse_pickles(folder: Path) -> None:
    if not (folder / WEIGHTS).exists():
        pickled = [p.name for p in folder.glob("*") if p.suffix in (".bin", ".pt", ".pth", ".pkl", ".ckpt")]
        if pickled:
            raise FileNotFoundError(f"{folder} has no {WEIGHTS}; pickled weight files ({', '.join(pickled)}) are never "
                                    "loaded by from_pretrained because unpickling can run code")


def split_state(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:  # noqa: D401
    """The entries of ``state`` under ``prefix``, with the prefix removed."""
    return {key[len(prefix):]: value for key, value in state.items() if key.startswith(prefix)}


def from_pretrained(path: str | Path, device: str | torch.device = "cpu", drop_heads: set[str] = frozenset(),
                    max_params: int | None = None) -> PretrainedModel:
    """Load a model folder (strict; only ``model.safetensors`` is read; nothing outside the folder is read).

    Args:
        path: the folder.
        device: where the module goes.
        drop_heads: backbone pre-training heads not to build (e.g. ``{"mlm_head", "mim_decoder"}`` for fine-tuning);
            their saved weights are skipped.
        max_params: refuse a folder whose config describes more parameters (None: only the available-memory check).

    Raises:
        FileNotFoundError: not such a folder, or it has no model.safetensors.
        ValueError (ConfigError, FolderError): a missing or invalid key of config.json / task.json, named.
        ModelTooLargeError: the config describes a model above ``max_params`` or the available memory.
        WeightsMismatchError: missing/unexpected/mis-shaped keys, each named.
    """
    folder = Path(path)
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{folder}: no config.json (expected a model folder written by save_pretrained, "
                                "`mpma convert` or a training run)")
    meta = read_json(folder / "config.json")
    if not isinstance(meta, dict) or meta.get("mpma_format") != FORMAT_VERSION:
        raise ValueError(f"{folder}/config.json is not an mpma model folder of format {FORMAT_VERSION} "
                         f"(mpma_format={meta.get('mpma_format') if isinstance(meta, dict) else None!r}); run folders "
                         "load with mpma.hub.load_model")
    _refuse_pickles(folder)
    config = check_meta(folder, meta)
    config.vision.init = config.text.init = None  # the weights are in the folder: nothing outside it is read
    task = read_json(folder / "task.json") if (folder / "task.json").exists() else None
    if task is not None:
        check_task(folder, task)
    heads = set(meta.get("backbone_modules", [])) - set(drop_heads)
    check_model_size(folder_parameters(config, meta, heads, task), max_params, f"{folder}/config.json")
    state = read_state(folder / WEIGHTS)
    task_module = task is not None and task.get("head", {}).get("type") not in ("zero_shot", "none")
    dropped = tuple(f"{'backbone.' if task_module else ''}{head}." for head in drop_heads)
    state = {k: v for k, v in state.items() if not k.startswith(dropped)}
    # a task module's weights (backbone.* and head.*) are loaded in one strict pass below, so every
    # mismatched key is named at once
    backbone = create_model(config, meta["vocab_size"], meta["pad_token_id"], heads=heads,
                            align_parts=(meta.get("align_global", True), meta.get("align_local", True)),
                            text_encoder=meta.get("text_encoder"), state=None if task_module else state,
                            source=folder / WEIGHTS, max_params=max_params)
    module = get_task(task["task"]).module_from_settings(backbone, task) if task is not None else backbone
    if task_module:
        load_state_strict(module, state, folder / WEIGHTS)
    module.to(device).eval()
    tokenizer = load_tokenizer(folder / "tokenizer")
    if len(tokenizer) > backbone.text.word_embeddings().num_embeddings:
        raise ValueError(f"{folder}/tokenizer has {len(tokenizer)} tokens but the model embeds only "
                         f"{backbone.text.word_embeddings().num_embeddings} (config.json 'vocab_size'): the tokenizer "
                         "is not this model's")
    metrics = read_json(folder / "metrics.json") if (folder / "metrics.json").exists() else None
    provenance = read_json(folder / "provenance.json") if (folder / "provenance.json").exists() else {}
    return PretrainedModel(module, backbone, tokenizer, config, task,
                           meta.get("preprocess") or preprocess_settings(config), metrics, provenance, folder)


def pretrain_provenance(config: Config, run_dir: Path | None) -> dict:
    """How a pre-trained backbone was made (data, steps, objectives, init checkpoints; the run's summary)."""
    info = {"data": config.data.dataset, "train_size": config.data.train_size if config.data.dataset == "synthrad" else None,
            "steps": config.optim.steps, "batch_size": config.data.batch_size, "lr": config.optim.lr,
            "objectives": dict(config.to_dict()["objectives"]), "vision_init": config.vision.init,
            "text_init": config.text.init}
    if run_dir is not None and (run_dir / "summary.json").exists():
        info["summary"] = read_json(run_dir / "summary.json")
    return info
