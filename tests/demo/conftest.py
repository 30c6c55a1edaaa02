"""Micro models and images for the demo tests: a VQA model with and without the GLA-global head."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

ANSWERS = ["yes", "no", "left", "right", "two"]


@pytest.fixture(scope="session")
def demo_models(tmp_path_factory, micro_config, tokenizer) -> dict[str, Path]:
    """Saved micro VQA models: "vqa" (kept the alignment head) and "vqa_no_align" (objectives.global_align=0)."""
    from mpma.hub import save_pretrained
    from mpma.models.mpma import MPMAModel
    from mpma.tasks.classification import FusedClassifier

    root = tmp_path_factory.mktemp("demo-models")
    folders = {}
    for name, overrides in {"vqa": (), "vqa_no_align": ("objectives.global_align=0",)}.items():
        torch.manual_seed(0)
        backbone = MPMAModel(micro_config(*overrides), len(tokenizer), tokenizer.pad_token_id).eval()
        folders[name] = save_pretrained(FusedClassifier(copy.deepcopy(backbone), len(ANSWERS), "ce"), root / name,
                                        tokenizer, task={"task": "vqa", "classes": ANSWERS})
    return folders


@pytest.fixture(scope="session")
def demo_images(tmp_path_factory) -> dict[str, Path]:
    """Three 40x40 PNGs, a text file named like a PNG, and a 60 kB file."""
    root = tmp_path_factory.mktemp("demo-images")
    rng = np.random.default_rng(0)
    paths = {}
    for i in range(3):
        paths[f"png{i}"] = root / f"chest{i}.png"
        Image.fromarray(rng.integers(0, 256, (40, 40)).astype(np.uint8)).save(paths[f"png{i}"])
    paths["fake"] = root / "notes.png"
    paths["fake"].write_text("this is not an image\n")
    paths["big"] = root / "big.png"
    Image.fromarray(rng.integers(0, 256, (160, 160, 3)).astype(np.uint8)).save(paths["big"])  # ~77 kB, noise
    return paths
