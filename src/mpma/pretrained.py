"""``save_pretrained`` / ``from_pretrained``: shareable model folders for the backbone and task models.

Folder layout::

    config.json        {"mpma_format": 1, "kind": "backbone"|"task", "backbone": <Config>, "text_encoder":
                        <transformers config of the text encoder>, "backbone_modules": [...], "vocab_size",
                        "pad_token_id", "preprocess": {image_size, mean, std, max_length}}
    model.safetensors  the weights (backbone keys, or ``backbone.*`` + ``head.*`` for a task model)
    tokenizer/         the Hugging Face tokenizer files
    task.json          task models: task, classes (answer vocabulary / label names), head settings
    metrics.json       evaluation results, when known
    provenance.json    how it was made (pre-training data and steps, fine-tuning run, converted sources)
    MODEL_CARD.md      architecture, training data and steps, results, intended use and limits

Loading is strict (a missing or unexpected key is an error naming every one) and never unpickles:
weights are read only from ``model.safetensors``. The folder is self-contained: the text encoder is
rebuilt from the saved ``transformers`` config, so ``vision.init`` / ``text.init`` paths recorded at
training time need not exist any more. :func:`load_model` also opens fine-tuning and pre-training
run folders directly (those do need their ``*.init`` paths).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mpma.config import Config, config_from_dict

FORMAT_VERSION = 1
WEIGHTS = "model.safetensors"
CARD = "MODEL_CARD.md"
_HEAD_TASKS = {"vqa": "fused", "mm_cls": "fused", "img_cls": "unimodal", "txt_cls": "unimodal", "retrieval": "retrieval",
               "zero_shot_cls": "zero_shot"}
_BACKBONE_MODULES = ("align", "mlm_head", "mim_decoder", "itm_head")


class WeightsMismatchError(ValueError):
    """A weights file does not match the model its folder describes (keys listed in the message)."""


@dataclass
class PretrainedModel:
    """A loaded model folder.

    module: what the weights file describes: the task module (FusedClassifier, UnimodalClassifier,
        RetrievalTrainer) or the backbone itself.
    backbone: the MPMAModel inside ``module``.
    tokenizer: the Hugging Face tokenizer.
    config: the backbone Config (``*.init`` cleared: the weights are loaded).
    task: task metadata (task, classes, multi_label, head) or None for a bare backbone.
    preprocess: image_size, mean, std (CLIP normalisation) and max_length.
    """

    module: nn.Module
    backbone: nn.Module
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


def _backbone_of(module: nn.Module) -> nn.Module:
    from mpma.models.mpma import MPMAModel

    if isinstance(module, MPMAModel):
        return module
    backbone = getattr(module, "backbone", None)
    if not isinstance(backbone, MPMAModel):
        raise TypeError(f"save_pretrained expects an MPMAModel or a task module with .backbone, got {type(module).__name__}")
    return backbone


def _head_metadata(module: nn.Module, task: dict) -> dict:
    """Head settings needed to rebuild ``module`` (read from the module itself)."""
    from mpma.tasks.downstream import FusedClassifier, RetrievalTrainer, UnimodalClassifier

    if isinstance(module, FusedClassifier):
        return {"type": "fused", "loss": module.loss, "hidden": module.head.net[0].out_features,
                "outputs": module.head.net[-1].out_features, "pool": module.pool}
    if isinstance(module, UnimodalClassifier):
        return {"type": "unimodal", "modality": module.modality, "linear_probe": module.linear_probe,
                "outputs": module.head.out_features}
    if isinstance(module, RetrievalTrainer):
        return {"type": "retrieval", "use_itm": module.use_itm}
    return {"type": "zero_shot" if task.get("task") == "zero_shot_cls" else "none"}


def preprocess_settings(config: Config) -> dict:
    from mpma.data.image import CLIP_MEAN, CLIP_STD

    return {"image_size": config.vision.image_size, "mean": list(CLIP_MEAN), "std": list(CLIP_STD),
            "max_length": config.text.max_length}


def save_pretrained(
    module: nn.Module, out_dir: str | Path, tokenizer, task: dict | None = None, metrics: dict | None = None,
    provenance: dict | None = None, config: Config | None = None,
) -> Path:
    """Write a self-contained model folder (see the module docstring).

    Args:
        module: an MPMAModel, or a task module (FusedClassifier, UnimodalClassifier, RetrievalTrainer).
        out_dir: the folder (created; files of an earlier save are replaced).
        tokenizer: the tokenizer the model was trained with.
        task: for task models and zero-shot backbones: ``{"task": name, "classes": [...], ...}`` (extra keys kept).
        metrics: evaluation results for the card (e.g. a run's metrics.json).
        provenance: how the model was made (pre-training data/steps, init, sources) for the card.
        config: the backbone Config; defaults to ``backbone.config``.

    Returns:
        the folder.
    """
    from mpma.engine.checkpoint import save_weights

    backbone = _backbone_of(module)
    config = config or backbone.config
    task = dict(task) if task else None
    if task is None and module is not backbone:
        raise ValueError("save_pretrained of a task module needs task={'task': ..., 'classes': [...]}")
    if task is not None:
        if task.get("task") not in _HEAD_TASKS:
            raise ValueError(f"task['task'] must be one of {sorted(_HEAD_TASKS)}, got {task.get('task')!r}")
        task["head"] = _head_metadata(module, task)
        outputs = task["head"].get("outputs")
        if outputs is not None and len(task.get("classes") or []) != outputs:
            raise ValueError(f"the head has {outputs} outputs but task['classes'] names {len(task.get('classes') or [])}")
        task.setdefault("multi_label", False)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    meta = {
        "mpma_format": FORMAT_VERSION,
        "kind": "backbone" if task is None else "task",
        "backbone": config.to_dict(),
        "text_encoder": backbone.text.encoder.config.to_dict(),
        "backbone_modules": sorted(name for name in _BACKBONE_MODULES if getattr(backbone, name) is not None),
        "align_global": backbone.align is not None and backbone.align.global_image is not None,
        "align_local": backbone.align is not None and backbone.align.local_image is not None,
        "vocab_size": len(tokenizer),
        "pad_token_id": tokenizer.pad_token_id,
        "preprocess": preprocess_settings(config),
    }
    _write_json(out / "config.json", meta)
    save_weights(module, out / WEIGHTS)
    tokenizer.save_pretrained(str(out / "tokenizer"))
    if task is not None:
        _write_json(out / "task.json", task)
    elif (out / "task.json").exists():
        (out / "task.json").unlink()
    if metrics:
        _write_json(out / "metrics.json", metrics)
    if provenance:
        _write_json(out / "provenance.json", provenance)
    n_params = sum(p.numel() for p in module.parameters())
    (out / CARD).write_text(model_card(meta, task, metrics, provenance or {}, n_params))
    return out


def _write_json(path: Path, value) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(value, indent=2, default=float) + "\n")
    os.replace(tmp, path)


# ------------------------------------------------------------------------------------------ loading


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not valid JSON ({error.msg} at line {error.lineno})") from None


def _sync_text_config(config: Config, text_encoder: dict) -> None:
    """Shape fields of ``config.text`` from a ``transformers`` config (so the fusion gets the right width)."""
    config.text.model_type = text_encoder["model_type"]
    config.text.width = text_encoder["hidden_size"]
    config.text.depth = text_encoder["num_hidden_layers"]
    config.text.heads = text_encoder["num_attention_heads"]
    config.text.intermediate = text_encoder["intermediate_size"]


def build_backbone(config: Config, vocab_size: int, pad_token_id: int, text_encoder: dict | None = None,
                   modules: list[str] | None = None, align_global: bool = True, align_local: bool = True) -> nn.Module:
    """An MPMAModel with the given architecture and random weights; nothing is read from ``*.init`` paths.

    Args:
        text_encoder: the saved ``transformers`` config of the text encoder (exact architecture: vocabulary,
            positions, eps); None builds it from ``config.text``.
        modules: optional heads present (``align``, ``itm_head``, ``mlm_head``, ``mim_decoder``); None keeps
            those the config's objectives build.
        align_global, align_local: which GLA projections the ``align`` module has (with ``modules``).
    """
    from mpma.models.heads import AlignmentHeads
    from mpma.models.mpma import MPMAModel

    config.vision.init = None
    config.text.init = None
    if text_encoder:
        _sync_text_config(config, text_encoder)
    model = MPMAModel(config, vocab_size, pad_token_id)
    if text_encoder:
        from transformers import AutoConfig, AutoModel

        hf_config = AutoConfig.for_model(**{k: v for k, v in text_encoder.items() if k != "transformers_version"})
        model.text.encoder = AutoModel.from_config(hf_config, add_pooling_layer=False)
    if modules is not None:
        for name in _BACKBONE_MODULES:
            if name not in modules:
                setattr(model, name, None)
        align = model.align
        parts = (align is not None and align.global_image is not None, align is not None and align.local_image is not None)
        if "align" in modules and parts != (align_global, align_local):
            # e.g. a GLA-global projection started by retrieval fine-tuning of an M3AE-style backbone
            objectives = config.objectives
            model.align = AlignmentHeads(model.vision.width, model.text.width, objectives.align_dim,
                                         objectives.temperature, local=align_local, global_=align_global)
        unknown = set(modules) - set(_BACKBONE_MODULES)
        if unknown or any(getattr(model, name) is None for name in modules):
            raise ValueError(f"cannot build backbone modules {sorted(modules)} from this config")
    return model


def build_task_module(backbone: nn.Module, task: dict | None) -> nn.Module:
    """The task module described by ``task`` (task.json) around ``backbone``; the backbone when None."""
    from mpma.tasks.downstream import FusedClassifier, RetrievalTrainer, UnimodalClassifier

    if task is None:
        return backbone
    head = task.get("head", {})
    kind = head.get("type")
    classes = len(task.get("classes") or [])
    if kind == "fused":
        pooled = 2 * backbone.config.fusion.width
        return FusedClassifier(backbone, classes, head["loss"], (head["hidden"] + 0.5) / pooled,
                               head.get("pool", "cls"))  # folders written before pooling was an option
    if kind == "unimodal":
        return UnimodalClassifier(backbone, head["modality"], classes, bool(task.get("multi_label")),
                                  bool(head.get("linear_probe")))
    if kind == "retrieval":
        return RetrievalTrainer(backbone, bool(head.get("use_itm")))
    if kind in ("zero_shot", "none"):
        return backbone
    raise ValueError(f"task.json: unknown head type {kind!r}")


def load_weights_strict(module: nn.Module, path: Path, state: dict[str, torch.Tensor] | None = None) -> None:
    """Load a safetensors file into ``module``; any missing, unexpected or mis-shaped key is an error naming it."""
    if state is None:
        from safetensors.torch import load_file

        if not path.is_file():
            raise FileNotFoundError(f"weights not found: {path}")
        try:
            state = load_file(str(path))
        except Exception as error:
            raise WeightsMismatchError(f"{path}: not a valid safetensors file ({error})") from None
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = sorted(f"{k} {list(state[k].shape)} (expected {list(expected[k].shape)})"
                    for k in set(state) & set(expected) if state[k].shape != expected[k].shape)
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys: {', '.join(missing)}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys: {', '.join(unexpected)}")
        if shapes:
            parts.append(f"{len(shapes)} keys with another shape: {', '.join(shapes)}")
        raise WeightsMismatchError(f"{path} does not match the model described next to it: " + "; ".join(parts))
    module.load_state_dict(state, strict=True)


def _refuse_pickles(folder: Path) -> None:
    if not (folder / WEIGHTS).exists():
        pickled = [p.name for p in folder.glob("*") if p.suffix in (".bin", ".pt", ".pth", ".pkl", ".ckpt")]
        if pickled:
            raise FileNotFoundError(f"{folder} has no {WEIGHTS}; pickled weight files ({', '.join(pickled)}) are never "
                                    "loaded by from_pretrained because unpickling can run code")


def from_pretrained(path: str | Path, device: str | torch.device = "cpu") -> PretrainedModel:
    """Load a folder written by :func:`save_pretrained` (strict; only ``model.safetensors`` is read).

    Raises:
        FileNotFoundError: not such a folder, or it has no model.safetensors.
        WeightsMismatchError: missing/unexpected/mis-shaped keys, each named.
    """
    from mpma.data.text import load_tokenizer

    folder = Path(path)
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{folder}: no config.json (expected a folder written by save_pretrained / `mpma convert`)")
    meta = _read_json(folder / "config.json")
    if meta.get("mpma_format") != FORMAT_VERSION:
        raise ValueError(f"{folder}/config.json is not an mpma model folder of format {FORMAT_VERSION} "
                         f"(mpma_format={meta.get('mpma_format')!r}); run folders load with mpma.pretrained.load_model")
    _refuse_pickles(folder)
    config = config_from_dict(meta["backbone"])
    tokenizer = load_tokenizer(folder / "tokenizer")
    backbone = build_backbone(config, meta["vocab_size"], meta["pad_token_id"], meta.get("text_encoder"),
                              meta.get("backbone_modules"), meta.get("align_global", True), meta.get("align_local", True))
    task = _read_json(folder / "task.json") if (folder / "task.json").exists() else None
    module = build_task_module(backbone, task)
    load_weights_strict(module, folder / WEIGHTS)
    module.to(device).eval()
    metrics = _read_json(folder / "metrics.json") if (folder / "metrics.json").exists() else None
    provenance = _read_json(folder / "provenance.json") if (folder / "provenance.json").exists() else {}
    return PretrainedModel(module, backbone, tokenizer, config, task, meta.get("preprocess") or preprocess_settings(config),
                           metrics, provenance, folder)


# ------------------------------------------------------------------------------------------ run folders


def _load_finetune_run(run_dir: Path) -> PretrainedModel:
    from mpma.data.text import load_tokenizer
    from mpma.engine import checkpoint as ckpt
    from mpma.finetune_config import FinetuneConfig
    from mpma.models.heads import AlignmentHeads
    from mpma.models.mpma import MPMAModel
    from mpma.pipelines.finetuning import build_module, resolve_init

    config = config_from_dict(_read_json(run_dir / "config.json"), FinetuneConfig)
    backbone_config = config_from_dict(_read_json(run_dir / "backbone.json"))
    meta = _read_json(run_dir / "task.json")
    tokenizer = load_tokenizer(run_dir / "tokenizer")
    vision_init, backbone_config.vision.init = backbone_config.vision.init, None  # every vision weight is loaded below
    backbone = MPMAModel(backbone_config, len(tokenizer), tokenizer.pad_token_id)
    backbone_config.vision.init = vision_init
    backbone.mlm_head = None
    backbone.mim_decoder = None
    if meta.get("fresh_alignment_head"):
        objectives = backbone_config.objectives
        backbone.align = AlignmentHeads(backbone.vision.width, backbone.text.width, objectives.align_dim,
                                        objectives.temperature, local=False)
    classes = list(meta.get("classes") or [])
    module = build_module(config, backbone, classes, bool(meta.get("multi_label"))) or backbone
    best = run_dir / "best" / ckpt.WEIGHTS
    if best.exists():
        load_weights_strict(module, best)
    elif config.init != "scratch" and config.task in ("retrieval", "zero_shot_cls"):
        _, weights = resolve_init(config.init)
        from safetensors.torch import load_file

        state = {k.removeprefix("model."): v for k, v in load_file(str(weights)).items()
                 if not k.removeprefix("model.").startswith(("mlm_head.", "mim_decoder."))}
        load_weights_strict(backbone, weights, state)
    else:
        raise FileNotFoundError(f"{run_dir} has no best/{ckpt.WEIGHTS}: the run was not trained (epochs=0?)")
    task = {"task": config.task, "classes": classes, "multi_label": bool(meta.get("multi_label")),
            "answer_vocab": meta.get("answer_vocab")}
    if config.task == "zero_shot_cls":
        task["prompt"] = config.head.prompt
    task["head"] = _head_metadata(module, task)
    metrics = _read_json(run_dir / "metrics.json") if (run_dir / "metrics.json").exists() else None
    provenance = {"finetune": {"task": config.task, "init": config.init, "data": meta.get("data"),
                               "epochs": config.epochs, "split_sizes": meta.get("split_sizes"),
                               "lr": config.optim.lr, "batch_size": config.data.batch_size}}
    if config.init != "scratch":
        try:
            pre_dir, _ = resolve_init(config.init)
            provenance["pretrain"] = _pretrain_provenance(config_from_dict(_read_json(pre_dir / "config.json")), pre_dir)
        except (FileNotFoundError, ValueError):
            provenance["pretrain"] = {"run": config.init, "note": "the pre-training run folder is no longer readable"}
    module.eval()
    return PretrainedModel(module, backbone, tokenizer, backbone_config, task, preprocess_settings(backbone_config),
                           metrics, provenance, run_dir)


def _pretrain_provenance(config: Config, run_dir: Path | None) -> dict:
    info = {"data": config.data.dataset, "train_size": config.data.train_size if config.data.dataset == "synthrad" else None,
            "steps": config.optim.steps, "batch_size": config.data.batch_size, "lr": config.optim.lr,
            "objectives": {k: v for k, v in config.to_dict()["objectives"].items()},
            "vision_init": config.vision.init, "text_init": config.text.init}
    if run_dir is not None and (run_dir / "summary.json").exists():
        info["summary"] = _read_json(run_dir / "summary.json")
    return info


def _load_pretrain_run(run_dir: Path) -> PretrainedModel:
    from mpma.data.text import load_tokenizer
    from mpma.engine import checkpoint as ckpt
    from mpma.models.mpma import MPMAModel

    config = config_from_dict(_read_json(run_dir / "config.json"))
    latest = ckpt.latest_checkpoint(run_dir)
    if latest is None:
        raise FileNotFoundError(f"{run_dir}: the pre-training run has no complete checkpoint under checkpoints/")
    from safetensors.torch import load_file

    tokenizer = load_tokenizer(run_dir / "tokenizer")
    vision_init, config.vision.init = config.vision.init, None  # every vision weight is loaded below
    model = MPMAModel(config, len(tokenizer), tokenizer.pad_token_id)
    config.vision.init = vision_init
    state = {k.removeprefix("model."): v for k, v in load_file(str(latest / ckpt.WEIGHTS)).items()}
    load_weights_strict(model, latest / ckpt.WEIGHTS, state)
    model.eval()
    provenance = {"pretrain": {**_pretrain_provenance(config, run_dir), "checkpoint": latest.name}}
    return PretrainedModel(model, model, tokenizer, config, None, preprocess_settings(config), None, provenance, run_dir)


def load_model(path: str | Path, device: str | torch.device = "cpu") -> PretrainedModel:
    """Open a save_pretrained folder, a fine-tuning run folder or a pre-training run folder."""
    folder = Path(path)
    if not folder.is_dir():
        raise FileNotFoundError(f"model folder not found: {folder}")
    config_file = folder / "config.json"
    if config_file.is_file() and "mpma_format" in _read_json(config_file):
        return from_pretrained(folder, device)
    if (folder / "backbone.json").is_file() and (folder / "task.json").is_file():
        loaded = _load_finetune_run(folder)
    elif config_file.is_file() and (folder / "checkpoints").is_dir():
        loaded = _load_pretrain_run(folder)
    else:
        raise FileNotFoundError(f"{folder} is neither a model folder (save_pretrained / `mpma convert`), a fine-tuning "
                                "run folder (backbone.json, task.json) nor a pre-training run folder (checkpoints/)")
    loaded.module.to(device)
    return loaded


# ------------------------------------------------------------------------------------------ model card


def model_card(meta: dict, task: dict | None, metrics: dict | None, provenance: dict, n_params: int) -> str:
    """MODEL_CARD.md: architecture, pre-training data and steps, results, intended use and limits."""
    config = meta["backbone"]
    v, t, f, o = config["vision"], meta["text_encoder"], config["fusion"], config["objectives"]
    title = f"mpma {task['task']} model" if task else "mpma backbone"
    lines = [f"# {title}", "",
             "MPMA (Multi-task Paired Masking with Alignment) medical vision-language model, saved by `mpma` "
             f"(folder format {meta['mpma_format']}). Load it with `mpma.inference.Predictor.from_pretrained(PATH)` "
             "or `mpma.pretrained.from_pretrained(PATH)`; nothing is downloaded.", "",
             "## Architecture", "",
             f"- parameters: {n_params:,}",
             f"- vision: ViT, image {v['image_size']}px, patch {v['patch_size']}, width {v['width']}, depth {v['depth']}, "
             f"{v['heads']} heads{', CLIP-style pre-norm' if v.get('pre_norm') else ''}, activation {v.get('activation', 'gelu')}",
             f"- text: {t.get('model_type')} encoder, width {t.get('hidden_size')}, depth {t.get('num_hidden_layers')}, "
             f"{t.get('num_attention_heads')} heads, vocabulary {t.get('vocab_size')}, max length {config['text']['max_length']}",
             f"- fusion: {f['depth']} co-attention layers, width {f['width']}, memory slots {f['memory_slots']} (MA-CMF)",
             f"- heads in the backbone: {', '.join(meta['backbone_modules']) or 'none'}",
             f"- pre-processing: images resized to {meta['preprocess']['image_size']}px, CLIP mean/std; text truncated to "
             f"{meta['preprocess']['max_length']} tokens"]
    if task:
        head = task.get("head", {})
        lines += [f"- task head: {task['task']} ({head.get('type')}), {len(task.get('classes') or [])} classes"
                  + (" (multi-label)" if task.get("multi_label") else "")]
    lines += ["", "## Training", ""]
    pre = provenance.get("pretrain")
    if pre:
        lines.append(f"- pre-training: data `{pre.get('data')}`, {pre.get('steps')} steps, batch {pre.get('batch_size')}, "
                     f"lr {pre.get('lr')}; loss weights {o}")
        if pre.get("vision_init") or pre.get("text_init"):
            lines.append(f"- initialised from: vision {pre.get('vision_init')}, text {pre.get('text_init')}")
    converted = provenance.get("converted")
    if converted:
        lines.append(f"- converted (not trained) from: vision {converted.get('vision')}, text {converted.get('text')}; "
                     "the fusion and heads are randomly initialised")
    fine = provenance.get("finetune")
    if fine:
        lines.append(f"- fine-tuning: task {fine.get('task')}, init `{fine.get('init')}`, {fine.get('epochs')} epochs, "
                     f"data {json.dumps(fine.get('data'), default=str)}, split sizes {fine.get('split_sizes')}")
    if not (pre or converted or fine):
        lines.append("- not recorded")
    lines += ["", "## Evaluation", ""]
    from mpma.eval.metrics import scalar_items

    rows = scalar_items(metrics.get("test", metrics)) if metrics else []
    if rows:
        lines += ["| metric | value |", "|---|---|"] + [
            f"| {name} | {value:.4f} |" if isinstance(value, float) and not value.is_integer() else f"| {name} | {value:g} |"
            for name, value in rows]
        if "synthrad" in json.dumps(provenance, default=str):
            lines += ["", "The data is `synthrad`, a synthetic generator: these numbers say nothing about real images."]
    else:
        lines.append("No evaluation results were saved with this model.")
    lines += ["", "## Intended use and limits", "",
              "- For research on medical vision-language methods only. **Not a medical device; not for clinical "
              "decisions**, diagnosis or triage.",
              "- Outputs can be wrong with high confidence; they were not validated on a clinical population, across "
              "scanners, sites or demographic groups.",
              "- VQA answers are restricted to the answer vocabulary of the training set; zero-shot labels depend on "
              "the prompt wording.",
              "- Training data may contain biases and, for real datasets, is subject to the datasets' own licences and "
              "usage agreements.", ""]
    return "\n".join(lines)
