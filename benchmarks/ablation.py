"""The miniature reproduction on synthrad: does each part of MPMA matter? (issue 12's table)

    python benchmarks/ablation.py --out runs/ablation --fitting-vqa --skip-default-vqa --jobs 2   # the issue's table
    python benchmarks/ablation.py --out runs/ablation --jobs 2         # VQA with M3AE's recipe instead: ~2.6 h
    python benchmarks/ablation.py --rows scratch m3ae_style_700 mpma_700 --jobs 2   # at tiny's earlier 700 steps
    python benchmarks/ablation.py --rows scratch m3ae_style_cosine mpma_cosine --jobs 2   # on tiny's old cosine schedule
    python benchmarks/ablation.py --out runs/ablation --seeds 1 --rows mpma scratch   # a quick look
    python benchmarks/ablation.py --out runs/ablation --collect --fitting-vqa --skip-default-vqa  # what has finished
    python benchmarks/ablation.py --rows mpma_3x_no_memory --fitting-vqa --skip-default-vqa  # only the fitting VQA recipe

Every row is a preset plus overrides (never a code fork), pre-trained with the default ``mpma pretrain``
budget on the same synthrad data, one pre-training per seed (``run.seed``); each pre-trained model is then
fine-tuned / evaluated with the budgets of ``benchmarks/downstream.py`` and the same seed:

- VQA overall / open / closed (``vqa``) with M3AE's recipe (``finetune/vqa_m3ae``: soft-score BCE, CLS
  poolers, the classifier at 3x, clipping at 1.0; ``mpma finetune vqa``'s default until 2026-12-03, when
  these columns were measured),
- zero-shot retrieval R@1, image->text and text->image, with chance (``retrieval_zero_shot``; rows
  without the GLA-global head have none),
- mm_cls accuracy, the 10%-label linear-probe AUC (``img_cls_probe_10pct``),
- with ``--fitting-vqa``, VQA again at the same budget with the recipe ``finetune/vqa_real`` (cross-entropy,
  mean-pooled fused tokens, the classifier at 10x the rate, no clipping, the last epoch kept: the recipe
  that fits VQA-RAD; its head and optimiser settings are now the VQA task's defaults), because M3AE's
  recipe does not fit synthrad's training questions either (train accuracy = test accuracy, ~57%;
  docs/RESULTS.md section 6) (``vqa_fit``),
- the final pointing game of the pre-training run (GLA-local hit rate and the fusion attention's,
  with chance) and the MLM image gap (own image minus a shuffled one), from its ``summary.json``.

Figures are mean and sd over the seeds, in percent. Finished runs are reused, so an interrupted
command picks up where it stopped. With ``--jobs N`` the (row, seed) units run in N worker processes, each
with ``OMP_NUM_THREADS`` = the usable cores // N (1 on a 2-core machine at ``--jobs 2``: two 1-thread
streams side by side, the way every figure of the table was measured); every row's seed 0 runs before
any row's seed 1, so a stopped command leaves whole seeds of every row. Writes
``<out>/ablation.json`` (and ``--results``, e.g. docs/results/ablation.json) as ``{"rows": {"<row>": {"vqa_overall": {"mean", "sd"}, ...}}, ...}`` and
prints a markdown table with the wall time.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from downstream import TASK_BUDGETS, finetune  # noqa: E402
from real_vqa import cpu_features, mean_sd  # noqa: E402

# row -> (pre-training preset, overrides); None: no pre-training (fine-tuned from scratch)
Row = tuple[str, list[str]] | None
# the seven rows: what the command runs by default
DEFAULT_ROW_SPECS: dict[str, Row] = {
    "scratch": None,
    "m3ae_style": ("tiny_m3ae", []),
    "mpma": ("tiny", []),
    "mpma_no_local": ("tiny", ["objectives.local_align=0"]),
    "mpma_no_global": ("tiny", ["objectives.global_align=0"]),
    "mpma_no_memory": ("tiny", ["fusion.memory_slots=0"]),
    "mpma_no_itm": ("tiny", ["objectives.itm=0"]),
}
# tiny as it was before its warm-up, stable, decay schedule (2026-12-05): the plain cosine decay and FILIP's
# symmetric local score. The rows measured on that tiny carry these overrides, so they reproduce their
# recorded figures (docs/results/ablation_cosine.json, ablation_grounding.json) on today's presets.
COSINE_SCHEDULE = ["optim.decay_steps=0"]
COSINE_TINY = [*COSINE_SCHEDULE, "objectives.local_patch_to_token=0.5"]
PARTS = ("no_local", "no_global", "no_memory", "no_itm")
# tiny's budget before 900 steps (2026-12-05): 700 steps, the last 70 decaying. The rows at that budget
# carry these overrides, so they reproduce the table measured there (docs/results/ablation_700.json).
STEPS_700 = ["optim.steps=700", "optim.decay_steps=70"]
# run only when named in --rows
EXTRA_ROW_SPECS: dict[str, Row] = {
    # the rows at 700 steps (the table of 2026-12-05, RESULTS section 6)
    "m3ae_style_700": ("tiny_m3ae", STEPS_700),
    "mpma_700": ("tiny", STEPS_700),
    **{f"mpma_700_{part}": ("tiny", [*STEPS_700, *DEFAULT_ROW_SPECS[f"mpma_{part}"][1]]) for part in PARTS},
    # the seven rows on the cosine-schedule tiny (the 700-step table until 2026-12-05, RESULTS section 6)
    "mpma_cosine": ("tiny", COSINE_TINY),
    "m3ae_style_cosine": ("tiny_m3ae", COSINE_SCHEDULE),
    **{f"mpma_cosine_{part}": ("tiny", [*COSINE_TINY, *DEFAULT_ROW_SPECS[f"mpma_{part}"][1]]) for part in PARTS},
    # on that tiny: GLA on a second, unmasked view of the image while MLM and MIM keep the half-masked pass
    # (the setting that helps on VQA-RAD, RESULTS section 3), MPMA at twice the learning rate, and MPMA and
    # M3AE-style at three times the budget (2,100 steps: where its MLM image gap passes 10 points)
    "mpma_full_view": ("tiny", [*COSINE_TINY, "vision.align_mask_ratio=0"]),
    "mpma_lr1e-3": ("tiny", [*COSINE_TINY, "optim.lr=1e-3"]),
    "mpma_3x_steps": ("tiny", [*COSINE_TINY, "optim.steps=2100"]),
    "m3ae_style_3x_steps": ("tiny_m3ae", [*COSINE_SCHEDULE, "optim.steps=2100"]),
    # the part ablations at that budget (read them with --fitting-vqa: RESULTS section 6)
    **{f"mpma_3x_{part}": ("tiny", [*COSINE_TINY, *DEFAULT_ROW_SPECS[f"mpma_{part}"][1], "optim.steps=2100"])
       for part in PARTS},
    # both alignments off, the memory kept: M3AE-style plus MA-CMF's memory (is one alignment enough?)
    "mpma_3x_no_align": ("tiny", [*COSINE_TINY, "objectives.global_align=0", "objectives.local_align=0",
                                  "optim.steps=2100"]),
    # twice the cosine budget with GLA-local on each word's best patch (preset tiny_grounding, RESULTS
    # section 4), M3AE-style at the same steps and schedule, and the part ablations
    "mpma_grounding": ("tiny_grounding", []),
    "m3ae_style_2x_steps": ("tiny_m3ae", [*COSINE_SCHEDULE, "optim.steps=1400"]),
    **{f"mpma_grounding_{part}": ("tiny_grounding", DEFAULT_ROW_SPECS[f"mpma_{part}"][1]) for part in PARTS},
}
ROWS: dict[str, Row] = {**DEFAULT_ROW_SPECS, **EXTRA_ROW_SPECS}
DEFAULT_ROWS = tuple(DEFAULT_ROW_SPECS)
TASKS = ("vqa", "retrieval_zero_shot", "mm_cls", "img_cls_probe_10pct")
FITTING_VQA_TASK = "vqa_fit"  # --fitting-vqa: the vqa budget on the finetune/vqa_real recipe
FITTING_VQA_RECIPE = "finetune/vqa_real"
M3AE_VQA_RECIPE = "finetune/vqa_m3ae"  # the vqa_* columns: the recipe they were measured with (the old default)
COLUMNS = ("vqa_overall", "vqa_open", "vqa_closed", "vqa_fit_overall", "vqa_fit_open", "vqa_fit_closed", "vqa_fit_train",
           "zs_i2t_r1", "zs_t2i_r1", "zs_chance_r1", "mm_cls_accuracy",
           "probe10_auc", "pointing_local", "pointing_fusion", "pointing_chance", "mlm_gap")


def pretrain(row: str, seed: int, out: Path) -> Path | None:
    """The row's pre-training run for ``seed`` (run in process; reused when finished)."""
    spec = ROWS[row]
    if spec is None:
        return None
    from mpma.config import load_config
    from mpma.pipelines.pretraining import run_pretraining

    preset, overrides = spec
    run_dir = out / row / f"seed{seed}" / "pretrain"
    if not (run_dir / "summary.json").exists():
        resume = (run_dir / "config.json").exists()
        config = None if resume else load_config(preset, [*overrides, f"run.seed={seed}"])
        run_pretraining(config, run_dir, resume=resume, progress=False)
    return run_dir


def row_tasks(row: str, fitting_vqa: bool = False, default_vqa: bool = True) -> list[str]:
    """The fine-tuning tasks of ``row`` (zero-shot retrieval needs a pre-trained GLA-global head), with
    the fitting VQA recipe's run when ``fitting_vqa`` and without the M3AE-recipe VQA run when not
    ``default_vqa``."""
    tasks = [task for task in TASKS
             if (task != "retrieval_zero_shot" or (ROWS[row] is not None and "zs" not in _missing_heads(row)))
             and (task != "vqa" or default_vqa)]
    return [*tasks, FITTING_VQA_TASK] if fitting_vqa else tasks


def finished_seeds(row: str, out: Path, fitting_vqa: bool = False, default_vqa: bool = True) -> list[int]:
    """Seeds of ``row`` whose pre-training and every fine-tune have finished under ``out``."""
    init = "scratch" if ROWS[row] is None else "pretrain"  # the fine-tunes' folder suffix (downstream.finetune)

    def finished(folder: Path) -> bool:
        pretrained = init == "scratch" or (folder / "pretrain" / "summary.json").exists()
        return pretrained and all((folder / f"{task}-{init}" / "metrics.json").exists()
                                  for task in row_tasks(row, fitting_vqa, default_vqa))

    candidates = sorted(int(f.name[4:]) for f in out.glob(f"{row}/seed*") if f.name[4:].isdigit())
    return [seed for seed in candidates if finished(out / row / f"seed{seed}")]


def seed_figures(row: str, seed: int, out: Path, fitting_vqa: bool = False,
                 default_vqa: bool = True) -> dict[str, float]:
    """Every column of one (row, seed), in percent; a column the row cannot have is left out."""
    run_dir = pretrain(row, seed, out)
    init = str(run_dir) if run_dir else "scratch"
    folder = out / row / f"seed{seed}"
    figures: dict[str, float] = {}
    for task in row_tasks(row, fitting_vqa, default_vqa):
        if task == FITTING_VQA_TASK:
            result = finetune(folder, task, init, extra=[*TASK_BUDGETS["vqa"], f"run.seed={seed}"], task="vqa",
                              source=FITTING_VQA_RECIPE)
            figures.update(vqa_fit_overall=result["test"]["overall"], vqa_fit_open=result["test"]["open"],
                           vqa_fit_closed=result["test"]["closed"], vqa_fit_train=result["train_fit"]["overall"])
            continue
        source = M3AE_VQA_RECIPE if task == "vqa" else None
        test = finetune(folder, task, init, extra=[f"run.seed={seed}"], source=source)["test"]
        if task == "vqa":
            figures.update(vqa_overall=test["overall"], vqa_open=test["open"], vqa_closed=test["closed"])
        elif task == "retrieval_zero_shot":
            figures.update(zs_i2t_r1=test["i2t"]["R@1"], zs_t2i_r1=test["t2i"]["R@1"],
                           zs_chance_r1=test["i2t"]["chance@1"])
        elif task == "mm_cls":
            figures["mm_cls_accuracy"] = test["accuracy"]
        else:
            figures["probe10_auc"] = test["macro_auc"]
    if run_dir is not None:
        grounding = json.loads((run_dir / "summary.json").read_text()).get("grounding", {})
        pointing, gap = grounding.get("pointing_game", {}), grounding.get("mlm_image_gap", {})
        for column, value in (("pointing_local", pointing.get("hit_rate")), ("pointing_chance", pointing.get("chance")),
                              ("pointing_fusion", pointing.get("fusion_attention")), ("mlm_gap", gap.get("gap"))):
            if value is not None:
                figures[column] = value
    return {name: 100 * value for name, value in figures.items()}


def seed_seconds(row: str, seed: int, out: Path) -> float:
    """Seconds one (row, seed) took: its pre-training's train_seconds plus every fine-tune's seconds."""
    folder = out / row / f"seed{seed}"
    total = 0.0
    summary = folder / "pretrain" / "summary.json"
    if summary.exists():
        total += json.loads(summary.read_text()).get("train_seconds", 0.0)
    for metrics in folder.glob("*/metrics.json"):
        total += json.loads(metrics.read_text()).get("seconds", 0.0)
    return round(total, 1)


def _missing_heads(row: str) -> set[str]:
    """"zs" when the row's pre-training has no GLA-global head (no zero-shot retrieval)."""
    spec = ROWS[row]
    return {"zs"} if spec and (spec[0].endswith("_m3ae") or "objectives.global_align=0" in spec[1]) else set()


def summarise(per_seed: list[dict[str, float]]) -> dict[str, dict]:
    return {column: mean_sd([f[column] for f in per_seed]) for column in COLUMNS if all(column in f for f in per_seed)}


def table(rows: dict[str, dict]) -> str:
    shown = ("vqa_overall", "vqa_open", "vqa_closed", "zs_i2t_r1", "zs_t2i_r1", "mm_cls_accuracy", "probe10_auc",
             "pointing_local", "mlm_gap")
    if any("vqa_fit_overall" in entry for entry in rows.values()):
        shown = (*shown[:3], "vqa_fit_overall", "vqa_fit_train", *shown[3:])
    lines = ["| row | " + " | ".join(shown) + " |", "|---|" + "---|" * len(shown)]
    for name, entry in rows.items():
        cells = [("n/a" if c not in entry else f"{entry[c]['mean']:.1f}" if len(entry[c]["values"]) == 1
                  else f"{entry[c]['mean']:.1f} ± {entry[c]['sd']:.1f}") for c in shown]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run_units(units: list[tuple[str, int]], work, jobs: int = 1) -> dict[tuple[str, int], dict]:
    """``work(row, seed)`` for every unit, in this process (``jobs`` 1) or in ``jobs`` spawned worker
    processes, each limited to ``usable cores // jobs`` intra-op threads (``OMP_NUM_THREADS``, which
    mpma's thread choice honours). Units are started in the given order and a line is printed as each
    finishes; a unit that fails stops the command once the running ones finish (what finished stays on
    disk and is reused next time).

    Returns:
        {(row, seed): work's result}, in the order of ``units``.
    """
    started = time.perf_counter()

    def done(count: int, unit: tuple[str, int]) -> None:
        print(f"[{count}/{len(units)}] {unit[0]} seed {unit[1]} finished, {time.perf_counter() - started:.0f} s "
              "into the command", flush=True)

    if jobs <= 1:
        results = {}
        for count, unit in enumerate(units, 1):
            results[unit] = work(*unit)
            done(count, unit)
        return results
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    previous = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = str(max(1, cores // jobs))  # inherited by the spawned workers
    try:
        with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = {pool.submit(work, *unit): unit for unit in units}
            results = {}
            for count, future in enumerate(as_completed(futures), 1):
                results[futures[future]] = future.result()
                done(count, futures[future])
            return {unit: results[unit] for unit in units}
    finally:
        if previous is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = previous


def _seed_major(units: list[tuple[str, int]]) -> list[tuple[str, int]]:
    """Every row's first seed before any row's second, and within a seed the longest pre-training first
    (scratch, with nothing to pre-train, last): a stopped command has whole seeds of every row, and the
    streams end close together."""
    from mpma.config import load_config

    def budget(row: str) -> int:
        return 0 if ROWS[row] is None else load_config(*ROWS[row]).optim.steps
    return sorted(units, key=lambda unit: (unit[1], -budget(unit[0])))


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("runs/ablation"))
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--rows", nargs="+", choices=list(ROWS), default=list(DEFAULT_ROWS),
                        help=f"default: {' '.join(DEFAULT_ROWS)}")
    parser.add_argument("--results", type=Path, help="also write the JSON here (e.g. docs/results/ablation.json)")
    parser.add_argument("--fitting-vqa", action="store_true",
                        help=f"also fine-tune VQA with the {FITTING_VQA_RECIPE} recipe at the same budget (vqa_fit_* columns)")
    parser.add_argument("--skip-default-vqa", action="store_true",
                        help=f"do not fine-tune VQA with M3AE's recipe, {M3AE_VQA_RECIPE} (its vqa_* columns stay empty; with "
                             "--fitting-vqa this saves ~10 min per seed on a 1-thread stream)")
    parser.add_argument("--collect", action="store_true",
                        help="train nothing: summarise the seeds that have finished under --out (any number per row)")
    parser.add_argument("--jobs", type=int, default=1,
                        help="run the (row, seed) units in this many processes, each with cores // jobs threads "
                             "(2 on a 2-core machine: two 1-thread streams)")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    default_vqa = not args.skip_default_vqa
    seeds = {row: finished_seeds(row, args.out, args.fitting_vqa, default_vqa) if args.collect else list(range(args.seeds))
             for row in args.rows}
    if args.collect:
        empty = [row for row in args.rows if not seeds[row]]
        if empty:
            parser.error(f"--collect: no finished seed under {args.out} for {', '.join(empty)}")
    if args.jobs < 1:
        parser.error(f"--jobs: expected at least 1, got {args.jobs}")
    units = [(row, seed) for row in args.rows for seed in seeds[row]]
    figures = run_units(units if args.collect else _seed_major(units),
                        partial(seed_figures, out=args.out, fitting_vqa=args.fitting_vqa, default_vqa=default_vqa),
                        1 if args.collect else args.jobs)
    rows = {}
    for row in args.rows:
        rows[row] = summarise([figures[row, seed] for seed in seeds[row]])
        print(json.dumps({row: rows[row]}), flush=True)
    wall = round(time.perf_counter() - started, 1)
    seconds = {row: [seed_seconds(row, seed, args.out) for seed in seeds[row]] for row in args.rows}
    report = {"rows": rows, "seeds": {row: seeds[row] for row in args.rows},
              "overrides": {r: ROWS[r] for r in args.rows}, "wall_time_s": wall,
              "run_seconds": seconds, "run_seconds_total": round(sum(map(sum, seconds.values())), 1),
              "host": {"cpu_features": cpu_features()}, "units": "percent; mean and sd over the seeds",
              "command": "python benchmarks/ablation.py " + " ".join(argv if argv is not None else sys.argv[1:])}
    text = json.dumps(report, indent=2) + "\n"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "ablation.json").write_text(text)
    if args.results:
        args.results.write_text(text)
    print(table(rows))
    print(f"\nwall time {wall:.0f} s on {cpu_features()}")
    return report


if __name__ == "__main__":
    main()
