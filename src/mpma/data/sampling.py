"""Seeded, resumable batching: every rank sees a disjoint slice of the same per-epoch permutation."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
from torch.utils.data import DataLoader, Dataset, get_worker_info


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
    dataset: Dataset, collate: Callable, sampler: EpochBatches, start: int = 0, num_workers: int = 0,
    pin_memory: bool = False,
) -> Iterator[dict]:
    """Endless batches starting at global batch number ``start`` (epochs follow one another).

    A dataset with ``set_epoch(epoch)`` (augmenting manifests, mixtures) is told each epoch before
    its loader is built, so its random draws depend on (seed, epoch, index) only and a resumed run
    replays them. With ``num_workers > 0`` batches are built in background processes (started
    anew each epoch, so they see the epoch that was set). ``pin_memory`` (for a GPU) returns batches in
    page-locked memory, so their copy to the device can overlap the step. A collator with ``numbered = True`` is
    called as ``collate(items, batch_number)`` with the batch's running number (the text masking
    seeds its draws with it), on the worker that builds the batch.
    """
    epoch, offset = divmod(start, sampler.batches_per_epoch)
    numbered = getattr(collate, "numbered", False)
    while True:
        if hasattr(dataset, "set_epoch"):
            dataset.set_epoch(epoch)
        batches = sampler.epoch(epoch)[offset:]
        first = epoch * sampler.batches_per_epoch + offset
        if numbered:  # each index travels with its batch's number: [(number, index), ...]
            batches = [[(first + b, index) for index in batch] for b, batch in enumerate(batches)]
        loader = DataLoader(
            _NumberedItems(dataset) if numbered else dataset, batch_sampler=batches,
            collate_fn=_NumberedCollate(collate) if numbered else collate, num_workers=num_workers,
            persistent_workers=False, prefetch_factor=4 if num_workers else None, pin_memory=pin_memory,
        )
        yield from loader
        epoch, offset = epoch + 1, 0


class _NumberedItems(Dataset):
    """``dataset[(number, index)] -> (number, dataset[index])``."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, numbered_index: tuple[int, int]) -> tuple[int, dict]:
        number, index = numbered_index
        return number, self.dataset[index]


class _NumberedCollate:
    """``[(number, item), ...] -> collate(items, number)``."""

    def __init__(self, collate: Callable) -> None:
        self.collate = collate

    def __call__(self, numbered_items: list[tuple[int, dict]]) -> dict:
        return self.collate([item for _, item in numbered_items], numbered_items[0][0])


class CountingCollate:
    """For a stream (an iterable dataset) with no indices: numbers its batches as the loader does.

    Worker w of W builds batches w, w + W, w + 2W, ... in order (the loader's round robin), so the
    number of a batch is ``w + W * (batches this worker built before)``: the same on every run with
    the same ``num_workers``, and a resumed stream that skips its first batches replays them.
    """

    numbered = False

    def __init__(self, collate: Callable) -> None:
        self.collate = collate
        self.built = 0

    def __call__(self, items: list[dict]) -> dict:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        number = worker + workers * self.built
        self.built += 1
        return self.collate(items, number)
