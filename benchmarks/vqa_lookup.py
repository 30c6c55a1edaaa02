"""How far a VQA test split can be answered by looking its questions up in the training split (no learning).

    python benchmarks/vqa_lookup.py --data vqa-rad:../shared/data/vqa_rad --json docs/results/vqa_lookup.json

Two lookups, both without any model:

- ``same_image``: among the training questions about the *same image* (the same file), take the one
  whose words overlap the test question's most (Jaccard over lower-cased alphanumeric words) and answer
  with its answer; when the image has no training question, look over all training questions.
- ``text_only``: the same lookup over all training questions, the image ignored (a no-image floor).

Each is scored on the training split a fine-tune actually trains on: all of train (``data.val_fraction=0``)
and train minus the default held-out validation images (``data.val_fraction`` 0.1, seeds 0-2), exactly as
``mpma finetune`` builds them (``mpma.tasks.data.build_task_data``). It also prints the share of test
questions whose image occurs in that training split, and whose answer occurs among that image's training
answers (the ceiling of a same-image lookup). Accuracy is exact match after ``normalize_answer``, the
rule the VQA evaluation uses. Any data spec ``mpma finetune vqa --data`` reads works (a prepared SLAKE or
VQA-Med manifest too).
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
from collections import defaultdict
from pathlib import Path

from mpma.config import TaskDataConfig
from mpma.data.records import normalize_answer
from mpma.tasks.base import get_task
from mpma.tasks.data import build_task_data


def words(question: str) -> frozenset[str]:
    return frozenset(re.findall(r"[a-z0-9]+", question.lower()))


def overlap(a: frozenset[str], b: frozenset[str]) -> float:
    return len(a & b) / max(1, len(a | b))


def lookup_scores(train: list[dict], test: list[dict], use_image: bool) -> dict:
    """Accuracy (%) of answering each test example with the answer of its nearest training question.

    Examples are ``mpma.tasks.data`` VQA examples (keys image, question, answer, answer_type). Ties go
    to the earliest training question. Returns overall / open / closed accuracy and counts.
    """
    by_image: dict[str, list[dict]] = defaultdict(list)
    for example in train:
        by_image[example["image"]].append(example)
    keyed = [(words(e["question"]), e) for e in train]
    keyed_by_image = {image: [(words(e["question"]), e) for e in examples] for image, examples in by_image.items()}
    correct: dict[str, int] = defaultdict(int)
    counts: dict[str, int] = defaultdict(int)
    image_seen = answer_on_image = 0
    for example in test:
        query = words(example["question"])
        pool = keyed_by_image.get(example["image"]) if use_image else None
        image_seen += example["image"] in by_image
        answer_on_image += normalize_answer(example["answer"]) in {normalize_answer(e["answer"]) for e in by_image.get(example["image"], [])}
        nearest = max(pool or keyed, key=lambda item: overlap(query, item[0]))[1]
        hit = normalize_answer(nearest["answer"]) == normalize_answer(example["answer"])
        kind = "closed" if str(example.get("answer_type", "")).strip().upper() == "CLOSED" else "open"
        for key in ("overall", kind):
            correct[key] += hit
            counts[key] += 1
    result = {key: round(100 * correct[key] / counts[key], 1) for key in ("overall", "open", "closed") if counts[key]}
    return {**result, "n": counts["overall"], "test_image_in_train": round(100 * image_seen / len(test), 1),
            "test_answer_on_same_train_image": round(100 * answer_on_image / len(test), 1)}


def split_report(data_spec: str, val_fraction: float, seed: int) -> dict:
    data = build_task_data(get_task("vqa"), TaskDataConfig(dataset=data_spec, val_fraction=val_fraction, seed=seed), 32)
    train, test = data.splits["train"], data.splits["test"]
    return {"train_examples": len(train), "same_image": lookup_scores(train, test, use_image=True),
            "text_only": lookup_scores(train, test, use_image=False)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="a VQA data spec, e.g. vqa-rad:PATH or a prepared manifest")
    parser.add_argument("--val-fraction", type=float, default=0.1, help="the held-out share to compare with (default 0.1)")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    report = {"data": args.data, "all_of_train": split_report(args.data, 0.0, 0)}
    held = [split_report(args.data, args.val_fraction, seed) for seed in range(args.seeds)]
    report[f"val_fraction_{args.val_fraction:g}"] = {
        lookup: {key: {"mean": round(statistics.fmean(h[lookup][key] for h in held), 1),
                       "values": [h[lookup][key] for h in held]}
                 for key in ("overall", "open", "closed", "test_image_in_train", "test_answer_on_same_train_image")}
        for lookup in ("same_image", "text_only")}
    print("| lookup (no learning) | training split | overall | open | closed | test image in train |")
    print("|---|---|---|---|---|---|")
    for lookup in ("same_image", "text_only"):
        full = report["all_of_train"][lookup]
        print(f"| {lookup} | all of train | {full['overall']} | {full['open']} | {full['closed']} | {full['test_image_in_train']} |")
        part = report[f"val_fraction_{args.val_fraction:g}"][lookup]
        print(f"| {lookup} | {args.val_fraction:.0%} of the images held out (mean of {args.seeds} seeds) | "
              f"{part['overall']['mean']} | {part['open']['mean']} | {part['closed']['mean']} | {part['test_image_in_train']['mean']} |")
    same = report["all_of_train"]["same_image"]
    print(f"\ntest answers found among the same image's training answers: {same['test_answer_on_same_train_image']}%")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
