"""Import CLIP ViT weights (Hugging Face, OpenAI/open_clip) onto mpma's ViT by key mapping.

Nothing is downloaded and no model source is copied: a state dict is read from a local path, its
format recognised from its keys, every tensor renamed (and, for attention, re-packed) onto
:class:`mpma.models.vision.VisionTransformer`, position embeddings interpolated when the image size
differs, and a :class:`ConversionReport` lists what was mapped, resized, zero-filled, left unmapped
and missing.

Formats (``detect_format``):

- ``hf-clip``: a ``transformers`` ``CLIPVisionModel``/``CLIPModel`` (``[vision_model.]embeddings.*``,
  ``pre_layrnorm``, ``encoder.layers.N.*``, ``post_layernorm``); a folder also gives its config.json.
- ``openai-clip``: OpenAI CLIP / open_clip state dicts (``[visual.]conv1``, ``ln_pre``,
  ``transformer.resblocks.N.*``, ``ln_post``); heads are inferred as width / 64 (open_clip's rule).
- ``mpma``: an mpma ViT, backbone or task model (``[backbone.][vision.]patch_embed.weight``, ...).

CLIP ViTs normalise the embeddings before the first block (``ln_pre``), use quick-GELU and
LayerNorm eps 1e-5: the target config must say ``vision.pre_norm=true``, ``vision.activation`` and
``vision.norm_eps`` accordingly (:func:`clip_vision_settings` gives them; ``mpma convert`` sets them).

Reading never executes pickled code: safetensors, or ``torch.load(weights_only=True)`` for
``.bin``/``.pt`` files (anything else in the pickle is refused), and TorchScript archives are refused.
"""

from __future__ import annotations

import json
import math
import re
import zipfile
from pathlib import Path

import torch

from mpma.config import VisionConfig
from mpma.models.clip_keys import IGNORED_KEYS, fetch_source_tensor, target_key_map
from mpma.models.conversion_report import ConversionError, ConversionReport
from mpma.models.vision import resize_position_embedding

FORMATS = ("hf-clip", "openai-clip", "mpma")
# Weight files looked for in a folder, in order of preference.
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "open_clip_model.safetensors",
                "pytorch_model.bin", "pytorch_model.bin.index.json", "open_clip_pytorch_model.bin")


class UnsafeCheckpointError(ValueError):
    """A weights file would need to unpickle arbitrary objects (code) to load; it is refused."""


# ------------------------------------------------------------------------------------------ reading


def _is_torchscript(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.endswith(("code/", "constants.pkl")) or "/code/" in name for name in archive.namelist())


def load_tensor_file(path: str | Path) -> dict[str, torch.Tensor]:
    """A flat ``{name: tensor}`` dict from a safetensors file or a plain PyTorch state-dict file.

    ``.bin``/``.pt``/``.pth`` files are read with ``torch.load(weights_only=True)``: a pickle that
    holds anything but tensors and containers (e.g. an object whose ``__reduce__`` runs code) is
    refused before any of it executes. A ``{"state_dict": ...}`` / ``{"model": ...}`` wrapper is unwrapped.

    Raises:
        FileNotFoundError: naming the path.
        UnsafeCheckpointError: TorchScript archives and pickles with non-tensor objects.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as error:  # safetensors raises its own error types
            raise ValueError(f"{path}: not a valid safetensors file ({error})") from None
    if _is_torchscript(path):
        raise UnsafeCheckpointError(
            f"{path} is a TorchScript archive (e.g. OpenAI's original ViT-B-16.pt); loading it runs its code. "
            "Save its state_dict() as safetensors with a trusted tool first, or use the open_clip / Hugging Face weights")
    import pickle

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise UnsafeCheckpointError(
            f"refused to load {path}: it contains pickled objects other than tensors, and unpickling them could "
            f"run code ({str(error).splitlines()[0] if str(error) else type(error).__name__}). Only safetensors files "
            "and plain tensor state dicts are loaded") from None
    except Exception as error:
        raise ValueError(f"{path}: cannot read as a PyTorch state dict ({type(error).__name__}: {error})") from None
    for wrapper in ("state_dict", "model", "module"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path}: expected a dict of tensors (a state dict)")
    return dict(state)


def _load_index(path: Path) -> dict[str, torch.Tensor]:
    """A sharded checkpoint's ``*.index.json``: every shard it names, merged."""
    index = json.loads(path.read_text())
    state: dict[str, torch.Tensor] = {}
    for shard in sorted(set(index.get("weight_map", {}).values())):
        state.update(load_tensor_file(path.parent / shard))
    return state


def read_weights(path: str | Path) -> tuple[dict[str, torch.Tensor], dict | None, Path]:
    """Read a weights file or a model folder.

    Returns:
        (state dict, the folder's config.json / open_clip_config.json as a dict or None, the weights path).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"vision weights not found: {path} (pass a local Hugging Face CLIP folder, an "
                                "OpenAI/open_clip state-dict file or an mpma model folder; nothing is downloaded)")
    config = None
    if path.is_dir():
        for name in ("config.json", "open_clip_config.json"):
            if (path / name).is_file():
                config = json.loads((path / name).read_text())
                break
        weights = next((path / name for name in WEIGHT_FILES if (path / name).is_file()), None)
        if weights is None:
            raise FileNotFoundError(f"{path} holds none of {', '.join(WEIGHT_FILES)}")
    else:
        weights = path
    state = _load_index(weights) if weights.name.endswith(".index.json") else load_tensor_file(weights)
    return state, config, weights


# ------------------------------------------------------------------------------------------ formats

_ANCHORS = {"hf-clip": "embeddings.patch_embedding.weight", "openai-clip": "conv1.weight", "mpma": "patch_embed.weight"}


def detect_format(state: dict[str, torch.Tensor]) -> tuple[str, str]:
    """(format, key prefix of the vision tower), from the key of the patch-embedding convolution."""
    for fmt, anchor in _ANCHORS.items():
        found = sorted((k for k in state if k == anchor or k.endswith("." + anchor)), key=len)
        if found:
            prefix = found[0][: -len(anchor)]
            if fmt == "openai-clip" and "class_embedding" not in {k[len(prefix):] for k in state if k.startswith(prefix)}:
                continue
            return fmt, prefix
    sample = ", ".join(sorted(state)[:5])
    raise ConversionError(f"unrecognised vision weights (no patch-embedding key among e.g. {sample}); supported: "
                          "Hugging Face CLIP, OpenAI CLIP / open_clip ViT, mpma")


def _hf_vision_config(config: dict | None) -> dict | None:
    if not config:
        return None
    if config.get("model_type") == "clip" or "vision_config" in config:
        return config.get("vision_config") or {}
    return config


def clip_vision_settings(state: dict[str, torch.Tensor], config: dict | None = None) -> dict:
    """VisionConfig fields that reproduce the source ViT (image_size is the source's own).

    Width, depth, patch size, MLP ratio and grid come from tensor shapes; heads, activation and
    LayerNorm eps from the Hugging Face config when there is one, else CLIP's conventions
    (heads = width / 64, quick_gelu, 1e-5).
    """
    fmt, prefix = detect_format(state)
    sub = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    if fmt == "mpma":
        raise ConversionError("clip_vision_settings reads CLIP weights; an mpma model carries its own config")
    if fmt == "hf-clip":
        conv, pos = sub["embeddings.patch_embedding.weight"], sub["embeddings.position_embedding.weight"]
        layers = {int(m.group(1)) for k in sub if (m := re.match(r"encoder\.layers\.(\d+)\.", k))}
        hidden = sub["encoder.layers.0.mlp.fc1.weight"].shape[0]
    else:
        conv, pos = sub["conv1.weight"], sub["positional_embedding"]
        layers = {int(m.group(1)) for k in sub if (m := re.match(r"transformer\.resblocks\.(\d+)\.", k))}
        hidden = sub["transformer.resblocks.0.mlp.c_fc.weight"].shape[0]
    width, patch = conv.shape[0], conv.shape[-1]
    grid = math.isqrt(pos.shape[-2] - 1)
    settings = {"image_size": grid * patch, "patch_size": patch, "channels": conv.shape[1], "width": width,
                "depth": len(layers), "heads": max(1, width // 64), "mlp_ratio": hidden / width, "pre_norm": True,
                "activation": "quick_gelu", "norm_eps": 1e-5}
    hf = _hf_vision_config(config) if fmt == "hf-clip" else None
    if hf:
        settings["heads"] = int(hf.get("num_attention_heads", settings["heads"]))
        settings["activation"] = hf.get("hidden_act", "quick_gelu")
        settings["norm_eps"] = float(hf.get("layer_norm_eps", 1e-5))
    return settings


def convert_vision_state(
    state: dict[str, torch.Tensor], target: dict[str, torch.Tensor], source: str = "<state dict>",
    config: dict | None = None, strict: bool = True,
) -> tuple[dict[str, torch.Tensor], ConversionReport]:
    """Map a CLIP (or mpma) vision state dict onto the keys and shapes of ``target``.

    Args:
        state: the source state dict (may hold a whole CLIP model: text keys are ignored).
        target: ``VisionTransformer.state_dict()`` (shapes to produce; the image size decides the grid).
        source: a name for the report.
        config: the source folder's config.json, if any (for the report's checks).
        strict: raise :class:`ConversionError` when source vision keys stay unmapped, target keys stay
            missing, or shapes differ; with False those are only reported.

    Returns:
        (the converted state dict, holding only target keys; the report).
    """
    fmt, prefix = detect_format(state)
    report = ConversionReport(source=source, format=fmt, prefix=prefix)
    sub = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    report.ignored = sorted(k for k in state if not k.startswith(prefix))
    out, used, errors = _map_target_keys(sub, target, target_key_map(fmt, target), report)
    for key in sorted(set(sub) - used):
        (report.ignored if key.startswith(IGNORED_KEYS[fmt]) else report.unmapped).append(prefix + key)
    report.ignored.sort()
    _check_settings(report, fmt, state, config, target)
    _raise_or_note_problems(report, errors, source, strict)
    return out, report


def _map_target_keys(
    sub: dict[str, torch.Tensor], target: dict[str, torch.Tensor], mapping: dict[str, list[str]],
    report: ConversionReport,
) -> tuple[dict[str, torch.Tensor], set[str], list[str]]:
    """Build every key of ``target`` from the (prefix-stripped) source tensors ``sub`` via ``mapping``.

    Records mapped, resized, zero-filled and missing keys in ``report``.

    Returns:
        (converted tensors of the target's shapes and dtypes, the source keys used, shape-mismatch errors).
    """
    used: set[str] = set()
    out: dict[str, torch.Tensor] = {}
    errors: list[str] = []
    for key, wanted in target.items():
        names = mapping.get(key)
        pieces = [fetch_source_tensor(sub, name) for name in names] if names else [None]
        if any(p is None for p in pieces):
            if key == "patch_embed.bias" and report.format != "mpma":
                out[key] = torch.zeros_like(wanted)
                report.zero_filled.append(key)
            else:
                report.missing.append(key)
            continue
        used.update(name.partition(":")[0] for name in names)
        tensor = _fit_tensor(key, pieces[0] if len(pieces) == 1 else torch.cat(pieces, dim=0), wanted, report)
        if tensor.shape != wanted.shape:
            errors.append(f"{key}: source {'+'.join(names)} has shape {list(tensor.shape)}, the model expects {list(wanted.shape)}")
            continue
        out[key] = tensor.to(wanted.dtype).contiguous()
        report.mapped[key] = [report.prefix + name for name in names]
    return out, used, errors


def _fit_tensor(key: str, tensor: torch.Tensor, wanted: torch.Tensor, report: ConversionReport) -> torch.Tensor:
    """Reshape a source tensor to mpma's layout for ``key``: ``cls_token`` [W] -> [1, 1, W];
    ``pos_embed`` [N, W] -> [1, N, W], interpolated to ``wanted``'s grid [1, 1 + G*G, W] when the
    widths agree but the lengths do not (noted in ``report.resized``). Other keys pass unchanged."""
    if key == "cls_token":
        tensor = tensor.reshape(1, 1, -1)
    elif key == "pos_embed":
        tensor = tensor.reshape(1, -1, tensor.shape[-1])
        if tensor.shape != wanted.shape and tensor.shape[-1] == wanted.shape[-1]:
            old = list(tensor.shape)
            tensor = resize_position_embedding(tensor, math.isqrt(wanted.shape[1] - 1))
            report.resized[key] = [old, list(tensor.shape)]
    return tensor


def _raise_or_note_problems(report: ConversionReport, errors: list[str], source: str, strict: bool) -> None:
    """With ``strict``, raise :class:`ConversionError` listing shape errors, MISMATCH notes, unmapped and
    missing keys, if any; otherwise add the shape errors to ``report.notes``."""
    if strict and (errors or report.unmapped or report.missing or any(n.startswith("MISMATCH") for n in report.notes)):
        problems = errors + [n for n in report.notes if n.startswith("MISMATCH")]
        if report.unmapped:
            problems.append(f"source keys of the vision encoder with no place in mpma's ViT: {', '.join(report.unmapped)}")
        if report.missing:
            problems.append(f"model keys the source does not provide: {', '.join(report.missing)}")
        raise ConversionError(f"cannot load vision weights from {source}:\n  " + "\n  ".join(problems))
    if errors:
        report.notes += [f"shape mismatch, kept initial value: {e}" for e in errors]


def _check_settings(report: ConversionReport, fmt: str, state, config: dict | None, target) -> None:
    """Notes on inferred settings; 'MISMATCH' notes (strict errors) when the target cannot be equivalent."""
    if fmt == "mpma":
        return
    settings = clip_vision_settings(state, config)
    has_pre = "norm_pre.weight" in target
    if not has_pre:
        report.notes.append("MISMATCH: CLIP normalises embeddings before the first block (ln_pre); set vision.pre_norm=true")
    if report.resized:
        report.notes.append(f"position embeddings interpolated from the source's {settings['image_size']}px grid")
    source_note = "from config.json" if fmt == "hf-clip" and config else "CLIP convention, not stored in the weights"
    report.notes.append(f"source settings ({source_note}): heads={settings['heads']} activation={settings['activation']} "
                        f"norm_eps={settings['norm_eps']:g}")


def load_vision_weights(model, path: str | Path, strict: bool = True) -> ConversionReport:
    """Load CLIP/mpma weights from ``path`` into a :class:`VisionTransformer` in place.

    Besides the key checks of :func:`convert_vision_state`, the model's ``heads``, ``activation`` and
    ``norm_eps`` are compared with the source's (config.json, else CLIP's conventions): a known
    difference is an error with ``strict``, a guessed one a note.
    """
    state, config, weights = read_weights(path)
    converted, report = convert_vision_state(state, model.state_dict(), str(weights), config, strict)
    if report.format != "mpma":
        settings = clip_vision_settings(state, config)
        known = report.format == "hf-clip" and config is not None
        ours: VisionConfig = model.config
        for name in ("heads", "activation", "norm_eps"):
            if getattr(ours, name) != settings[name]:
                message = f"vision.{name}={getattr(ours, name)} but the source has {settings[name]}"
                if strict and known:
                    raise ConversionError(f"cannot load vision weights from {weights}: {message} (set vision.{name}="
                                          f"{settings[name]}); `mpma convert` sets all such fields from the source")
                report.notes.append(message + ("" if known else " (inferred)"))
    model.load_state_dict(converted, strict=False)
    return report


def vision_config_for(path: str | Path, base: VisionConfig | None = None, image_size: int | None = None) -> tuple[VisionConfig, dict]:
    """A VisionConfig that reproduces the CLIP ViT at ``path`` (``base``'s other fields kept).

    Returns:
        (the config, {field: [old, new]} of the fields that changed from ``base``).
    """
    import dataclasses

    state, config, _ = read_weights(path)
    settings = clip_vision_settings(state, config)
    base = base or VisionConfig()
    if image_size is not None:
        settings["image_size"] = image_size
    elif base.image_size % settings["patch_size"] == 0:
        settings["image_size"] = base.image_size  # keep the preset's resolution; positions are interpolated
    changed = {k: [getattr(base, k), v] for k, v in settings.items() if getattr(base, k) != v}
    return dataclasses.replace(base, **settings), changed
