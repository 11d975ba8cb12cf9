"""The run report: one self-contained HTML file (``RUN_DIR/report.html``) that can be mailed or archived.

It gathers what a run directory holds: the resolved ``config.json`` (a table per section), a summary of
``metrics.csv`` (steps, losses, time in steps, throughput, evaluations logged while training), the
``loss.png`` / ``quality.png`` curves (drawn by :mod:`diffsat.plots` when missing), the sample grids in
``samples/`` in step order, and optionally ``diffsat evaluate --out`` JSON files and further figures. Images
are embedded as base64 data URIs; every piece of text is HTML-escaped.
"""

from __future__ import annotations

import base64
import html
import json
import mimetypes
from collections.abc import Iterable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from . import __version__
from .errors import DiffsatError
from .evaluation.results import METRIC_HEADER, fmt, metric_cells
from .fileio import atomic_write_text
from .plots import plot_training
from .rundir import (
    CONFIG_FILE,
    LOSS_PLOT,
    METRICS_FILE,
    QUALITY_PLOT,
    REPORT_FILE,
    TRAIN_FIELDS,
    grid_path,
    periodic_grids,
    read_metrics,
    run_file,
)

MAX_GRIDS = 12
"""Most periodic sample grids embedded (evenly spaced over the run, the last always in), so a long run's
report stays small enough to mail; ``final.png`` comes in addition."""

_STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
th { background: #f2f2f2; }
figure { display: inline-block; margin: 0.5em; vertical-align: top; }
figcaption { font-size: 0.85em; color: #555; text-align: center; }
img { max-width: 100%; image-rendering: pixelated; }
.note { color: #666; font-size: 0.9em; }
"""


class ReportError(DiffsatError):
    """A run directory or an extra input the report cannot use; the message names the file."""


def esc(value: Any) -> str:
    """``value`` as text safe inside HTML elements and attribute values."""
    return html.escape(str(value), quote=True)


def table(header: Sequence[str], rows: Iterable[Sequence[Any]], numeric: Sequence[bool] = ()) -> str:
    """An HTML table; cells are escaped; columns flagged in ``numeric`` are right-aligned."""
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = []
    for row in rows:
        cells = [f'<td class="num">{esc(c)}</td>' if i < len(numeric) and numeric[i] else f"<td>{esc(c)}</td>"
                 for i, c in enumerate(row)]
        body.append(f"<tr>{''.join(cells)}</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def data_uri(path: Path) -> str:
    """The image file ``path`` as a ``data:`` URI (base64)."""
    mime = mimetypes.guess_type(path.name)[0]
    if mime is None or not mime.startswith("image/"):
        raise ReportError(f"{path}: not an image file (give a .png, .jpg, .gif or .svg figure)")
    if not path.is_file():
        raise ReportError(f"{path}: figure not found")
    try:
        payload = base64.b64encode(path.read_bytes()).decode("ascii")
    except OSError as err:
        raise ReportError(f"{path}: cannot read the figure ({err.strerror or err})") from None
    return f"data:{mime};base64,{payload}"


def figure(path: Path, caption: str) -> str:
    """An embedded image with a caption."""
    return (f'<figure><img src="{data_uri(path)}" alt="{esc(caption)}">'
            f"<figcaption>{esc(caption)}</figcaption></figure>")


def read_json_file(path: Path, what: str) -> Any:
    """Parsed JSON of ``path``; a missing or broken file is a one-line :class:`ReportError`."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ReportError(f"{path}: {what} not found") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ReportError(f"{path}: cannot read {what} ({err})".replace("\n", " ")) from None


# ---- sections ---------------------------------------------------------------------------------------


def config_section(run_dir: Path) -> str:
    """``config.json`` as one key/value table per section."""
    path = run_file(run_dir, CONFIG_FILE)
    if not path.is_file():
        return '<h2>Configuration</h2><p class="note">no config.json in the run directory</p>'
    config = read_json_file(path, "run config")
    if not isinstance(config, dict):
        raise ReportError(f"{path}: expected a JSON object of config sections")
    loose = {k: v for k, v in config.items() if not isinstance(v, dict)}
    sections = {k: v for k, v in config.items() if isinstance(v, dict)} | ({"other": loose} if loose else {})
    parts = ["<h2>Configuration</h2>"]
    for name, values in sections.items():
        rows = [(key, json.dumps(value) if not isinstance(value, str) else value) for key, value in values.items()]
        parts.append(f"<h3>{esc(name)}</h3>{table(('key', 'value'), rows)}")
    return "".join(parts)


def _column(metrics: dict[str, np.ndarray], name: str) -> tuple[np.ndarray, np.ndarray]:
    """``(steps, values)`` of the rows where column ``name`` is filled."""
    values = metrics.get(name, np.array([]))
    rows = ~np.isnan(values)
    return metrics.get("step", np.full(len(values), np.nan))[rows], values[rows]


def training_summary(metrics: dict[str, np.ndarray]) -> list[tuple[str, str]]:
    """``(quantity, value)`` rows: steps, final and lowest loss, time in steps, throughput."""
    steps = metrics.get("step", np.array([]))
    loss_step, loss = _column(metrics, "loss")
    _, elapsed = _column(metrics, "elapsed_s")
    _, ips = _column(metrics, "images_per_s")
    _, gflops = _column(metrics, "gflops")
    rows = [("steps (last logged)", fmt(steps.max()) if len(steps) else "n/a"),
            ("log rows", fmt(len(loss)))]
    if len(loss):
        best = int(np.argmin(loss))
        rows += [("final loss", f"{fmt(loss[-1])} (step {fmt(loss_step[-1])})"),
                 ("lowest loss", f"{fmt(loss[best])} (step {fmt(loss_step[best])})")]
    if len(elapsed):
        rows.append(("time in training steps", f"{fmt(elapsed[-1])} s ({elapsed[-1] / 60:.1f} min)"))
    if len(ips):
        rows.append(("images/s (median over log intervals)", fmt(float(np.median(ips)))))
    if len(gflops):
        rows.append(("achieved GFLOP/s (median over log intervals)", fmt(float(np.median(gflops)))))
    return rows


def logged_evaluations(metrics: dict[str, np.ndarray]) -> list[tuple[str, ...]]:
    """One row per quality metric logged while training: evaluations, last value and step, min, max."""
    rows = []
    for name in metrics:
        if name in TRAIN_FIELDS:
            continue
        steps, values = _column(metrics, name)
        if len(values):
            rows.append((name, fmt(len(values)), fmt(values[-1]), fmt(steps[-1]), fmt(values.min()),
                         fmt(values.max())))
    return rows


def metrics_section(metrics: dict[str, np.ndarray]) -> str:
    """Training summary table and, when logged, the table of evaluations during training."""
    out = "<h2>Training</h2>" + table(("quantity", "value"), training_summary(metrics), (False, True))
    evals = logged_evaluations(metrics)
    if evals:
        out += "<h3>Sample quality while training</h3>" + table(
            ("metric", "evaluations", "last", "at step", "min", "max"), evals, (False,) + (True,) * 5)
    return out


def curves_section(run_dir: Path, metrics: dict[str, np.ndarray]) -> str:
    """``loss.png`` and ``quality.png``, drawn first when missing (``quality.png`` only if evaluations exist)."""
    wants_quality = bool(logged_evaluations(metrics))
    loss, quality = run_file(run_dir, LOSS_PLOT), run_file(run_dir, QUALITY_PLOT)
    if not loss.is_file() or (wants_quality and not quality.is_file()):
        plot_training(run_dir)
    shown = [(loss, "training loss")] + ([(quality, "sample quality")] if wants_quality else [])
    return "<h2>Curves</h2>" + "".join(figure(path, caption) for path, caption in shown)


def sample_grids(run_dir: Path, max_grids: int = MAX_GRIDS) -> tuple[list[tuple[int, Path]], int]:
    """``([(step, path), ...], total)``: periodic grids ``samples/step_XXXXXXX.png`` in step order, thinned
    evenly to ``max_grids`` (the last kept), and how many there were."""
    found = periodic_grids(run_dir)
    if len(found) <= max_grids:
        return found, len(found)
    keep = np.unique(np.linspace(len(found) - 1, 0, max_grids).round().astype(int))
    return [found[i] for i in keep], len(found)


def samples_section(run_dir: Path, max_grids: int = MAX_GRIDS) -> str:
    """Embedded sample grids (EMA weights, fixed seed), oldest first, then ``final.png``."""
    grids, total = sample_grids(run_dir, max_grids)
    final = grid_path(run_dir)
    if not grids and not final.is_file():
        return '<h2>Samples</h2><p class="note">no sample grids in samples/</p>'
    note = f'<p class="note">showing {len(grids)} of {total} periodic grids</p>' if total > len(grids) else ""
    figures = [figure(path, f"step {step}") for step, path in grids]
    if final.is_file():
        figures.append(figure(final, "final"))
    return "<h2>Samples</h2>" + note + "".join(figures)


def _metric_rows(path: Path, metrics: Any) -> list[tuple[str, ...]]:
    if not isinstance(metrics, dict) or not metrics:
        raise ReportError(f"{path}: no 'metrics' table; give a JSON written by `diffsat evaluate --out`")
    rows = []
    for key, m in metrics.items():
        if not isinstance(m, dict):
            raise ReportError(f"{path}: metric '{key}' is not a table row; give a JSON written by `diffsat evaluate --out`")
        rows.append(metric_cells(key, m))
    return rows


def _sets_lines(sets: Any) -> list[str]:
    if not isinstance(sets, dict):
        return []
    lines = []
    for name, info in sets.items():
        if isinstance(info, dict):
            lines.append(f"{name}: " + ", ".join(f"{k} {v}" for k, v in info.items()))
    return lines


def evaluation_section(path: Path) -> str:
    """One ``diffsat evaluate --out`` file: the compared sets and the metric table beside the real baseline."""
    data = read_json_file(path, "evaluation JSON")
    rows = _metric_rows(path, data.get("metrics") if isinstance(data, dict) else None)
    lines = _sets_lines(data.get("sets"))
    head = f"<h3>{esc(path.name)}</h3>" + "".join(f'<p class="note">{esc(line)}</p>' for line in lines)
    return head + table(METRIC_HEADER, rows, (False, True, True, False))


# ---- the document -----------------------------------------------------------------------------------


def check_run_dir(run_dir: Path) -> None:
    """One-line :class:`ReportError` unless ``run_dir`` is a directory with ``metrics.csv``."""
    if not run_dir.is_dir():
        raise ReportError(f"{run_dir}: run directory not found (give the --out directory of `diffsat train`)")
    if not run_file(run_dir, METRICS_FILE).is_file():
        raise ReportError(f"{run_dir}: no metrics.csv in the run directory (train first, or check the path)")


def build_report(run_dir: str | Path, metrics_files: Sequence[str | Path] = (),
                 figures: Sequence[str | Path] = (), max_grids: int = MAX_GRIDS) -> str:
    """The HTML text of the report of ``run_dir``, with extra evaluation JSON files and figures."""
    run_dir = Path(run_dir)
    check_run_dir(run_dir)
    metrics = read_metrics(run_dir)
    body = [run_heading(run_dir), metrics_section(metrics), curves_section(run_dir, metrics),
            samples_section(run_dir, max_grids)]
    if metrics_files:
        body.append("<h2>Evaluation</h2>" + "".join(evaluation_section(Path(p)) for p in metrics_files))
    if figures:
        body.append("<h2>Figures</h2>" + "".join(figure(Path(p), Path(p).name) for p in figures))
    body.append(config_section(run_dir))
    return document(f"diffsat run report: {run_dir.resolve().name}", body)


def document(title: str, body: Sequence[str]) -> str:
    """A self-contained HTML page: ``title`` (escaped here) and the already-escaped HTML ``body`` parts."""
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>'
            f"<style>{_STYLE}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")


def run_heading(run_dir: Path, what: str = "diffsat run") -> str:
    """The report's title line and a note naming the run directory, the time and the diffsat version."""
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return (f"<h1>{esc(what)}: {esc(run_dir.resolve().name)}</h1>"
            f'<p class="note">{esc(run_dir.resolve())} · report written {esc(when)} by diffsat {esc(__version__)}</p>')


def write_report(run_dir: str | Path, metrics_files: Sequence[str | Path] = (), figures: Sequence[str | Path] = (),
                 out: str | Path | None = None, max_grids: int = MAX_GRIDS) -> Path:
    """Write the report of ``run_dir`` atomically to ``out`` (default ``RUN_DIR/report.html``); returns the path."""
    text = build_report(run_dir, metrics_files, figures, max_grids)
    return atomic_write_text(Path(out) if out else run_file(run_dir, REPORT_FILE), text)
