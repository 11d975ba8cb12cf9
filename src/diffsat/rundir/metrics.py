"""``metrics.csv``: one row per logged step, columns added as new metrics appear.

Training rows carry the loss, learning rate, gradient norm and throughput; evaluation rows (every
``train.eval_every`` steps) carry sample-quality numbers. A row leaves the other columns empty. When a row
brings a new column the file is rewritten once, atomically, with the wider header.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

import numpy as np

from ..errors import DiffsatError
from ..fileio import atomic_write_text
from .names import METRICS_FILE, run_file

TRAIN_FIELDS = ["step", "loss", "lr", "grad_norm", "images_per_s", "gflops", "elapsed_s"]
"""``loss``: mean over the log interval; ``images_per_s``: global (all ranks); ``gflops``: achieved GFLOP/s."""


class MetricsLog:
    """Appends rows to ``path``; on resume keeps only rows up to the checkpoint's step."""

    def __init__(self, path: Path, resume_step: int | None = None) -> None:
        self.path = path
        self.fields, self.rows = list(TRAIN_FIELDS), []
        if resume_step is not None and path.exists():
            with path.open(newline="") as f:
                reader = csv.DictReader(f)
                self.fields += [k for k in reader.fieldnames or [] if k not in self.fields]
                self.rows = [r for r in reader if int(r["step"]) <= resume_step]
        self._rewrite()

    def _rewrite(self) -> None:
        out = io.StringIO()
        writer = csv.DictWriter(out, self.fields)
        writer.writeheader()
        writer.writerows(self.rows)
        atomic_write_text(self.path, out.getvalue())

    def write(self, row: dict[str, float]) -> None:
        self.rows.append(row)
        new = [k for k in row if k not in self.fields]
        if new:
            self.fields += new
            self._rewrite()
            return
        with self.path.open("a", newline="") as f:
            csv.DictWriter(f, self.fields).writerow(row)


def read_metrics(run_dir: str | Path) -> dict[str, np.ndarray]:
    """Columns of ``RUN_DIR/metrics.csv`` as float arrays (NaN where a row leaves a column empty)."""
    path = run_file(run_dir, METRICS_FILE)
    if not path.is_file():
        raise DiffsatError(f"{path}: no metrics.csv (train first, or check the run directory)")
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
        fields = reader.fieldnames or []
    return {k: np.array([float(r[k]) if r.get(k) not in (None, "") else math.nan for r in rows]) for k in fields}
