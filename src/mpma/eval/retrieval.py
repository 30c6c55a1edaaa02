"""Embedding-based retrieval evaluation: embed every image and text once, rank by cosine similarity."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from mpma.eval.metrics import retrieval_metrics


@torch.inference_mode()
def embed_dataset(
    model, dataset: Dataset, collate: Callable, batch_size: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Unmasked GLA-global embeddings of every pair.

    Returns:
        image embeddings (N, A) and text embeddings (N, A), L2-normalised, on the CPU.
    """
    was_training = model.training
    model.eval()
    images, texts = [], []
    for batch in DataLoader(dataset, batch_size=batch_size, collate_fn=collate, shuffle=False):
        images.append(model.embed_image(batch["images"].to(device)).float().cpu())
        texts.append(model.embed_text(batch["input_ids"].to(device), batch["attention_mask"].to(device)).float().cpu())
    model.train(was_training)
    return torch.cat(images), torch.cat(texts)


def relevance_from_keys(query_keys: Iterable, candidate_keys: Iterable) -> np.ndarray:
    """(Q, C) bool: a candidate is relevant when its key equals the query's (e.g. the same finding set)."""
    q = np.asarray(list(query_keys), dtype=object)
    c = np.asarray(list(candidate_keys), dtype=object)
    return q[:, None] == c[None, :]


def retrieval_report(
    image_embed: torch.Tensor, text_embed: torch.Tensor, keys: list | None = None, ks: tuple[int, ...] = (1, 5, 10)
) -> dict[str, dict[str, float]]:
    """R@K and chance@K for image->text and text->image.

    Args:
        image_embed: (N, A) normalised; text_embed: (N, A) normalised; pair i is image i + text i.
        keys: per-pair grouping keys; a retrieved item is a hit when its key equals the query's.
            None = only the paired item is relevant.
    """
    similarity = (image_embed @ text_embed.t()).numpy()
    n = similarity.shape[0]
    relevant = np.eye(n, dtype=bool) if keys is None else relevance_from_keys(keys, keys)
    return {
        "i2t": retrieval_metrics(similarity, relevant, ks),
        "t2i": retrieval_metrics(similarity.T, relevant.T, ks),
    }
