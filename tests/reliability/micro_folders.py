"""Helpers of the folder, size and input tests: micro model folders, JSON edits, a booby-trapped pickle,
and a recorder of the files Python opens."""

from __future__ import annotations

import copy
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ANSWERS = ["yes", "no", "left", "right", "two"]
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "v0_1_0"


def micro_backbone(micro_config, tokenizer, *overrides: str):
    from mpma.models.mpma import MPMAModel

    torch.manual_seed(0)
    return MPMAModel(micro_config(*overrides), len(tokenizer), tokenizer.pad_token_id).eval()


def save_micro_models(root: Path, micro_config, tokenizer) -> dict[str, Path]:
    """{"backbone": folder, "vqa": folder} of the micro model."""
    from mpma.hub import save_pretrained
    from mpma.tasks.classification import FusedClassifier

    backbone = micro_backbone(micro_config, tokenizer)
    return {"backbone": save_pretrained(backbone, root / "backbone", tokenizer),
            "vqa": save_pretrained(FusedClassifier(copy.deepcopy(backbone), len(ANSWERS), "ce"), root / "vqa", tokenizer,
                                   task={"task": "vqa", "classes": ANSWERS})}


def copy_folder(source: Path, target: Path) -> Path:
    shutil.copytree(source, target)
    return target


def edit_json(path: Path, edit) -> None:
    """Rewrite the JSON file ``path`` with ``edit(values)`` applied in place."""
    values = json.loads(path.read_text())
    edit(values)
    path.write_text(json.dumps(values, indent=2))


def write_image(path: Path, size: int = 32) -> Path:
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (size, size)).astype(np.uint8)).save(path)
    return path


class Payload:
    """Unpickling this writes ``marker``: proof that a pickle was loaded."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').write('ran')",))


def trap_folder(folder: Path, marker: Path, config: dict | None = None) -> Path:
    """A Hugging Face-looking folder: a config.json (another architecture) and a pickle that writes ``marker``."""
    folder.mkdir(parents=True, exist_ok=True)
    config = config or {"model_type": "bert", "hidden_size": 64, "num_hidden_layers": 3, "num_attention_heads": 4,
                        "intermediate_size": 128, "vocab_size": 999}
    (folder / "config.json").write_text(json.dumps(config))
    torch.save({"weight": Payload(marker)}, folder / "pytorch_model.bin")
    return folder


class OpenedFiles:
    """Paths Python code opened or listed (``open``, ``os.listdir``, ``os.scandir`` audit events) while
    ``recording``; the hook stays installed but idle otherwise."""

    _instance: OpenedFiles | None = None

    def __init__(self) -> None:
        self.paths: list[str] = []
        self.recording = False

    @classmethod
    def get(cls) -> OpenedFiles:
        if cls._instance is None:
            cls._instance = cls()
            sys.addaudithook(cls._instance._hook)
        return cls._instance

    def _hook(self, event: str, args) -> None:
        if self.recording and event in ("open", "os.listdir", "os.scandir") and args and isinstance(args[0], (str, Path)):
            self.paths.append(str(args[0]))

    def under(self, folder: Path) -> list[str]:
        prefix = str(folder.resolve())
        return [p for p in self.paths if str(Path(p).resolve()).startswith(prefix)]
