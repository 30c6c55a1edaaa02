"""Downstream task data: examples per split from synthrad, VQA-RAD or a manifest.

Every task reads the same :class:`TaskData`: a dict of example lists (plain dicts) per split. An
example's ``image`` is a reference that :class:`mpma.data.collate.ImageStore` turns into a cached
model input. Example fields by task (see each task's ``synthrad_examples``):

- vqa: image, question, answer, answer_type, question_type, group (the image)
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

from mpma.config import TaskDataConfig
from mpma.data.pairs import parse_data_spec
from mpma.data.records import read_manifest, resolve_image
from mpma.data.sources.vqa_rad import load_vqa_rad
from mpma.data.synthrad import TEST_OFFSET, VAL_OFFSET, SynthRad
from mpma.tasks.base import Task

# synthrad downstream cases live far from the pre-training index range [0, train_size + eval_size).
SYNTHRAD_TRAIN_OFFSET = 500_000_000


@dataclass
class TaskData:
    """Examples per split ("train", "val", "test"), label names and provenance notes."""

    splits: dict[str, list[dict]]
    label_names: list[str] = field(default_factory=list)
    multi_label: bool = False
    notes: dict = field(default_factory=dict)


def held_out_split(examples: list[dict], fraction: float, seed: int, group_key: str | None = None) -> tuple[list, list]:
    """Seeded train/val split; with ``group_key`` all examples of a group land on the same side.
    ``fraction`` 0 holds nothing out (at least one example or group otherwise)."""
    if fraction == 0:
        return list(examples), []
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


def _synthrad_examples(task: Task, cases) -> list[dict]:
    return [example for i in range(len(cases)) for example in task.synthrad_examples(cases[i], ("synthrad", cases, i), i)]


def synthrad_task_data(task: Task, config: TaskDataConfig, image_size: int) -> TaskData:
    """synthrad splits for ``task`` at case offsets disjoint from pre-training."""
    common = dict(seed=config.seed, image_size=image_size)
    sizes = {"train": (config.train_size, SYNTHRAD_TRAIN_OFFSET), "val": (config.val_size, VAL_OFFSET),
             "test": (config.test_size, TEST_OFFSET)}
    splits = {name: _synthrad_examples(task, SynthRad(n, offset=offset, **common)) for name, (n, offset) in sizes.items()}
    return TaskData(splits, task.synthrad_label_names(), multi_label=task.synthrad_multi_label,
                    notes={"source": "synthrad", "seed": config.seed})


# ------------------------------------------------------------------------------------ files


def _vqa_examples(records) -> list[dict]:
    return [{"image": str(r.image), "question": r.question, "answer": r.answer, "answer_type": r.answer_type,
             "question_type": r.question_type, "group": str(r.image)} for r in records]


def vqa_rad_task_data(root: str, config: TaskDataConfig) -> TaskData:
    """VQA-RAD's MEVF split (train 3,064 / test 451); validation: ``data.val_fraction`` of the train
    *images* with all their questions (seeded), so no validation image is seen in training. (Every test
    image is also a train image: ``data.val_fraction=0`` trains on all of them, as published results do.)"""
    records = load_vqa_rad(root)
    train = _vqa_examples(records["train"])
    train, val = held_out_split(train, config.val_fraction, config.seed, group_key="group")
    return TaskData({"train": train, "val": val, "test": _vqa_examples(records["test"])},
                    notes={"source": f"vqa-rad:{root}", "validation": f"{config.val_fraction:.0%} of the train images, seeded"})


def manifest_task_data(task: Task, path: str, config: TaskDataConfig) -> TaskData:
    """A prepared manifest of the task's record kind (VQA, classification or pre-training pairs)."""
    manifest = Path(path)
    kind = task.manifest_kind
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
        # questions about one image stay together: a validation image is never seen in training
        group = "group" if kind == "vqa" else None
        by_split["train"], by_split["val"] = held_out_split(by_split["train"], config.val_fraction, config.seed, group)
    names = sorted({label for examples in by_split.values() for e in examples for label in e.get("labels", ())})
    multi = any(len(e.get("labels", ())) != 1 for e in by_split["train"])
    return TaskData(dict(by_split), names, multi_label=multi, notes={"source": str(manifest)})


def build_task_data(task: Task, config: TaskDataConfig, image_size: int) -> TaskData:
    """Dispatch on ``data.dataset``: "synthrad", "vqa-rad:PATH", "manifest:PATH" or a manifest path."""
    name, path = parse_data_spec(config.dataset)
    if name == "synthrad":
        data = synthrad_task_data(task, config, image_size)
    elif name == "vqa-rad":
        if task.manifest_kind != "vqa":
            raise ValueError(f"vqa-rad provides VQA data only, not task '{task.name}'")
        data = vqa_rad_task_data(path, config)
    elif name == "manifest" or Path(path).suffix == ".jsonl":
        data = manifest_task_data(task, path, config)
    else:
        raise ValueError(f"unknown dataset '{name}' in data.dataset={config.dataset!r} "
                         "(use synthrad, vqa-rad:PATH or a manifest path)")
    if config.fraction < 1 and task.label_fraction:
        data.splits["train"] = label_fraction(data.splits["train"], config.fraction, config.seed)
    data.splits.setdefault("val", [])
    for split in ("train", "val", "test"):
        if not data.splits[split] and not (split == "val" and config.val_fraction == 0):
            raise ValueError(f"{config.dataset}: split '{split}' is empty for task '{task.name}'")
    return data
