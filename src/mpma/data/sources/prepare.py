"""``mpma data prepare``: original release → validated manifest, reject report and (optional) shards.

Output folder::

    manifest.jsonl     kept records (image paths relative to this folder when the release and
                       this folder share a parent below the filesystem root, else absolute)
    rejects.jsonl      one {"id", "source", "reason", "detail"} per left-out record
    prepare.json       dataset, options, counts per split / reject reason / exclusion reason,
                       and the comparison with the published counts (``published``)
    shards/            with --pack: index.json + <split>-NNNNN.tar (see mpma.data.shards)
    .cache/images.jsonl  per-image check results, so a rerun (e.g. after a kill) does not decode
                       again what it already checked; delete it or pass fresh=True to recheck

A rerun into the same folder rewrites the manifest from scratch (no duplicated records), reuses
the image cache and, with ``--pack``, keeps the complete shards of the interrupted run (same
dataset, options and image size) and packs only the records not in them
(:mod:`mpma.data.sources.resume`). A run without ``--pack`` removes the ``shards/`` of an earlier
packed run (they would no longer match).

Every run is compared with the counts the dataset's paper or release gives
(:mod:`mpma.data.sources.published`): the summary says per split "matches the published N" or how
it differs and why (rejects by reason, records excluded by an option, a release that holds fewer
entries); ``strict`` fails on any difference from a verified published count.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mpma.data.records import record_to_dict, write_manifest
from mpma.data.shards import ShardInfo, ShardWriter, shard_records, write_index
from mpma.data.sources.adapters import LayoutError, make_adapter
from mpma.data.sources.published import Comparison, compare, summary_lines
from mpma.data.sources.resume import ImageCache, next_shard_writer, resume_shards, write_lines
from mpma.data.sources.validate import ImageCheck, Reject, check_images, record_problem

__all__ = ["PrepareError", "PrepareResult", "prepare"]


class PrepareError(RuntimeError):
    """A prepare run cannot complete (``--strict`` with rejects or a difference from a verified
    published count, conflicting output folder)."""


@dataclass
class PrepareResult:
    """What a prepare run produced; :meth:`summary` formats it for the terminal."""

    dataset: str
    kind: str
    out: Path
    total: int = 0
    kept: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    excluded: Counter[str] = field(default_factory=Counter)
    splits: Counter[str] = field(default_factory=Counter)
    decoded: int = 0
    shards: list[ShardInfo] = field(default_factory=list)
    split_rejected: Counter[tuple[str | None, str]] = field(default_factory=Counter)
    split_excluded: Counter[tuple[str | None, str]] = field(default_factory=Counter)
    published: list[Comparison] = field(default_factory=list)
    registered: bool = False

    @property
    def matches_published(self) -> bool | None:
        """All compared published counts match (``None``: nothing was compared)."""
        compared = [c for c in self.published if c.compared]
        return all(c.matches for c in compared) if compared else None

    def summary(self) -> str:
        lines = [f"{self.dataset}: {self.total:,} entries read -> kept {self.kept:,}, rejected "
                 f"{sum(self.rejected.values()):,}, excluded by option {sum(self.excluded.values()):,}"]
        lines += [f"  rejected  {n:>9,}  {reason}" for reason, n in self.rejected.most_common()]
        lines += [f"  excluded  {n:>9,}  {reason}" for reason, n in self.excluded.most_common()]
        lines.append("  kept per split: " + (", ".join(f"{s} {n:,}" for s, n in sorted(
            self.splits.items())) or "none"))
        lines += [f"  {line}" for line in summary_lines(self.published, self.registered)]
        lines.append(f"  manifest: {self.out / 'manifest.jsonl'}")
        lines.append(f"  rejects:  {self.out / 'rejects.jsonl'}")
        if self.shards:
            size = sum(s.bytes for s in self.shards) / 2 ** 20
            lines.append(f"  shards:   {self.out / 'shards'} ({len(self.shards)} files, {size:.1f} MiB)")
        return "\n".join(lines)


def _relative(image: str, out: Path) -> str:
    """``image`` relative to ``out`` when they share a folder below the filesystem root."""
    try:
        common = Path(os.path.commonpath([image, out]))
    except ValueError:  # another drive on Windows
        return image
    return image if common == Path(common.anchor) else os.path.relpath(image, out)


def prepare(dataset: str, src: str | os.PathLike[str], out: str | os.PathLike[str], *,
            options: dict[str, Any] | None = None, pack: bool = False, image_size: int = 256,
            strict: bool = False, workers: int | None = None, progress: bool = True,
            shard_mb: float = 64.0, quality: int = 90, fresh: bool = False) -> PrepareResult:
    """Turn an original release into a validated manifest (+ rejects, + optional shards).

    Args:
        dataset: Adapter name (``mpma.data.sources.adapters.ADAPTERS``).
        src: The release folder as downloaded.
        out: Output folder (created).
        options: Adapter options (``{"uncertain": "zeros"}``); strings are converted.
        pack: Also write shards of images resized to ``image_size`` (shorter side).
        image_size: Shorter side of packed images (they are never upscaled).
        strict: Raise :class:`PrepareError` if any record is rejected or a kept count differs
            from a verified published count (no manifest is written).
        workers: Decoding processes (default: all usable CPUs).
        progress: Show progress bars on stderr.
        shard_mb: Size bound of a shard in MiB.
        quality: JPEG quality of packed images.
        fresh: Ignore the image cache and earlier shards of this output folder.

    Decoding uses "spawn" worker processes: a script calling this must do so under
    ``if __name__ == "__main__":`` (the usual multiprocessing rule; the CLI does).

    Returns:
        Counts and paths of the run.

    Raises:
        LayoutError: ``src`` missing or not the expected release (message shows the layout).
        ValueError: Unknown dataset or option.
        PrepareError: ``strict`` with rejects or a published-count difference; ``out`` holds
            another dataset; ``pack`` of a record without image.
    """
    adapter = make_adapter(dataset, options)
    src, out = Path(src).expanduser().absolute(), Path(out).expanduser().absolute()
    _check_folders(dataset, adapter, src, out)
    out.mkdir(parents=True, exist_ok=True)
    result = PrepareResult(dataset, adapter.kind, out, registered=bool(adapter.published))
    rejects, candidates = _read(adapter, src, result, progress)
    if pack and any(getattr(r, "image", None) is None for r, _ in candidates):
        raise PrepareError("--pack needs an image for every record; this dataset has text-only ones")
    if strict and rejects:
        _fail_strict(out, rejects)
    if strict:  # no rejects so far, and any image reject fails: the candidates are the result
        _strict_published(out, _compare(adapter, src, result, Counter(
            r.split for r, _ in candidates)))
    users = _image_users(candidates)
    checks = _missing_images(users)
    if strict and checks:
        _fail_strict(out, rejects + _image_rejects(candidates, users, checks))
    cache = ImageCache(out / ".cache" / "images.jsonl", fresh)
    packed = _start_shards(out, dataset, adapter, candidates, pack, image_size, quality, fresh)
    todo = _images_to_decode(users, checks, cache, candidates, packed, pack)
    stream = check_images(todo, pack_size=image_size if pack else None, quality=quality,
                          workers=workers, progress=progress, desc="decoding images")
    _record_checks(stream, result, cache, checks, _ShardPacker(out, shard_mb, candidates, users, packed),
                   pack=pack, strict_rejects=rejects if strict else None)
    return _finish(result, adapter, src, out, options, pack, image_size, candidates, users,
                   checks, rejects, packed)


def _check_folders(dataset: str, adapter: Any, src: Path, out: Path) -> None:
    """Fail early on a missing or misshapen release folder ``src`` (:class:`LayoutError`) or an
    output folder ``out`` that holds another dataset (:class:`PrepareError`)."""
    if not src.is_dir():
        raise LayoutError(f"--src {src} does not exist or is not a folder; expected the "
                          f"{dataset} release laid out as:\n{adapter.layout}")
    adapter.check(src)
    info_path = out / "prepare.json"
    if info_path.is_file():
        previous = json.loads(info_path.read_text(encoding="utf-8")).get("dataset")
        if previous != dataset:
            raise PrepareError(f"{out} holds a prepared {previous!r}, not {dataset!r}; choose "
                               "another --out or delete that folder")


def _image_users(candidates: list[tuple[Any, str]]) -> dict[str, list[int]]:
    """Image path -> indices of the candidates that use it, in first-use order."""
    users: dict[str, list[int]] = {}
    for index, (record, _) in enumerate(candidates):
        if getattr(record, "image", None):
            users.setdefault(record.image, []).append(index)
    return users


def _missing_images(users: dict[str, list[int]]) -> dict[str, ImageCheck]:
    """A failed "image missing" check for every path in ``users`` that is not a file."""
    return {p: ImageCheck(p, False, "image missing", f"{p} not found") for p in users if not os.path.isfile(p)}


def _start_shards(out: Path, dataset: str, adapter: Any, candidates: list, pack: bool, image_size: int,
                  quality: int, fresh: bool) -> dict[str, str]:
    """With ``pack``, the ids already in complete shards of an interrupted run with the same settings
    (none with ``fresh``: earlier shards are removed); without, an earlier run's ``shards/`` is
    removed and nothing is packed."""
    packed: dict[str, str] = {}
    if pack:
        state = {"dataset": dataset, "options": dataclasses.asdict(adapter),
                 "image_size": image_size, "quality": quality, "version": 1}
        if fresh:
            shutil.rmtree(out / "shards", ignore_errors=True)
        packed = resume_shards(out / "shards", state, {r.id for r, _ in candidates})
    elif (out / "shards").is_dir():  # shards of an earlier --pack run would not match
        shutil.rmtree(out / "shards")
    return packed


def _images_to_decode(users: dict[str, list[int]], checks: dict[str, ImageCheck], cache: ImageCache,
                      candidates: list, packed: dict[str, str], pack: bool) -> list[str]:
    """The image paths still to decode; those the cache answers (a failure, no packing, or all their
    records already packed) go into ``checks`` instead."""
    todo = []
    for path, indices in users.items():
        if path in checks:
            continue
        cached = cache.get(path)
        if cached is not None and (not cached.ok or not pack or all(
                candidates[i][0].id in packed for i in indices)):
            checks[path] = cached
        else:
            todo.append(path)
    return todo


def _record_checks(stream: Any, result: PrepareResult, cache: ImageCache, checks: dict[str, ImageCheck],
                   packer: _ShardPacker, *, pack: bool, strict_rejects: list[Reject] | None) -> None:
    """Consume the decoding ``stream``: count and cache each check, keep it (without image bytes) in
    ``checks``, pack a decoded image with ``pack`` and, when ``strict_rejects`` is given (the rejects so
    far of a ``--strict`` run), fail at the first bad image. Closes the stream, cache and shard writers."""
    try:
        for check in stream:
            result.decoded += 1
            cache.put(check)
            checks[check.path] = dataclasses.replace(check, data=None)
            if strict_rejects is not None and not check.ok:
                _fail_strict(packer.out, strict_rejects + _image_rejects(packer.candidates, packer.users, checks))
            if check.ok and pack:
                packer.add(check)
    finally:
        stream.close()
        cache.close()
        packer.close()


class _ShardPacker:
    """Writes the decoded images of records not yet in ``packed`` to one shard writer per split."""

    def __init__(self, out: Path, shard_mb: float, candidates: list, users: dict[str, list[int]],
                 packed: dict[str, str]) -> None:
        """``packed``: record id -> shard status, updated as records are written under ``out/shards``."""
        self.out, self.shard_mb, self.candidates, self.users, self.packed = out, shard_mb, candidates, users, packed
        self.writers: dict[str, ShardWriter] = {}

    def add(self, check: ImageCheck) -> None:
        """Pack ``check.data`` (JPEG bytes) once for every unpacked record that uses ``check.path``."""
        assert check.data is not None
        for i in self.users[check.path]:
            record = self.candidates[i][0]
            if record.id in self.packed:
                continue
            if record.split not in self.writers:
                self.writers[record.split] = next_shard_writer(self.out / "shards", record.split, self.shard_mb)
            self.packed[record.id] = "new"
            row = record_to_dict(record)
            row["image"] = _relative(record.image, self.out)
            self.writers[record.split].add(row, check.data)

    def close(self) -> None:
        """Close every shard writer opened."""
        for writer in self.writers.values():
            writer.close()


def _read(adapter: Any, src: Path, result: PrepareResult,
          progress: bool) -> tuple[list[Reject], list[tuple[Any, str]]]:
    """Read the release: parse rejects, duplicate ids and content problems; the rest are
    ``(record, source)`` candidates still to pass the image checks."""
    from tqdm import tqdm

    rejects: list[Reject] = []
    candidates: list[tuple[Any, str]] = []
    seen: dict[str, str] = {}
    for item in tqdm(adapter.items(src), desc=f"reading {result.dataset}", unit="rec",
                     disable=not progress, dynamic_ncols=True):
        result.total += 1
        split = item.record.split if item.record is not None else item.split
        if item.excluded:
            result.excluded[item.reason or "excluded"] += 1
            result.split_excluded[(split, item.reason or "excluded")] += 1
            continue
        if item.record is None:
            reject = Reject(item.id, item.source, item.reason or "invalid", item.detail)
        elif item.id in seen:
            reject = Reject(item.id, item.source, "duplicate id", f"first at {seen[item.id]}")
        elif problem := record_problem(item.record, adapter.label_set()):
            reject = Reject(item.id, item.source, *problem)
        else:
            seen[item.id] = item.source
            candidates.append((item.record, item.source))
            continue
        rejects.append(reject)
        result.split_rejected[(split, reject.reason)] += 1
    return rejects, candidates


def _compare(adapter: Any, src: Path, result: PrepareResult, kept: Counter) -> list[Comparison]:
    return compare(adapter.published, adapter.settings(src), kept, result.split_rejected,
                   result.split_excluded)


def _strict_published(out: Path, comparisons: list[Comparison]) -> None:
    """``--strict``: fail when a kept count differs from a verified published count."""
    if any(c.differences(verified_only=True) for c in comparisons):
        write_lines(out / "rejects.jsonl", [])
        lines = summary_lines(comparisons, registered=True)
        raise PrepareError("--strict: the kept records differ from the published counts, so this "
                           "is not the published dataset; no manifest was written.\n  "
                           + "\n  ".join(lines))


def _image_rejects(candidates: list, users: dict[str, list[int]],
                   checks: dict[str, ImageCheck]) -> list[Reject]:
    out = []
    for path, check in checks.items():
        if not check.ok:
            out += [Reject(candidates[i][0].id, candidates[i][1], check.reason, check.detail)
                    for i in users[path]]
    return out


def _fail_strict(out: Path, rejects: list[Reject]) -> None:
    write_lines(out / "rejects.jsonl", [r.to_json() for r in rejects])
    counts = Counter(r.reason for r in rejects)
    raise PrepareError(
        f"--strict: {len(rejects):,} record(s) rejected ("
        + ", ".join(f"{reason}: {n:,}" for reason, n in counts.most_common())
        + f"); see {out / 'rejects.jsonl'}. No manifest was written; fix the release or run "
        "without --strict to keep the valid records.")


def _jsonable(settings: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(settings, default=str))


def _finish(result: PrepareResult, adapter: Any, src: Path, out: Path, options: Any, pack: bool,
            image_size: int, candidates: list, users: dict[str, list[int]],
            checks: dict[str, ImageCheck], rejects: list[Reject],
            packed: dict[str, str]) -> PrepareResult:
    rejects = rejects + _image_rejects(candidates, users, checks)
    bad = {i for path, check in checks.items() if not check.ok for i in users[path]}
    for path, check in checks.items():
        if not check.ok:
            for i in users[path]:
                result.split_rejected[(candidates[i][0].split, check.reason)] += 1
    kept = []
    for index, (record, _) in enumerate(candidates):
        if index in bad:
            continue
        if getattr(record, "image", None):
            record = dataclasses.replace(record, image=_relative(record.image, out))
        kept.append(record)
        result.splits[record.split] += 1
    result.kept = len(kept)
    result.rejected = Counter(r.reason for r in rejects)
    result.published = _compare(adapter, src, result, result.splits)
    write_manifest(out / "manifest.jsonl", kept)
    write_lines(out / "rejects.jsonl", [r.to_json() for r in rejects])
    if pack:
        folder = out / "shards"
        shards, ids = [], []
        for path in sorted(folder.glob("*.tar")):
            rows = [r["id"] for r in shard_records(path)]
            ids += rows
            shards.append(ShardInfo(path.name, path.name.rsplit("-", 1)[0], len(rows),
                                    path.stat().st_size))
        if len(ids) != len(set(ids)) or set(ids) != {r.id for r in kept}:
            raise PrepareError(f"{folder}: the shards do not hold each kept record exactly once "
                               "(the release changed since the interrupted run?); rerun with --fresh")
        write_index(folder, shards, kind=result.kind, dataset=result.dataset, image_size=image_size)
        result.shards = shards
    info = {"dataset": result.dataset, "kind": result.kind, "src": str(src),
            "options": dataclasses.asdict(adapter), "user_options": dict(options or {}),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S"), "total": result.total,
            "kept": result.kept, "splits": dict(result.splits), "rejected": dict(result.rejected),
            "excluded": dict(result.excluded), "packed": pack,
            "image_size": image_size if pack else None,
            "settings": _jsonable(adapter.settings(src)),
            "matches_published": result.matches_published,
            "published": [c.to_dict() for c in result.published]}
    write_lines(out / "prepare.json", [json.dumps(info, indent=1)])
    return result
