"""Atomic checkpoints: weights as safetensors, training state as a weights_only torch file.

A checkpoint that cannot be read any more (a truncated file) is found by :func:`read_checkpoint` and
set aside by :func:`set_aside` as ``step_<N>.broken`` (one whose weights gave a non-finite loss as
``step_<N>.diverged``); :func:`list_checkpoints` ignores both.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from mpma.models.factory import load_state_strict, read_state

WEIGHTS = "model.safetensors"
STATE = "state.pt"
_CHECKPOINT_NAME = re.compile(r"step_(\d+)")


class BrokenCheckpointError(ValueError):
    """A checkpoint folder whose files cannot be read (truncated, corrupted); the message names the file."""


class NonFiniteError(ValueError):
    """Tensors about to be checkpointed hold NaN or infinite values (the names are in the message)."""


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
    """Complete checkpoint folders of a run (``step_<N>``: not ``.tmp``, ``.broken`` nor ``.diverged``), oldest first."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and _CHECKPOINT_NAME.fullmatch(p.name)
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


def non_finite_tensors(tensors: dict[str, torch.Tensor], limit: int = 5) -> list[str]:
    """Names (up to ``limit``) of the floating-point tensors in ``tensors`` holding NaN or inf values."""
    bad = []
    for name, tensor in tensors.items():
        if torch.is_tensor(tensor) and tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            bad.append(name)
            if len(bad) >= limit:
                break
    return bad


def optimizer_tensors(optimizer_state: dict) -> dict[str, torch.Tensor]:
    """The tensors of an optimizer ``state_dict()`` as ``"optimizer.<param>.<key>"`` -> tensor."""
    return {f"optimizer.{index}.{key}": value for index, entries in optimizer_state.get("state", {}).items()
            for key, value in entries.items() if torch.is_tensor(value)}


def check_finite(module: nn.Module, state: dict) -> None:
    """Raise :class:`NonFiniteError` naming the first non-finite weights or optimizer tensors."""
    bad = non_finite_tensors(module.state_dict()) or non_finite_tensors(optimizer_tensors(state.get("optimizer", {})))
    if bad:
        raise NonFiniteError(f"non-finite values in {', '.join(bad)}")


def read_checkpoint(folder: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """(weights, training state) of a checkpoint folder, every file parsed.

    Raises:
        BrokenCheckpointError: a file is missing or cannot be parsed (truncated, corrupted), or
            ``state.pt`` lacks its keys; the message names the file and the reason.
    """
    from safetensors.torch import load_file

    folder = Path(folder)
    config = folder / "config.json"
    try:
        if config.exists():
            json.loads(config.read_text())
        weights = load_file(str(folder / WEIGHTS))
    except Exception as error:  # SafetensorError, JSONDecodeError, OSError, ...: the file is unreadable
        name = "config.json" if isinstance(error, (json.JSONDecodeError, UnicodeDecodeError)) else WEIGHTS
        raise BrokenCheckpointError(f"{folder / name}: cannot be read ({type(error).__name__}: {error})") from None
    try:
        state = load_state(folder / STATE)
    except Exception as error:  # RuntimeError (zip), OSError, EOFError, UnpicklingError
        raise BrokenCheckpointError(f"{folder / STATE}: cannot be read ({type(error).__name__}: {error})") from None
    if not isinstance(state, dict) or not {"step", "optimizer"} <= set(state):
        raise BrokenCheckpointError(f"{folder / STATE}: not a training state (no step / optimizer entries)")
    return weights, state


def set_aside(folder: str | Path, suffix: str = ".broken") -> Path:
    """Rename a checkpoint folder to ``step_<N><suffix>`` (``.broken``: unreadable, ``.diverged``: its
    weights give a non-finite loss; ``<suffix>.2``, ... if taken), out of :func:`list_checkpoints`'
    sight; returns the new path."""
    folder = Path(folder)
    target = folder.with_name(folder.name + suffix)
    number = 2
    while target.exists():
        target = folder.with_name(f"{folder.name}{suffix}.{number}")
        number += 1
    os.replace(folder, target)
    return target
