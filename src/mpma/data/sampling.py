"""Seeded, resumable batching: every rank sees a disjoint slice of the same per-epoch permutation."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
from torch.utils.data import DataLoader, Dataset


class EpochBatches:
    """Index batches per epoch for one rank.

    Each epoch is a permutation of ``range(n)`` seeded by (seed, epoch), cut into global batches of
    ``batch_size * world_size``; rank r takes the r-th slice of each. The tail that does not fill a
    global batch is dropped for that epoch only (the next permutation covers it with high probability).

    Args:
        n: dataset size.
        batch_size: per-rank batch size.
    """

    def __init__(self, n: int, batch_size: int, seed: int = 0, rank: int = 0, world_size: int = 1) -> None:
        if n < batch_size * world_size:
            raise ValueError(
                f"dataset of {n} items is smaller than one global batch ({batch_size} x {world_size} ranks); "
                "lower data.batch_size or add data"
            )
        self.n, self.batch_size, self.seed, self.rank, self.world_size = n, batch_size, seed, rank, world_size

    @property
    def batches_per_epoch(self) -> int:
        return self.n // (self.batch_size * self.world_size)

    def epoch(self, epoch: int) -> list[list[int]]:
        order = np.random.default_rng([self.seed, epoch]).permutation(self.n)
        global_size = self.batch_size * self.world_size
        batches = []
        for b in range(self.batches_per_epoch):
            start = b * global_size + self.rank * self.batch_size
            batches.append(order[start : start + self.batch_size].tolist())
        return batches


def iterate_batches(
    dataset: Dataset, collate: Callable, sampler: EpochBatches, start: int = 0, num_workers: int = 0
) -> Iterator[dict]:
    """Endless batches starting at global batch number ``start`` (epochs follow one another).

    A dataset with ``set_epoch(epoch)`` (augmenting manifests, mixtures) is told each epoch before
    its loader is built, so its random draws depend on (seed, epoch, index) only and a resumed run
    replays them. With ``num_workers > 0`` batches are built in background processes (started
    anew each epoch, so they see the epoch that was set).
    """
    epoch, offset = divmod(start, sampler.batches_per_epoch)
    while True:
        if hasattr(dataset, "set_epoch"):
            dataset.set_epoch(epoch)
        batches = sampler.epoch(epoch)[offset:]
        loader = DataLoader(
            dataset, batch_sampler=batches, collate_fn=collate, num_workers=num_workers,
            persistent_workers=False, prefetch_factor=4 if num_workers else None,
        )
        yield from loader
        epoch, offset = epoch + 1, 0
