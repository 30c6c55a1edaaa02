"""Records that fail to load during a run: skipped, listed in the run folder's ``rejects.jsonl``,
counted, and fatal only past a share of the data (``data.max_bad_fraction``).

Pre-training reads its records lazily, so the failures surface while it trains:

1. a training dataset returns a *bad item* (:func:`bad_item`: ``{"bad": {"id", "image", "reason",
   "detail", ...}}``) instead of raising for a record whose image cannot be read;
2. the collate function leaves bad items out of the batch and lists them under ``batch["bad"]``
   (:func:`split_bad`), so the failure travels with the batch out of a DataLoader worker, where a
   counter kept in the dataset would stay;
3. :meth:`BadRecords.filter`, on the stream of batches the trainer reads, takes ``"bad"`` off each
   batch, appends each record not seen before to ``rejects.jsonl`` and raises
   :class:`TooManyBadRecords` once too many are bad. A batch whose records are all bad is dropped
   and the next one is taken.

Fine-tuning evaluates whole splits (every example must get a score), so it checks every image up
front instead (:meth:`mpma.data.collate.ImageStore.drop_unreadable`) and leaves those examples out.

Determinism: with no bad record nothing changes (the same batches, and the trainer seeds each step
itself). A bad record makes its batch smaller; batch contents stay functions of (seed, epoch, index),
so ``--resume`` replays exactly, except after a batch whose records were *all* bad: the data stream
is then one batch ahead of the step count, and a resumed run starts that many batches earlier (it
trains on those batches again). Under ``torchrun`` every rank appends its own bad records (with
``"rank"``) and checks the share on its own.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator
from pathlib import Path

from mpma.data.image import ImageTooLargeError

REJECTS = "rejects.jsonl"
SHOWN = 10  # bad records named in the error that stops a run


class TooManyBadRecords(ValueError):
    """More records failed to load than ``data.max_bad_fraction`` allows (the message names the first ten)."""


def failure_reason(error: Exception) -> str:
    """Short, countable reason of an image error, as ``mpma data validate`` counts them."""
    text = str(error)
    if isinstance(error, ImageTooLargeError):
        return "image too large"
    if "not found" in text:
        return "image missing"
    if "is empty" in text:
        return "image file empty"
    if "zero size" in text:
        return "image has zero size"
    return "image does not decode"


def bad_item(record_id: str, image: str | os.PathLike[str], error: Exception, **extra) -> dict:
    """The item a dataset returns for a record that failed to load: ``{"bad": {id, image, reason, detail, ...}}``."""
    return {"bad": {"id": record_id, "image": str(image), "reason": failure_reason(error), "detail": str(error),
                    **extra}}


def split_bad(items: list[dict]) -> tuple[list[dict], list[dict]]:
    """(good items, the ``"bad"`` rows of the bad ones), each in batch order."""
    return [i for i in items if "bad" not in i], [i["bad"] for i in items if "bad" in i]


def allowed_bad(total: int, max_fraction: float) -> int:
    """Bad records a run of ``total`` records tolerates: ``max_fraction`` of them, at least one (none
    when ``max_fraction`` is 0), so one bad file never stops a run unless asked to."""
    if max_fraction <= 0:
        return 0
    return max(1, math.floor(max_fraction * total))


def too_many_message(rows: list[dict], total: int, max_fraction: float, what: str, key: str,
                     where: Path | None) -> str:
    shown = "; ".join(f"{row.get(key)} ({row.get('reason')}: {row.get('detail')})" for row in rows[:SHOWN])
    more = f" and {len(rows) - SHOWN} more" if len(rows) > SHOWN else ""
    listed = f"; all of them are in {where}" if where is not None else ""
    return (f"{len(rows)} of {total} {what} failed to load, more than data.max_bad_fraction={max_fraction:g} allows "
            f"({allowed_bad(total, max_fraction)}): {shown}{more}{listed}. Fix or remove them (`mpma data validate "
            "MANIFEST` lists every bad record), or raise data.max_bad_fraction")


def check_fraction(rows: list[dict], total: int, max_fraction: float, what: str = "records", key: str = "id",
                   where: Path | None = None) -> None:
    """Raise :class:`TooManyBadRecords` when ``rows`` (one per bad record) are more than :func:`allowed_bad`."""
    if len(rows) > allowed_bad(total, max_fraction):
        raise TooManyBadRecords(too_many_message(rows, total, max_fraction, what, key, where))


def write_rejects(path: Path, rows: list[dict]) -> None:
    """``rows`` as ``rejects.jsonl`` (atomically); no file (an older one removed) when there are none."""
    if not rows:
        path.unlink(missing_ok=True)
        return
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    tmp.replace(path)


def read_rejects(path: Path) -> list[dict]:
    """The rows of a run's ``rejects.jsonl`` (none when it does not exist; a partial last line is dropped)."""
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def _key(row: dict) -> tuple:
    """A bad record's identity: its id within its manifest (two sources of a mixture may share ids)."""
    return row.get("manifest"), row.get("id")


def count_bad_records(run_dir: Path) -> int:
    """Distinct records listed in ``run_dir/rejects.jsonl`` (every rank's): the ``bad_records`` of a summary."""
    return len({_key(row) for row in read_rejects(Path(run_dir) / REJECTS)})


def record_count(dataset) -> int:
    """Records a training dataset draws from (a mixture: its sources' records, whatever its draws per epoch)."""
    total = 0
    for source in getattr(dataset, "sources", [dataset]):
        try:
            total += len(source)
        except TypeError:  # a stream without a length (packed shards, checked when packed)
            continue
    return total


def left_out(rows: list[dict], split: str | None = None) -> int:
    """Examples left out by the rows of :meth:`mpma.data.collate.ImageStore.drop_unreadable` (of ``split``, or all)."""
    return sum(n for row in rows for name, n in row["examples"].items() if split in (None, name))


class BadRecords:
    """The bad records of one training run (one rank): appended to ``rejects.jsonl``, counted, and
    fatal past ``max_fraction`` of ``total`` records (:func:`allowed_bad`).

    Args:
        total: Records the run draws from (the share is taken of these).
        max_fraction: ``data.max_bad_fraction``.
        path: ``rejects.jsonl`` of the run (None: nothing written).
        rank: Written into each row when not None (several ranks append to one file).
        resume: Records already listed in ``path`` (by a resumed run) count and are not written again.
    """

    def __init__(self, total: int, max_fraction: float, path: Path | None = None, rank: int | None = None,
                 resume: bool = True) -> None:
        self.total, self.max_fraction, self.path, self.rank = total, max_fraction, path, rank
        self.rows: list[dict] = read_rejects(path) if path is not None and resume else []
        self.seen = {_key(row) for row in self.rows}

    @classmethod
    def for_training(cls, data, max_fraction: float, run_dir: Path, env, fresh: bool = False) -> BadRecords:
        """The tracker of a pre-training run, one per rank (rows carry ``"rank"`` under torchrun).

        Rank 0 removes the ``rejects.jsonl`` of an earlier start when ``fresh`` (the run starts at step
        0), then takes the records that cannot be read out of a held-out set that can drop them (a
        manifest's: it is evaluated whole) and lists them with ``"split": "held-out"``.

        Args:
            data: ``.train`` (the training dataset) and ``.held_out`` (None, synthrad or a manifest).
            max_fraction: ``data.max_bad_fraction``.
            run_dir: The run folder.
            env: ``.rank`` and ``.world_size`` of this process.
            fresh: The run starts at step 0.

        Raises:
            TooManyBadRecords: more held-out records are bad than the fraction allows.
        """
        main = env.rank == 0
        if main and fresh:
            (Path(run_dir) / REJECTS).unlink(missing_ok=True)
        held_out = data.held_out if hasattr(data.held_out, "drop_unreadable") else None
        total = record_count(data.train) + (len(held_out) if held_out is not None else 0)
        bad = cls(total, max_fraction, Path(run_dir) / REJECTS, rank=env.rank if env.world_size > 1 else None,
                  resume=main)
        for row in held_out.drop_unreadable() if held_out is not None and main else []:
            bad.add({**row, "split": "held-out"})
        return bad

    @property
    def count(self) -> int:
        return len(self.seen)

    def add(self, row: dict) -> None:
        """Record one bad record (a repeat of a listed id is ignored); raise when too many are bad.

        Raises:
            TooManyBadRecords: more than :func:`allowed_bad` distinct records are bad.
        """
        if _key(row) in self.seen:
            return
        if self.rank is not None:
            row = {**row, "rank": self.rank}
        self.seen.add(_key(row))
        self.rows.append(row)
        if self.path is not None:  # one write per line in append mode: ranks sharing the file do not interleave
            with self.path.open("a", encoding="utf-8") as handle:
                handle.write(json.dumps(row, ensure_ascii=False) + "\n")
        if self.count > allowed_bad(self.total, self.max_fraction):
            raise TooManyBadRecords(too_many_message(self.rows, self.total, self.max_fraction,
                                                     "training records", "id", self.path))

    def filter(self, batches: Iterator[dict]) -> Iterator[dict]:
        """``batches`` without their ``"bad"`` lists (recorded with :meth:`add`) and without batches
        that held no good record."""
        for batch in batches:
            for row in batch.pop("bad", ()):
                self.add(row)
            if any(hasattr(value, "shape") for value in batch.values()):
                yield batch
