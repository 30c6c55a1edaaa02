"""The outcome of a weight conversion (:mod:`mpma.models.convert`): its report and its error."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


class ConversionError(ValueError):
    """The source weights do not fit the target ViT; the message lists the keys or settings."""


@dataclass
class ConversionReport:
    """What :func:`~mpma.models.convert.convert_vision_state` did with every key.

    mapped: target key -> source key(s) it was built from.
    resized: target key -> [source shape, target shape] (position embeddings interpolated).
    zero_filled: target keys the source has no counterpart for, set to zero (CLIP's patch conv has no bias).
    unmapped: source keys of the vision tower not used (an error unless ``strict=False``).
    ignored: source keys outside the vision tower (text tower, projections, logit scale) or known
        to be irrelevant (position_ids buffer, CLIP's output projection).
    missing: target keys nothing was loaded into (an error unless ``strict=False``).
    notes: settings inferred or checked (heads, activation, interpolation).
    """

    source: str
    format: str
    prefix: str = ""
    mapped: dict[str, list[str]] = field(default_factory=dict)
    resized: dict[str, list[list[int]]] = field(default_factory=dict)
    zero_filled: list[str] = field(default_factory=list)
    unmapped: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.unmapped and not self.missing

    def to_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        """A few human-readable lines (ignored keys are counted, not listed)."""
        lines = [f"vision weights from {self.source} ({self.format}{', prefix ' + repr(self.prefix) if self.prefix else ''}): "
                 f"{len(self.mapped)} tensors mapped, {len(self.ignored)} source keys outside the vision encoder ignored"]
        for key, (old, new) in self.resized.items():
            lines.append(f"  resized {key}: {old} -> {new} (bicubic)")
        if self.zero_filled:
            lines.append(f"  zero-filled (no counterpart in the source): {', '.join(self.zero_filled)}")
        if self.unmapped:
            lines.append(f"  UNMAPPED source keys: {', '.join(self.unmapped)}")
        if self.missing:
            lines.append(f"  MISSING target keys: {', '.join(self.missing)}")
        lines += [f"  note: {note}" for note in self.notes]
        return "\n".join(lines)
