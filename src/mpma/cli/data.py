"""``mpma data prepare | validate | stats``: registered on the ``mpma data`` group by :mod:`mpma.cli`.

Imports of the data stack happen inside the command functions (and inside the lazily formatted
help of ``prepare``), so ``mpma --help`` stays instant.
"""

from __future__ import annotations

import argparse
import json
import sys
import textwrap
from pathlib import Path


class _PrepareHelp(argparse.RawDescriptionHelpFormatter):
    """Appends the datasets, their layouts and options to ``prepare --help`` when it is shown."""

    def format_help(self) -> str:
        from mpma.data.sources.adapters import ADAPTERS

        lines = ["", "datasets (options go as -o key=value):"]
        for name, cls in ADAPTERS.items():
            kind = cls.kind if isinstance(cls.kind, str) else "pretrain/classification/vqa"
            lines.append(f"  {name}  [{kind}]  {cls.source}")
            opts = ", ".join(f"{k}={d!r}" for k, (_, d) in cls.options().items())
            if opts:
                lines += textwrap.wrap(opts, 96, initial_indent="      options: ",
                                       subsequent_indent="        ")
        lines.append("\nrun `mpma data prepare <dataset> --layout` to see a dataset's expected "
                     "folder layout; docs/datasets.md has all of them.")
        return super().format_help() + "\n".join(lines) + "\n"


def cmd_prepare(args: argparse.Namespace) -> int:
    from mpma.data.sources.adapters import ADAPTERS, LayoutError, parse_options
    from mpma.data.sources.prepare import PrepareError, prepare

    if args.layout:
        cls = ADAPTERS.get(args.dataset)
        if cls is None:
            print(f"error: unknown dataset {args.dataset!r}; choose one of "
                  f"{', '.join(ADAPTERS)}", file=sys.stderr)
            return 2
        from mpma.data.sources.published import registry_lines

        print(f"{args.dataset}: {cls.source}\n{cls.layout}\n\n{textwrap.dedent(cls.__doc__ or '')}")
        print("published counts (every prepare run is compared with them):")
        print("\n".join(registry_lines(cls.published)))
        return 0
    if not args.src or not args.out:
        print("error: prepare needs --src <release folder> and --out <folder>", file=sys.stderr)
        return 2
    try:
        result = prepare(
            args.dataset, args.src, args.out, options=parse_options(args.option),
            pack=args.pack, image_size=args.image_size, strict=args.strict,
            workers=args.workers, progress=not args.no_progress,
            shard_mb=args.shard_mb, fresh=args.fresh)
    except (LayoutError, PrepareError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(result.summary())
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    from mpma.data.sources.validate import validate_manifest

    labels = [x.strip() for x in args.labels.split(",")] if args.labels else None
    try:
        report = validate_manifest(args.manifest, args.kind, known_labels=labels,
                                   images=not args.no_images, workers=args.workers,
                                   progress=not args.no_progress)
    except (FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    bad = len(report.rejects)
    print(f"{args.manifest} ({report.kind}): {report.total:,} records, {report.kept:,} ok, "
          f"{bad:,} with problems")
    for reason, n in report.counts().most_common():
        print(f"  {n:>9,}  {reason}")
    for reject in report.rejects[: args.show]:
        print(f"  {reject.source}  id={reject.id}  {reject.reason}: {reject.detail}")
    if args.rejects:
        Path(args.rejects).write_text("".join(r.to_json() + "\n" for r in report.rejects),
                                      encoding="utf-8")
        print(f"  all problems written to {args.rejects}")
    return 1 if bad else 0


def _format_stats(stats: dict) -> str:
    lines = [f"{stats['manifest']} ({stats['kind']}): {stats['records']:,} records",
             "  per split: " + ", ".join(f"{k} {v:,}" for k, v in sorted(stats["splits"].items()))]
    for name, summary in stats["words"].items():
        if summary:
            lines.append(f"  {name} words: " + ", ".join(f"{k} {v}" for k, v in summary.items()))
    for split, types in stats.get("answer_types", {}).items():
        lines.append(f"  answer types [{split}]: " + ", ".join(f"{k} {v:,}" for k, v in types.items()))
    if "distinct_answers" in stats:
        lines.append(f"  distinct answers: {stats['distinct_answers']:,}; most frequent: "
                     + ", ".join(f"{k!r} {v}" for k, v in stats["top_answers"].items()))
    for split, labels in stats.get("labels", {}).items():
        lines.append(f"  labels [{split}]: " + ", ".join(f"{k} {v:,}" for k, v in labels.items()))
    return "\n".join(lines)


def cmd_stats(args: argparse.Namespace) -> int:
    from mpma.data.jsonl import ManifestError
    from mpma.data.sources.validate import manifest_stats

    try:
        stats = manifest_stats(args.manifest, args.kind)
    except (ManifestError, FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(json.dumps(stats, indent=1) if args.json else _format_stats(stats))
    return 0


def register(data: argparse._SubParsersAction) -> None:
    """Add ``prepare``, ``validate`` and ``stats`` to the ``mpma data`` sub-command group."""
    kinds = ("pretrain", "vqa", "classification")
    prep = data.add_parser(
        "prepare", formatter_class=_PrepareHelp,
        help="turn an original dataset release into a validated manifest (+ rejects, + shards)",
        description="Read a dataset exactly as downloaded, check every record (image decodes, "
                    "text non-empty, label known, id unique) and write manifest.jsonl, "
                    "rejects.jsonl and prepare.json to --out. A bad record is reported, never "
                    "fatal (unless --strict). The kept counts per split are compared with the "
                    "counts of the dataset's paper or release. Rerunning into the same --out "
                    "resumes.")
    prep.add_argument("dataset", help="dataset name (listed below)")
    prep.add_argument("--src", help="the release folder as downloaded")
    prep.add_argument("--out", help="output folder")
    prep.add_argument("-o", "--option", action="append", metavar="KEY=VALUE",
                      help="dataset option, repeatable (e.g. -o uncertain=zeros)")
    prep.add_argument("--pack", action="store_true",
                      help="also write tar shards of pre-resized images for fast streaming")
    prep.add_argument("--image-size", type=int, default=256,
                      help="shorter side of packed images, never upscaled (default: 256)")
    prep.add_argument("--shard-mb", type=float, default=64.0, help="shard size bound (default 64)")
    prep.add_argument("--strict", action="store_true",
                      help="fail if any record is rejected or a kept count differs from a "
                           "verified published count (no manifest is written)")
    prep.add_argument("--workers", type=int, default=None,
                      help="image decoding processes (default: all usable CPUs)")
    prep.add_argument("--fresh", action="store_true",
                      help="ignore cached image checks and shards of an earlier run in --out")
    prep.add_argument("--layout", action="store_true", help="print the dataset's expected layout")
    prep.add_argument("--no-progress", action="store_true", help="hide progress bars")
    prep.set_defaults(func=cmd_prepare)

    val = data.add_parser("validate", help="check every record of a manifest (exit 1 on problems)")
    val.add_argument("manifest", help="a JSONL manifest")
    val.add_argument("--kind", choices=kinds, help="record kind (default: inferred)")
    val.add_argument("--labels", help="comma-separated known labels (classification)")
    val.add_argument("--no-images", action="store_true", help="skip decoding the images")
    val.add_argument("--rejects", help="write every problem as JSONL to this file")
    val.add_argument("--show", type=int, default=10, help="problems to print (default 10)")
    val.add_argument("--workers", type=int, default=None, help="image decoding processes")
    val.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    val.set_defaults(func=cmd_validate)

    stats = data.add_parser("stats", help="counts per split, answer types, labels, text lengths")
    stats.add_argument("manifest", help="a JSONL manifest")
    stats.add_argument("--kind", choices=kinds, help="record kind (default: inferred)")
    stats.add_argument("--json", action="store_true", help="print JSON")
    stats.set_defaults(func=cmd_stats)


def main(argv: list[str] | None = None) -> int:
    """Run ``mpma data <prepare|validate|stats> ...`` standalone (``python -m mpma.cli.data``)."""
    parser = argparse.ArgumentParser(prog="mpma data")
    register(parser.add_subparsers(dest="data_command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
