"""JSONL files read line by line: a bad line (not UTF-8, not JSON, not an object) is reported with its
line number, never a reason to drop the whole file."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path


class ManifestError(ValueError):
    """A manifest file is missing, malformed or inconsistent (message names path and line)."""


def iter_jsonl(path: str | os.PathLike[str]) -> Iterator[tuple[int, dict | None, str]]:
    """Every non-blank line of a JSONL file, without stopping at a bad one.

    Yields ``(line number, object, "")`` for a line holding a JSON object and ``(line number, None,
    problem)`` for any other line: ``"not UTF-8 (...)"``, ``"not valid JSON (...)"`` or ``"expected a
    JSON object, got list"``. Lines end at ``\\n`` (a UTF-8 byte-order mark on line 1 is skipped); the
    file is read line by line, never whole.

    Raises:
        ManifestError: the file is missing or cannot be opened.
    """
    path = Path(path)
    try:
        handle = path.open("rb")
    except FileNotFoundError:
        raise ManifestError(f"{path}: manifest not found; check the path") from None
    except OSError as exc:
        raise ManifestError(f"{path}: cannot read manifest ({exc})") from exc
    with handle:
        for lineno, raw in enumerate(handle, start=1):
            if lineno == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                yield lineno, None, f"not UTF-8 ({exc.reason} at byte {exc.start}: {raw[exc.start:exc.start + 1]!r})"
                continue
            if not line.strip():
                continue
            try:
                data = json.loads(line)
            except json.JSONDecodeError as exc:
                yield lineno, None, f"not valid JSON ({exc.msg})"
                continue
            if not isinstance(data, dict):
                yield lineno, None, f"expected a JSON object, got {type(data).__name__}"
                continue
            yield lineno, data, ""


def read_jsonl(path: str | Path) -> list[tuple[int, dict]]:
    """(line number, object) for each non-blank line of a JSONL file (strict: see :func:`iter_jsonl`
    for a reader that goes on past a bad line).

    Raises:
        ManifestError: the file is missing or unreadable, or a line is not UTF-8 or not a JSON object
            (``"path:line: what is wrong"``).
    """
    rows = []
    for lineno, data, problem in iter_jsonl(path):
        if data is None:
            raise ManifestError(f"{path}:{lineno}: {problem}")
        rows.append((lineno, data))
    return rows
