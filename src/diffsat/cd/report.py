"""The change-detection run's ``report.html``: the test table of the method beside its baselines, the
training summary and loss curve, figures of the test pairs, and the config."""

from __future__ import annotations

import json
from pathlib import Path

from ..fileio import atomic_write_text
from .. import rundir
from ..plots import plot_loss_curve
from ..evaluation.results import fmt
from ..report import config_section, document, figure, metrics_section, run_heading, table

MAX_FIGURES = 8
COLUMNS = ("f1", "iou", "precision", "recall", "oa", "kappa", "mean_f1", "mean_iou")


def results_section(run_dir: Path) -> str:
    """The test-split table (one row per method) and the per-pair figures of each method."""
    path = run_dir / rundir.CD_TEST_METRICS_FILE
    if not path.is_file():
        return f'<h2>Change detection</h2><p class="note">no {rundir.CD_TEST_METRICS_FILE} (no test split)</p>'
    doc = json.loads(path.read_text())
    rows = []
    for name, r in doc["methods"].items():
        t = r.get("training") or {}
        cpu = fmt(t["cpu_s"] / 60) if t else "none"
        rows.append((name, *(fmt(r.get(c)) for c in COLUMNS), cpu, fmt(t.get("step")) if t else "-",
                     fmt(t.get("best_f1")) if t else "-"))
    header = ("method", "change-F1", "change-IoU", "precision", "recall", "OA", "kappa", "mean F1", "mean IoU",
              "CPU min", "steps", "best val F1")
    split = doc["split"]
    note = (f'<p class="note">test split: {len(split["test"])} pairs; trained on {len(split["train"])}, validated on '
            f'{len(split["val"])}. One confusion matrix per method over the whole split.</p>')
    parts = ["<h2>Change detection (test split)</h2>", note, table(header, rows, (False,) + (True,) * 11)]
    first = next(iter(doc["methods"]), None)
    for name in doc["methods"]:
        method = run_dir if name == first else run_dir / rundir.CD_BASELINES_DIR / name
        folder = method / rundir.CD_TEST_DIR / rundir.CD_FIGURES_DIR
        pngs = sorted(folder.glob("*.png"))[:MAX_FIGURES] if folder.is_dir() else []
        if pngs:
            parts.append(f"<h3>{name}: before | after | truth | prediction (TP white, FP red, FN blue)</h3>")
            parts += [figure(p, f"{p.name}, F1 {fmt(doc['methods'][name]['per_image_f1'].get(p.name))}") for p in pngs]
    return "".join(parts)


def write_cd_report(run_dir: str | Path) -> Path:
    run_dir = Path(run_dir)
    body = [run_heading(run_dir, "diffsat change-detection run"), results_section(run_dir)]
    if rundir.run_file(run_dir, rundir.METRICS_FILE).is_file():
        plot_loss_curve(run_dir)
        body += [metrics_section(rundir.read_metrics(run_dir)), "<h2>Loss</h2>" + figure(rundir.run_file(run_dir, rundir.LOSS_PLOT), "training loss")]
    body.append(config_section(run_dir))
    return atomic_write_text(rundir.run_file(run_dir, rundir.REPORT_FILE), document(f"diffsat cd run: {run_dir.resolve().name}", body))
