"""Atomic checkpoints: weights as safetensors, training state as a weights_only torch file."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from mpma.models.factory import load_state_strict, read_state

WEIGHTS = "model.safetensors"
STATE = "state.pt"


def _tensors(module: nn.Module) -> dict[str, torch.Tensor]:
    return {name: tensor.detach().contiguous().cpu() for name, tensor in module.state_dict().items()}


def save_weights(module: nn.Module, path: str | Path) -> None:
    """Write ``module.state_dict()`` to a safetensors file via a temp file + rename."""
    from safetensors.torch import save_file

    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    save_file(_tensors(module), str(tmp))
    os.replace(tmp, path)


def load_weights(module: nn.Module, path: str | Path) -> None:
    """Load safetensors weights strictly (a mismatch is an error naming every key)."""
    load_state_strict(module, read_state(path), path)


def checkpoint_dir(run_dir: str | Path, step: int) -> Path:
    return Path(run_dir) / "checkpoints" / f"step_{step:08d}"


def save_checkpoint(run_dir: str | Path, step: int, module: nn.Module, state: dict, keep: int = 2,
                    write_model: Callable[[Path], None] | None = None) -> Path:
    """Write ``checkpoints/step_<N>/`` atomically: the weights and ``state.pt``; prune to ``keep`` newest.

    ``write_model(folder)``, when given, writes the weights as a whole model folder (config, weights,
    tokenizer: :func:`mpma.hub.save_pretrained`); otherwise only ``model.safetensors`` of ``module``
    is written. The folder is assembled under a temporary name and renamed, so a killed run never
    leaves a half-written checkpoint that ``--resume`` could pick up.
    """
    final = checkpoint_dir(run_dir, step)
    tmp = final.with_name(final.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.parent.mkdir(parents=True, exist_ok=True)
    if write_model is not None:
        write_model(tmp)
    else:
        tmp.mkdir()
        save_weights(module, tmp / WEIGHTS)
    torch.save(state, tmp / STATE)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    if keep > 0:
        for old in list_checkpoints(run_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Complete checkpoint folders of a run, oldest first."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith("step_") and not p.name.endswith(".tmp")
             and (p / WEIGHTS).exists() and (p / STATE).exists()]
    return sorted(found, key=lambda p: int(p.name.split("_")[1]))


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def load_state(path: str | Path) -> dict:
    """Training state as ``Trainer.state_dict`` wrote it: step, optimizer and GradScaler state.

    No RNG state is saved: the trainer reseeds torch from (run seed, step, rank, micro-batch) at
    every micro-step, so a resumed run replays the same random draws. ``weights_only=True`` so no
    pickled code runs.
    """
    return torch.load(Path(path), map_location="cpu", weights_only=True)
