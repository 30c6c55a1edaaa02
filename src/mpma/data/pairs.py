"""Image-text pair datasets for pre-training (synthrad or a manifest) and their batch collation."""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from mpma.data.text import tokenize


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
        from mpma.data.image import to_tensor

        return to_tensor(image, size, mean, std)
    x = torch.from_numpy(image).float().div_(255.0)
    mean_t = torch.tensor(mean, dtype=torch.float32)[:, None, None]
    std_t = torch.tensor(std, dtype=torch.float32)[:, None, None]
    return (x[None].expand(3, -1, -1) - mean_t) / std_t


def key_to_int(key: str) -> int:
    """Stable 32-bit id of a grouping key (same finding set / same caption)."""
    return zlib.crc32(key.encode("utf-8"))


class SynthradPairs(Dataset):
    """synthrad cases as image-report pairs: item -> {"image": (3, S, S), "text": str, "key": str}."""

    def __init__(self, cases, image_size: int) -> None:
        from mpma.data.image import CLIP_MEAN, CLIP_STD

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

    def texts(self) -> list[str]:
        if hasattr(self.cases, "reports"):  # synthrad: reports without rendering the images
            return self.cases.reports()
        return [self.cases[i].report for i in range(len(self))]


class ManifestPairs(Dataset):
    """Records of a pre-training manifest: item -> {"image", "text", "key"} (key = the caption).

    A record whose image cannot be read raises an error naming the record and file: run
    ``mpma data validate`` on the manifest first to find such records.
    """

    def __init__(self, manifest: str | Path, split: str, image_size: int) -> None:
        from mpma.data.image import CLIP_MEAN, CLIP_STD
        from mpma.data.records import read_manifest, resolve_image

        self.manifest = Path(manifest)
        records = [r for r in read_manifest(self.manifest, "pretrain") if r.split == split]
        if not records:
            raise ValueError(f"{self.manifest}: no records with split '{split}'")
        self.records = records
        self.paths = [resolve_image(self.manifest, r) for r in records]
        self.image_size = image_size
        self.mean, self.std = CLIP_MEAN, CLIP_STD

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict:
        from mpma.data.image import ImageError, load_image, to_tensor

        record = self.records[index]
        try:
            image = load_image(self.paths[index])
        except ImageError as error:
            raise ImageError(f"record '{record.id}' of {self.manifest}: {error}") from None
        return {"image": to_tensor(image, self.image_size, self.mean, self.std), "text": record.text, "key": record.text}

    def texts(self) -> list[str]:
        return [r.text for r in self.records]


class PairCollator:
    """Stacks images and tokenises texts: list of items -> batch dict.

    Batch keys: images (B, 3, S, S); input_ids, attention_mask, special_tokens_mask, word_ids (B, T);
    match_key (B,) int64.
    """

    def __init__(self, tokenizer, max_length: int) -> None:
        self.tokenizer = tokenizer
        self.max_length = max_length

    def __call__(self, items: list[dict]) -> dict[str, torch.Tensor]:
        batch = tokenize(self.tokenizer, [item["text"] for item in items], self.max_length)
        batch["images"] = torch.stack([item["image"] for item in items])
        batch["match_key"] = torch.tensor([key_to_int(item["key"]) for item in items], dtype=torch.int64)
        return batch
