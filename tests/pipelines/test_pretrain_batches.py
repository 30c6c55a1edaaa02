"""The pre-training batch stream of a packed folder: loader workers with prefetch, and a restart at a
later micro-batch (``--resume``) that replays the batches of the uninterrupted stream."""

from __future__ import annotations

import io
from itertools import islice
from pathlib import Path

import numpy as np
from PIL import Image

from mpma.data.shards import ShardWriter, open_pairs, write_index
from mpma.engine.distributed import DistEnv
from mpma.pipelines.pretraining import _batches


def _pack(folder: Path, n: int) -> None:
    writer = ShardWriter(folder, "train", max_bytes=4_000)
    for i in range(n):
        buffer = io.BytesIO()
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (12, 12), dtype=np.uint8)).save(buffer, "JPEG")
        writer.add({"id": f"r{i:03d}", "image": f"{i}.jpg", "text": f"text {i}", "split": "train"}, buffer.getvalue())
    write_index(folder, writer.close(), kind="pretrain", image_size=12)


def ids_of(items: list[dict]) -> list[str]:
    """A collate function that keeps only the record ids (module level: loader workers pickle it)."""
    return [item["id"] for item in items]


def test_packed_stream_uses_workers_and_replays_from_a_later_batch(tmp_path: Path, micro_config) -> None:
    _pack(tmp_path, 24)
    config = micro_config("data.batch_size=4", "data.num_workers=2")
    stream = lambda start: _batches(open_pairs(tmp_path, "train", 8, train=True, repeat=True),  # noqa: E731
                                    ids_of, config, DistEnv(), start)
    full = list(islice(stream(0), 8))  # 32 items: the whole epoch and the next one's start
    assert all(len(batch) == 4 for batch in full)
    assert sorted(i for batch in full[:6] for i in batch) == [f"r{i:03d}" for i in range(24)]  # each record once
    assert list(islice(stream(3), 5)) == full[3:]
