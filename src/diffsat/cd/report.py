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


def _training_cells(r: dict) -> tuple[str, str, str]:
    """CPU minutes, steps and best validation F1 of a method (summed / averaged over the folds of a
    cross-validation), or dashes for CVA."""
    runs = [f["training"] for f in r["folds"]] if "folds" in r else [r.get("training")]
    runs = [t for t in runs if t]
    if not runs:
        return "none", "-", "-"
    return (fmt(sum(t["cpu_s"] for t in runs) / 60), fmt(sum(t["step"] for t in runs)),
            fmt(sum(t["best_f1"] for t in runs) / len(runs)))


def _figure_folders(run_dir: Path, doc: dict, name: str) -> list[Path]:
    first = next(iter(doc["methods"]))
    runs = [run_dir / rundir.CD_FOLDS_DIR / str(f["index"]) for f in doc["folds"]] if "folds" in doc else [run_dir]
    return [(r if name == first else r / rundir.CD_BASELINES_DIR / name) / rundir.CD_TEST_DIR / rundir.CD_FIGURES_DIR
            for r in runs]


def _note(doc: dict) -> str:
    if "folds" in doc:
        tests = "; ".join(f"fold {f['index']}: {', '.join(f['test'])}" for f in doc["folds"])
        return (f'<p class="note">cross-validation over {len(doc["folds"])} folds ({tests}): every pair scored by '
                "a model that never saw it; one confusion matrix per method summed over the folds (CPU minutes and "
                "steps summed, best validation F1 averaged over the folds).</p>")
    split = doc["split"]
    return (f'<p class="note">test split: {len(split["test"])} pairs; trained on {len(split["train"])}, validated '
            f'on {len(split["val"])}. One confusion matrix per method over the whole split.</p>')


def results_section(run_dir: Path) -> str:
    """The test table (one row per method), each pair's change-F1 per method, and the per-pair figures."""
    path = run_dir / rundir.CD_TEST_METRICS_FILE
    if not path.is_file():
        return f'<h2>Change detection</h2><p class="note">no {rundir.CD_TEST_METRICS_FILE} (no test split)</p>'
    doc = json.loads(path.read_text())
    methods = doc["methods"]
    rows = [(name, *(fmt(r.get(c)) for c in COLUMNS), *_training_cells(r)) for name, r in methods.items()]
    header = ("method", "change-F1", "change-IoU", "precision", "recall", "OA", "kappa", "mean F1", "mean IoU",
              "CPU min", "steps", "best val F1")
    parts = ["<h2>Change detection (test split)</h2>", _note(doc), table(header, rows, (False,) + (True,) * 11)]
    pairs = list(next(iter(methods.values()), {}).get("per_image_f1", {}))
    if pairs:
        pair_rows = [(p, *(fmt(r["per_image_f1"].get(p)) for r in methods.values())) for p in pairs]
        parts += ["<h3>Change-F1 of each pair</h3>",
                  table(("pair", *methods), pair_rows, (False,) + (True,) * len(methods))]
    for name in methods:
        pngs = [p for folder in _figure_folders(run_dir, doc, name) if folder.is_dir()
                for p in sorted(folder.glob("*.png"))][:MAX_FIGURES]
        if pngs:
            parts.append(f"<h3>{name}: before | after | truth | prediction (TP white, FP red, FN blue)</h3>")
            f1 = methods[name]["per_image_f1"]
            parts += [figure(p, f"{p.name}, F1 {fmt(f1.get(p.name, f1.get(p.stem)))}") for p in pngs]
    return "".join(parts)


def write_cd_report(run_dir: str | Path) -> Path:
    run_dir = Path(run_dir)
    body = [run_heading(run_dir, "diffsat change-detection run"), results_section(run_dir)]
    if rundir.run_file(run_dir, rundir.METRICS_FILE).is_file():
        plot_loss_curve(run_dir)
        body += [metrics_section(rundir.read_metrics(run_dir)), "<h2>Loss</h2>" + figure(rundir.run_file(run_dir, rundir.LOSS_PLOT), "training loss")]
    body.append(config_section(run_dir))
    return atomic_write_text(rundir.run_file(run_dir, rundir.REPORT_FILE), document(f"diffsat cd run: {run_dir.resolve().name}", body))
