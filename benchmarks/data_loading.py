"""Images/s of loading + decoding + augmenting raw files vs packed shards, side by side.

Writes ``--n`` generated radiograph-like JPEGs of ``--size``² pixels (smooth anatomy-like
structure + noise, quality 95, so their byte size and decode cost resemble real ones) to a temp
folder, prepares them with ``mpma data prepare generic --pack``, then times the same training
transform (random resized crop to ``--image-size``) on both paths:

* raw: :class:`mpma.data.pairs.ManifestPairs`-style — read file, decode at full size, augment;
* packed: :class:`mpma.data.shards.PackedDataset` — stream tar shards of images pre-resized to
  ``--pack-size`` (shorter side), decode, augment.

Each path is measured in this process and through a DataLoader with ``--workers`` workers.

Usage: ``python benchmarks/data_loading.py [--n 300] [--size 1024] [--workers 2]``
"""

from __future__ import annotations

import argparse
import csv
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image


def radiograph(rng: np.random.Generator, size: int) -> np.ndarray:
    """A grayscale chest-radiograph-like image: body, lungs, spine, ribs, film noise.

    The anatomy is drawn at 256² and upscaled; the noise is added at full size (it dominates
    the JPEG's byte size and decode cost, as in real radiographs).
    """
    y, x = np.mgrid[0:256, 0:256].astype(np.float32) / 256
    body = 200 * np.exp(-(((x - 0.5) / 0.42) ** 6 + ((y - 0.55) / 0.5) ** 6))
    lungs = sum(110 * np.exp(-(((x - cx) / 0.15) ** 2 + ((y - 0.45) / 0.25) ** 2))
                for cx in (0.32 + rng.normal(0, 0.01), 0.68 + rng.normal(0, 0.01)))
    spine = 60 * np.exp(-((x - 0.5) / 0.04) ** 2)
    ribs = 18 * (np.sin(y * rng.uniform(50, 60) + 8 * (x - 0.5) ** 2) > 0.6)
    small = np.clip(body - lungs + spine + ribs * (lungs > 20), 0, 255).astype(np.uint8)
    image = np.asarray(Image.fromarray(small).resize((size, size), Image.Resampling.BICUBIC))
    noise = rng.integers(-6, 7, (size, size), dtype=np.int16)
    return np.clip(image.astype(np.int16) + noise, 0, 255).astype(np.uint8)


def write_images(folder: Path, n: int, size: int) -> Path:
    rng = np.random.default_rng(0)
    (folder / "images").mkdir(parents=True)
    with (folder / "pairs.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", "report"])
        for i in range(n):
            Image.fromarray(radiograph(rng, size)).save(folder / "images" / f"{i:05d}.jpg",
                                                        quality=95)
            writer.writerow([f"images/{i:05d}.jpg", f"synthetic chest radiograph number {i}"])
    return folder


class RawPairs:
    """Map-style raw-file path with the TRAINING transform (what pre-training does per item)."""

    def __init__(self, manifest: Path, image_size: int) -> None:
        from mpma.data.image import ImageTransform
        from mpma.data.records import read_manifest, resolve_image

        self.records = read_manifest(manifest, "pretrain")
        self.paths = [resolve_image(manifest, r) for r in self.records]
        self.transform = ImageTransform(size=image_size, train=True)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict:
        from mpma.data.image import load_image

        image = self.transform(load_image(self.paths[index]), np.random.default_rng(index))
        return {"image": image, "text": self.records[index].text}


def images_per_second(dataset, workers: int, shuffle: bool) -> float:
    import torch
    from torch.utils.data import DataLoader

    kwargs = {"shuffle": shuffle} if shuffle else {}
    loader = DataLoader(dataset, batch_size=16, num_workers=workers, **kwargs,
                        collate_fn=lambda items: torch.stack([i["image"] for i in items]))
    count, start = 0, time.perf_counter()
    for batch in loader:
        count += batch.shape[0]
    return count / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=300, help="number of images")
    parser.add_argument("--size", type=int, default=1024, help="side of the generated JPEGs")
    parser.add_argument("--image-size", type=int, default=224, help="model input side")
    parser.add_argument("--pack-size", type=int, default=256, help="shorter side when packing")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers")
    args = parser.parse_args(argv)

    import torch

    from mpma.data.sources.prepare import prepare
    from mpma.data.shards import PackedDataset

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="mpma-bench-") as tmp:
        src = Path(tmp) / "src"
        start = time.perf_counter()
        write_images(src, args.n, args.size)
        raw_mb = sum(p.stat().st_size for p in (src / "images").iterdir()) / 2 ** 20
        print(f"wrote {args.n} JPEGs of {args.size}x{args.size} ({raw_mb:.0f} MiB) in "
              f"{time.perf_counter() - start:.1f} s")
        start = time.perf_counter()
        result = prepare("generic", src, Path(tmp) / "out", pack=True, image_size=args.pack_size,
                         options={"text_column": "report"}, workers=args.workers, progress=False)
        seconds = time.perf_counter() - start
        packed_mb = sum(s.bytes for s in result.shards) / 2 ** 20
        print(f"prepare --pack (validate + resize, {args.workers} processes): "
              f"{args.n / seconds:.1f} images/s, {len(result.shards)} shards, {packed_mb:.1f} MiB")
        raw = RawPairs(Path(tmp) / "out" / "manifest.jsonl", args.image_size)
        packed = PackedDataset(Path(tmp) / "out", "train", args.image_size, train=True)
        print(f"\nload + decode + augment to {args.image_size}x{args.image_size} (images/s):")
        print(f"{'workers':>8} {'raw files':>11} {'packed shards':>14} {'speed-up':>9}")
        for workers in sorted({0, args.workers}):
            a = images_per_second(raw, workers, shuffle=True)
            b = images_per_second(packed, workers, shuffle=False)
            print(f"{workers:>8} {a:>11.1f} {b:>14.1f} {b / a:>8.1f}x")


if __name__ == "__main__":
    main()
