"""Test-set identity: which test set a result was measured on, against the published one.

:func:`test_set_identity` is the short form a fine-tuning run stores with its test metrics
(``metrics.json["test_set"]``) and :func:`describe_identity` the line ``mpma report`` prints beside
the numbers. The published counts come from the ``prepare.json`` of the manifest (its recorded
comparison, :mod:`mpma.data.sources.published`) or, for a folder prepared before they were
recorded, from the adapter registry.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mpma.data.sources.adapters import ADAPTERS


def _from_prepare_info(info: Mapping[str, Any], split: str) -> dict[str, Any]:
    """Published count of ``split`` from a ``prepare.json`` (its recorded comparison, else the
    registry with the recorded options)."""
    comparisons = info.get("published")
    if comparisons is None:  # prepared before published counts were recorded
        cls = ADAPTERS.get(str(info.get("dataset")))
        entries = cls.published if cls is not None else ()
        comparisons = [{"source": e.source, "conditions": dict(e.conditions),
                        "compared": not e.unmet(info.get("options", {})),
                        "unmet": e.unmet(info.get("options", {})),
                        "counts": {k: {"published": n, "verified": k not in e.unverified}
                                   for k, n in e.counts.items()}} for e in entries]
    unmet: list[str] = []
    for comparison in comparisons:
        count = comparison.get("counts", {}).get(split)
        if count is None:
            continue
        if not comparison.get("compared"):
            unmet += comparison.get("unmet", [])
            continue
        return {"published": count["published"], "verified": bool(count.get("verified")),
                "source": comparison.get("source"), "conditions": comparison.get("conditions", {}),
                "note": ""}
    if unmet:
        note = f"published {split} count holds only for {', '.join(unmet)}"
    elif comparisons:
        note = f"no published {split} count for this release (no official {split} split)"
    else:
        note = "no published counts registered for this dataset"
    return {"published": None, "verified": None, "source": None, "conditions": {}, "note": note}


def test_set_identity(dataset_spec: str, split_sizes: Mapping[str, int],
                      prepare_info: Mapping[str, Any] | None = None,
                      split: str = "test") -> dict[str, Any]:
    """Which test set a fine-tuning or evaluation result was measured on, against the published one.

    Args:
        dataset_spec: ``data.dataset`` of the run: ``"synthrad"``, ``"vqa-rad:PATH"``,
            ``"manifest:PATH"`` or a manifest path.
        split_sizes: Examples per split of the run (``{"train": ..., "test": ...}``).
        prepare_info: The ``prepare.json`` of the manifest; by default read from the manifest's
            folder when it is there (the only file this function reads; it never raises on a
            missing or unreadable one).
        split: The evaluated split.

    Returns:
        ``{"dataset", "split", "records", "published", "matches", "verified", "source",
        "conditions", "note", "spec"}``: ``published`` / ``matches`` / ``verified`` are ``None``
        when there is no published count to compare with (``note`` says why).
    """
    records = split_sizes.get(split)
    name, path = "manifest", dataset_spec
    if dataset_spec == "synthrad":
        name, path = "synthrad", None
    elif ":" in dataset_spec and not Path(dataset_spec).exists():
        name, path = dataset_spec.split(":", 1)
    if name == "synthrad":
        found = {"published": None, "verified": None, "source": None, "conditions": {},
                 "note": "generated data (synthrad): there is no published test set"}
        dataset = "synthrad"
    elif name == "vqa-rad":
        dataset = "vqa-rad"
        found = _from_prepare_info({"dataset": dataset, "options": {}}, split)
    else:
        manifest = Path(path or "")
        info = prepare_info
        if info is None:
            try:
                info = json.loads((manifest.parent / "prepare.json").read_text(encoding="utf-8"))
            except (OSError, ValueError):
                info = None
        if isinstance(info, Mapping):
            dataset = str(info.get("dataset", "manifest"))
            found = _from_prepare_info(info, split)
        else:
            dataset = f"manifest {manifest.name}"
            found = {"published": None, "verified": None, "source": None, "conditions": {},
                     "note": f"no prepare.json beside {manifest}: its release is unknown"}
    published = found["published"]
    matches = None if published is None or records is None else records == published
    return {"dataset": dataset, "split": split, "records": records, **found, "matches": matches,
            "spec": dataset_spec}


test_set_identity.__test__ = False  # type: ignore[attr-defined]  # not a pytest test


def describe_identity(identity: Mapping[str, Any] | None) -> str:
    """One line for a report: ``"slake test, 1,052 records, NOT the published 1,061 (-9)"``."""
    if not identity:
        return "test-set identity not recorded (cannot tell whether it is the published test set)"
    records = identity.get("records")
    head = f"{identity.get('dataset')} {identity.get('split', 'test')}, " + (
        f"{records:,} records" if isinstance(records, int) else "record count unknown")
    published = identity.get("published")
    if published is None:
        return f"{head}; no published count to compare ({identity.get('note') or 'none'})"
    tail = "" if identity.get("verified", True) else " (published count unverified)"
    if identity.get("matches"):
        return f"{head} = the published {published:,}{tail}"
    diff = f" ({records - published:+,})" if isinstance(records, int) else ""
    return f"{head}, NOT the published {published:,}{diff}: not comparable with papers{tail}"
