"""Image-text pair datasets for pre-training (synthrad, a manifest, or a weighted mixture of them)
and their batch collation.

Every pair dataset yields items ``{"image": (3, S, S) float32, "text": str, "key": str}`` and has
``texts()`` (the captions a tokenizer is trained on) and ``get(index, rng)`` (the item drawn with an
explicit random generator, which :class:`MixturePairs` uses to seed each of its draws).
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from itertools import chain, zip_longest
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, get_worker_info

from mpma.data.bad_records import bad_item, split_bad
from mpma.data.image import CLIP_MEAN, CLIP_STD, ImageError, ImageTransform, load_image, to_tensor
from mpma.data.records import read_manifest, resolve_image
from mpma.data.text import TextMasker, tokenize

# Salts that keep the random streams of one (seed, epoch) apart from each other and from
# EpochBatches' permutation (seeded by (seed, epoch) alone).
_MANIFEST_DRAW, _MIXTURE_TABLE, _MIXTURE_DRAW, _MIXTURE_PHASE, _MIXTURE_ORDER = 1, 2, 3, 4, 5


def parse_data_spec(spec: str) -> tuple[str, str | None]:
    """``"synthrad"`` -> ("synthrad", None); ``"name:path"`` -> (name, path); ``"path"`` -> ("manifest", path)."""
    if spec == "synthrad":
        return "synthrad", None
    if ":" in spec and not Path(spec).exists():
        name, path = spec.split(":", 1)
        return name, path
    return "manifest", spec


def grayscale_to_tensor(image: np.ndarray, size: int, mean, std) -> torch.Tensor:
    """Fast path for generated images: (H, W) uint8 at the target size -> (3, H, W) normalised float."""
    if image.shape != (size, size):
        return to_tensor(image, size, mean, std)
    x = torch.from_numpy(image).float().div_(255.0)
    mean_t = torch.tensor(mean, dtype=torch.float32)[:, None, None]
    std_t = torch.tensor(std, dtype=torch.float32)[:, None, None]
    return (x[None].expand(3, -1, -1) - mean_t) / std_t


def key_to_int(key: str) -> int:
    """Stable 32-bit id of a grouping key (same finding set / same caption)."""
    return zlib.crc32(key.encode("utf-8"))


class SynthradPairs(Dataset):
    """synthrad cases as image-report pairs: item -> {"image": (3, S, S), "text": str, "key": str}.

    Generated images are used as rendered (no augmentation).
    """

    def __init__(self, cases, image_size: int) -> None:
        self.cases = cases
        self.image_size = image_size
        self.mean, self.std = CLIP_MEAN, CLIP_STD

    def __len__(self) -> int:
        return len(self.cases)

    def __getitem__(self, index: int) -> dict:
        case = self.cases[index]
        return {
            "image": grayscale_to_tensor(case.image, self.image_size, self.mean, self.std),
            "text": case.report,
            "key": case.finding_key,
        }

    def get(self, index: int, rng: np.random.Generator | None = None) -> dict:
        """Item ``index``; ``rng`` is unused (synthrad images are not augmented)."""
        return self[index]

    def texts(self) -> list[str]:
        if hasattr(self.cases, "reports"):  # synthrad: reports without rendering the images
            return self.cases.reports()
        return [self.cases[i].report for i in range(len(self))]


class ByteBudget:
    """Bytes that in-memory image caches may still take; one budget can be shared by several datasets.

    Args:
        limit: Total bytes (0 disables caching).
    """

    def __init__(self, limit: int) -> None:
        if limit < 0:
            raise ValueError(f"cache budget must be >= 0 bytes, got {limit}")
        self.limit, self.used = int(limit), 0

    def take(self, nbytes: int) -> bool:
        """Reserve ``nbytes`` if they fit; returns whether they did."""
        if self.used + nbytes > self.limit:
            return False
        self.used += nbytes
        return True


def shrink_shorter_side(image: np.ndarray, size: int) -> np.ndarray:
    """Resize so the shorter side is ``size`` (bicubic, aspect kept, never upscaled), as packing does.

    Args:
        image: ``(H, W)`` or ``(H, W, 3)`` uint8.
        size: Target shorter side.

    Returns:
        ``(H', W')`` or ``(H', W', 3)`` uint8 with ``min(H', W') == min(min(H, W), size)``.
    """
    from PIL import Image

    height, width = image.shape[:2]
    short = min(height, width)
    if short <= size:
        return image
    scale = size / short
    shape = (max(1, round(width * scale)), max(1, round(height * scale)))
    return np.asarray(Image.fromarray(image).resize(shape, Image.Resampling.BICUBIC), dtype=np.uint8)


def _resize_square(image: np.ndarray, size: int) -> np.ndarray:
    """``(H, W[, 3])`` uint8 -> ``(size, size[, 3])`` uint8 with PIL bicubic (what to_tensor does)."""
    from PIL import Image

    if image.shape[:2] == (size, size):
        return image
    return np.asarray(Image.fromarray(image).resize((size, size), Image.Resampling.BICUBIC), dtype=np.uint8)


class ManifestPairs(Dataset):
    """Records of a pre-training manifest: item -> {"image": (3, S, S), "text", "key"} (key = the caption).

    Grayscale (CT, MR, X-ray) and colour images of any size are accepted; grayscale is repeated to
    three channels. Each decoded image is first reduced, so that what the transform sees does not
    depend on whether it came from the cache:

    * evaluation (``train=False``): resized to ``S × S`` — the item equals
      ``to_tensor(load_image(path), S)`` exactly;
    * training (``train=True``): shorter side shrunk to ``S`` (aspect kept, never upscaled; the same
      reduction as ``mpma data prepare --pack``), then :class:`~mpma.data.image.ImageTransform`
      takes a random resized crop (and its other settings) and resizes to ``S × S``.

    Training draws are reproducible: the crop of ``dataset[index]`` is drawn from a generator
    seeded with ``(seed, epoch, index)`` (:meth:`set_epoch`, called by
    :func:`~mpma.data.sampling.iterate_batches`), so a resumed run replays the same batches.

    Reduced images (uint8) are kept in memory while ``cache`` has room, so later epochs decode
    nothing (2,000 RGB images at 128 px take ~100 MB). The cache is filled by the process that owns
    the dataset — lazily with ``num_workers=0``, or up front with :meth:`fill_cache` — and only read
    in DataLoader worker processes (which are forked anew every epoch).

    A record whose image cannot be read gives, in training, a bad item (:mod:`mpma.data.bad_records`)
    that :class:`PairCollator` leaves out; in evaluation an ImageError naming record and file
    (:meth:`drop_unreadable` takes such records out first).

    Args:
        manifest: Pre-training JSONL manifest.
        split: Split to read (``train``, ``val``, ...).
        image_size: Output side length S.
        train: Augment (random resized crop); off for held-out data.
        seed: Base seed of the augmentation.
        cache: Byte budget of the in-memory image cache (an int, or a :class:`ByteBudget` shared
            with other datasets); 0 disables it.
    """

    def __init__(self, manifest: str | Path, split: str, image_size: int, *, train: bool = False,
                 seed: int = 0, cache: int | ByteBudget = 0) -> None:
        self.manifest = Path(manifest)
        records = [r for r in read_manifest(self.manifest, "pretrain") if r.split == split]
        if not records:
            raise ValueError(f"{self.manifest}: no records with split '{split}'")
        self.records = records
        self.paths = [resolve_image(self.manifest, r) for r in records]
        self.image_size, self.train, self.seed, self.epoch = image_size, train, seed, 0
        self.mean, self.std = CLIP_MEAN, CLIP_STD
        self.transform = ImageTransform(size=image_size, mean=CLIP_MEAN, std=CLIP_STD, train=train)
        self.budget = cache if isinstance(cache, ByteBudget) else ByteBudget(cache)
        self._cache: list[np.ndarray | None] = [None] * len(records)

    def __len__(self) -> int:
        return len(self.records)

    def set_epoch(self, epoch: int) -> None:
        """Select the augmentation draws of ``epoch`` (call before iterating it)."""
        self.epoch = epoch

    def __getitem__(self, index: int) -> dict:
        rng = np.random.default_rng([self.seed, self.epoch, index, _MANIFEST_DRAW]) if self.train else None
        return self.get(index, rng)

    def get(self, index: int, rng: np.random.Generator | None = None) -> dict:
        """Item ``index`` with its augmentation drawn from ``rng`` (training only; None: unseeded)."""
        record = self.records[index]
        try:
            image = self.reduced_image(index)
        except ImageError as error:
            if not self.train:
                raise
            return bad_item(record.id, self.paths[index], error, manifest=str(self.manifest))
        return {"image": self.transform(image, rng), "text": record.text, "key": record.text}

    def drop_unreadable(self) -> list[dict]:
        """Take out the records whose image cannot be read (a held-out set is evaluated whole); returns their rows."""
        rows, keep = [], []
        for index, record in enumerate(self.records):
            try:
                self.reduced_image(index)
            except ImageError as error:
                rows.append(bad_item(record.id, self.paths[index], error, manifest=str(self.manifest))["bad"])
                continue
            keep.append(index)
        self.records, self.paths = [self.records[i] for i in keep], [self.paths[i] for i in keep]
        self._cache = [self._cache[i] for i in keep]
        return rows

    def reduced_image(self, index: int) -> np.ndarray:
        """The decoded, reduced uint8 image of record ``index`` (``(H, W)`` or ``(H, W, 3)``), cached when it fits."""
        image = self._cache[index]
        if image is None:
            image = self._decode(index)
            if get_worker_info() is None:
                self._store(index, image)
        return image

    def _decode(self, index: int) -> np.ndarray:
        try:
            image = load_image(self.paths[index])
        except ImageError as error:
            raise type(error)(f"record '{self.records[index].id}' of {self.manifest}: {error}") from None
        if self.train:
            return np.ascontiguousarray(shrink_shorter_side(image, self.image_size))
        return np.ascontiguousarray(_resize_square(image, self.image_size))

    def _store(self, index: int, image: np.ndarray) -> bool:
        if not self.budget.take(image.nbytes):
            return False
        image.setflags(write=False)
        self._cache[index] = image
        return True

    def fill_cache(self, threads: int = 1) -> int:
        """Decode records into the cache, in order, until it is full; returns the number cached.

        Args:
            threads: Decoding threads (PIL releases the GIL while decoding).
        """
        threads = max(1, threads)

        def decode(index: int) -> np.ndarray | None:  # a bad record stays out: the worker reports it
            try:
                return self._decode(index)
            except ImageError:
                return None

        with ThreadPoolExecutor(threads) as pool:
            for start in range(0, len(self), 16 * threads):
                todo = [i for i in range(start, min(start + 16 * threads, len(self))) if self._cache[i] is None]
                stored = [image is None or self._store(i, image) for i, image in zip(todo, pool.map(decode, todo))]
                if not all(stored):
                    break  # the budget is spent
        return sum(image is not None for image in self._cache)

    def texts(self) -> list[str]:
        return [r.text for r in self.records]


def cumulative_draws(weights: Sequence[float], total: int, phase: float = 0.0) -> np.ndarray:
    """Draws of each source among the first ``total`` draws of a weighted stream.

    Systematic sampling: the sources before ``s`` own ``floor(total * P_s + phase)`` of the first
    ``total`` draws, ``P_s`` being the summed shares of sources ``0..s-1``. So each source's count
    is within one draw of ``total * w_s / sum(w)``, the counts sum to ``total``, and they only grow
    with ``total``; averaged over a uniform ``phase`` in [0, 1) a count equals its share exactly.

    Returns:
        ``(n_sources,)`` int64.
    """
    shares = np.asarray(weights, dtype=np.float64)
    bounds = np.floor(np.concatenate([[0.0], np.cumsum(shares / shares.sum())]) * total + phase)
    bounds[0], bounds[-1] = 0, total  # exact ends, whatever the float rounding of the cumsum
    return np.diff(bounds).astype(np.int64)


class MixturePairs(Dataset):
    """Several pair datasets drawn with fixed weights: item -> {"image": (3, S, S), "text", "key"}.

    The mixture is one endless stream of draws cut into epochs of ``length``. Source ``s`` takes
    ``w_s / sum(w)`` of the draws (:func:`cumulative_draws`, within one draw at every epoch
    boundary), and walks through its items in successive seeded permutations that continue across
    epochs, so every item of a source is drawn once before any is drawn again, even when the
    source's share of an epoch is smaller than the source. An epoch's table of ``(source, index)``
    draws is shuffled with ``(seed, epoch)``. A weight is the source's share of the draws,
    independent of the source's size.

    Position ``p`` of epoch ``e`` is drawn with a generator seeded by ``(seed, e, p)`` that the source
    uses for its augmentation; together with the table this makes an epoch a pure function of
    ``(seed, epoch)``, so :class:`~mpma.data.sampling.EpochBatches` replays it exactly on resume.
    Each source keeps its own image handling (synthrad as rendered, manifests augmented).

    Args:
        sources: Map-style pair datasets (each with ``get(index, rng)``, else ``dataset[index]``).
        weights: Positive sampling weight per source.
        length: Draws per epoch; None = the sources' sizes summed.
        seed: Base seed of the orders, the tables and the draws.
        names: Source labels for messages and :meth:`counts`.
    """

    def __init__(self, sources: Sequence[Dataset], weights: Sequence[float], length: int | None = None,
                 seed: int = 0, names: Sequence[str] | None = None) -> None:
        if not sources or len(sources) != len(weights):
            raise ValueError(f"need one weight per source, got {len(sources)} sources and {len(weights)} weights")
        self.names = list(names) if names is not None else [f"source {i}" for i in range(len(sources))]
        for name, source, weight in zip(self.names, sources, weights):
            if not (math.isfinite(weight) and weight > 0):
                raise ValueError(f"{name}: weight must be a positive number, got {weight}")
            if not hasattr(source, "__getitem__") or not hasattr(source, "__len__"):
                raise TypeError(f"{name}: a mixture needs map-style datasets, got {type(source).__name__}")
            if len(source) == 0:
                raise ValueError(f"{name}: empty dataset")
        self.sources, self.weights = list(sources), [float(w) for w in weights]
        self.length = sum(len(s) for s in self.sources) if length is None else int(length)
        if self.length <= 0:
            raise ValueError(f"mixture length must be positive, got {self.length}")
        self.seed = seed
        self.phase = float(np.random.default_rng([seed, _MIXTURE_PHASE]).random())
        self.epoch, self._table = 0, self.table(0)

    def __len__(self) -> int:
        return self.length

    def set_epoch(self, epoch: int) -> None:
        """Build the draw table of ``epoch`` (call before iterating it)."""
        if epoch != self.epoch:
            self.epoch, self._table = epoch, self.table(epoch)

    def _stream(self, s: int, start: int, stop: int) -> np.ndarray:
        """Draws ``start..stop-1`` of source ``s``'s stream of successive permutations."""
        n = len(self.sources[s])
        first, last = start // n, -(-stop // n)
        rounds = [np.random.default_rng([self.seed, s, r, _MIXTURE_ORDER]).permutation(n)
                  for r in range(first, last)]
        return np.concatenate(rounds or [np.zeros(0, np.int64)])[start - first * n:stop - first * n]

    def table(self, epoch: int) -> np.ndarray:
        """The draws of ``epoch``: ``(length, 2)`` int64 rows ``(source, index in source)``."""
        before = cumulative_draws(self.weights, epoch * self.length, self.phase)
        after = cumulative_draws(self.weights, (epoch + 1) * self.length, self.phase)
        parts = [np.stack([np.full(b - a, s), self._stream(s, int(a), int(b))], axis=1)
                 for s, (a, b) in enumerate(zip(before, after))]
        order = np.random.default_rng([self.seed, epoch, _MIXTURE_TABLE]).permutation(self.length)
        return np.concatenate(parts).astype(np.int64)[order]

    def counts(self) -> dict[str, int]:
        """Draws per source in the current epoch."""
        per_source = np.bincount(self._table[:, 0], minlength=len(self.sources))
        return {name: int(c) for name, c in zip(self.names, per_source)}

    def __getitem__(self, position: int) -> dict:
        s, index = (int(v) for v in self._table[position])
        source = self.sources[s]
        rng = np.random.default_rng([self.seed, self.epoch, position, _MIXTURE_DRAW])
        return source.get(index, rng) if hasattr(source, "get") else source[index]

    def texts(self) -> list[str]:
        """Every source's texts, interleaved one from each source in turn (so a prefix of the list,
        e.g. the first 20,000 a tokenizer is trained on, still holds every source's vocabulary)."""
        columns = [source.texts() for source in self.sources]
        return [t for t in chain.from_iterable(zip_longest(*columns)) if t is not None]


class PairCollator:
    """Stacks images and tokenises texts: list of items -> batch dict.

    Batch keys: images (B, 3, S, S); input_ids, attention_mask, special_tokens_mask, word_ids (B, T);
    match_key (B,) int64; ``bad``: the rows of bad items (:mod:`mpma.data.bad_records`), left out of B.
    With a ``masker`` (training) the collator is numbered (it is called with the batch's running
    number) and adds the MLM view: mlm_input_ids, mlm_labels (B, T).
    """

    def __init__(self, tokenizer, max_length: int, masker: TextMasker | None = None) -> None:
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.masker = masker

    @property
    def numbered(self) -> bool:
        return self.masker is not None

    def __call__(self, items: list[dict], batch_number: int | None = None) -> dict[str, torch.Tensor]:
        items, bad = split_bad(items)
        if not items:
            return {"bad": bad}
        batch = tokenize(self.tokenizer, [item["text"] for item in items], self.max_length)
        batch["images"] = torch.stack([item["image"] for item in items])
        batch["match_key"] = torch.tensor([key_to_int(item["key"]) for item in items], dtype=torch.int64)
        if self.masker is not None:
            if batch_number is None:
                raise ValueError("a masking PairCollator needs the batch number: iterate with "
                                 "mpma.data.sampling.iterate_batches or wrap it in CountingCollate")
            self.masker(batch, batch_number)
        if bad:
            batch["bad"] = bad
        return batch
