"""Training curves from a run's ``log.jsonl``: every loss term and metric over steps, raw and smoothed.

Works on a run still being written (a partial last line is skipped), on NaN / infinite values
(gaps in the raw line, counted in the panel title, skipped by the smoothing), on a single logged
step, and on several runs overlaid (one colour per run) for ablations. Fine-tuning logs mix step
lines with per-epoch ``{"step", "epoch", "val": {...}}`` lines; their scalar ``val`` metrics get
panels named ``val.<metric>``.

Figures are drawn with matplotlib's object API on an Agg canvas (no pyplot, no global backend
state), so a training process can call :func:`write_run_curves` between steps.
"""

from __future__ import annotations

import json
import logging
import math
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

CURVES_PNG = "curves.png"
LOG_JSONL = "log.jsonl"  # the run log read here (written by mpma.engine.trainer)
PANEL_INCHES = (4.0, 2.8)  # width, height of one panel
COLUMNS = 4
DPI = 80
_SKIP = {"step", "epoch"}
# panel order: total loss, loss terms, everything else alphabetically, then val.*, then the optimiser/throughput
_FIRST = ("loss", "mlm", "mim", "global_align", "local_align", "itm", "task")
_LAST = ("lr", "grad_norm", "samples_per_s")
_TITLES = {"lr": "learning rate", "samples_per_s": "samples / s", "grad_norm": "gradient norm (before clipping)"}
_LOSS_WEIGHT = "weight_"  # weight_<loss>: a scheduled loss weight (objectives.end_weights), drawn beside lr
log = logging.getLogger("mpma")


def _is_schedule(name: str) -> bool:
    """The rate and the scheduled loss weights: drawn raw, since smoothing would only distort them."""
    return name == "lr" or name.startswith(_LOSS_WEIGHT)


@dataclass
class RunLog:
    """Scalar series of one run: ``series[name] = (steps, values)`` as float arrays (values may be NaN)."""

    label: str
    series: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    n_lines: int = 0
    skipped: int = 0  # lines that could not be parsed (a partial last line of a run in progress)

    @property
    def last_step(self) -> int | None:
        """The largest logged step of any series (None: nothing logged)."""
        steps = [s[-1] for s, _ in self.series.values() if len(s)]
        return int(max(steps)) if steps else None


def _number(value) -> float | None:
    """A log value as a float (None -> NaN); None for what is not a number (bool, str, dict, ...)."""
    if isinstance(value, bool) or value is None:
        return float("nan") if value is None else None
    if isinstance(value, (int, float)):
        return float(value)
    return None


def read_log(path: str | Path, label: str | None = None) -> RunLog:
    """Parse ``log.jsonl`` (a file or a run folder) into scalar series.

    Unparseable lines (the half-written last line of a running job) are counted in ``skipped``;
    nested dicts are flattened one level (``{"val": {"overall": x}}`` -> ``val.overall``); deeper
    values, strings and lists are ignored; ``null`` becomes NaN.
    """
    path = Path(path)
    if path.is_dir():
        path = path / LOG_JSONL
    run = RunLog(label or path.parent.name or str(path.parent))
    if not path.is_file():
        raise FileNotFoundError(f"no log.jsonl in {path.parent} (is it a run folder written by mpma pretrain / finetune?)")
    points: dict[str, list[tuple[float, float]]] = {}
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            run.skipped += 1
            continue
        step = _number(row.get("step")) if isinstance(row, dict) else None
        if step is None or math.isnan(step):
            run.skipped += 1
            continue
        run.n_lines += 1
        for key, value in row.items():
            if key in _SKIP:
                continue
            items = value.items() if isinstance(value, dict) else [(None, value)]
            for sub, item in items:
                number = _number(item)
                if number is not None:
                    points.setdefault(key if sub is None else f"{key}.{sub}", []).append((step, number))
    for name, values in points.items():
        array = np.asarray(values, dtype=np.float64)
        run.series[name] = (array[:, 0], array[:, 1])
    return run


def smooth(values: np.ndarray, weight: float) -> np.ndarray:
    """Debiased exponential moving average (TensorBoard's): NaN/inf points are skipped, not propagated.

    Returns NaN where no finite value has been seen yet.
    """
    if not 0.0 <= weight < 1.0:
        raise ValueError(f"smoothing weight must be in [0, 1), got {weight}")
    out = np.full(len(values), np.nan)
    average, norm = 0.0, 0.0
    for i, value in enumerate(values):
        if np.isfinite(value):
            average = weight * average + (1.0 - weight) * value
            norm = weight * norm + (1.0 - weight)
        if norm > 0:
            out[i] = average / norm
    return out


def _is_count(name: str) -> bool:
    """Sample counts logged with the validation metrics (``val.n``, ``val.n_open``): not curves."""
    last = name.rsplit(".", 1)[-1]
    return "." in name and (last == "n" or last.startswith("n_"))


def panel_names(runs: list[RunLog]) -> list[str]:
    """The panels, in order: total loss, loss terms, other metrics, ``val.*``, then lr, scheduled loss weights,
    gradient norm and throughput."""
    names = {name for run in runs for name in run.series if not _is_count(name)}
    first = [n for n in _FIRST if n in names]
    weights = sorted(n for n in names if n.startswith(_LOSS_WEIGHT))
    last = [n for n in _LAST[:1] if n in names] + weights + [n for n in _LAST[1:] if n in names]
    rest = sorted(n for n in names if n not in first and n not in last)
    val = [n for n in rest if n.startswith("val.")]
    return first + [n for n in rest if n not in val] + val + last


def figure_size(n_panels: int) -> tuple[float, float]:
    """Figure size in inches for ``n_panels`` panels (at least one row; a title band on top)."""
    rows = max(1, math.ceil(n_panels / COLUMNS))
    cols = min(COLUMNS, max(1, n_panels))
    return cols * PANEL_INCHES[0], rows * PANEL_INCHES[1] + 0.6


def _draw_panel(ax, name: str, runs: list[RunLog], colors: list[str], smoothing: float) -> None:
    """Series ``name`` of every run on one axis: raw (faint) and smoothed lines, non-finite values marked."""
    from matplotlib.ticker import FormatStrFormatter, MaxNLocator

    bad = 0
    for run, color in zip(runs, colors):
        if name not in run.series:
            continue
        steps, values = run.series[name]
        finite = np.isfinite(values)
        bad += int((~finite).sum())
        marker = "o" if finite.sum() <= 20 else None
        shown = np.where(finite, values, np.nan)
        if smoothing > 0 and finite.sum() > 1 and not _is_schedule(name):
            ax.plot(steps, shown, color=color, alpha=0.3, linewidth=0.8, marker=marker, markersize=2.5)
            ax.plot(steps, smooth(values, smoothing), color=color, linewidth=1.6)
        else:
            ax.plot(steps, shown, color=color, linewidth=1.4, marker=marker, markersize=3.5)
        if not finite.all():  # mark where the values were NaN/inf along the bottom edge
            ax.plot(steps[~finite], np.zeros(int((~finite).sum())), linestyle="none", marker="x", color="red",
                    markersize=5, transform=ax.get_xaxis_transform(), clip_on=False)
    label = _TITLES.get(name, f"loss weight: {name[len(_LOSS_WEIGHT):]}" if name.startswith(_LOSS_WEIGHT) else name)
    # an explicit y skips matplotlib's per-draw title placement (a tight-bbox pass per axes)
    ax.set_title(label + (f"  [{bad} non-finite]" if bad else ""), fontsize=9, color="red" if bad else "black",
                 y=1.0, pad=4)
    ax.set_xlabel("step", fontsize=8, labelpad=1)
    ax.xaxis.set_major_locator(MaxNLocator(5, integer=True))
    ax.yaxis.set_major_locator(MaxNLocator(5))
    ax.tick_params(labelsize=7)
    ax.grid(True, alpha=0.3)
    if name == "lr":
        ax.yaxis.set_major_formatter(FormatStrFormatter("%.2g"))


def _default_title(runs: list[RunLog]) -> str:
    """The run labels with their last step (and the count of unreadable log lines, if any)."""
    title = "  |  ".join(f"{run.label}: step {run.last_step if run.last_step is not None else '-'}" for run in runs)
    if any(run.skipped for run in runs):
        title += f"  ({sum(run.skipped for run in runs)} unreadable log line(s) skipped)"
    return title


def plot_curves(runs: list[RunLog], out: str | Path, smoothing: float = 0.6, title: str | None = None,
                dpi: int = DPI) -> Path:
    """Draw one panel per series (all runs overlaid) and save a PNG.

    Args:
        runs: parsed logs (see :func:`read_log`); each gets a colour.
        out: PNG path (parent folders are created).
        smoothing: EMA weight of the bold line (0 = raw only); the raw line is drawn thin and faint.
        title: figure title (default: the run labels and their last step).

    Returns:
        the PNG path. Its size is ``figure_size(len(panel_names(runs))) * dpi`` pixels.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    names = panel_names(runs)
    width, height = figure_size(len(names))
    fig = Figure(figsize=(width, height), dpi=dpi)
    FigureCanvasAgg(fig)
    colors = [f"C{i % 10}" for i in range(len(runs))]
    fig.suptitle(_default_title(runs) if title is None else title, fontsize=10)
    if not names:
        ax = fig.add_subplot(1, 1, 1)
        ax.set_axis_off()
        ax.text(0.5, 0.5, "no logged steps yet", ha="center", va="center", fontsize=14)
    rows = max(1, math.ceil(len(names) / COLUMNS))
    cols = min(COLUMNS, max(1, len(names)))
    for index, name in enumerate(names):
        _draw_panel(fig.add_subplot(rows, cols, index + 1), name, runs, colors, smoothing)
    handles = [Line2D([], [], color=c, linewidth=1.6, label=run.label) for run, c in zip(runs, colors)]
    if smoothing > 0:
        handles += [Line2D([], [], color="gray", linewidth=1.6, label=f"smoothed (EMA {smoothing:g})"),
                    Line2D([], [], color="gray", alpha=0.3, linewidth=0.8, label="raw")]
    fig.legend(handles=handles, loc="upper center", fontsize=8, ncol=min(len(handles), 6), frameon=False,
               bbox_to_anchor=(0.5, 1.0 - 0.28 / height))
    fig.subplots_adjust(left=0.06, right=0.98, bottom=0.55 / height * 1.2, top=1.0 - 0.95 / height,
                        hspace=0.55, wspace=0.28)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.stem + ".tmp.png")
    fig.savefig(tmp, dpi=dpi, format="png")
    tmp.replace(out)  # readers (a report, a browser refresh) never see a half-written PNG
    return out


def plot_runs(run_dirs: list[str | Path], out: str | Path, labels: list[str] | None = None,
              smoothing: float = 0.6) -> Path:
    """Read each run folder's log.jsonl and draw them overlaid (see :func:`plot_curves`)."""
    if labels and len(labels) != len(run_dirs):
        raise ValueError(f"{len(labels)} labels for {len(run_dirs)} runs")
    runs = [read_log(d, labels[i] if labels else None) for i, d in enumerate(run_dirs)]
    names = [r.label for r in runs]
    if len(set(names)) < len(names):  # same folder name in different places: use the full paths
        for run, d in zip(runs, run_dirs):
            run.label = str(d)
    return plot_curves(runs, out, smoothing)


def write_run_curves(run_dir: str | Path) -> Path | None:
    """Draw ``run_dir/curves.png`` from its log; never raises (a plotting problem must not stop training).

    Called by ``mpma pretrain`` / ``mpma finetune`` at each checkpoint / epoch end and at the end.
    Returns the PNG path, or None after a warning when drawing failed; None without a warning when
    nothing is logged yet (a checkpoint before the first ``run.log_every`` step).
    """
    started = time.perf_counter()
    if not (Path(run_dir) / LOG_JSONL).exists():
        log.debug("no curves yet: %s has no log.jsonl", run_dir)
        return None
    try:
        path = plot_curves([read_log(run_dir)], Path(run_dir) / CURVES_PNG)
    except Exception as error:  # noqa: BLE001 - any plotting failure is reported, never fatal
        warnings.warn(f"could not draw {Path(run_dir) / CURVES_PNG}: {type(error).__name__}: {error}", stacklevel=2)
        return None
    log.debug("curves drawn in %.2f s", time.perf_counter() - started)
    return path
