"""The error every configuration module raises (its own module, so that :mod:`mpma.config.base`,
which builds the roots, and the modules that define them can all import it)."""

from __future__ import annotations


class ConfigError(ValueError):
    """A configuration key or value is invalid."""
