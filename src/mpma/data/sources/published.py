"""Published record counts of each dataset release, and how a prepared dataset compares with them.

A number on SLAKE or VQA-RAD can be compared with a paper's only when the test set is the same.
Each adapter carries :class:`Published` entries (its ``published`` class attribute): the records
per split that the dataset's paper or release README gives, where they come from, and the adapter
settings under which they hold (SLAKE's English counts only for ``language=en``).

* :func:`compare` sets the kept counts of a ``mpma data prepare`` run against them and explains
  every difference from the run's own rejects and exclusions (``prepare.json`` records it);
* :mod:`mpma.data.sources.identity` gives the short form a fine-tuning run stores with its test
  metrics and the line ``mpma report`` prints beside the numbers.

A count key is a split (``"test"``), splits joined by ``+`` (``"train+val"``: an official list
that the adapter splits further) or ``"total"`` (every split: a release without an official split,
which the adapter hash-splits). A count not checked against its source is listed in
``unverified``: it is compared and printed, but ``--strict`` does not fail on it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

TOTAL = "total"
_SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Published:
    """Record counts a paper or release README gives for one release, and when they hold.

    Attributes:
        counts: ``{key: records}``; a key is a split, ``+``-joined splits or ``"total"``.
        source: Where the counts come from (paper and table, README, release files), one line.
        unit: What one record is (``"QA pairs"``, ``"images"``, ``"figures"``).
        conditions: Adapter settings (options, or facts of the release such as IU X-Ray's
            ``layout``) under which the counts hold; compared only when every one holds.
        unverified: Keys whose count was not checked against the source.
        note: What someone comparing numbers should know (shown with a difference).
    """

    counts: Mapping[str, int]
    source: str
    unit: str = "records"
    conditions: Mapping[str, Any] = field(default_factory=dict)
    unverified: tuple[str, ...] = ()
    note: str = ""

    def __post_init__(self) -> None:
        for key in self.counts:
            if key != TOTAL and not set(key.split("+")) <= set(_SPLITS):
                raise ValueError(f"published count key {key!r}: use a split of {_SPLITS}, "
                                 f"'+'-joined splits or {TOTAL!r}")
        if set(self.unverified) - set(self.counts):
            raise ValueError(f"unverified {self.unverified} names keys not in {list(self.counts)}")

    def unmet(self, settings: Mapping[str, Any]) -> list[str]:
        """The conditions ``settings`` does not meet, as ``"language=en (this run: all)"``."""
        return [f"{k}={v} (this run: {settings.get(k, 'unset')})"
                for k, v in self.conditions.items() if settings.get(k) != v]


def _splits_of(key: str) -> tuple[str, ...] | None:
    """The splits a count key covers; ``None`` for ``"total"`` (every split, known or not)."""
    return None if key == TOTAL else tuple(key.split("+"))


def _reasons(counts: Mapping[str, int]) -> str:
    return ", ".join(f"{reason} {n:,}" for reason, n in sorted(counts.items(), key=lambda x: -x[1]))


@dataclass(frozen=True)
class CountCheck:
    """One published count against the kept records it covers, with what explains a difference.

    Attributes:
        key: The count key (``"test"``, ``"train+val"``, ``"total"``).
        kept: Records kept in those splits.
        published: The published count.
        verified: Whether the published count was checked against its source.
        rejected: Rejects in those splits, by reason.
        excluded: Records excluded by an option in those splits, by reason.
        unsplit: Rejects whose split the adapter could not tell (a malformed entry), by reason;
            they may belong to this key (for ``"total"`` they are in ``rejected``).
    """

    key: str
    kept: int
    published: int
    verified: bool = True
    rejected: Mapping[str, int] = field(default_factory=dict)
    excluded: Mapping[str, int] = field(default_factory=dict)
    unsplit: Mapping[str, int] = field(default_factory=dict)

    @property
    def matches(self) -> bool:
        return self.kept == self.published

    @property
    def read(self) -> int:
        """Entries of the release read in these splits (kept + rejected + excluded)."""
        return self.kept + sum(self.rejected.values()) + sum(self.excluded.values())

    def reasons(self) -> list[str]:
        """Why ``kept`` differs from ``published``: rejects, exclusions, the release itself."""
        out = []
        if self.rejected:
            out.append(f"rejected {sum(self.rejected.values()):,} ({_reasons(self.rejected)})")
        if self.excluded:
            out.append(f"excluded by option {sum(self.excluded.values()):,} "
                       f"({_reasons(self.excluded)})")
        gap = self.read - self.published
        if gap < 0:
            text = f"the release read here has {-gap:,} fewer entries than published"
            if self.unsplit:
                text += (f" ({sum(self.unsplit.values()):,} rejects whose split is unknown may "
                         f"belong here: {_reasons(self.unsplit)})")
            out.append(text)
        elif gap > 0:
            out.append(f"the release read here has {gap:,} more entries than published")
        return out

    def explanation(self) -> str:
        """``"1,052 differs from the published 1,061 by -9: rejected 9 (empty answer 9)"``."""
        if self.matches:
            text = f"{self.kept:,} matches the published {self.published:,}"
        else:
            text = (f"{self.kept:,} differs from the published {self.published:,} by "
                    f"{self.kept - self.published:+,}: " + "; ".join(self.reasons()))
        return text + ("" if self.verified else " (published count unverified)")

    def to_dict(self) -> dict[str, Any]:
        return {"kept": self.kept, "published": self.published, "matches": self.matches,
                "difference": self.kept - self.published, "verified": self.verified,
                "read": self.read, "rejected": dict(self.rejected),
                "excluded": dict(self.excluded), "unsplit_rejects": dict(self.unsplit),
                "explanation": self.explanation()}


@dataclass(frozen=True)
class Comparison:
    """A run's counts against one :class:`Published` entry (or why it was not compared)."""

    entry: Published
    checks: tuple[CountCheck, ...] = ()
    unmet: tuple[str, ...] = ()

    @property
    def compared(self) -> bool:
        return not self.unmet

    @property
    def matches(self) -> bool:
        return self.compared and all(c.matches for c in self.checks)

    def differences(self, verified_only: bool = False) -> list[CountCheck]:
        return [c for c in self.checks if not c.matches and (c.verified or not verified_only)]

    def lines(self) -> list[str]:
        """Summary lines (no indent): one line when every count matches, else one per key."""
        entry = self.entry
        where = ", ".join(f"{k}={v}" for k, v in entry.conditions.items())
        if not self.compared:
            return [f"published counts not compared: {entry.source} gives them for {where}; "
                    f"this run does not meet {', '.join(self.unmet)}"]
        unverified = [c.key for c in self.checks if not c.verified]
        tail = f"; published count unverified: {', '.join(unverified)}" if unverified else ""
        if self.matches:
            numbers = " / ".join(f"{c.published:,}" for c in self.checks)
            keys = " / ".join(c.key for c in self.checks)
            return [f"published counts: matches the published {numbers} ({keys} {entry.unit}"
                    f"{', ' + where if where else ''}; {entry.source}{tail})"]
        lines = [f"published counts ({entry.unit}{', ' + where if where else ''}; {entry.source}):"]
        width = max(len(c.key) for c in self.checks)
        lines += [f"  {c.key:<{width}}  {c.explanation()}" for c in self.checks]
        if entry.note:
            lines.append(f"  note: {entry.note}")
        return lines

    def to_dict(self) -> dict[str, Any]:
        entry = self.entry
        return {"source": entry.source, "unit": entry.unit, "conditions": dict(entry.conditions),
                "note": entry.note, "compared": self.compared, "unmet": list(self.unmet),
                "matches": self.matches if self.compared else None,
                "counts": {c.key: c.to_dict() for c in self.checks} if self.compared else {
                    k: {"published": n, "verified": k not in entry.unverified}
                    for k, n in entry.counts.items()}}


def compare(entries: tuple[Published, ...] | list[Published], settings: Mapping[str, Any],
            kept: Mapping[str, int], rejected: Mapping[tuple[str | None, str], int],
            excluded: Mapping[tuple[str | None, str], int]) -> list[Comparison]:
    """The run's counts against each published entry.

    Args:
        entries: The adapter's :class:`Published` entries.
        settings: The adapter's options and release facts (``Adapter.settings``).
        kept: Kept records per split.
        rejected: Rejects per ``(split, reason)``; split ``None`` when the adapter could not tell.
        excluded: Records excluded by an option per ``(split, reason)``.

    Returns:
        One :class:`Comparison` per entry, in order.
    """
    out = []
    for entry in entries:
        unmet = tuple(entry.unmet(settings))
        if unmet:
            out.append(Comparison(entry, unmet=unmet))
            continue
        checks = []
        for key, published in entry.counts.items():
            splits = _splits_of(key)

            def within(counts: Mapping[tuple[str | None, str], int], wanted=splits) -> dict:
                picked: dict[str, int] = {}
                for (split, reason), n in counts.items():
                    if wanted is None or split in wanted:
                        picked[reason] = picked.get(reason, 0) + n
                return picked

            unsplit = {} if splits is None else {
                r: n for (s, r), n in rejected.items() if s is None}
            checks.append(CountCheck(
                key, sum(n for s, n in kept.items() if splits is None or s in splits), published,
                key not in entry.unverified, within(rejected), within(excluded), unsplit))
        out.append(Comparison(entry, tuple(checks)))
    return out


def summary_lines(comparisons: list[Comparison], registered: bool) -> list[str]:
    """The lines of the compared entries (of the uncompared ones, saying why, when none was
    compared); a single line when the dataset has no published counts."""
    if not registered:
        return ["published counts: none registered for this dataset"]
    shown = [c for c in comparisons if c.compared] or comparisons
    return [line for c in shown for line in c.lines()]


def registry_lines(entries: tuple[Published, ...] | list[Published]) -> list[str]:
    """The published counts of an adapter, one line per entry (for ``--layout``)."""
    out = []
    for entry in entries:
        counts = " / ".join(f"{k} {n:,}" + (" (unverified)" if k in entry.unverified else "")
                            for k, n in entry.counts.items())
        when = ", ".join(f"{k}={v}" for k, v in entry.conditions.items()) or "always"
        out.append(f"  {counts} {entry.unit} [{when}]; {entry.source}")
    return out or ["  none registered"]
