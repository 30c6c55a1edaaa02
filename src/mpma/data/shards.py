"""Packed shards: pre-resized images stored with their records in tar files, and a streaming loader.

Layout written by ``mpma data prepare --pack`` (plain POSIX tar, readable with any tar tool)::

    <out>/shards/index.json            {"version", "kind", "image_size", "shards": [...]}
    <out>/shards/<split>-00000.tar     000000.json (the record) + 000000.jpg (its image), ...

Each image is stored as :func:`mpma.data.sources.validate.encode_packed` makes it (JPEG, shorter side resized to the packed
size, never upscaled; ``mpma data prepare`` encodes in its image-check workers). A shard is
closed before it would exceed ``max_bytes`` and is renamed from ``*.tar.tmp`` only when complete,
so a killed run never leaves a half shard that looks whole.

:class:`PackedDataset` streams the shards of one split with bounded memory (one open shard and
a shuffle buffer of JPEG bytes). Each epoch it permutes the shard order (seeded by
``(seed, epoch)``, identical on every rank and worker), deals whole shards round-robin to the
``world_size × num_workers`` consumers and splits the remaining ``n_shards mod consumers`` shards
record by record, so every record is read exactly once per epoch with no duplicates.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import IterableDataset

from mpma.data.image import ImageTransform
from mpma.data.pairs import ManifestPairs

INDEX = "index.json"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class ShardInfo:
    """One shard as listed in ``index.json``: file name, split, record count, size in bytes."""

    file: str
    split: str
    records: int
    bytes: int


class ShardWriter:
    """Append ``(record, image bytes)`` samples of ONE split to size-bounded tar shards.

    Args:
        folder: The ``shards`` folder.
        split: Split name, used in the shard file names.
        max_bytes: Size bound of a shard (a single larger sample still gets its own shard).
        start: Number of the first shard (a resumed run continues after existing shards).
    """

    def __init__(self, folder: Path, split: str, max_bytes: int, start: int = 0) -> None:
        if max_bytes <= 0:
            raise ValueError(f"max_bytes must be positive, got {max_bytes}")
        self.folder, self.split, self.max_bytes, self.number = Path(folder), split, max_bytes, start
        self.written: list[ShardInfo] = []
        self._tar: tarfile.TarFile | None = None
        self._count = self._bytes = 0

    def _add_member(self, name: str, data: bytes) -> None:
        info = tarfile.TarInfo(name)
        info.size, info.mode, info.mtime = len(data), 0o644, 0
        assert self._tar is not None
        self._tar.addfile(info, io.BytesIO(data))

    def add(self, record: dict[str, Any], image: bytes) -> None:
        """Append one sample (the record as JSON and its JPEG bytes)."""
        payload = json.dumps(record, ensure_ascii=False).encode("utf-8")
        size = len(payload) + len(image) + 2048  # two tar headers + padding
        if self._tar is not None and self._bytes + size > self.max_bytes:
            self._finish()
        if self._tar is None:
            self.folder.mkdir(parents=True, exist_ok=True)
            tmp = self.folder / f"{self.split}-{self.number:05d}.tar.tmp"
            self._tar = tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT)
        key = f"{self._count:06d}"
        self._add_member(f"{key}.json", payload)
        self._add_member(f"{key}.jpg", image)
        self._count += 1
        self._bytes += size

    def _finish(self) -> None:
        assert self._tar is not None
        name = f"{self.split}-{self.number:05d}.tar"
        self._tar.close()
        tmp = self.folder / f"{name}.tmp"
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, self.folder / name)
        self.written.append(ShardInfo(name, self.split, self._count, (self.folder / name).stat().st_size))
        self._tar, self._count, self._bytes = None, 0, 0
        self.number += 1

    def close(self) -> list[ShardInfo]:
        """Finish the open shard; returns every shard this writer completed."""
        if self._tar is not None:
            self._finish()
        return self.written


def shard_records(path: Path) -> Iterator[dict[str, Any]]:
    """The records (JSON members) of a complete shard, in order, without reading the images."""
    with tarfile.open(path, "r:") as tar:
        for member in tar:
            if member.name.endswith(".json"):
                handle = tar.extractfile(member)
                assert handle is not None
                yield json.loads(handle.read())


def write_index(folder: Path, shards: list[ShardInfo], **info: Any) -> Path:
    """Write ``index.json`` atomically (shards sorted by file name)."""
    data = {"version": FORMAT_VERSION, **info,
            "shards": [asdict(s) for s in sorted(shards, key=lambda s: s.file)]}
    tmp = folder / f".{INDEX}.tmp"
    tmp.write_text(json.dumps(data, indent=1), encoding="utf-8")
    os.replace(tmp, folder / INDEX)
    return folder / INDEX


def read_index(path: str | os.PathLike[str]) -> tuple[Path, dict[str, Any], list[ShardInfo]]:
    """Find and read the shard index of a packed folder (``<out>`` or ``<out>/shards``).

    Returns:
        ``(shards folder, index info, shards)``.

    Raises:
        FileNotFoundError: No ``index.json``, or a listed shard is missing (names it).
    """
    folder = Path(path)
    if not (folder / INDEX).is_file() and (folder / "shards" / INDEX).is_file():
        folder = folder / "shards"
    if not (folder / INDEX).is_file():
        raise FileNotFoundError(f"{path}: no shards/{INDEX}; create it with "
                                f"`mpma data prepare <dataset> --src ... --out {path} --pack`")
    info = json.loads((folder / INDEX).read_text(encoding="utf-8"))
    shards = [ShardInfo(**s) for s in info.pop("shards")]
    absent = [s.file for s in shards if not (folder / s.file).is_file()]
    if absent:
        raise FileNotFoundError(f"{folder}: shards listed in {INDEX} are missing: {absent[:5]}; "
                                "rerun mpma data prepare --pack")
    return folder, info, shards


def plan_epoch(shards: list[ShardInfo], consumer: int, consumers: int, epoch: int, seed: int,
               shuffle: bool = True) -> list[tuple[ShardInfo, int, int]]:
    """Which records of which shards one consumer reads in an epoch.

    Whole shards are dealt round-robin; the last ``len(shards) % consumers`` shards are split by
    record: their records, counted across those shards in order, go to consumer ``p % consumers``.

    Returns:
        ``[(shard, stride, start), ...]``: read records ``start, start + stride, ...`` of ``shard``.
    """
    order = (np.random.default_rng([seed, epoch]).permutation(len(shards)).tolist()
             if shuffle else list(range(len(shards))))
    full = len(order) // consumers * consumers
    plan = [(shards[i], 1, 0) for pos, i in enumerate(order[:full]) if pos % consumers == consumer]
    offset = 0
    for i in order[full:]:
        plan.append((shards[i], consumers, (consumer - offset) % consumers))
        offset += shards[i].records
    return plan


def _read_samples(path: Path, stride: int, start: int) -> Iterator[tuple[dict[str, Any], bytes]]:
    """Stream ``(record, jpeg bytes)`` samples ``start, start + stride, ...`` of a shard."""
    index, pending = 0, {}
    with tarfile.open(path, "r|") as tar:
        for member in tar:
            ext = member.name.rpartition(".")[2]
            wanted = index >= start and (index - start) % stride == 0
            if wanted:
                handle = tar.extractfile(member)
                assert handle is not None
                pending[ext] = handle.read()
            else:
                pending[ext] = b""
            if "json" in pending and "jpg" in pending:
                if wanted:
                    yield json.loads(pending["json"]), pending["jpg"]
                index, pending = index + 1, {}


def _worker() -> tuple[int, int]:
    from torch.utils.data import get_worker_info

    info = get_worker_info()
    return (0, 1) if info is None else (info.id, info.num_workers)


def _dist_rank(rank: int | None, world_size: int | None) -> tuple[int, int]:
    if (rank is None) != (world_size is None):
        raise ValueError("pass both rank and world_size, or neither (then torch.distributed's)")
    if rank is not None and world_size is not None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world_size {world_size}")
        return rank, world_size
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class PackedDataset(IterableDataset):
    """Stream the records of one split of a packed folder, exactly once per epoch.

    Every rank must use the same number of DataLoader workers. Call :meth:`set_epoch` before each
    epoch (or pass ``repeat=True`` for an endless stream that advances the epoch by itself).

    Items: ``{"image": (3, S, S) float tensor, "id": str, "record": dict}``; a pre-training folder
    adds ``"text"`` and ``"key"`` (= the text, as :class:`~mpma.data.pairs.ManifestPairs`).

    Args:
        path: The prepare output folder or its ``shards`` folder.
        split: Split to read (``train``, ``val``, ``test``).
        image_size: Output side length S.
        train: Random resized crop augmentation (see :class:`~mpma.data.image.ImageTransform`).
        shuffle: Shuffle the shard order and, through a buffer, the records.
        seed: Base seed; the epoch's shuffles use ``(seed, epoch)``.
        buffer_size: Records held for shuffling (memory ≈ this × packed image size).
        rank: This process's rank (default: from torch.distributed, else 0).
        world_size: Number of ranks (default: from torch.distributed, else 1).
        repeat: Loop over epochs forever.
    """

    def __init__(self, path: str | os.PathLike[str], split: str, image_size: int, *,
                 train: bool = False, shuffle: bool = True, seed: int = 0,
                 buffer_size: int = 1000, rank: int | None = None,
                 world_size: int | None = None, repeat: bool = False) -> None:
        super().__init__()
        self.folder, self.info, shards = read_index(path)
        self.shards = [s for s in shards if s.split == split]
        if not self.shards:
            splits = sorted({s.split for s in shards})
            raise ValueError(f"{self.folder}: no shards for split {split!r} (have {splits})")
        self.split, self.shuffle, self.seed, self.repeat = split, shuffle, seed, repeat
        self.buffer_size = max(1, buffer_size)
        self.rank, self.world_size = _dist_rank(rank, world_size)
        self.transform = ImageTransform(size=image_size, train=train)
        self.kind = self.info.get("kind", "pretrain")
        self.epoch = 0

    @property
    def num_records(self) -> int:
        """Records of this split over all ranks and workers."""
        return sum(s.records for s in self.shards)

    def set_epoch(self, epoch: int) -> None:
        """Select the shuffles of ``epoch`` (call on every rank before iterating)."""
        self.epoch = epoch

    def _item(self, record: dict[str, Any], jpeg: bytes, rng: np.random.Generator) -> dict:
        from PIL import Image

        with Image.open(io.BytesIO(jpeg)) as image:
            array = np.asarray(image.convert("L") if image.mode == "L" else image.convert("RGB"))
        item = {"image": self.transform(array, rng), "id": record["id"], "record": record}
        if self.kind == "pretrain":
            item["text"] = item["key"] = record["text"]
        return item

    def epoch_samples(self, epoch: int) -> Iterator[tuple[dict[str, Any], bytes]]:
        """Raw ``(record, jpeg)`` samples of this consumer (rank × worker) for ``epoch``."""
        worker, workers = _worker()
        consumer, consumers = self.rank * workers + worker, self.world_size * workers
        rng = np.random.default_rng([self.seed, epoch, consumer, 1])
        buffer: list[tuple[dict[str, Any], bytes]] = []
        for shard, stride, start in plan_epoch(self.shards, consumer, consumers, epoch,
                                               self.seed, self.shuffle):
            for sample in _read_samples(self.folder / shard.file, stride, start):
                if not self.shuffle:
                    yield sample
                    continue
                if len(buffer) < self.buffer_size:
                    buffer.append(sample)
                    continue
                pick = int(rng.integers(len(buffer)))
                yield buffer[pick]
                buffer[pick] = sample
        for pick in rng.permutation(len(buffer)).tolist():
            yield buffer[pick]

    def __iter__(self) -> Iterator[dict]:
        epoch = self.epoch
        worker = _worker()[0]
        while True:
            rng = np.random.default_rng([self.seed, epoch, self.rank, worker, 2])
            for record, jpeg in self.epoch_samples(epoch):
                yield self._item(record, jpeg, rng)
            if not self.repeat:
                return
            epoch += 1

    def texts(self) -> list[str]:
        """Texts of this split (all ranks), read from the shards' JSON members only."""
        return [r.get("text") or r.get("question") or "" for s in self.shards
                for r in shard_records(self.folder / s.file)]


def is_packed(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a packed folder (``<out>`` or ``<out>/shards`` with an index)."""
    path = Path(path)
    return (path / INDEX).is_file() or (path / "shards" / INDEX).is_file()


def open_pairs(path: str | os.PathLike[str], split: str, image_size: int, *, train: bool = False,
               seed: int = 0, cache: Any = 0, **packed: Any):
    """Image-text pairs from a prepared manifest or a packed folder.

    Args:
        path: A pre-training manifest (``.jsonl``), a prepare output folder (its
            ``manifest.jsonl`` is used, or its shards when it was packed) or a ``shards`` folder.
        split: Split to read.
        image_size: Output side length S.
        train: Random resized crop augmentation (see :class:`~mpma.data.image.ImageTransform`),
            seeded from ``seed`` on both paths.
        seed: Base seed of the augmentation (and of a packed stream's shuffles).
        cache: Byte budget (int or :class:`~mpma.data.pairs.ByteBudget`) of a manifest's in-memory
            image cache; a packed folder ignores it.
        **packed: Passed to :class:`PackedDataset` (``repeat``, ``rank``, ``buffer_size``, ...) when
            ``path`` is packed; ignored for a manifest.

    Returns:
        A dataset whose items are ``{"image": (3, S, S), "text": str, "key": str}``:
        :class:`PackedDataset` (iterable) or :class:`~mpma.data.pairs.ManifestPairs` (map-style).

    Raises:
        FileNotFoundError: Nothing usable at ``path`` (the message says what was looked for).
    """
    path = Path(path)
    if path.is_dir() and is_packed(path):
        return PackedDataset(path, split, image_size, train=train, seed=seed, **packed)
    manifest = path / "manifest.jsonl" if path.is_dir() else path
    if not manifest.is_file():
        raise FileNotFoundError(f"{path}: neither a manifest file nor a folder with manifest.jsonl "
                                "or shards/index.json; run `mpma data prepare` first")
    return ManifestPairs(manifest, split, image_size, train=train, seed=seed, cache=cache)
