"""Model folders: ONE format for training checkpoints, fine-tuning bests and exported models.

See :mod:`mpma.hub.folder` for the layout. :func:`load_model` opens a model folder or a run folder.
"""

from __future__ import annotations

from pathlib import Path

import torch

from mpma.hub import legacy
from mpma.hub.checks import FolderError
from mpma.hub.folder import (
    FORMAT_VERSION,
    WEIGHTS,
    PretrainedModel,
    WeightsMismatchError,
    from_pretrained,
    is_model_folder,
    preprocess_settings,
    read_json,
    resolve_model_folder,
    save_pretrained,
)
from mpma.models.size import ModelTooLargeError

__all__ = ["FORMAT_VERSION", "WEIGHTS", "FolderError", "ModelTooLargeError", "PretrainedModel", "WeightsMismatchError",
           "from_pretrained", "is_model_folder", "load_model", "preprocess_settings", "resolve_model_folder",
           "save_pretrained"]


def load_model(path: str | Path, device: str | torch.device = "cpu", drop_heads: set[str] = frozenset(),
               max_params: int | None = None) -> PretrainedModel:
    """Open a model folder, a fine-tuning run folder (its ``best/``) or a pre-training run folder (its
    newest checkpoint); run folders of mpma 0.1.0 too. Nothing outside the folder is read.

    ``max_params`` refuses a folder whose config describes a larger model (before it is allocated); a
    model larger than the memory available is always refused.
    """
    folder = Path(path)
    if not folder.is_dir():
        raise FileNotFoundError(f"model folder not found: {folder}")
    resolved = resolve_model_folder(folder)
    if resolved is not None:
        loaded = from_pretrained(resolved, device, drop_heads, max_params)
        if loaded.metrics is None and (folder / "metrics.json").is_file():
            loaded.metrics = read_json(folder / "metrics.json")
        return loaded
    return legacy.load_legacy(folder, device, drop_heads, max_params)
