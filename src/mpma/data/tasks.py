"""Downstream task data: examples per split from synthrad, VQA-RAD or a manifest.

Every task reads the same :class:`TaskData`: a dict of example lists (plain dicts) per split and
an :class:`ImageStore` that turns an example's image reference into a cached model input. Example
fields by task:

- vqa: image, question, answer, answer_type, question_type
- mm_cls / img_cls / zero_shot_cls: image, text (mm_cls), labels (tuple of label names)
- txt_cls: text, text_pair (optional), labels (one label)
- retrieval: image, text, key (items with equal keys count as hits for each other)
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from mpma.finetune_config import TaskDataConfig

# synthrad downstream cases live far from the pre-training index range [0, train_size + eval_size).
SYNTHRAD_TRAIN_OFFSET = 500_000_000


class ImageStore:
    """Image reference -> (3, S, S) tensor, decoded and resized once, then cached.

    A reference is ("synthrad", SynthRad, index) or an absolute file path. :meth:`augmented` gives
    a seeded random resized crop of a file image instead (training only).
    """

    def __init__(self, image_size: int) -> None:
        self.image_size = image_size
        self._cache: dict = {}
        self._arrays: dict = {}  # file path -> decoded uint8, shorter side at most image_size (for crops)

    def augmented(self, ref, seed: tuple[int, ...]) -> torch.Tensor:
        """(3, S, S) random resized crop of ``ref`` drawn from ``seed`` (no flip: left/right matter).

        A synthrad reference is returned unaugmented (its cases are already drawn at random).
        """
        if not isinstance(ref, str):
            return self(ref)
        from mpma.data.image import ImageError, ImageTransform, load_image
        from mpma.data.pairs import shrink_shorter_side

        array = self._arrays.get(ref)
        if array is None:
            try:
                array = shrink_shorter_side(load_image(ref), self.image_size)
            except ImageError as error:
                raise ImageError(f"{error} (run `mpma data validate` on the manifest to list bad records)") from None
            self._arrays[ref] = array
        return ImageTransform(size=self.image_size, train=True)(array, np.random.default_rng(list(seed)))

    def __call__(self, ref) -> torch.Tensor:
        key = ref if isinstance(ref, str) else (id(ref[1]), ref[2])
        tensor = self._cache.get(key)
        if tensor is None:
            from mpma.data.image import CLIP_MEAN, CLIP_STD, ImageError, load_image, to_tensor
            from mpma.data.pairs import grayscale_to_tensor

            if isinstance(ref, str):
                try:
                    tensor = to_tensor(load_image(ref), self.image_size, CLIP_MEAN, CLIP_STD)
                except ImageError as error:
                    raise ImageError(f"{error} (run `mpma data validate` on the manifest to list bad records)") from None
            else:
                tensor = grayscale_to_tensor(ref[1][ref[2]].image, self.image_size, CLIP_MEAN, CLIP_STD)
            self._cache[key] = tensor
        return tensor


@dataclass
class TaskData:
    """Examples per split ("train", "val", "test"), label names and provenance notes."""

    splits: dict[str, list[dict]]
    label_names: list[str] = field(default_factory=list)
    multi_label: bool = False
    notes: dict = field(default_factory=dict)


def held_out_split(examples: list[dict], fraction: float, seed: int, group_key: str | None = None) -> tuple[list, list]:
    """Seeded train/val split; with ``group_key`` all examples of a group land on the same side."""
    rng = np.random.default_rng([seed, 7])
    if group_key is None:
        order = rng.permutation(len(examples))
        n_val = max(1, int(round(fraction * len(examples))))
        val_ids = set(order[:n_val].tolist())
        return ([e for i, e in enumerate(examples) if i not in val_ids], [e for i, e in enumerate(examples) if i in val_ids])
    groups = sorted({str(e[group_key]) for e in examples})
    order = rng.permutation(len(groups))
    n_val = max(1, int(round(fraction * len(groups))))
    val_groups = {groups[i] for i in order[:n_val]}
    return ([e for e in examples if str(e[group_key]) not in val_groups], [e for e in examples if str(e[group_key]) in val_groups])


def label_fraction(examples: list[dict], fraction: float, seed: int) -> list[dict]:
    """Seeded, label-stratified subsample: ceil(fraction * n) examples of each label set (at least 1).

    The stratum of an example is its sorted label tuple, so rare label combinations keep at least
    one example. Order of the result follows the input order.
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"data.fraction must be in (0, 1], got {fraction}")
    if fraction == 1:
        return list(examples)
    strata: dict[tuple, list[int]] = defaultdict(list)
    for i, example in enumerate(examples):
        strata[tuple(sorted(example["labels"]))].append(i)
    rng = np.random.default_rng([seed, 11])
    keep: set[int] = set()
    for stratum in sorted(strata):
        members = strata[stratum]
        count = max(1, math.ceil(fraction * len(members)))
        keep.update(rng.choice(members, size=count, replace=False).tolist())
    return [examples[i] for i in sorted(keep)]


# ------------------------------------------------------------------------------------ synthrad


def _synthrad_examples(task: str, cases, split: str) -> list[dict]:
    from mpma.data.synthrad import LABELS, text_pairs

    examples = []
    for i in range(len(cases)):
        case = cases[i]
        ref = ("synthrad", cases, i)
        labels = tuple(name for name, y in zip(LABELS, case.labels) if y > 0)
        if task == "vqa":
            examples += [{"image": ref, "question": q.question, "answer": q.answer, "answer_type": q.answer_type,
                          "question_type": q.question_type, "group": i} for q in case.vqa]
        elif task in ("img_cls", "zero_shot_cls"):
            examples.append({"image": ref, "labels": labels})
        elif task == "mm_cls":
            # MELINDA-style single-label: the kind of a single finding, or "normal"; two-finding cases skipped.
            if len(case.findings) <= 1:
                examples.append({"image": ref, "text": case.report, "labels": (labels[0],)})
        elif task == "retrieval":
            examples.append({"image": ref, "text": case.report, "key": case.finding_key})
        elif task == "txt_cls":
            examples += [{"text": p["text"], "text_pair": p["text_pair"], "labels": (p["label"],)}
                         for p in text_pairs(case) if p["task"] == "entailment"]
    return examples


def synthrad_task_data(task: str, config: TaskDataConfig, image_size: int) -> TaskData:
    """synthrad splits for ``task`` at case offsets disjoint from pre-training."""
    from mpma.data.synthrad import LABELS, TEST_OFFSET, VAL_OFFSET, SynthRad

    common = dict(seed=config.seed, image_size=image_size)
    sizes = {"train": (config.train_size, SYNTHRAD_TRAIN_OFFSET), "val": (config.val_size, VAL_OFFSET),
             "test": (config.test_size, TEST_OFFSET)}
    splits = {name: _synthrad_examples(task, SynthRad(n, offset=offset, **common), name)
              for name, (n, offset) in sizes.items()}
    if task == "txt_cls":
        names = ["contradiction", "entailment", "neutral"]
    elif task == "mm_cls":
        names = [n for n in LABELS]
    else:
        names = list(LABELS)
    return TaskData(splits, names if task != "vqa" else [], multi_label=task in ("img_cls", "zero_shot_cls"),
                    notes={"source": "synthrad", "seed": config.seed})


# ------------------------------------------------------------------------------------ files


def _vqa_examples(records) -> list[dict]:
    return [{"image": str(r.image), "question": r.question, "answer": r.answer, "answer_type": r.answer_type,
             "question_type": r.question_type, "group": str(r.image)} for r in records]


def vqa_rad_task_data(root: str, config: TaskDataConfig) -> TaskData:
    """VQA-RAD's MEVF split (train 3,064 / test 451); validation held out of train by question (seeded)."""
    from mpma.data.vqa_rad import load_vqa_rad

    records = load_vqa_rad(root)
    train = _vqa_examples(records["train"])
    train, val = held_out_split(train, config.val_fraction, config.seed)
    return TaskData({"train": train, "val": val, "test": _vqa_examples(records["test"])},
                    notes={"source": f"vqa-rad:{root}", "validation": f"{config.val_fraction:.0%} of train, seeded"})


def manifest_task_data(task: str, path: str, config: TaskDataConfig) -> TaskData:
    """A prepared manifest (VQA, classification or pre-training kind, by task)."""
    from mpma.data.records import read_manifest, resolve_image

    manifest = Path(path)
    kind = {"vqa": "vqa", "retrieval": "pretrain"}.get(task, "classification")
    records = read_manifest(manifest, kind)
    by_split: dict[str, list[dict]] = defaultdict(list)
    for r in records:
        split = {"validation": "val", "valid": "val"}.get(r.split, r.split)
        image = str(resolve_image(manifest, r)) if getattr(r, "image", None) else None
        if kind == "vqa":
            example = {"image": image, "question": r.question, "answer": r.answer, "answer_type": r.answer_type,
                       "question_type": r.question_type, "group": image}
        elif kind == "pretrain":
            example = {"image": image, "text": r.text, "key": r.text}
        else:
            example = {"image": image, "text": r.text, "text_pair": r.text_pair, "labels": tuple(r.labels)}
        by_split[split].append(example)
    if "train" not in by_split or "test" not in by_split:
        raise ValueError(f"{manifest}: needs 'train' and 'test' splits, found {sorted(by_split)}")
    if "val" not in by_split:
        by_split["train"], by_split["val"] = held_out_split(by_split["train"], config.val_fraction, config.seed)
    names = sorted({label for examples in by_split.values() for e in examples for label in e.get("labels", ())})
    multi = any(len(e.get("labels", ())) != 1 for e in by_split["train"])
    return TaskData(dict(by_split), names, multi_label=multi, notes={"source": str(manifest)})


def build_task_data(task: str, config: TaskDataConfig, image_size: int) -> TaskData:
    """Dispatch on ``data.dataset``: "synthrad", "vqa-rad:PATH", "manifest:PATH" or a manifest path."""
    from mpma.data.pairs import parse_data_spec

    name, path = parse_data_spec(config.dataset)
    if name == "synthrad":
        data = synthrad_task_data(task, config, image_size)
    elif name == "vqa-rad":
        if task != "vqa":
            raise ValueError(f"vqa-rad provides VQA data only, not task '{task}'")
        data = vqa_rad_task_data(path, config)
    elif name == "manifest" or Path(path).suffix == ".jsonl":
        data = manifest_task_data(task, path, config)
    else:
        raise ValueError(f"unknown dataset '{name}' in data.dataset={config.dataset!r} "
                         "(use synthrad, vqa-rad:PATH or a manifest path)")
    if config.fraction < 1 and task in ("img_cls", "mm_cls", "txt_cls"):
        data.splits["train"] = label_fraction(data.splits["train"], config.fraction, config.seed)
    for split in ("train", "val", "test"):
        if not data.splits.get(split):
            raise ValueError(f"{config.dataset}: split '{split}' is empty for task '{task}'")
    return data
