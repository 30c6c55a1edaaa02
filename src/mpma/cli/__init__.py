"""``mpma`` command line. Thin: parses arguments, builds configs, calls the library.

torch and transformers are imported inside the command functions so ``mpma --help`` is instant.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


OVERWRITE_HELP = ("run even if --out holds another run, this run finished, or other files: the files mpma runs "
                  "write there (config.json, tokenizer/, log.jsonl, checkpoints/, best/, metrics, summary, curves, "
                  "report/) are deleted first; every other file is kept")


def _add_config_arguments(parser: argparse.ArgumentParser, default_preset: str = "tiny") -> None:
    from mpma.config import preset_names  # no torch: `mpma --help` stays instant

    parser.add_argument("--config", default=default_preset,
                        help=f"preset name ({', '.join(preset_names())}) or a YAML file (default: {default_preset})")
    parser.add_argument("overrides", nargs="*", metavar="key.sub=value",
                        help="config overrides, e.g. optim.steps=200 vision.mask_ratio=0.6")


def cmd_pretrain(args: argparse.Namespace) -> int:
    from mpma.config import load_config
    from mpma.pipelines.pretraining import run_pretraining

    # --resume: the run's config.json decides; overrides may change optim.* / run.* only (checked there)
    config = None if args.resume else load_config(args.config, args.overrides)
    out = Path(args.out) if args.out else Path("runs") / "pretrain"
    summary = run_pretraining(config, out, resume=args.resume, progress=not args.no_progress, overwrite=args.overwrite,
                              resume_overrides=args.overrides if args.resume else ())
    if summary:
        print(_format_pretrain_summary(summary, out))
    return 0


def _format_pretrain_summary(summary: dict, out: Path) -> str:
    lines = [f"run folder: {out}", f"{'loss term':<14}{'first 5%':>10}{'last 5%':>10}"]
    for term, values in summary["losses"].items():
        lines.append(f"{term:<14}{values['first']:>10.4f}{values['last']:>10.4f}")
    retrieval = summary.get("retrieval", {})
    if "i2t" in retrieval:
        lines.append(f"zero-shot retrieval on {retrieval['n_pairs']} held-out pairs (hit = same finding set):")
        for direction in ("i2t", "t2i"):
            r = retrieval[direction]
            lines.append(
                f"  {direction}: " + "  ".join(f"R@{k} {r[f'R@{k}']:.3f} (chance {r[f'chance@{k}']:.3f})" for k in (1, 5, 10))
            )
    elif retrieval:
        lines.append(f"retrieval: {retrieval.get('skipped')}")
    grounding = summary.get("grounding")
    if grounding:
        pointing, gap = grounding["pointing_game"], grounding.get("mlm_image_gap")
        local = "n/a" if pointing["hit_rate"] is None else f"{pointing['hit_rate']:.3f}"
        lines.append(f"grounding at step {grounding['step']}: pointing game GLA-local {local}, fusion attention "
                     f"{pointing['fusion_attention']:.3f} (chance {pointing['chance']:.3f}, {pointing['n']} findings)")
        if gap:
            lines.append(f"  masked content words: {gap['own']:.3f} with the own image, {gap['shuffled']:.3f} with a "
                         f"shuffled one (gap {gap['gap']:+.3f})")
    return "\n".join(lines)


def cmd_data_synth(args: argparse.Namespace) -> int:
    from mpma.data.synthrad import write_synthrad

    paths = write_synthrad(args.out, n=args.n, seed=args.seed, image_size=args.image_size)
    for name, path in paths.items():
        print(f"{name}: {path}")
    return 0


def cmd_tokenizer_train(args: argparse.Namespace) -> int:
    from mpma.data.corpora import read_corpus
    from mpma.data.text import train_tokenizer

    texts = read_corpus(args.corpus)
    if not texts:
        raise SystemExit(f"error: no text found in {args.corpus}")
    tokenizer = train_tokenizer(texts, args.out, vocab_size=args.vocab_size, lowercase=not args.cased)
    print(f"trained a WordPiece tokenizer of {len(tokenizer)} tokens on {len(texts)} texts -> {args.out}")
    return 0


def cmd_tokenizer_coverage(args: argparse.Namespace) -> int:
    from mpma.data.corpora import corpus_texts
    from mpma.data.text import load_tokenizer, unknown_token_rate

    folder = Path(args.tokenizer)
    tokenizer = load_tokenizer(folder / "tokenizer" if (folder / "tokenizer").is_dir() else folder)  # or a run folder
    reports = {spec: unknown_token_rate(tokenizer, corpus_texts(spec, train_only=not args.all_splits), top_k=args.top)
               for spec in args.corpus}
    if args.json:
        print(json.dumps(reports, indent=2))
        return 0
    for spec, r in reports.items():
        print(f"{spec}: {r['rate']:.2%} [UNK] ({r['unk_tokens']} of {r['tokens']} tokens; {r['texts_with_unk']} of "
              f"{r['texts']} texts; {r['tokens_per_word']:.2f} tokens per word; "
              f"{r['distinct_unknown_words']} distinct unknown words)")
        if r["top_unknown_words"]:
            print("  most frequent unknown words: " + ", ".join(f"{w} ({n})" for w, n in r["top_unknown_words"]))
    return 0


def cmd_finetune(args: argparse.Namespace) -> int:
    from mpma.pipelines.finetuning import finetune_config, run_finetune
    from mpma.tasks.base import get_task

    get_task(args.task)  # an unknown task is an error naming the registered ones
    config = finetune_config(args.task, args.init, args.data, args.config, args.overrides)
    out = Path(args.out) if args.out else Path("runs") / f"{args.task}-{Path(args.init).name}"
    result = run_finetune(config, out, progress=not args.no_progress, overwrite=args.overwrite)
    if result:
        print((out / "metrics.md").read_text())
        print(f"run folder: {out}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from mpma.pipelines.finetuning import evaluate_run

    from mpma.data.sources.identity import describe_identity

    metrics = evaluate_run(args.run, args.split)
    print(json.dumps(metrics, indent=2, default=float))
    print(f"{args.split} set: {describe_identity(metrics['test_set'])}")
    return 0


def cmd_quickstart(args: argparse.Namespace) -> int:
    from mpma.pipelines.quickstart import run_quickstart

    table = run_quickstart(args.out, args.overrides, progress=not args.no_progress)
    print(table)
    print(f"\nfolders and results.md under {args.out}")
    return 0


def _add_training_commands(commands) -> None:
    """quickstart, pretrain, finetune, evaluate."""
    quick = commands.add_parser("quickstart", help="pre-train tiny on synthrad, fine-tune VQA + retrieval from it "
                                "and from scratch, print one table (~14 minutes on 2 CPU cores)")
    quick.add_argument("--out", default="runs/quickstart", help="output folder (default: runs/quickstart); "
                       "re-running continues where it stopped")
    quick.add_argument("--no-progress", action="store_true")
    quick.add_argument("overrides", nargs="*", metavar="key.sub=value", help="pre-training overrides")
    quick.set_defaults(func=cmd_quickstart)

    pretrain = commands.add_parser("pretrain", help="pre-train MPMA (default: synthrad + tiny, ~5 minutes on 2 CPU cores)")
    _add_config_arguments(pretrain)
    pretrain.add_argument("--out", help="run folder (default: runs/pretrain)")
    pretrain.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --out that "
                          "can be read; key=value overrides may change optim.* and run.* (e.g. a lower optim.lr)")
    pretrain.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    pretrain.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    pretrain.set_defaults(func=cmd_pretrain)

    finetune = commands.add_parser("finetune", help="fine-tune and evaluate a downstream task")
    # validated against the task registry when the command runs (importing it here would slow --help)
    finetune.add_argument("task", help="the task, e.g. vqa, retrieval or img_cls (an unknown name lists every task "
                                       "registered in mpma.tasks)")
    finetune.add_argument("--init", default="scratch", help="'scratch', a pre-training run folder, one of its "
                          "checkpoints/step_N folders, or a model folder (default: scratch)")
    finetune.add_argument("--data", help="synthrad (default), vqa-rad:PATH, or a manifest path")
    finetune.add_argument("--config", help="YAML file with fine-tuning settings (optional)")
    finetune.add_argument("--out", help="run folder (default: runs/<task>-<init>)")
    finetune.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    finetune.add_argument("--no-progress", action="store_true")
    finetune.add_argument("overrides", nargs="*", metavar="key.sub=value",
                          help="e.g. epochs=5 optim.lr=1e-4 head.vqa_loss=ce data.fraction=0.1 preset=small")
    finetune.set_defaults(func=cmd_finetune)

    evaluate = commands.add_parser("evaluate", help="evaluate a fine-tuning run's best weights on a split")
    evaluate.add_argument("--run", required=True)
    evaluate.add_argument("--split", default="test", choices=["train", "val", "test"])
    evaluate.set_defaults(func=cmd_evaluate)


def _add_data_commands(commands) -> None:
    """data {prepare, validate, stats, synth}."""
    from mpma.cli.data import register as register_data_commands

    data = commands.add_parser("data", help="datasets").add_subparsers(dest="data_command", required=True)
    register_data_commands(data)  # prepare, validate, stats
    synth = data.add_parser("synth", help="write synthrad images and JSONL manifests to a folder")
    synth.add_argument("--out", required=True)
    synth.add_argument("--n", type=int, default=1000, help="number of cases")
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--image-size", type=int, default=64)
    synth.set_defaults(func=cmd_data_synth)


def _add_tokenizer_commands(commands) -> None:
    """tokenizer {train, coverage}."""
    tok = commands.add_parser("tokenizer", help="tokenizers").add_subparsers(dest="tokenizer_command", required=True)
    train = tok.add_parser("train", help="train a WordPiece tokenizer offline on a text file or JSONL manifest")
    train.add_argument("--corpus", required=True, help="text file (one text per line; 'ID<TAB>text' accepted) or JSONL")
    train.add_argument("--out", required=True, help="output folder (loadable by transformers.AutoTokenizer)")
    train.add_argument("--vocab-size", type=int, default=8000)
    train.add_argument("--cased", action="store_true", help="keep case (default: lower-case)")
    train.set_defaults(func=cmd_tokenizer_train)
    coverage = tok.add_parser("coverage", help="share of [UNK] tokens (and the unknown words) of corpora "
                              "under a tokenizer")
    coverage.add_argument("--tokenizer", required=True, help="tokenizer folder, or a run folder holding tokenizer/")
    coverage.add_argument("--corpus", required=True, nargs="+", metavar="SPEC",
                          help="a JSONL manifest (train split), a text file, a JSON list (trainset.json), "
                               "vqa-rad:FOLDER (train questions) or roco:PATH (captions.txt)")
    coverage.add_argument("--all-splits", action="store_true",
                          help="read every split of manifests and accept testset.json (measuring only)")
    coverage.add_argument("--top", type=int, default=20, help="unknown words to list (default: 20)")
    coverage.add_argument("--json", action="store_true", help="print the reports as JSON")
    coverage.set_defaults(func=cmd_tokenizer_coverage)


def build_parser() -> argparse.ArgumentParser:
    from mpma.cli.demo import register as register_demo_command
    from mpma.cli.models import register as register_model_commands
    from mpma.cli.viz import register as register_viz_commands

    parser = argparse.ArgumentParser(prog="mpma", description="MPMA medical vision-language pre-training")
    commands = parser.add_subparsers(dest="command", required=True)
    _add_training_commands(commands)
    _add_data_commands(commands)
    _add_tokenizer_commands(commands)
    register_model_commands(commands)  # convert, predict
    register_viz_commands(commands)  # visualize, report
    register_demo_command(commands)  # demo (the Gradio page; gradio imported only when it runs)
    return parser


def main(argv: list[str] | None = None) -> int:
    from mpma.config import ConfigError

    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # key=value overrides may come after options (argparse stops collecting positionals at an option).
    stray = [item for item in extra if item.startswith("-") or "=" not in item]
    if stray or (extra and not hasattr(args, "overrides")):
        parser.error(f"unrecognized arguments: {' '.join(stray or extra)}")
    if extra:
        args.overrides = list(args.overrides) + extra
    try:
        return args.func(args)
    except (ConfigError, FileNotFoundError, FileExistsError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
