"""``mpma report``: one self-contained HTML page and a markdown twin for a run folder.

The page holds the run's status, its training curves, its metrics tables, a few reconstructions
and word->patch maps (pre-training runs with a checkpoint), the VQA closed-question confusion and
per-question-type accuracy (VQA fine-tuning runs) and the configuration. Every test number of a
fine-tuning run is shown with its test set's identity (``metrics.json["test_set"]``: dataset,
split, record count and whether it is the published test set), so a result on a shrunken test set
is visibly marked. The figures are PNG files next to the page; the HTML embeds them as data URIs
(so it can be mailed alone) and links each file, the markdown references the files. Works on a run
still in progress (what exists is shown).
"""

from __future__ import annotations

import base64
import html
import json
import math
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from mpma.eval.metrics import scalar_items

Block = tuple  # ("h2", text) | ("p", text) | ("table", headers, rows) | ("img", file, caption) | ("pre", text)


@dataclass
class Report:
    title: str
    blocks: list[Block] = field(default_factory=list)

    def h2(self, text: str) -> None:
        self.blocks.append(("h2", text))

    def p(self, text: str) -> None:
        self.blocks.append(("p", text))

    def table(self, headers: list[str], rows: list[list]) -> None:
        if rows:
            self.blocks.append(("table", headers, rows))

    def img(self, path: Path | None, caption: str) -> None:
        if path is not None and Path(path).is_file():
            self.blocks.append(("img", Path(path).name, caption))

    def pre(self, text: str) -> None:
        self.blocks.append(("pre", text))


def _cell(value) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return f"{value:.4g}"
    return str(value)


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


# ------------------------------------------------------------------------------ rendering


_CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.2em}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}img{max-width:100%;border:1px solid #ddd}
pre{background:#f7f7f7;padding:.8em;overflow:auto;font-size:12px}figure{margin:1em 0}figcaption{color:#555;font-size:13px}"""


def render_html(report: Report, folder: Path) -> str:
    """The page; images embedded as base64 PNG data URIs, each with a link to its file in ``folder``."""
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(report.title)}</title>"
             f"<style>{_CSS}</style></head><body><h1>{html.escape(report.title)}</h1>"]
    for block in report.blocks:
        kind = block[0]
        if kind == "h2":
            parts.append(f"<h2>{html.escape(block[1])}</h2>")
        elif kind == "p":
            parts.append(f"<p>{html.escape(block[1])}</p>")
        elif kind == "pre":
            parts.append(f"<pre>{html.escape(block[1])}</pre>")
        elif kind == "table":
            head = "".join(f"<th>{html.escape(str(h))}</th>" for h in block[1])
            rows = "".join("<tr>" + "".join(f"<td>{html.escape(_cell(c))}</td>" for c in row) + "</tr>" for row in block[2])
            parts.append(f"<table><tr>{head}</tr>{rows}</table>")
        elif kind == "img":
            data = base64.b64encode((folder / block[1]).read_bytes()).decode("ascii")
            parts.append(f"<figure><img alt='{html.escape(block[2])}' src='data:image/png;base64,{data}'>"
                         f"<figcaption>{html.escape(block[2])} (<a href='{html.escape(block[1])}'>{html.escape(block[1])}"
                         "</a>)</figcaption></figure>")
    parts.append("</body></html>")
    return "\n".join(parts)


def render_markdown(report: Report) -> str:
    lines = [f"# {report.title}", ""]
    for block in report.blocks:
        kind = block[0]
        if kind == "h2":
            lines += [f"## {block[1]}", ""]
        elif kind == "p":
            lines += [block[1], ""]
        elif kind == "pre":
            lines += ["```", block[1], "```", ""]
        elif kind == "table":
            lines.append("| " + " | ".join(str(h) for h in block[1]) + " |")
            lines.append("|" + "---|" * len(block[1]))
            lines += ["| " + " | ".join(_cell(c).replace("|", "\\|") for c in row) + " |" for row in block[2]]
            lines.append("")
        elif kind == "img":
            lines += [f"![{block[2]}]({block[1]})", "", f"*{block[2]}*", ""]
    return "\n".join(lines)


# ------------------------------------------------------------------------------ sections


def _curves(report: Report, run: Path, out: Path) -> list:
    from mpma.viz.curves import plot_curves, read_log

    report.h2("Training curves")
    if not (run / "log.jsonl").is_file():
        report.p("No log.jsonl yet: nothing has been logged.")
        return []
    log = read_log(run)
    report.img(plot_curves([log], out / "curves.png"), f"every logged term over steps ({log.n_lines} log lines"
               + (f", {log.skipped} unreadable line(s) skipped" if log.skipped else "") + ")")
    rows = []
    for name, (steps, values) in sorted(log.series.items()):
        finite = [v for v in values if math.isfinite(v)]
        rows.append([name, int(steps[-1]), float(values[-1]), min(finite) if finite else float("nan"),
                     max(finite) if finite else float("nan")])
    report.h2("Last logged values")
    report.table(["series", "step", "last", "min", "max"], rows)
    return rows


def _pretrain_sections(report: Report, run: Path, out: Path, examples: int, pointing_cases: int) -> None:
    config = _read_json(run / "config.json") or {}
    summary = _read_json(run / "summary.json")
    steps = config.get("optim", {}).get("steps")
    from mpma.viz.curves import read_log

    last = read_log(run).last_step if (run / "log.jsonl").is_file() else None
    status = "finished" if summary else "in progress (no summary.json yet)"
    report.p(f"Pre-training run {run.resolve()}: {status}; last logged step {last} of {steps}; data "
             f"{config.get('data', {}).get('dataset')}; report written {time.strftime('%Y-%m-%d %H:%M')}.")
    _curves(report, run, out)
    if summary:
        report.h2("Loss: first vs last 5% of the steps")
        report.table(["term", "first 5%", "last 5%"],
                     [[k, v["first"], v["last"]] for k, v in summary.get("losses", {}).items()])
        retrieval = summary.get("retrieval", {})
        if "i2t" in retrieval:
            report.h2(f"Zero-shot retrieval on {retrieval.get('n_pairs')} held-out pairs (hit = same finding set)")
            report.table(["direction"] + [f"R@{k}" for k in (1, 5, 10)] + [f"chance@{k}" for k in (1, 5, 10)],
                         [[d] + [retrieval[d][f"R@{k}"] for k in (1, 5, 10)] + [retrieval[d][f"chance@{k}"] for k in (1, 5, 10)]
                          for d in ("i2t", "t2i")])
        elif retrieval:
            report.p(f"Retrieval: {retrieval.get('skipped')}")
    if examples > 0:
        _pretrain_examples(report, run, out, examples, pointing_cases)
    report.h2("Configuration (config.json)")
    report.pre(json.dumps(config, indent=2))


def _examples_guard(report: Report, what: str, fn) -> None:
    """Examples need a checkpoint and a model; a failure becomes a paragraph, never a crash."""
    try:
        fn()
    except Exception as error:  # noqa: BLE001 - the rest of the report is still useful
        warnings.warn(f"report: {what} skipped: {error}", stacklevel=2)
        report.p(f"{what} skipped: {type(error).__name__}: {error}")


def _example_inputs(loaded, n: int):
    """(images tensor, texts, names, boxes) for ``n`` held-out examples of the model's data."""
    import torch

    from mpma.viz.common import case_tensor, synthrad_cases

    pre = loaded.preprocess
    if loaded.config.data.dataset == "synthrad":
        cases = synthrad_cases(loaded.config, n, image_size=int(pre["image_size"]))
        images = torch.stack([case_tensor(c, pre) for c in cases])
        return images, [c.report for c in cases], [f"synthrad test case {i}" for i in range(n)], [list(c.boxes) for c in cases]
    from mpma.data.pairs import parse_data_spec
    from mpma.data.records import read_manifest, resolve_image
    from mpma.viz.common import preprocess_images

    manifest = Path(parse_data_spec(loaded.config.data.dataset)[1])
    records = read_manifest(manifest, "pretrain")
    held = [r for r in records if r.split in ("val", "validation")] or records
    held = held[:n]
    paths = [resolve_image(manifest, r) for r in held]
    return preprocess_images(paths, pre), [r.text for r in held], [p.name for p in paths], [None] * len(held)


def _pretrain_examples(report: Report, run: Path, out: Path, n: int, pointing_cases: int) -> None:
    from mpma.engine import checkpoint as ckpt

    latest = ckpt.latest_checkpoint(run) if (run / "checkpoints").is_dir() else None
    report.h2("Examples" + (f" (weights of {latest.name})" if latest else ""))
    if latest is None:
        report.p("No checkpoint yet: reconstructions and alignment maps appear after the first one.")
        return

    def draw() -> None:
        from mpma.pretrained import load_model
        from mpma.viz import alignment as A
        from mpma.viz.reconstruct import reconstruct_files

        loaded = load_model(run)
        images, texts, names, boxes = _example_inputs(loaded, n)
        if loaded.backbone.mim_decoder is not None:
            report.img(reconstruct_files(loaded, images, texts, out / "reconstructions.png", names=names),
                       "held-out images: original, masked input, MIM reconstruction, reconstruction pasted into the "
                       "visible patches (mask seed 0)")
        else:
            report.p("No MIM decoder in this configuration (objectives.mim=0): no reconstructions.")
        for i in range(min(n, 2)):
            path, _ = A.alignment_figure(loaded, images[i:i + 1], texts[i], out / f"alignment_{i}.png",
                                         boxes=boxes[i] or None)
            report.img(path, f"{names[i]}: word -> patch maps of each content word")
        if loaded.config.data.dataset == "synthrad" and pointing_cases > 0:
            result = A.evaluate_pointing(loaded, n=pointing_cases)
            if result["n_mentions"]:
                report.h2(f"Pointing game ({pointing_cases} held-out synthrad cases)")
                report.p(f"{result['n_mentions']} findings named with their side and zone; a hit is an argmax patch "
                         f"overlapping the lesion box. Chance (uniform random patch): {result['chance_rate']:.3f}.")
                report.table(["map", "hit rate", "hits", "side correct", "on any lesion"],
                             [[A.MAP_LABELS[name], e["hit_rate"], f"{e['hits']}/{e['n']}", e["side_correct"],
                               e["any_lesion"]]
                              for name, e in result["maps"].items()])

    _examples_guard(report, "examples", draw)


def _finetune_sections(report: Report, run: Path, out: Path, examples: int) -> None:
    config = _read_json(run / "config.json") or {}
    task = _read_json(run / "task.json") or {}
    metrics = _read_json(run / "metrics.json")
    status = f"finished (best epoch {metrics['best_epoch']} of {metrics['epochs']})" if metrics else "in progress"
    report.p(f"Fine-tuning run {run.resolve()}: task {config.get('task')}, init {config.get('init')}, {status}; "
             f"split sizes {task.get('split_sizes')}; report written {time.strftime('%Y-%m-%d %H:%M')}.")
    _curves(report, run, out)
    epochs = []
    if (run / "log.jsonl").is_file():
        for line in (run / "log.jsonl").read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if "val" in row:
                epochs.append(row)
    if epochs:
        names = [k for k, v in epochs[0]["val"].items() if isinstance(v, (int, float)) and not isinstance(v, bool)][:8]
        report.h2("Validation per epoch")
        report.table(["epoch", "step", *names], [[e["epoch"], e["step"], *[e["val"].get(k) for k in names]] for e in epochs])
    if metrics:
        from mpma.data.published import describe_identity

        identity = describe_identity(metrics.get("test_set") or task.get("test_set"))
        report.h2("Test metrics (best epoch)")
        report.p(f"Test set: {identity}.")
        report.table(["metric", f"test: {identity}"],
                     [[k, v] for k, v in scalar_items(metrics.get("test", {}))])
        if config.get("task") == "vqa" and (run / "best").is_dir() and examples > 0:
            _examples_guard(report, "VQA breakdown", lambda: _vqa_breakdown(report, run, out))
    report.h2("Configuration (config.json)")
    report.pre(json.dumps(config, indent=2))
    backbone = _read_json(run / "backbone.json")
    if backbone:
        report.h2("Backbone (backbone.json)")
        report.pre(json.dumps(backbone, indent=2))


def vqa_breakdown(predictions: list[str], examples: list[dict]) -> tuple[dict, list[list]]:
    """Closed-question confusion {gold: {predicted: count}} (predictions other than yes/no -> "other")
    and per-question-type rows [type, n, accuracy]."""
    from mpma.data.records import normalize_answer

    confusion: dict[str, dict[str, int]] = {g: {p: 0 for p in ("yes", "no", "other")} for g in ("yes", "no")}
    by_type: dict[str, list[bool]] = {}
    for pred, example in zip(predictions, examples):
        gold = normalize_answer(example["answer"])
        pred = normalize_answer(pred)
        by_type.setdefault(str(example.get("question_type") or "unknown"), []).append(pred == gold)
        if str(example.get("answer_type", "")).strip().upper() == "CLOSED" and gold in confusion:
            confusion[gold][pred if pred in ("yes", "no") else "other"] += 1
    rows = [[kind, len(v), sum(v) / len(v)] for kind, v in sorted(by_type.items())]
    return confusion, rows


def _vqa_breakdown(report: Report, run: Path, out: Path) -> None:
    import numpy as np
    import torch

    from mpma.config import config_from_dict
    from mpma.engine import checkpoint as ckpt
    from mpma.eval.downstream import predict_scores
    from mpma.finetune_config import FinetuneConfig
    from mpma.pipelines.finetuning import FinetuneRun

    config = config_from_dict(json.loads((run / "config.json").read_text()), FinetuneConfig)
    ft = FinetuneRun(config, torch.device("cpu"))
    ckpt.load_weights(ft.module, run / "best" / ckpt.WEIGHTS)
    examples = ft.data.splits["test"]
    scores = predict_scores(ft.module, examples, ft.collate, config.data.eval_batch_size, torch.device("cpu"))
    predictions = [ft.classes[i] for i in np.asarray(scores).argmax(1)]
    confusion, rows = vqa_breakdown(predictions, examples)
    from mpma.data.published import describe_identity

    metrics = _read_json(run / "metrics.json") or {}
    report.h2("VQA test breakdown")
    report.p(f"Test set: {describe_identity(metrics.get('test_set'))}. Closed questions: rows are "
             "the true answer, columns the predicted one.")
    report.table(["true \\ predicted", "yes", "no", "other"], [[g, *confusion[g].values()] for g in ("yes", "no")])
    report.img(plot_confusion(confusion, out / "vqa_confusion.png"), "closed-question confusion (test split)")
    report.table(["question type", "n", "accuracy"], rows)


def plot_confusion(confusion: dict[str, dict[str, int]], out: Path) -> Path:
    import numpy as np

    from mpma.viz.common import new_figure, save_figure

    golds, preds = list(confusion), list(next(iter(confusion.values())))
    matrix = np.array([[confusion[g][p] for p in preds] for g in golds])
    fig = new_figure(4.2, 3.2)
    ax = fig.add_subplot(1, 1, 1)
    image = ax.imshow(matrix, cmap="Blues")
    for i in range(len(golds)):
        for j in range(len(preds)):
            ax.text(j, i, str(matrix[i, j]), ha="center", va="center",
                    color="white" if matrix[i, j] > matrix.max() / 2 else "black")
    ax.set_xticks(range(len(preds)), preds)
    ax.set_yticks(range(len(golds)), golds)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title("VQA closed questions (test)", fontsize=10)
    fig.colorbar(image, ax=ax)
    fig.subplots_adjust(left=0.18, bottom=0.18)
    return save_figure(fig, out)


def write_report(run_dir: str | Path, out_dir: str | Path | None = None, examples: int = 3,
                 pointing_cases: int = 100) -> tuple[Path, Path]:
    """Write ``index.html`` and ``report.md`` (plus their PNGs) for a pre-training or fine-tuning run.

    Args:
        run_dir: the run folder.
        out_dir: where to write (default ``run_dir/report``).
        examples: held-out examples drawn (reconstructions, alignment maps); 0 skips them (no model load).
        pointing_cases: synthrad cases of the pointing game shown for a synthrad pre-training run (0: none).

    Returns:
        (HTML path, markdown path).
    """
    run = Path(run_dir)
    if not (run / "config.json").is_file():
        raise FileNotFoundError(f"{run} has no config.json (pass a folder written by `mpma pretrain` / `mpma finetune`)")
    out = Path(out_dir) if out_dir else run / "report"
    out.mkdir(parents=True, exist_ok=True)
    if (run / "backbone.json").is_file() and (run / "task.json").is_file():
        report = Report(f"mpma fine-tuning run: {run.resolve().name}")
        _finetune_sections(report, run, out, examples)
    else:
        report = Report(f"mpma pre-training run: {run.resolve().name}")
        _pretrain_sections(report, run, out, examples, pointing_cases)
    html_path, md_path = out / "index.html", out / "report.md"
    html_path.write_text(render_html(report, out), encoding="utf-8")
    md_path.write_text(render_markdown(report), encoding="utf-8")
    return html_path, md_path
