"""Packed shards: size bound, exactly-once streaming across ranks × workers, open_pairs."""

from __future__ import annotations

import io
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from tests import fixtures_releases as fx
from mpma.data.sources.prepare import prepare
from mpma.data.shards import (
    PackedDataset,
    ShardInfo,
    ShardWriter,
    open_pairs,
    plan_epoch,
    read_index,
    shard_records,
    write_index,
)


def _jpeg_bytes(seed: int, size: int = 12) -> bytes:
    array = np.random.default_rng(seed).integers(0, 255, (size, size), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="JPEG")
    return buffer.getvalue()


def _pack(folder: Path, n: int, max_bytes: int, split: str = "train") -> list[ShardInfo]:
    writer = ShardWriter(folder, split, max_bytes)
    for i in range(n):
        writer.add({"id": f"r{i:03d}", "image": f"{i}.jpg", "text": f"text {i}", "split": split},
                   _jpeg_bytes(i))
    shards = writer.close()
    write_index(folder, shards, kind="pretrain", image_size=12)
    return shards


def test_writer_bounds_shard_size(tmp_path: Path) -> None:
    shards = _pack(tmp_path, 30, max_bytes=12_000)
    assert len(shards) > 3 and sum(s.records for s in shards) == 30
    assert all(s.bytes <= 12_000 + 1024 for s in shards)  # + final tar padding
    assert not list(tmp_path.glob("*.tmp"))
    ids = [r["id"] for s in shards for r in shard_records(tmp_path / s.file)]
    assert ids == [f"r{i:03d}" for i in range(30)]
    folder, info, listed = read_index(tmp_path)
    assert folder == tmp_path and info["kind"] == "pretrain" and listed == shards


@pytest.mark.parametrize("n_shards", [1, 2, 3, 4, 5, 7, 9])
@pytest.mark.parametrize("consumers", [1, 2, 3, 4, 6])
def test_plan_epoch_covers_every_record_once(n_shards: int, consumers: int) -> None:
    shards = [ShardInfo(f"s{i}", "train", records=3 + i % 4, bytes=0) for i in range(n_shards)]
    for epoch in (0, 1):
        seen: Counter[tuple[str, int]] = Counter()
        for consumer in range(consumers):
            for shard, stride, start in plan_epoch(shards, consumer, consumers, epoch, seed=3):
                seen.update((shard.file, j) for j in range(start, shard.records, stride))
        assert seen == Counter({(s.file, j): 1 for s in shards for j in range(s.records)})


def _ids(dataset: PackedDataset, workers: int) -> list[str]:
    loader = DataLoader(dataset, batch_size=None, num_workers=workers,
                        collate_fn=lambda item: item["id"])
    return list(loader)


def test_two_ranks_two_workers_see_each_record_once_per_epoch(tmp_path: Path) -> None:
    shards = _pack(tmp_path, 45, max_bytes=9_000)  # shard count not divisible by 2 × 2
    assert len(shards) % 4 != 0
    everything = [f"r{i:03d}" for i in range(45)]
    orders = []
    for epoch in (0, 1):
        seen = []
        for rank in (0, 1):
            ds = PackedDataset(tmp_path, "train", 12, rank=rank, world_size=2, buffer_size=8, seed=5)
            ds.set_epoch(epoch)
            seen += _ids(ds, workers=2)
        assert sorted(seen) == everything  # nothing lost, nothing duplicated
        orders.append(seen)
    assert orders[0] != orders[1]  # reshuffled per epoch
    again = PackedDataset(tmp_path, "train", 12, rank=0, world_size=2, buffer_size=8, seed=5)
    first = PackedDataset(tmp_path, "train", 12, rank=0, world_size=2, buffer_size=8, seed=5)
    assert _ids(again, 2) == _ids(first, 2)  # same seed + epoch → same order


def test_single_consumer_shuffles_within_and_across_shards(tmp_path: Path) -> None:
    _pack(tmp_path, 30, max_bytes=12_000)
    ds = PackedDataset(tmp_path, "train", 12, buffer_size=10)
    ids = _ids(ds, 0)
    assert sorted(ids) == [f"r{i:03d}" for i in range(30)] and ids != sorted(ids)
    plain = PackedDataset(tmp_path, "train", 12, shuffle=False)
    assert _ids(plain, 0) == sorted(ids)


def test_items_repeat_and_augment(tmp_path: Path) -> None:
    _pack(tmp_path, 5, max_bytes=1 << 20)
    ds = PackedDataset(tmp_path, "train", 8, train=True, repeat=True)
    stream = iter(ds)
    items = [next(stream) for _ in range(12)]  # runs past one epoch
    assert items[0]["image"].shape == (3, 8, 8) and items[0]["image"].dtype == torch.float32
    assert items[0]["text"] == items[0]["key"] == items[0]["record"]["text"]
    assert Counter(i["id"] for i in items[:5]) == Counter(f"r{i:03d}" for i in range(5))
    assert ds.num_records == 5 and sorted(ds.texts()) == [f"text {i}" for i in range(5)]
    with pytest.raises(ValueError, match="no shards for split 'val'"):
        PackedDataset(tmp_path, "val", 8)


def test_missing_shard_and_missing_index_are_clear(tmp_path: Path) -> None:
    shards = _pack(tmp_path / "p", 5, max_bytes=2_000)
    (tmp_path / "p" / shards[0].file).unlink()
    with pytest.raises(FileNotFoundError, match="missing"):
        read_index(tmp_path / "p")
    with pytest.raises(FileNotFoundError, match="--pack"):
        read_index(tmp_path)


def test_open_pairs_reads_manifest_and_packed_folder(tmp_path: Path) -> None:
    src = tmp_path / "src"
    rows = []
    for i in range(6):
        fx.jpeg(src / "images" / f"{i}.jpg", size=(40 + i, 30), value=i)
        rows.append([f"{i}.jpg", f"finding number {i}", "train" if i < 4 else "test"])
    fx.write_csv(src / "pairs.csv", ["image", "report", "split"], rows)
    options = {"image_root": "images", "text_column": "report", "split_column": "split"}
    result = prepare("generic", src, tmp_path / "out", options=options, pack=True, image_size=16,
                     workers=0, progress=False)
    assert [s.split for s in result.shards] == ["test", "train"]
    packed = open_pairs(tmp_path / "out", "train", 16, seed=1)
    raw = open_pairs(tmp_path / "out" / "manifest.jsonl", "train", 16)
    assert isinstance(packed, PackedDataset) and len(raw) == 4
    items = list(packed)
    assert sorted(i["text"] for i in items) == sorted(raw.texts()) == sorted(packed.texts())
    for item in items + [raw[0]]:
        assert item["image"].shape == (3, 16, 16) and item["key"] == item["text"]
    shorter = Image.open(io.BytesIO(next(packed.epoch_samples(0))[1])).size
    assert min(shorter) == 16  # packed with the shorter side at --image-size
    assert isinstance(open_pairs(tmp_path / "out" / "shards", "test", 16), PackedDataset)
    with pytest.raises(FileNotFoundError, match="mpma data prepare"):
        open_pairs(tmp_path / "src", "train", 16)
