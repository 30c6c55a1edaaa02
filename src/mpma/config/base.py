"""The generic machinery: dataclass trees <-> dicts with type checks, YAML presets, dotted overrides.

A configuration is a tree of dataclasses (roots: :class:`mpma.config.Config` for pre-training,
:class:`mpma.config.FinetuneConfig` for fine-tuning). Presets live as YAML files in ``mpma/presets/``;
a user may pass a preset name or a YAML path, then ``key.sub=value`` overrides. Unknown keys and
values of the wrong type are errors that name the key.

A root may list keys that existed once and were removed in a ``REMOVED_KEYS`` class attribute
(dotted key -> what replaces it). Saved configurations and files that still hold such a key load
with a warning and the key dropped; an override of a removed key is an error that names its
replacement.
"""

from __future__ import annotations

import copy
import dataclasses
import re
import types
import typing
import warnings
from pathlib import Path
from typing import Any

import yaml

from mpma.config.errors import ConfigError
from mpma.config.pretrain import Config

PRESET_DIR = Path(__file__).parent.parent / "presets"  # mpma/presets/, beside this package
_SCIENTIFIC = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


class RemovedConfigKeyWarning(UserWarning):
    """A saved configuration or a config file holds a key that was removed; it is ignored."""


# --------------------------------------------------------------------------------------------
# Building from nested dicts with type checks


def _check_value(value: Any, annotation: Any, key: str) -> Any:
    """Return ``value`` converted to ``annotation`` or raise a ConfigError naming ``key``."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(annotation)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _check_value(value, option, key)
            except ConfigError as error:
                errors.append(str(error))
        raise ConfigError(errors[0] if errors else f"{key}: invalid value {value!r}")
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping such as {{name: value}}, got {value!r}")
        key_type, item_type = typing.get_args(annotation)
        return {_check_value(name, key_type, f"{key} key {name!r}"): _check_value(item, item_type, f"{key}.{name}")
                for name, item in value.items()}
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        (item_type,) = typing.get_args(annotation)
        return [_check_value(item, item_type, f"{key}[{i}]") for i, item in enumerate(value)]
    if annotation is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true/false, got {value!r}")
    if annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str) and _SCIENTIFIC.fullmatch(value.strip()):
            return float(value)  # YAML 1.1 reads "1e-4" (no dot, or no exponent sign) as a string
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if annotation is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    raise ConfigError(f"{key}: unsupported annotation {annotation!r}")


def _section_default(cls: type, name: str) -> Any:
    """The default value of the dataclass field ``name`` of ``cls`` (None when it has none)."""
    field = next(f for f in dataclasses.fields(cls) if f.name == name)
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return None if field.default is dataclasses.MISSING else field.default


def _build(cls: type, values: dict[str, Any], prefix: str = "") -> Any:
    if not isinstance(values, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a mapping, got {values!r}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(
            f"unknown config key '{prefix}{unknown[0]}' (known keys under "
            f"'{prefix.rstrip('.') or 'config'}': {', '.join(sorted(known))})"
        )
    kwargs = {}
    for name, value in values.items():
        annotation = hints[name]
        if dataclasses.is_dataclass(annotation):
            # a section's unset keys keep the parent's default for that section (FinetuneConfig's optim
            # defaults differ from OptimConfig's), not the section class's own defaults
            default = _section_default(cls, name)
            if isinstance(value, dict) and default is not None:
                value = _merge(dataclasses.asdict(default), value)
            kwargs[name] = _build(annotation, value, f"{prefix}{name}.")
        else:
            kwargs[name] = _check_value(value, annotation, f"{prefix}{name}")
    return cls(**kwargs)


def _merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


# --------------------------------------------------------------------------------------------
# Removed keys


def removed_keys(cls: type) -> dict[str, str]:
    """The root's removed dotted keys and what replaces each (``cls.REMOVED_KEYS``, default none)."""
    return dict(getattr(cls, "REMOVED_KEYS", {}))


def _find(values: dict[str, Any], key: str) -> tuple[dict[str, Any] | None, str]:
    """(the mapping holding the last part of dotted ``key``, that part); None when absent."""
    *parents, last = key.split(".")
    node: Any = values
    for part in parents:
        node = node.get(part) if isinstance(node, dict) else None
    return (node if isinstance(node, dict) and last in node else None), last


def drop_removed_keys(values: dict[str, Any], cls: type, where: str) -> dict[str, Any]:
    """A copy of ``values`` without the removed keys of ``cls``, each dropped with a warning.

    Args:
        values: nested dict read from a saved configuration or a config file.
        cls: the root dataclass (its ``REMOVED_KEYS`` are checked).
        where: what ``values`` came from, for the warning ("saved config", a file path).
    """
    result = values
    for key, replacement in removed_keys(cls).items():
        holder, last = _find(result, key)
        if holder is None:
            continue
        if result is values:
            result = copy.deepcopy(values)
            holder, last = _find(result, key)
        value = holder.pop(last)
        warnings.warn(f"{where}: config key '{key}' (= {value!r}) was removed and is ignored: {replacement}",
                      RemovedConfigKeyWarning, stacklevel=3)
    return result


def _reject_removed_overrides(overrides: dict[str, Any], cls: type) -> None:
    for key, replacement in removed_keys(cls).items():
        if _find(overrides, key)[0] is not None:
            raise ConfigError(f"{key}: this config key was removed: {replacement}")


# --------------------------------------------------------------------------------------------
# Presets, files and overrides


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def _read_yaml(source: str) -> dict[str, Any]:
    path = Path(source)
    if not path.suffix:
        path = PRESET_DIR / f"{source}.yaml"
        if not path.exists():
            raise ConfigError(f"unknown preset '{source}' (presets: {', '.join(preset_names())})")
    elif not path.exists():
        raise ConfigError(f"config file not found: {path}")
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    parent = data.pop("base", None)  # a preset may extend another preset or file
    if parent is not None:
        data = _merge(_read_yaml(str(parent)), data)
    return data


def parse_override(text: str) -> tuple[list[str], Any]:
    """Parse ``key.sub=value``; the value is read as YAML (``1e-4``, ``true``, ``null``, ``[0,1]``)."""
    if "=" not in text:
        raise ConfigError(f"override '{text}' is not of the form key.sub=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override '{text}' has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def overrides_to_dict(overrides: list[str]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for text in overrides:
        path, value = parse_override(text)
        node = result
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override '{text}' conflicts with another override")
        node[path[-1]] = value
    return result


def _root(cls: type | None) -> type:
    if cls is None:
        return Config
    return cls


def load_config(
    source: str | None = "tiny", overrides: list[str] | tuple[str, ...] = (), cls: type | None = None,
    defaults: list[str] | tuple[str, ...] = (),
) -> Any:
    """Build a configuration from a preset name or YAML path plus ``key=value`` overrides.

    Args:
        source: preset name (``tiny``, ``small``, ``base``, ...) or a YAML (or saved JSON) file;
            None = defaults. Removed keys in it are dropped with a warning.
        overrides: dotted overrides such as ``optim.lr=3e-4``; a removed key is an error.
        cls: the root dataclass; None = ``Config`` (pre-training). ``FinetuneConfig`` for fine-tuning.
        defaults: dotted settings that replace the dataclass defaults beneath ``source`` and
            ``overrides`` (a fine-tuning task's recipe, :attr:`mpma.tasks.base.Task.recipe`): the
            order is dataclass defaults < ``defaults`` < ``source`` < ``overrides``.
    """
    cls = _root(cls)
    base = overrides_to_dict(list(defaults))
    data = drop_removed_keys(_read_yaml(source), cls, str(source)) if source else {}
    update = overrides_to_dict(list(overrides))
    _reject_removed_overrides(update, cls)
    return _build(cls, _merge(_merge(base, data), update))


def config_from_dict(values: dict[str, Any], cls: type | None = None) -> Any:
    """Rebuild a configuration saved with ``to_dict`` (checked like any other; None = ``Config``).

    Keys the root lists in ``REMOVED_KEYS`` (written by older versions) are dropped with a
    :class:`RemovedConfigKeyWarning`; any other unknown key is an error.
    """
    cls = _root(cls)
    return _build(cls, drop_removed_keys(values, cls, f"saved {cls.__name__}"))
