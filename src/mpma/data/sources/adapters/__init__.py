"""Adapters from the ORIGINAL public releases to canonical manifests.

``ADAPTERS`` maps a dataset name (as typed after ``mpma data prepare``) to its adapter class;
:func:`make_adapter` builds one with typed options. Each adapter documents its expected layout
(``Adapter.layout``), where to get the release and its license (``Adapter.source``); see also
``docs/datasets.md``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mpma.data.sources.adapters.base import Adapter, Item, LayoutError, hash_split, normalize_split
from mpma.data.sources.adapters.captions import MedicatAdapter, RocoAdapter
from mpma.data.sources.adapters.chest import ChestXray14Adapter, ChexpertAdapter, RsnaPneumoniaAdapter
from mpma.data.sources.adapters.generic import GenericAdapter, MelindaAdapter
from mpma.data.sources.adapters.medpix import MedpixAdapter
from mpma.data.sources.adapters.reports import IuXrayAdapter, MimicCxrAdapter
from mpma.data.sources.adapters.vqa import PathVqaAdapter, SlakeAdapter, VqaMed2019Adapter, VqaRadAdapter

ADAPTERS: dict[str, type[Adapter]] = {
    cls.name: cls for cls in (
        RocoAdapter, MedicatAdapter, MedpixAdapter, MimicCxrAdapter, IuXrayAdapter,
        VqaRadAdapter, SlakeAdapter, VqaMed2019Adapter, PathVqaAdapter,
        MelindaAdapter, ChexpertAdapter, RsnaPneumoniaAdapter, ChestXray14Adapter,
        GenericAdapter,
    )
}

__all__ = ["ADAPTERS", "Adapter", "Item", "LayoutError", "hash_split", "make_adapter",
           "normalize_split", "parse_options"]


def _convert(name: str, typ: type, value: Any) -> Any:
    if not isinstance(value, str) or typ is str:
        return value
    if typ is bool:
        lowered = value.strip().lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"option {name} expects true/false, got {value!r}")
    try:
        return typ(value)
    except ValueError:
        raise ValueError(f"option {name} expects a {typ.__name__}, got {value!r}") from None


def make_adapter(dataset: str, options: Mapping[str, Any] | None = None) -> Adapter:
    """Build the adapter of ``dataset`` with ``options`` (strings are converted to the field type).

    Raises:
        ValueError: Unknown dataset, unknown option for that dataset or a badly typed value;
            the message lists what is accepted.
    """
    try:
        cls = ADAPTERS[dataset]
    except KeyError:
        raise ValueError(f"unknown dataset {dataset!r}; choose one of "
                         f"{', '.join(sorted(ADAPTERS))}") from None
    accepted = cls.options()
    kwargs = {}
    for key, value in (options or {}).items():
        if key not in accepted:
            allowed = ", ".join(sorted(accepted)) or "none"
            raise ValueError(f"dataset {dataset!r} has no option {key!r} (accepted: {allowed})")
        kwargs[key] = _convert(key, accepted[key][0], value)
    return cls(**kwargs)


def parse_options(pairs: list[str] | None) -> dict[str, str]:
    """``["key=value", ...]`` (from ``-o key=value``) → dict; a pair without ``=`` is an error."""
    out: dict[str, str] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"option {pair!r} must look like key=value")
        out[key.strip()] = value
    return out
