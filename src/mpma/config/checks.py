"""Range checks of configuration values, shared by the sections' ``__post_init__``.

Every check raises a :class:`ConfigError` whose message starts with the dotted key, then gives the
value and what is allowed: ``optim.accumulate: expected an integer >= 1, got 0``. A section checks
its own fields when it is built (from a preset, overrides, a saved ``config.json`` or directly in
code); a root checks what involves several sections.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from mpma.config.errors import ConfigError


def at_least(key: str, value: int | float, low: int | float, note: str = "") -> None:
    """``value >= low`` (and finite)."""
    if not (math.isfinite(value) and value >= low):
        kind = "an integer" if isinstance(value, int) else "a number"
        raise ConfigError(f"{key}: expected {kind} >= {low:g}{_note(note)}, got {value!r}")


def positive(key: str, value: int | float, note: str = "") -> None:
    """An integer ``>= 1`` or a finite number ``> 0``."""
    if isinstance(value, int):
        at_least(key, value, 1, note)
    elif not (math.isfinite(value) and value > 0):
        raise ConfigError(f"{key}: expected a number > 0{_note(note)}, got {value!r}")


def in_range(key: str, value: float, low: float, high: float, low_open: bool = False, high_open: bool = True,
             note: str = "") -> None:
    """``value`` in the interval between ``low`` and ``high`` (open or closed at each end)."""
    above = value > low if low_open else value >= low
    below = value < high if high_open else value <= high
    if not (math.isfinite(value) and above and below):
        interval = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
        raise ConfigError(f"{key}: expected a value in {interval}{_note(note)}, got {value!r}")


def choice(key: str, value: str, allowed: Iterable[str]) -> None:
    """``value`` is one of ``allowed``."""
    allowed = tuple(allowed)
    if value not in allowed:
        raise ConfigError(f"{key}: expected one of {', '.join(allowed)}, got {value!r}")


def not_empty(key: str, value: str, note: str = "") -> None:
    """A string with something other than spaces in it."""
    if not value.strip():
        raise ConfigError(f"{key}: expected a non-empty string{_note(note)}, got {value!r}")


def divisible(width_key: str, width: int, heads_key: str, heads: int) -> None:
    """``width`` splits evenly over ``heads`` attention heads (both already checked positive)."""
    if width % heads:
        raise ConfigError(f"{width_key}: {width} is not divisible by {heads_key}={heads}; pick a width that is a "
                          f"multiple of the number of heads (e.g. {heads * max(1, round(width / heads))})")


def multiple_of_four(key: str, width: int) -> None:
    """Widths with a 2-D sine-cosine position table (ViT, pixel decoder): a multiple of 4."""
    if width % 4:
        raise ConfigError(f"{key}: expected a multiple of 4 (its 2-D sine-cosine position table splits the width "
                          f"into four parts), got {width}")


REPORT_TARGETS = ("none", "tensorboard", "wandb")


def report_targets(key: str, value: str | list[str]) -> list[str]:
    """``run.report_to`` as a list of experiment trackers: a list, or a comma-separated string.

    "none" (alone, or with nothing else) gives ``[]``; duplicates are dropped, order is kept.
    """
    items = value.split(",") if isinstance(value, str) else list(value)
    names = []
    for item in items:
        name = str(item).strip().lower()
        if name and name not in names:
            names.append(name)
    unknown = [name for name in names if name not in REPORT_TARGETS]
    if unknown:
        raise ConfigError(f"{key}: unknown tracker {unknown[0]!r}; expected a list or a comma-separated string of "
                          f"{', '.join(REPORT_TARGETS)} (e.g. {key}=tensorboard or {key}=[tensorboard,wandb]), "
                          f"got {value!r}")
    if "none" in names and len(names) > 1:
        raise ConfigError(f"{key}: 'none' cannot be combined with other trackers, got {value!r}")
    return [name for name in names if name != "none"]


def _note(note: str) -> str:
    return f" ({note})" if note else ""
