"""What ``diffsat evaluate`` does around the metric suite: which MNIST files train the classifier, which
feature extractors to load, the metric table (shared by the command line and the HTML run report) and the
result JSON."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from diffsat.data.mnist import resolve_mnist_source
from diffsat.evaluation.classifier import (
    ClassifierError,
    DigitClassifier,
    classifier_metadata,
    default_classifier_path,
    load_classifier,
)
from diffsat.evaluation.suite import Evaluation
from diffsat.evaluation.inception import FIDInceptionV3, load_inception
from diffsat.fileio import atomic_write_text

METRIC_HEADER = ("metric", "samples", "real baseline", "better")


def fmt(value: Any) -> str:
    """A number as short text: integers whole, others to 4 significant digits; ``None`` / NaN as ``n/a``."""
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        return "n/a" if value is None else str(value)
    if not math.isfinite(value):
        return "n/a" if math.isnan(value) else str(value)
    if float(value).is_integer() and abs(value) < 1e9:
        return str(int(value))
    return f"{value:.4g}"


def metric_cells(key: str, row: Mapping[str, Any]) -> tuple[str, str, str, str]:
    """One metric of the result JSON (``{"label", "value", "baseline", "better", "error"?,
    "baseline_error"?}``) as the four cells of :data:`METRIC_HEADER`; ``key`` labels a row without a label."""
    value, base = fmt(row.get("value")), fmt(row.get("baseline"))
    if row.get("error") is not None:
        value += f" ± {fmt(row['error'])}"
    if row.get("baseline_error") is not None:
        base += f" ± {fmt(row['baseline_error'])}"
    return str(row.get("label", key)), value, base, str(row.get("better", ""))


def text_table(rows: list[tuple[str, ...]]) -> list[str]:
    """Lines of a plain-text table: a header row, a rule, the rows; the first column left-aligned, the
    others but the last right-aligned."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for i, r in enumerate(rows):
        cells = [f"{c:<{w}}" if j in (0, len(r) - 1) else f"{c:>{w}}" for j, (c, w) in enumerate(zip(r, widths))]
        lines.append("  ".join(cells).rstrip())
        if i == 0:
            lines.append("-" * (sum(widths) + 2 * (len(widths) - 1)))
    return lines


def format_report(result: Evaluation, extractors: Mapping[str, Any] | None = None) -> str:
    """The printed report of an evaluation: the compared sets, then one row per metric (samples, real
    baseline, how to read it)."""
    sets, ref = result.sets, result.sets["reference"]
    lines = [
        f"samples:   {sets['samples']['source']}",
        f"reference: {ref['source']}: {ref['n_evaluation']} for evaluation, {ref['n_baseline']} as the real baseline",
    ]
    if sets.get("train"):
        lines.append(f"train set: {sets['train']['source']}")
    if extractors and "classifier" in extractors:
        c = extractors["classifier"]
        lines.append(f"classifier: {c['path']} (MNIST test accuracy {100 * c['test_accuracy']:.2f} %)")
    metrics = result.to_dict()["metrics"]
    lines += [""] + text_table([METRIC_HEADER] + [metric_cells(k, m) for k, m in metrics.items()])
    if any(m.error is not None for m in result.metrics):
        st = result.settings
        lines.append(f"KID: mean ± standard deviation over {st.kid_subsets} random subsets of up to "
                     f"{st.kid_subset_size} images per set")
    return "\n".join(lines)


def result_record(result: Evaluation, extractors: Mapping[str, Any], seconds: float) -> dict[str, Any]:
    """The result JSON: the evaluation (:meth:`Evaluation.to_dict`), the extractors used and the time taken."""
    return {**result.to_dict(), "extractors": dict(extractors), "seconds": round(seconds, 1)}


def write_result(path: Path, record: Mapping[str, Any]) -> Path:
    """Write the result JSON atomically (indented, one trailing newline)."""
    return atomic_write_text(path, json.dumps(record, indent=2) + "\n")


def classifier_training_root(path: Path | None) -> Path:
    """The folder with the full MNIST idx files the digit classifier trains on: ``path``, else the default
    MNIST source when that is idx files; a one-line :class:`ClassifierError` otherwise."""
    source = resolve_mnist_source(path)
    if source.kind != "idx":
        found = "the bundled 5,000-digit subset" if source.kind == "bundled" else f"MNIST PNG folders in {source.root}"
        raise ClassifierError(
            f"the digit classifier trains on the full MNIST idx files (60,000 train + 10,000 test digits), but only "
            f"{found} was found: pass --mnist PATH to a folder with train-images-idx3-ubyte.gz, "
            "train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz and t10k-labels-idx1-ubyte.gz (or set $DIFFSAT_DATA)"
        )
    return source.root


def load_extractors(kind: str, classifier: Path | None, inception: Path | None
                    ) -> tuple[DigitClassifier | None, FIDInceptionV3 | None, dict[str, Any]]:
    """(digit classifier for ``kind == "digits"`` (the cached one unless ``classifier``), the Inception
    network when ``inception`` names its weights, their description for the result JSON)."""
    info: dict[str, Any] = {}
    digit_net = inception_net = None
    if kind == "digits":
        digit_net = load_classifier(classifier)
        path = classifier or default_classifier_path()
        meta = classifier_metadata(path)
        info["classifier"] = {"path": str(path), "test_accuracy": float(meta.get("test_accuracy", "nan")),
                              "train_images_sha256": meta.get("train_images_sha256")}
    if inception is not None:
        inception_net = load_inception(inception)
        info["inception"] = {"path": str(inception)}
    return digit_net, inception_net, info
