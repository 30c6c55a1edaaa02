"""What a rerun of ``mpma data prepare`` into the same output folder reuses.

* :class:`ImageCache` (``.cache/images.jsonl``): the per-image check results of earlier runs, so a
  rerun (e.g. after a kill) does not decode again what it already checked;
* :func:`resume_shards`: the complete shards of an interrupted ``--pack`` run with the same
  dataset, options and image size (``shards/.state.json``), whose records are not packed again;
* :func:`next_shard_writer`: a shard writer that continues after the shards already there.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from mpma.data.shards import INDEX, ShardWriter, shard_records
from mpma.data.sources.validate import ImageCheck

STATE = ".state.json"


def write_lines(path: Path, lines: list[str]) -> None:
    """Write ``lines`` (one per line) to ``path`` atomically: through a temporary file beside it."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    os.replace(tmp, path)


class ImageCache:
    """Per-image check results of earlier runs, valid while the file's size and mtime match."""

    def __init__(self, path: Path, fresh: bool) -> None:
        self.path, self.entries = path, {}
        if fresh:
            path.unlink(missing_ok=True)
        elif path.is_file():
            for line in path.read_text(encoding="utf-8").splitlines():
                try:
                    entry = json.loads(line)
                    self.entries[entry["path"]] = entry
                except (json.JSONDecodeError, KeyError, TypeError):
                    continue  # a line cut by a kill
        path.parent.mkdir(parents=True, exist_ok=True)
        self.handle = path.open("a", encoding="utf-8")

    def get(self, path: str) -> ImageCheck | None:
        entry = self.entries.get(path)
        try:
            stat = os.stat(path)
        except OSError:
            return None
        if entry is None or [entry["size"], entry["mtime_ns"]] != [stat.st_size, stat.st_mtime_ns]:
            return None
        return ImageCheck(path, entry["ok"], entry["reason"], entry["detail"])

    def put(self, check: ImageCheck) -> None:
        try:
            stat = os.stat(check.path)
        except OSError:
            return
        entry = {"path": check.path, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns,
                 "ok": check.ok, "reason": check.reason, "detail": check.detail}
        self.entries[check.path] = entry
        self.handle.write(json.dumps(entry) + "\n")  # appended at once: survives a kill

    def close(self) -> None:
        """Close, rewriting the file with one line per image (the latest result)."""
        self.handle.close()
        write_lines(self.path, [json.dumps(e) for e in self.entries.values()])


def resume_shards(folder: Path, state: dict[str, Any], candidate_ids: set[str]) -> dict[str, str]:
    """Ids already in complete shards of a compatible earlier run (``{id: shard file}``).

    Incompatible or stale shards (other options, or ids no longer produced) are deleted.
    """
    folder.mkdir(parents=True, exist_ok=True)
    for tmp in folder.glob("*.tar.tmp"):
        tmp.unlink()
    packed: dict[str, str] = {}
    old = folder / STATE
    if old.is_file() and json.loads(old.read_text(encoding="utf-8")) == state:
        for shard in sorted(folder.glob("*.tar")):
            packed.update({r["id"]: shard.name for r in shard_records(shard)})
        if set(packed) <= candidate_ids:
            return packed
    for stale in [*folder.glob("*.tar"), folder / INDEX]:
        stale.unlink(missing_ok=True)
    (folder / STATE).write_text(json.dumps(state), encoding="utf-8")
    return {}


def next_shard_writer(folder: Path, split: str, shard_mb: float) -> ShardWriter:
    """A writer of ``split`` shards of at most ``shard_mb`` MiB, numbered after those in ``folder``."""
    numbers = [int(p.name[len(split) + 1:-4]) for p in folder.glob(f"{split}-*.tar")
               if p.name[len(split) + 1:-4].isdigit()]
    return ShardWriter(folder, split, int(shard_mb * 2 ** 20), max(numbers, default=-1) + 1)
