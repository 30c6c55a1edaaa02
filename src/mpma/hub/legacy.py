"""Run folders written by mpma 0.1.0, before checkpoints and fine-tuning bests were model folders.

0.1.0 layouts:

- pre-training run: ``config.json`` (the Config), ``tokenizer/``, ``checkpoints/step_N/model.safetensors``
  with ``model.``-prefixed keys (the PretrainTask's) and ``state.pt``;
- fine-tuning run: ``config.json`` (the FinetuneConfig), ``backbone.json``, ``task.json`` (no head
  settings), ``tokenizer/``, ``best/model.safetensors`` (``backbone.*`` + ``head.*``).

They load directly (:func:`load_legacy`), and :func:`upgrade` rewrites them in the current format
in place (``mpma convert --upgrade``), after which ``--resume`` and every loader use them as usual.
Model folders written by ``save_pretrained`` in 0.1.0 are already in the current format.

Loading reads nothing outside the run folder: recorded ``vision.init`` / ``text.init`` paths are
cleared (the weights are in the checkpoint). A 0.1.0 run whose text encoder came from ``text.init``
recorded that encoder's architecture only in ``text.init``'s config.json (its number of attention
heads, activation and LayerNorm epsilon cannot be recovered from the weights' shapes), so loading it
is refused with a pointer to ``mpma convert --upgrade RUN``: the upgrade, an explicit one-time step,
reads that config.json (never weights) and saves the architecture inside the run.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
from transformers import AutoConfig

from mpma.config import Config, FinetuneConfig
from mpma.data.text import load_tokenizer
from mpma.engine import checkpoint as ckpt
from mpma.hub.checks import FolderError, checked_config
from mpma.hub.folder import (
    PretrainedModel,
    describe_task,
    is_model_folder,
    preprocess_settings,
    pretrain_provenance,
    read_json,
    save_pretrained,
    split_state,
)
from mpma.models.factory import create_model, load_state_strict, read_state
from mpma.models.mpma import heads_for_objectives
from mpma.tasks.base import get_task

FINETUNE_DROPPED_HEADS = {"mlm_head", "mim_decoder"}


def is_legacy_pretrain_run(folder: Path) -> bool:
    latest = ckpt.latest_checkpoint(folder)
    return (folder / "config.json").is_file() and latest is not None and not is_model_folder(latest)


def is_legacy_finetune_run(folder: Path) -> bool:
    return (folder / "backbone.json").is_file() and (folder / "task.json").is_file() and not is_model_folder(folder / "best")


def _self_contained(config: Config, path: Path, run_dir: Path, upgrading: bool) -> dict | None:
    """Clear ``config``'s ``*.init`` paths; the text encoder's ``transformers`` config when the run needs one.

    Args:
        config: a 0.1.0 run's backbone Config (read from ``path``).
        run_dir: the run folder (for messages).
        upgrading: ``mpma convert --upgrade`` may read ``text.init``'s config.json (only it, never weights).

    Raises:
        FolderError: the run's text encoder came from ``text.init`` and this is not an upgrade.
        FileNotFoundError: upgrading, and ``text.init``'s config.json is not readable.
    """
    text_init = config.text.init
    config.vision.init = config.text.init = None  # the weights are in the run folder
    if not text_init:
        return None
    if not upgrading:
        raise FolderError(f"{path}: this mpma 0.1.0 run's text encoder came from text.init={text_init}, and 0.1.0 "
                          "recorded its architecture (attention heads, activation, LayerNorm epsilon) only there; "
                          f"loading a run reads nothing outside {run_dir}. Run `mpma convert --upgrade {run_dir}` once "
                          "(it reads only that folder's config.json and saves the architecture in the run), then "
                          "load it again")
    source = Path(text_init) / "config.json"
    if not source.is_file():
        raise FileNotFoundError(f"cannot upgrade {run_dir}: its text encoder's architecture is recorded only in "
                                f"text.init={text_init}/config.json, which is not readable; restore that folder "
                                "(only its config.json is read) and run the upgrade again")
    hf = AutoConfig.from_pretrained(str(source.parent), local_files_only=True, hidden_dropout_prob=config.text.dropout,
                                    attention_probs_dropout_prob=config.text.dropout)
    return hf.to_dict()


def _load_pretrain_checkpoint(run_dir: Path, checkpoint: Path, drop_heads: set[str], max_params: int | None = None,
                              upgrading: bool = False) -> PretrainedModel:
    config = checked_config(run_dir / "config.json", read_json(run_dir / "config.json"))
    provenance = {"pretrain": {**pretrain_provenance(config, run_dir), "checkpoint": checkpoint.name}}
    text_encoder = _self_contained(config, run_dir / "config.json", run_dir, upgrading)
    tokenizer = load_tokenizer(run_dir / "tokenizer")
    state = split_state(read_state(checkpoint / ckpt.WEIGHTS), "model.")
    state = {k: v for k, v in state.items() if k.split(".", 1)[0] not in drop_heads}
    model = create_model(config, len(tokenizer), tokenizer.pad_token_id, heads=heads_for_objectives(config) - drop_heads,
                         text_encoder=text_encoder, state=state, source=checkpoint / ckpt.WEIGHTS, max_params=max_params)
    model.eval()
    return PretrainedModel(model, model, tokenizer, config, None, preprocess_settings(config), None, provenance, checkpoint)


def _load_finetune_run(run_dir: Path, max_params: int | None = None, upgrading: bool = False) -> PretrainedModel:
    config = checked_config(run_dir / "config.json", read_json(run_dir / "config.json"), FinetuneConfig)
    backbone_config = checked_config(run_dir / "backbone.json", read_json(run_dir / "backbone.json"))
    text_encoder = _self_contained(backbone_config, run_dir / "backbone.json", run_dir, upgrading)
    meta = read_json(run_dir / "task.json")
    if not isinstance(meta, dict):
        raise FolderError(f"{run_dir / 'task.json'}: expected a mapping, got {type(meta).__name__}")
    spec = get_task(config.task)
    tokenizer = load_tokenizer(run_dir / "tokenizer")
    heads = heads_for_objectives(backbone_config) - FINETUNE_DROPPED_HEADS
    fresh = bool(meta.get("fresh_alignment_head"))
    best = run_dir / "best" / ckpt.WEIGHTS
    classes = list(meta.get("classes") or [])
    multi_label = bool(meta.get("multi_label"))
    if best.exists():
        state = read_state(best)
        backbone_state = split_state(state, "backbone.") if spec.trains else state
        backbone = create_model(backbone_config, len(tokenizer), tokenizer.pad_token_id, heads=heads | ({"align"} if fresh else set()),
                                align_parts=(True, False) if fresh else None, text_encoder=text_encoder,
                                state=backbone_state, source=best, max_params=max_params)
        module = spec.build_module(config, backbone, classes, multi_label) or backbone
        load_state_strict(module, state, best)
    elif config.init != "scratch" and (not spec.trains or spec.target == "key"):
        # zero-shot, or retrieval never fine-tuned: the model is the pre-trained backbone, in another folder
        raise FileNotFoundError(f"{run_dir} has no best/{ckpt.WEIGHTS}: this mpma 0.1.0 {config.task} run kept no weights "
                                f"of its own (it evaluated the pre-trained model at init={config.init}), and loading a "
                                f"run reads nothing outside it; load {config.init} instead")
    else:
        raise FileNotFoundError(f"{run_dir} has no best/{ckpt.WEIGHTS}: the run was not trained (epochs=0?)")
    task = describe_task(module, {"task": config.task, "classes": classes, "multi_label": multi_label,
                                  "answer_vocab": meta.get("answer_vocab"), **spec.metadata(config)})
    metrics = read_json(run_dir / "metrics.json") if (run_dir / "metrics.json").exists() else None
    provenance = {"finetune": {"task": config.task, "init": config.init, "data": meta.get("data"), "epochs": config.epochs,
                               "split_sizes": meta.get("split_sizes"), "lr": config.optim.lr,
                               "batch_size": config.data.batch_size}}
    module.eval()
    return PretrainedModel(module, backbone, tokenizer, backbone_config, task, preprocess_settings(backbone_config),
                           metrics, provenance, run_dir)


def load_legacy(folder: Path, device: str | torch.device = "cpu", drop_heads: set[str] = frozenset(),
                max_params: int | None = None) -> PretrainedModel:
    """Open a 0.1.0 fine-tuning run, pre-training run or one of its ``checkpoints/step_N`` folders (reading
    nothing outside it; ``max_params`` as in :func:`mpma.hub.from_pretrained`)."""
    folder = Path(folder)
    if is_legacy_finetune_run(folder):
        loaded = _load_finetune_run(folder, max_params)
    elif is_legacy_pretrain_run(folder):
        loaded = _load_pretrain_checkpoint(folder, ckpt.latest_checkpoint(folder), set(drop_heads), max_params)
    elif (folder / ckpt.WEIGHTS).is_file() and (folder.parent.parent / "config.json").is_file():
        loaded = _load_pretrain_checkpoint(folder.parent.parent, folder, set(drop_heads), max_params)
    else:
        raise FileNotFoundError(f"{folder} is neither a model folder (save_pretrained / `mpma convert`), a fine-tuning "
                                "run folder (best/) nor a pre-training run folder (checkpoints/)")
    loaded.module.to(device)
    return loaded


def upgrade(folder: str | Path) -> list[Path]:
    """Rewrite a 0.1.0 run folder in the current format, in place; returns the folders written.

    Pre-training runs: every checkpoint becomes a model folder (its ``state.pt`` kept), so ``--resume``
    continues the run. Fine-tuning runs: ``best/`` becomes a model folder. Anything else: nothing to do.
    """
    folder = Path(folder)
    written = []
    if is_legacy_finetune_run(folder) and (folder / "best" / ckpt.WEIGHTS).exists():
        loaded = _load_finetune_run(folder, upgrading=True)
        written.append(save_pretrained(loaded.module, folder / "best", loaded.tokenizer, task=loaded.task,
                                       metrics=loaded.metrics, provenance=loaded.provenance, config=loaded.config))
    elif is_legacy_pretrain_run(folder):
        for checkpoint in ckpt.list_checkpoints(folder):
            if is_model_folder(checkpoint):
                continue
            loaded = _load_pretrain_checkpoint(folder, checkpoint, set(), upgrading=True)
            state_file = checkpoint.with_name(checkpoint.name + ".state.pt")
            shutil.copy2(checkpoint / ckpt.STATE, state_file)
            save_pretrained(loaded.module, checkpoint, loaded.tokenizer, provenance=loaded.provenance, config=loaded.config,
                            extra_files={ckpt.STATE: lambda path, source=state_file: shutil.move(source, path)})
            written.append(checkpoint)
    return written

