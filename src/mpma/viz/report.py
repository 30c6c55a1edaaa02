"""``mpma report``: one self-contained HTML page and a markdown twin for a run folder.

The page holds the run's status, its training curves, its metrics tables, a few reconstructions
and word->patch maps (pre-training runs with a checkpoint), the VQA closed-question confusion and
per-question-type accuracy (VQA fine-tuning runs) and the configuration. Every test number of a
fine-tuning run is shown with its test set's identity (``metrics.json["test_set"]``: dataset,
split, record count and whether it is the published test set), so a result on a shrunken test set
is visibly marked. The figures are PNG files next to the page; the HTML embeds them as data URIs
(so it can be mailed alone) and links each file, the markdown references the files. Works on a run
still in progress (what exists is shown).

This module only reads the run folder and draws. What needs the model (the example figures, the
pointing game, the VQA test predictions) is computed by :mod:`mpma.pipelines.report_examples` and
passed in as :class:`PretrainExamples` / :class:`VqaPredictions`; without them those sections are left out.
"""

from __future__ import annotations

import base64
import html
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mpma.config.finetune import KEEP_EPOCHS
from mpma.data.records import normalize_answer
from mpma.data.sources.identity import describe_identity
from mpma.eval.metrics import scalar_items
from mpma.viz.alignment import MAP_LABELS
from mpma.viz.common import new_figure, save_figure
from mpma.viz.curves import plot_curves, read_log

Block = tuple  # ("h2", text) | ("p", text) | ("table", headers, rows) | ("img", file, caption) | ("pre", text)


@dataclass
class Report:
    """The page as a list of blocks (headings, paragraphs, tables, images, preformatted text), rendered twice."""

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
    """A table cell: floats with 4 significant digits, everything else as ``str``."""
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return f"{value:.4g}"
    return str(value)


def _read_json(path: Path) -> dict | None:
    """The JSON file's content; None when it is missing or not (yet) valid JSON."""
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
    """The markdown twin of :func:`render_html`; images referenced by file name (next to the page)."""
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
    """The "Training curves" figure and the "Last logged values" table; returns the table's rows."""
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


@dataclass
class PretrainExamples:
    """What a pre-training run's latest checkpoint gave for the report (:mod:`mpma.pipelines.report_examples`).

    checkpoint: name of the checkpoint folder whose weights drew them; None: the run has no checkpoint yet.
    reconstructions: the reconstructions PNG; None when not drawn.
    has_mim_decoder: False when the configuration has no MIM decoder (no reconstructions possible).
    alignment: (PNG, caption) of the word -> patch map figures.
    pointing: a :func:`mpma.eval.pointing.evaluate_pointing` result, on ``pointing_cases`` cases; None: not run.
    error: "ExceptionType: message" when computing them failed part way (what was done is still shown).
    """

    checkpoint: str | None = None
    reconstructions: Path | None = None
    has_mim_decoder: bool = True
    alignment: list[tuple[Path, str]] = field(default_factory=list)
    pointing: dict | None = None
    pointing_cases: int = 0
    error: str | None = None


@dataclass
class VqaPredictions:
    """A VQA fine-tuning run's best-epoch predictions on its test split (:mod:`mpma.pipelines.report_examples`).

    predictions: the predicted answer of each test example.
    examples: the test examples ("answer", "answer_type", "question_type").
    error: "ExceptionType: message" when they could not be computed.
    """

    predictions: list[str] = field(default_factory=list)
    examples: list[dict] = field(default_factory=list)
    error: str | None = None


def _pretrain_sections(report: Report, run: Path, out: Path, examples: PretrainExamples | None) -> None:
    """Status, curves, loss and retrieval summaries, the given examples and the configuration of a pre-training run."""
    config = _read_json(run / "config.json") or {}
    summary = _read_json(run / "summary.json")
    steps = config.get("optim", {}).get("steps")
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
        _grounding(report, summary.get("grounding"))
    if examples is not None:
        _pretrain_examples(report, examples)
    report.h2("Configuration (config.json)")
    report.pre(json.dumps(config, indent=2))


def _grounding(report: Report, grounding: dict | None) -> None:
    """The grounding diagnostics of the last step (pointing game, MLM image gap); curves are in curves.png."""
    if not grounding:
        return
    pointing, gap = grounding["pointing_game"], grounding.get("mlm_image_gap") or {}
    report.h2(f"Grounding at step {grounding['step']} (curves: grounding.* panels)")
    report.table(["measure", "value", "reference"],
                 [["pointing game, GLA-local", pointing.get("hit_rate"), f"chance {pointing.get('chance')}"],
                  ["pointing game, fusion attention", pointing.get("fusion_attention"), f"chance {pointing.get('chance')}"],
                  ["masked content words, own image", gap.get("own"), "-"],
                  ["masked content words, shuffled image", gap.get("shuffled"), f"gap {gap.get('gap')}"]])
    by_word = gap.get("by_word")
    if by_word:
        report.p("MLM accuracy per masked content word: a word whose accuracy does not change with the image "
                 "is solved from the text alone.")
        report.table(["masked word", "n", "own image", "shuffled image", "gap"],
                     [[word, c["n"], round(c["own"], 3), round(c["shuffled"], 3), round(c["own"] - c["shuffled"], 3)]
                      for word, c in by_word.items()])


def _pretrain_examples(report: Report, examples: PretrainExamples) -> None:
    """The "Examples" section: reconstructions, word -> patch maps, the pointing game (in that order)."""
    report.h2("Examples" + (f" (weights of {examples.checkpoint})" if examples.checkpoint else ""))
    if examples.checkpoint is None:
        report.p("No checkpoint yet: reconstructions and alignment maps appear after the first one.")
        return
    if examples.reconstructions is not None:
        report.img(examples.reconstructions, "held-out images: original, masked input, MIM reconstruction, "
                   "reconstruction pasted into the visible patches (mask seed 0)")
    elif not examples.has_mim_decoder:
        report.p("No MIM decoder in this configuration (objectives.mim=0): no reconstructions.")
    for path, caption in examples.alignment:
        report.img(path, caption)
    result = examples.pointing
    if result and result["n_mentions"]:
        report.h2(f"Pointing game ({examples.pointing_cases} held-out synthrad cases)")
        report.p(f"{result['n_mentions']} findings named with their side and zone; a hit is an argmax patch "
                 f"overlapping the lesion box. Chance (uniform random patch): {result['chance_rate']:.3f}.")
        report.table(["map", "hit rate", "hits", "side correct", "on any lesion"],
                     [[MAP_LABELS[name], e["hit_rate"], f"{e['hits']}/{e['n']}", e["side_correct"], e["any_lesion"]]
                      for name, e in result["maps"].items()])
    if examples.error:
        report.p(f"examples skipped: {examples.error}")


def _validation_epochs(run: Path) -> list[dict]:
    """The per-epoch lines (with a "val" dict) of ``run/log.jsonl``; unreadable lines are skipped."""
    epochs = []
    if (run / "log.jsonl").is_file():
        for line in (run / "log.jsonl").read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if "val" in row:
                epochs.append(row)
    return epochs


def _finetune_sections(report: Report, run: Path, out: Path, vqa: VqaPredictions | None) -> None:
    """Status, curves, validation per epoch, test metrics (with the test set's identity), the given VQA
    breakdown, the configuration and the backbone of a fine-tuning run."""
    config = _read_json(run / "config.json") or {}
    task = _read_json(run / "task.json") or {}
    metrics = _read_json(run / "metrics.json")
    status = (f"finished (epoch {metrics['best_epoch']} of {metrics['epochs']} kept: "
              f"{KEEP_EPOCHS[metrics.get('keep', 'best_val')]})" if metrics else "in progress")
    report.p(f"Fine-tuning run {run.resolve()}: task {config.get('task')}, init {config.get('init')}, {status}; "
             f"split sizes {task.get('split_sizes')}; report written {time.strftime('%Y-%m-%d %H:%M')}.")
    _curves(report, run, out)
    epochs = _validation_epochs(run)
    if epochs:
        names = [k for k, v in epochs[0]["val"].items() if isinstance(v, (int, float)) and not isinstance(v, bool)][:8]
        report.h2("Validation per epoch")
        report.table(["epoch", "step", *names], [[e["epoch"], e["step"], *[e["val"].get(k) for k in names]] for e in epochs])
    if metrics:
        identity = describe_identity(metrics.get("test_set") or task.get("test_set"))
        report.h2("Test metrics (kept epoch)")
        report.p(f"Test set: {identity}.")
        report.table(["metric", f"test: {identity}"],
                     [[k, v] for k, v in scalar_items(metrics.get("test", {}))])
        if vqa is not None:
            _vqa_section(report, out, vqa, metrics)
    report.h2("Configuration (config.json)")
    report.pre(json.dumps(config, indent=2))
    backbone = _read_json(run / "backbone.json")
    if backbone:
        report.h2("Backbone (backbone.json)")
        report.pre(json.dumps(backbone, indent=2))


def vqa_breakdown(predictions: list[str], examples: list[dict]) -> tuple[dict, list[list]]:
    """Closed-question confusion {gold: {predicted: count}} (predictions other than yes/no -> "other")
    and per-question-type rows [type, n, accuracy]."""
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


def _vqa_section(report: Report, out: Path, vqa: VqaPredictions, metrics: dict) -> None:
    """The "VQA test breakdown" section (or a paragraph saying why it is missing)."""
    if vqa.error:
        report.p(f"VQA breakdown skipped: {vqa.error}")
        return
    confusion, rows = vqa_breakdown(vqa.predictions, vqa.examples)
    report.h2("VQA test breakdown")
    report.p(f"Test set: {describe_identity(metrics.get('test_set'))}. Closed questions: rows are "
             "the true answer, columns the predicted one.")
    report.table(["true \\ predicted", "yes", "no", "other"], [[g, *confusion[g].values()] for g in ("yes", "no")])
    report.img(plot_confusion(confusion, out / "vqa_confusion.png"), "closed-question confusion (test split)")
    report.table(["question type", "n", "accuracy"], rows)


def plot_confusion(confusion: dict[str, dict[str, int]], out: Path) -> Path:
    """The {gold: {predicted: count}} confusion as a (gold, predicted) heat map with the counts written in."""
    golds, preds = list(confusion), list(next(iter(confusion.values())))
    matrix = np.array([[confusion[g][p] for p in preds] for g in golds])  # (golds, predictions)
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


def is_finetuning_run(run_dir: str | Path) -> bool:
    """A fine-tuning run folder (backbone.json and task.json beside config.json); else a pre-training run."""
    run = Path(run_dir)
    return (run / "backbone.json").is_file() and (run / "task.json").is_file()


def report_dir(run_dir: str | Path, out_dir: str | Path | None = None) -> Path:
    """Where the report of ``run_dir`` goes: ``out_dir``, default ``run_dir/report``."""
    return Path(out_dir) if out_dir else Path(run_dir) / "report"


def open_report_dir(run_dir: str | Path, out_dir: str | Path | None = None) -> tuple[Path, Path]:
    """(run folder, report folder, created if missing); an error when the folder holds no run."""
    run = Path(run_dir)
    if not (run / "config.json").is_file():
        raise FileNotFoundError(f"{run} has no config.json (pass a folder written by `mpma pretrain` / `mpma finetune`)")
    out = report_dir(run, out_dir)
    out.mkdir(parents=True, exist_ok=True)
    return run, out


def write_report(run_dir: str | Path, out_dir: str | Path | None = None, examples: PretrainExamples | None = None,
                 vqa: VqaPredictions | None = None) -> tuple[Path, Path]:
    """Write ``index.html`` and ``report.md`` (plus their PNGs) for a pre-training or fine-tuning run.

    Args:
        run_dir: the run folder.
        out_dir: where to write (default ``run_dir/report``).
        examples: a pre-training run's example figures and pointing game; None leaves the section out.
        vqa: a VQA fine-tuning run's test predictions; None leaves the VQA breakdown out.
        (:func:`mpma.pipelines.report_examples.write_run_report` computes both and calls this.)

    Returns:
        (HTML path, markdown path).
    """
    run, out = open_report_dir(run_dir, out_dir)
    if is_finetuning_run(run):
        report = Report(f"mpma fine-tuning run: {run.resolve().name}")
        _finetune_sections(report, run, out, vqa)
    else:
        report = Report(f"mpma pre-training run: {run.resolve().name}")
        _pretrain_sections(report, run, out, examples)
    html_path, md_path = out / "index.html", out / "report.md"
    html_path.write_text(render_html(report, out), encoding="utf-8")
    md_path.write_text(render_markdown(report), encoding="utf-8")
    return html_path, md_path
