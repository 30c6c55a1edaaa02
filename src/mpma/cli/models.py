"""``mpma convert`` and ``mpma predict {vqa,retrieve,zero-shot,classify}``.

:func:`register` adds the commands to the ``mpma`` parser; torch, transformers and the model code
are imported inside the command functions so ``mpma --help`` stays instant.

Batch mode reads a JSONL manifest (one object per line; ``image`` relative to the manifest or
absolute; ``question`` / ``text`` / ``id`` as the command needs) and writes one JSON line per record.
A record that fails (a line that is not UTF-8 or not JSON, an unreadable or oversized image, a missing
field) gets ``{"id", "line", "error"}`` and the rest go on; the exit status is then 1 (``retrieve``
leaves a broken line out of its candidates, says so on stderr and exits 1).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def parameter_count(text: str) -> int:
    """argparse type: a positive parameter count, ``500000000`` or ``5e8``."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of parameters such as 500000000 or 5e8, got {text!r}") from None
    if not (value >= 1 and value == int(value)):
        raise argparse.ArgumentTypeError(f"expected a positive whole number of parameters, got {text!r}")
    return int(value)


MAX_PARAMS_HELP = ("refuse a model whose config describes more parameters than this (e.g. 5e8), before it is built; "
                   "a model larger than the memory available is always refused")


def register(commands) -> None:
    """Add ``convert`` and ``predict`` to the ``mpma`` sub-command parsers."""
    _add_convert(commands)
    _add_predict(commands)


def _add_convert(commands) -> None:
    convert = commands.add_parser(
        "convert", help="turn CLIP / BERT-family folders (or a run folder) into an mpma model folder",
        description="Build an mpma model folder (config.json, model.safetensors, tokenizer/, MODEL_CARD.md) from local "
                    "weights: --vision (Hugging Face CLIP folder, OpenAI/open_clip state dict or mpma model) and/or "
                    "--text (a BERT-family Hugging Face folder) on top of --config; or export --run (a pre-training or "
                    "fine-tuning run folder). Prints the key-mapping report; nothing is downloaded.")
    convert.add_argument("--out", help="output model folder (required except with --upgrade)")
    convert.add_argument("--upgrade", metavar="DIR", help="rewrite a run folder written by mpma 0.1.0 in the current "
                         "format, in place (checkpoints and best/ become model folders; --resume works again)")
    convert.add_argument("--run", help="export this pre-training / fine-tuning run folder instead")
    convert.add_argument("--config", default="base", help="preset or YAML for the architecture (default: base)")
    convert.add_argument("--vision", help="CLIP vision weights: HF folder, OpenAI/open_clip .safetensors/.bin, or mpma model")
    convert.add_argument("--text", help="BERT-family Hugging Face folder (BERT, RoBERTa, PubMedBERT, MiniLM, ...)")
    convert.add_argument("--tokenizer", help="tokenizer folder (default: the --text folder)")
    convert.add_argument("--image-size", type=int, help="image size of the converted ViT (default: the preset's; "
                         "position embeddings are interpolated)")
    convert.add_argument("--max-params", type=parameter_count, metavar="N", help=MAX_PARAMS_HELP)
    convert.add_argument("overrides", nargs="*", metavar="key.sub=value", help="config overrides")
    convert.set_defaults(func=cmd_convert)


def _add_predict(commands) -> None:
    predict = commands.add_parser("predict", help="run a saved model on images and texts").add_subparsers(
        dest="predict_command", required=True)

    def common(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--model", required=True, help="model folder (save_pretrained / mpma convert) or "
                            "fine-tuning run folder")
        parser.add_argument("--manifest", help="JSONL manifest for batch mode")
        parser.add_argument("--out", help="JSONL output (default: standard output)")
        parser.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:1, ...")
        parser.add_argument("--batch-size", type=positive_int, default=32)
        parser.add_argument("--max-params", type=parameter_count, metavar="N", help=MAX_PARAMS_HELP)

    vqa = predict.add_parser("vqa", help="answer a question about an image (or a manifest of them)")
    common(vqa)
    vqa.add_argument("--image", help="image file (JPEG, PNG, DICOM)")
    vqa.add_argument("--question")
    vqa.add_argument("--top-k", type=positive_int, default=5, help="answers to return (default 5; at most the "
                     "model's number of answers: a larger value returns them all)")
    vqa.set_defaults(func=cmd_predict_vqa)

    retrieve = predict.add_parser("retrieve", help="rank images for a text query, or texts for an image query")
    common(retrieve)
    retrieve.add_argument("--query", help="text query: ranks --images (or the manifest's images)")
    retrieve.add_argument("--image", help="image query: ranks --texts (or the manifest's texts)")
    retrieve.add_argument("--images", nargs="+", help="candidate images")
    retrieve.add_argument("--texts", nargs="+", help="candidate texts")
    retrieve.add_argument("--top-k", type=positive_int, default=5, help="results to return (default 5; at most "
                          "the number of candidates)")
    retrieve.set_defaults(func=cmd_predict_retrieve)

    zero = predict.add_parser("zero-shot", help="label probabilities by prompt similarity")
    common(zero)
    zero.add_argument("--image", nargs="+", help="image file(s)")
    zero.add_argument("--labels", nargs="+", help="label names (default: those saved with a zero-shot model)")
    zero.add_argument("--template", help="prompt with {label} (default: the model's, else "
                      "'a chest radiograph showing {label}')")
    zero.set_defaults(func=cmd_predict_zero_shot)

    classify = predict.add_parser("classify", help="label probabilities from a classification head")
    common(classify)
    classify.add_argument("--image", help="image file (img_cls, mm_cls)")
    classify.add_argument("--text", help="text (txt_cls, mm_cls)")
    classify.set_defaults(func=cmd_predict_classify)


# ------------------------------------------------------------------------------------------ convert


def cmd_convert(args: argparse.Namespace) -> int:
    from mpma.hub import load_model, save_pretrained
    from mpma.hub.legacy import upgrade

    if args.upgrade:
        if args.out or args.run or args.vision or args.text or args.overrides:
            raise ValueError("--upgrade rewrites DIR in place; drop --out/--run/--vision/--text/overrides")
        written = upgrade(args.upgrade)
        print(f"upgraded {len(written)} folder(s) of {args.upgrade}" if written else
              f"{args.upgrade}: nothing to upgrade (already in the current format, or not an mpma run folder)")
        return 0
    if not args.out:
        raise ValueError("pass --out DIR (the model folder to write)")
    out = Path(args.out)
    if args.run:
        if args.vision or args.text or args.overrides:
            raise ValueError("--run exports a run folder as it is; drop --vision/--text/overrides")
        loaded = load_model(args.run, max_params=args.max_params)
        save_pretrained(loaded.module, out, loaded.tokenizer, task=loaded.task, metrics=loaded.metrics,
                        provenance=loaded.provenance, config=loaded.config)
        print(f"exported {args.run} -> {out} ({'task ' + loaded.task['task'] if loaded.task else 'backbone'})")
        return 0
    if not (args.vision or args.text):
        raise ValueError("pass --vision and/or --text (local weights to convert), or --run")
    model, tokenizer, config, reports = build_converted(args.config, args.overrides, args.vision, args.text,
                                                        args.tokenizer, args.image_size, args.max_params)
    provenance = {"converted": {"vision": args.vision, "text": args.text, "tokenizer": config.text.tokenizer,
                                "reports": {k: v.to_dict() for k, v in reports.items()}}}
    save_pretrained(model, out, tokenizer, provenance=provenance, config=config)
    if "vision" in reports:
        (out / "conversion_report.json").write_text(json.dumps(reports["vision"].to_dict(), indent=2) + "\n")
        print(reports["vision"].summary())
    if args.text:
        print(f"text encoder from {args.text}: {model.text.encoder.config.model_type}, "
              f"{sum(p.numel() for p in model.text.parameters()):,} parameters, tokenizer {config.text.tokenizer}")
    print(f"model folder: {out}")
    return 0


def build_converted(source: str, overrides: list[str], vision: str | None, text: str | None,
                    tokenizer_path: str | None, image_size: int | None, max_params: int | None = None):
    """(MPMAModel, tokenizer, Config, {"vision": ConversionReport}) built from local weights.

    ``--text`` must be a Hugging Face folder with config.json and model.safetensors: pickled weights
    (``pytorch_model.bin``) are refused, never loaded.
    """
    from mpma.config import load_config
    from mpma.data.text import load_tokenizer
    from mpma.models.convert import vision_config_for
    from mpma.models.factory import check_text_folder, create_model

    config = load_config(source, list(overrides))
    if vision:
        config.vision, changed = vision_config_for(vision, config.vision, image_size)
        config.vision.init = str(Path(vision).resolve())
        if changed:
            print("vision settings from the source: " + ", ".join(f"{k} {a} -> {b}" for k, (a, b) in changed.items()))
    if text:
        from transformers import AutoConfig

        text_dir = check_text_folder(Path(text).resolve(), "--text")
        hf = AutoConfig.from_pretrained(str(text_dir), local_files_only=True)
        config.text.init = str(text_dir)
        config.text.model_type = hf.model_type
        config.text.width, config.text.depth = hf.hidden_size, hf.num_hidden_layers
        config.text.heads, config.text.intermediate = hf.num_attention_heads, hf.intermediate_size
        tokenizer_path = tokenizer_path or str(text_dir)
    if not tokenizer_path and not config.text.tokenizer:
        raise ValueError("pass --tokenizer DIR (or --text DIR with its tokenizer files): a converted model needs one")
    config.text.tokenizer = str(Path(tokenizer_path or config.text.tokenizer).resolve())
    tokenizer = load_tokenizer(config.text.tokenizer)
    model = create_model(config, len(tokenizer), tokenizer.pad_token_id, max_params=max_params).eval()
    return model, tokenizer, config, model.init_reports


# ------------------------------------------------------------------------------------------ predict


def _predictor(args: argparse.Namespace):
    from mpma.inference import Predictor

    return Predictor.from_pretrained(args.model, device=args.device, batch_size=args.batch_size,
                                     max_params=args.max_params)


def _read_manifest(path: str) -> tuple[list[dict], Path]:
    """The manifest's records (``id`` defaults to the line number; each carries its ``"line"``) and folder.

    A line that is not UTF-8 or not a JSON object is kept as ``{"id": "<line>", "line": N, "bad_line":
    problem}``: :func:`_run_records` turns it into an error row and answers the other lines.
    """
    from mpma.data.jsonl import iter_jsonl

    records = []
    for number, record, problem in iter_jsonl(path):
        if record is None:
            records.append({"id": str(number), "line": number, "bad_line": f"line {number}: {problem}"})
            continue
        record.setdefault("id", str(number))
        record["line"] = number
        records.append(record)
    return records, Path(path).parent


def _image_path(record: dict, root: Path) -> str:
    if not isinstance(record.get("image"), str):
        raise ValueError("record has no 'image' path")
    path = Path(record["image"])
    return str(path if path.is_absolute() else root / path)


def _emit(rows: list[dict], out: str | None) -> None:
    text = "".join(json.dumps(row, default=float) + "\n" for row in rows)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(text)
    else:
        sys.stdout.write(text)


def _run_records(records: list[dict], prepare, predict, batch_size: int) -> tuple[list[dict], int]:
    """Per-record ``prepare`` (errors become ``{"id", "line", "error"}`` rows), then batched ``predict``
    on the good ones; rows in manifest order."""
    from mpma.data.image import ImageError

    rows: list[dict | None] = [None] * len(records)
    good: list[tuple[int, tuple]] = []
    for i, record in enumerate(records):
        try:
            if "bad_line" in record:
                raise ValueError(record["bad_line"])
            good.append((i, prepare(record)))
        except (ImageError, ValueError, KeyError, TypeError) as error:
            rows[i] = {"id": record.get("id"), "line": record.get("line"), "error": str(error)}
    for start in range(0, len(good), batch_size):
        chunk = good[start:start + batch_size]
        for (i, _), result in zip(chunk, predict([inputs for _, inputs in chunk])):
            rows[i] = {"id": records[i].get("id"), **result}
    failed = sum(1 for row in rows if row and "error" in row)
    if failed:
        print(f"{failed} of {len(records)} records failed (see their 'error' field)", file=sys.stderr)
    return [row for row in rows if row is not None], failed


def _print(value) -> None:
    print(json.dumps(value, indent=2, default=float))


def cmd_predict_vqa(args: argparse.Namespace) -> int:
    if not args.manifest and not (args.image and args.question):
        raise ValueError("pass --image and --question, or --manifest FILE.jsonl")
    predictor = _predictor(args)
    if not args.manifest:
        _print({"image": args.image, "question": args.question,
                "answers": predictor.answer(args.image, args.question, args.top_k)})
        return 0
    records, root = _read_manifest(args.manifest)

    def prepare(record):
        from mpma.inference import image_to_array

        if not isinstance(record.get("question"), str):
            raise ValueError("record has no 'question'")
        return image_to_array(_image_path(record, root)), record["question"]

    def predict(batch):
        answers = predictor.answer([b[0] for b in batch], [b[1] for b in batch], args.top_k)
        return [{"question": q, "answer": a[0]["answer"], "answers": a} for (_, q), a in zip(batch, answers)]

    rows, failed = _run_records(records, prepare, predict, args.batch_size)
    _emit(rows, args.out)
    return 1 if failed else 0


def cmd_predict_retrieve(args: argparse.Namespace) -> int:
    if bool(args.query) == bool(args.image):
        raise ValueError("pass exactly one of --query TEXT (text -> image) or --image PATH (image -> text)")
    if args.query:
        candidates = args.images
        field = "image"
    else:
        candidates = args.texts
        field = "text"
    ids, skipped = None, 0
    if args.manifest:
        records, root = _read_manifest(args.manifest)
        bad = [r["bad_line"] for r in records if "bad_line" in r]
        records = [r for r in records if "bad_line" not in r]
        if any(not isinstance(r.get(field), str) for r in records):
            raise ValueError(f"every manifest record needs a '{field}' for this direction")
        candidates = [_image_path(r, root) if field == "image" else r["text"] for r in records]
        ids, skipped = [r["id"] for r in records], len(bad)
        for problem in bad:  # a broken line is no candidate; the others are ranked
            print(f"{args.manifest}: {problem}: left out of the candidates", file=sys.stderr)
    if not candidates:
        raise ValueError(f"pass candidate {field}s: --{field}s ... or --manifest FILE.jsonl")
    predictor = _predictor(args)
    query = args.query if args.query else args.image
    ranking = predictor.retrieve(query, candidates, args.top_k, direction="t2i" if args.query else "i2t")
    if ids is not None:
        for item in ranking:
            item["id"] = ids[item["index"]]
    if args.out:
        _emit(ranking, args.out)
    else:
        _print({"query": query, "direction": "t2i" if args.query else "i2t", "results": ranking})
    return 1 if skipped else 0


def cmd_predict_zero_shot(args: argparse.Namespace) -> int:
    if not args.manifest and not args.image:
        raise ValueError("pass --image PATH [PATH ...] or --manifest FILE.jsonl")
    predictor = _predictor(args)
    if not args.manifest:
        probs = predictor.zero_shot(list(args.image), args.labels, args.template)
        rows = [{"image": image, "probabilities": p} for image, p in zip(args.image, probs)]
        _print(rows[0] if len(rows) == 1 else rows)
        return 0
    records, root = _read_manifest(args.manifest)

    def prepare(record):
        from mpma.inference import image_to_array

        return (image_to_array(_image_path(record, root)),)

    def predict(batch):
        probs = predictor.zero_shot([b[0] for b in batch], args.labels, args.template)
        return [{"label": next(iter(p)), "probabilities": p} for p in probs]

    rows, failed = _run_records(records, prepare, predict, args.batch_size)
    _emit(rows, args.out)
    return 1 if failed else 0


def cmd_predict_classify(args: argparse.Namespace) -> int:
    if not args.manifest and not (args.image or args.text):
        raise ValueError("pass --image and/or --text, or --manifest FILE.jsonl")
    predictor = _predictor(args)
    uses_image, uses_text = predictor.reads_image, predictor.reads_text
    if not args.manifest:
        probs = predictor.classify(args.image if uses_image else None, args.text if uses_text else None)
        _print({"image": args.image, "text": args.text, "label": next(iter(probs)), "probabilities": probs})
        return 0
    records, root = _read_manifest(args.manifest)

    def prepare(record):
        from mpma.inference import image_to_array

        image = image_to_array(_image_path(record, root)) if uses_image else None
        text = record.get("text") if uses_text else None
        if uses_text and not isinstance(text, str):
            raise ValueError("record has no 'text'")
        return image, text

    def predict(batch):
        images = [b[0] for b in batch] if uses_image else None
        texts = [b[1] for b in batch] if uses_text else None
        probs = predictor.classify(images, texts)
        return [{"label": next(iter(p)), "probabilities": p} for p in probs]

    rows, failed = _run_records(records, prepare, predict, args.batch_size)
    _emit(rows, args.out)
    return 1 if failed else 0
