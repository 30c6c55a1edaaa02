"""``mpma visualize {curves,reconstruct,alignment}`` and ``mpma report``.

:func:`register` adds the commands to the ``mpma`` parser; matplotlib, torch and the model code are
imported inside the command functions so ``mpma --help`` stays instant. Every command writes PNGs
(matplotlib, Agg canvas, no display needed) and prints their paths.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(commands) -> None:
    """Add ``visualize`` and ``report`` to the ``mpma`` sub-command parsers."""
    visualize = commands.add_parser("visualize", help="figures: training curves, MAE reconstructions, word->patch maps")
    sub = visualize.add_subparsers(dest="visualize_command", required=True)

    curves = sub.add_parser("curves", help="every loss term and metric of log.jsonl over steps (raw + smoothed), "
                            "lr, samples/s; several --run overlaid")
    curves.add_argument("--run", action="append", required=True, help="run folder (or its log.jsonl); repeat to overlay")
    curves.add_argument("--label", action="append", help="legend label per --run (default: the folder names)")
    curves.add_argument("--smooth", type=float, default=0.6, help="EMA weight of the bold line, 0 = raw only (default 0.6)")
    curves.add_argument("--out", help="PNG path (default: RUN/curves.png for one run, curves.png for several)")
    curves.set_defaults(func=cmd_curves)

    recon = sub.add_parser("reconstruct", help="original / masked / reconstruction / pasted grid per image")
    recon.add_argument("--model", required=True, help="pre-training run folder or a model folder with the MIM decoder")
    recon.add_argument("--image", action="append", help="image file (repeat for several)")
    recon.add_argument("--text", action="append", help="text paired with each --image (default: none)")
    recon.add_argument("--manifest", help="JSONL with 'image' (and 'text') per line: the first --n records")
    recon.add_argument("--synthrad", type=int, metavar="N", help="N held-out synthrad cases with their reports")
    recon.add_argument("--n", type=int, default=4, help="records taken from --manifest (default 4)")
    recon.add_argument("--mask-seed", type=int, default=0, help="seed of the patch mask (default 0)")
    recon.add_argument("--mask-ratio", type=float, help="share of patches masked (default: the model's)")
    recon.add_argument("--out", default="reconstruct.png", help="PNG path (default: reconstruct.png)")
    recon.set_defaults(func=cmd_reconstruct)

    align = sub.add_parser("alignment", help="GLA-local word->patch maps and fusion attention over the image; "
                           "--eval: the synthrad pointing game")
    align.add_argument("--model", required=True, help="model folder, pre-training or fine-tuning run folder")
    align.add_argument("--image", help="image file")
    align.add_argument("--text", help="report text (a question for a VQA model)")
    align.add_argument("--words", nargs="+", help="words to map (default: every content word)")
    align.add_argument("--synthrad", type=int, metavar="INDEX",
                       help="use held-out synthrad case INDEX (image, report and lesion boxes) instead of --image/--text")
    align.add_argument("--eval", action="store_true", help="pointing game on held-out synthrad cases: hit rate vs chance")
    align.add_argument("--n", type=int, default=300, help="cases for --eval (default 300)")
    align.add_argument("--json", help="--eval: also write the result as JSON to this file")
    align.add_argument("--out", help="PNG path (default: alignment.png; with --eval: pointing.png, a few examples)")
    align.set_defaults(func=cmd_alignment)

    report = commands.add_parser("report", help="HTML page + markdown twin of a run: config, curves, metrics, examples")
    report.add_argument("--run", required=True, help="pre-training or fine-tuning run folder")
    report.add_argument("--out", help="output folder (default: RUN/report)")
    report.add_argument("--examples", type=int, default=3, help="reconstructions / alignment maps shown (default 3)")
    report.set_defaults(func=cmd_report)


def _load(path: str):
    """A model folder or run folder, loaded on the CPU."""
    from mpma.hub import load_model

    return load_model(path)


def cmd_curves(args: argparse.Namespace) -> int:
    """``mpma visualize curves``: the log of one run, or several overlaid."""
    from mpma.viz.curves import CURVES_PNG, plot_runs

    runs = [Path(r).parent if Path(r).is_file() else Path(r) for r in args.run]
    out = args.out or (runs[0] / CURVES_PNG if len(runs) == 1 else CURVES_PNG)
    print(plot_runs(runs, out, args.label, args.smooth))
    return 0


def _manifest_records(path: str, n: int) -> tuple[list[str], list[str]]:
    """(image paths, texts) of the first ``n`` records of a JSONL manifest (paths resolved against its folder)."""
    from mpma.data.jsonl import read_jsonl

    manifest = Path(path)
    images, texts = [], []
    for number, record in read_jsonl(manifest):
        if not isinstance(record.get("image"), str):
            raise ValueError(f"{manifest}:{number}: no 'image' path")
        image = Path(record["image"])
        images.append(str(image if image.is_absolute() else manifest.parent / image))
        texts.append(record.get("text") or record.get("question") or "")
        if len(images) == n:
            break
    return images, texts


def cmd_reconstruct(args: argparse.Namespace) -> int:
    """``mpma visualize reconstruct``: images from --image, --manifest or --synthrad."""
    from mpma.viz.reconstruct import reconstruct_files

    sources = sum(bool(x) for x in (args.image, args.manifest, args.synthrad))
    if sources != 1:
        raise ValueError("pass one of --image PATH (repeatable), --manifest FILE.jsonl or --synthrad N")
    loaded = _load(args.model)
    names = None
    if args.image:
        texts = args.text or [""] * len(args.image)
        if len(texts) == 1 and len(args.image) > 1:
            texts = texts * len(args.image)
        images = args.image
        names = [Path(p).name for p in images]
    elif args.manifest:
        images, texts = _manifest_records(args.manifest, args.n)
        names = [Path(p).name for p in images]
    else:
        import torch

        from mpma.viz.common import case_tensor, synthrad_cases

        cases = synthrad_cases(loaded.config, args.synthrad, image_size=int(loaded.preprocess["image_size"]))
        images = torch.stack([case_tensor(cases[i], loaded.preprocess) for i in range(len(cases))])
        texts = [cases[i].report for i in range(len(cases))]
        names = [f"synthrad test case {i}" for i in range(len(cases))]
    print(reconstruct_files(loaded, images, texts, args.out, args.mask_ratio, args.mask_seed, names))
    return 0


def cmd_alignment(args: argparse.Namespace) -> int:
    """``mpma visualize alignment``: word -> patch maps of one image and text, or (--eval) the pointing game."""
    from mpma.eval.pointing import evaluate_pointing
    from mpma.viz import alignment as A

    loaded = _load(args.model)
    if args.eval:
        result = evaluate_pointing(loaded, n=args.n, examples=6)
        print(A.format_pointing(result))
        examples = result.pop("examples")
        if examples:
            print(A.plot_pointing_examples(examples, args.out or "pointing.png"))
        if args.json:
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            Path(args.json).write_text(json.dumps({"model": str(args.model), **result}, indent=2, default=float) + "\n")
        return 0
    boxes = None
    if args.synthrad is not None:
        from mpma.viz.common import case_tensor, synthrad_cases

        case = synthrad_cases(loaded.config, args.synthrad + 1, image_size=int(loaded.preprocess["image_size"]))[-1]
        image, text, boxes = case_tensor(case, loaded.preprocess)[None], args.text or case.report, list(case.boxes)
    elif args.image and args.text:
        image, text = args.image, args.text
    else:
        raise ValueError("pass --image PATH --text TEXT, --synthrad INDEX, or --eval")
    path, info = A.alignment_figure(loaded, image, text, args.out or "alignment.png", args.words, boxes)
    if "answer" in info:
        print(f"answer: {info['answer']['answer']} ({info['answer']['probability']:.3f})")
    print(path)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    """``mpma report``: the model-dependent parts are computed by the pipeline, the page drawn by mpma.viz.report."""
    from mpma.pipelines.report_examples import write_run_report

    html, markdown = write_run_report(args.run, args.out, args.examples)
    print(html)
    print(markdown)
    return 0
