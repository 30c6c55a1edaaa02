"""Does more pre-training help VQA-RAD? Fine-tune from checkpoints of one longer MPMA run.

    python benchmarks/real_vqa_budget.py --shared ../shared/data --out runs/real_budget --steps 3000 --every 1000

One MPMA pre-training run (``tiny_real``, the data and tokenizer corpora of ``benchmarks/real_vqa.py``)
keeps a checkpoint every ``--every`` steps; VQA-RAD is fine-tuned with the recipe
``finetune/vqa_real`` from each checkpoint and from scratch, ``--seeds`` seeds each. Every checkpoint
is a model folder, so ``--init RUN/checkpoints/step_N`` is all it takes. Prints a table of test
accuracy against pre-training steps and writes ``<out>/real_vqa_budget.json`` (and ``--results``).
Runs that finished are reused.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from real_vqa import ANCHORS, cpu_features, mean_sd, mpma, prepare_data  # noqa: E402


def pretrain(manifests: dict[str, Path], shared: Path, out: Path, steps: int, every: int,
             extra: Sequence[str] = ()) -> Path:
    run_dir = out / "pretrain-mpma"
    if not (run_dir / "summary.json").exists():
        corpora = [f"roco:{shared / 'roco' / 'data'}", f"vqa-rad:{shared / 'vqa_rad'}"]
        mpma("pretrain", "--config", "tiny_real", "--out", str(run_dir), "--no-progress",
             f"data.sources=[{manifests['medpix']}@3,{manifests['covid_cxr']}@1]", f"optim.steps={steps}",
             f"run.checkpoint_every={every}", "run.keep_checkpoints=0",
             f"text.tokenizer_corpora=[{','.join(corpora)}]", *extra, log=out / "logs" / "pretrain-mpma.log")
    return run_dir


def finetune(name: str, init: Path | None, seed: int, shared: Path, out: Path) -> dict:
    run_dir = out / f"vqa-{name}-seed{seed}"
    if not (run_dir / "metrics.json").exists():
        overrides = [f"data.seed={seed}", f"run.seed={seed}"] + ([] if init else ["preset=tiny_real"])
        mpma("finetune", "vqa", "--config", "finetune/vqa_real", "--init", str(init or "scratch"),
             "--data", f"vqa-rad:{shared / 'vqa_rad'}", "--out", str(run_dir), "--no-progress", *overrides,
             log=out / "logs" / f"vqa-{name}-seed{seed}.log")
    return json.loads((run_dir / "metrics.json").read_text())


def summarise(runs: list[dict]) -> dict:
    entry = {key: mean_sd([100 * r["test"][key] for r in runs]) for key in ("overall", "open", "closed")}
    shuffled = [100 * r["test_shuffled_images"]["overall"] for r in runs if "test_shuffled_images" in r]
    if shuffled:
        entry["shuffled_overall"] = mean_sd(shuffled)
        entry["shuffled_drop"] = round(entry["overall"]["mean"] - entry["shuffled_overall"]["mean"], 2)
    entry["train_fit_overall"] = mean_sd([100 * r["train_fit"]["overall"] for r in runs if "train_fit" in r])
    entry["best_epochs"] = [r["best_epoch"] for r in runs]
    return entry


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shared", type=Path, default=Path("../shared/data"))
    parser.add_argument("--out", type=Path, default=Path("runs/real_budget"))
    parser.add_argument("--steps", type=int, default=3000, help="pre-training steps")
    parser.add_argument("--every", type=int, default=1000, help="a checkpoint (and a fine-tune) every N steps")
    parser.add_argument("--seeds", type=int, default=1, help="fine-tuning seeds per row")
    parser.add_argument("--results", type=Path, help="also write the JSON here")
    parser.add_argument("--pretrain-override", action="append", default=[], metavar="KEY=VALUE",
                        help="added to the pre-training command, e.g. vision.align_mask_ratio=null (the setting "
                             "of docs/results/real_vqa_budget.json, measured before tiny_real's unmasked GLA view)")
    args = parser.parse_args()
    (args.out / "logs").mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    manifests = prepare_data(args.shared, args.out)
    run_dir = pretrain(manifests, args.shared, args.out, args.steps, args.every, args.pretrain_override)
    rows = {"scratch": None, **{f"mpma_step{s}": run_dir / "checkpoints" / f"step_{s:08d}"
                                 for s in range(args.every, args.steps + 1, args.every)}}
    results = {}
    for name, init in rows.items():
        results[name] = summarise([finetune(name, init, seed, args.shared, args.out) for seed in range(args.seeds)])
        print(json.dumps({name: results[name]}), flush=True)
    wall = round(time.perf_counter() - started, 1)
    report = {"vqa_rad": results, "pretrain_steps": args.steps, "every": args.every, "seeds": args.seeds,
              "anchors": ANCHORS, "wall_time_s": wall, "host": {"cpu_features": cpu_features()},
              "validation": "10% of the VQA-RAD train images, with all their questions",
              "command": "python benchmarks/real_vqa_budget.py " + " ".join(sys.argv[1:])}
    text = json.dumps(report, indent=2) + "\n"
    (args.out / "real_vqa_budget.json").write_text(text)
    if args.results:
        args.results.write_text(text)
    print("| init | overall | open | closed | shuffled drop | train fit |\n|---|---|---|---|---|---|")
    for name, entry in results.items():
        cells = [f"{entry[k]['mean']:.1f} ± {entry[k]['sd']:.1f}" for k in ("overall", "open", "closed")]
        print(f"| {name} | " + " | ".join(cells) + f" | {entry.get('shuffled_drop', float('nan')):.1f} | "
              f"{entry['train_fit_overall']['mean']:.1f} |")
    print(f"\nwall time {wall:.0f} s on {cpu_features()}")


if __name__ == "__main__":
    main()
