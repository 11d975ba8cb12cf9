"""Training a change head: seeded crops of cached samples, cross-entropy, AdamW, a CPU-time budget, the best
checkpoint by validation change-F1, and exact resume.

A method's run directory follows ``diffsat train``'s conventions: ``config.json``, ``model.safetensors``
(the last weights), ``best.safetensors`` (the best validation change-F1), ``train_state.pt`` (optimiser,
step, CPU seconds, best F1; read with ``weights_only=True``), ``metrics.csv`` and ``loss.png``. Every draw
of step ``s`` (which pairs, their crops and flips, dropout) comes from generators seeded by ``(seed, s)``,
so a resumed run takes exactly the steps an uninterrupted one would.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from tqdm.auto import tqdm

from ..errors import CheckpointError
from ..fileio import atomic_write
from ..rundir import METRICS_FILE, MODEL_FILE, STATE_FILE, load_state_into, read_safetensors, safe_torch_load
from ..training.loop import batch_indices, step_seed
from ..training.metrics import MetricsLog
from .metrics import Accumulator
from .methods import Method, Sample, aligned, predict_pair
from .pairs import Pair, apply_crop, draw_crop

BEST_FILE = "best.safetensors"


@dataclass
class TrainSummary:
    step: int
    cpu_s: float
    best_f1: float
    best_step: int
    stopped_by: str


def save_head(net: torch.nn.Module, path: Path, meta: dict[str, str] | None = None) -> None:
    """``net``'s weights to ``path`` as safetensors (with string metadata ``meta``), atomically."""
    weights = {k: v.detach().contiguous().cpu() for k, v in net.state_dict().items()}
    atomic_write(path, lambda p: save_file(weights, p, metadata=meta))


def validation_f1(method: Method, pairs: list[Pair]) -> float:
    """Change-F1 of ``method`` over ``pairs`` (one confusion matrix)."""
    acc = Accumulator()
    for pair in pairs:
        acc.add(pair.name, predict_pair(method, pair)[0], pair.label)
    return acc.result()["f1"]


class HeadTrainer:
    """Trains ``method.net`` on ``train_pairs`` into ``run_dir`` (``resume``: from its checkpoint)."""

    def __init__(self, method: Method, run_dir: Path, train_pairs: list[Pair], val_pairs: list[Pair],
                 resume: bool = False, progress: bool = True) -> None:
        self.method, self.run_dir, self.val_pairs = method, Path(run_dir), val_pairs
        self.cfg, self.progress = method.cfg, progress
        tc = self.cfg.train
        pairs = [aligned(p, method.align) for p in train_pairs]
        self.samples = [method.sample(p) for p in tqdm(pairs, desc=f"{method.name}: samples", disable=not progress)]
        self.labels = [torch.from_numpy(p.label).long() for p in pairs]
        self.optimizer = torch.optim.AdamW(method.net.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
        self.weight = None if tc.change_weight is None else torch.tensor([1.0, tc.change_weight], device=method.device)
        self.step, self.cpu_s, self.best_f1, self.best_step = 0, 0.0, -1.0, -1
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if resume:
            self._resume()
        self.log = MetricsLog(self.run_dir / METRICS_FILE, resume_step=self.step if resume else None)

    # ---- checkpoints

    def save(self) -> None:
        meta = {"step": str(self.step), "format": "diffsat-cd-head-v1", "method": self.method.name}
        save_head(self.method.net, self.run_dir / MODEL_FILE, meta)
        state = {"step": self.step, "cpu_s": self.cpu_s, "best_f1": self.best_f1, "best_step": self.best_step,
                 "optimizer": self.optimizer.state_dict()}
        atomic_write(self.run_dir / STATE_FILE, lambda p: torch.save(state, p))

    def _resume(self) -> None:
        path = self.run_dir / STATE_FILE
        if not path.is_file():
            raise CheckpointError(f"{path}: no train state to resume from; start without --resume")
        state = safe_torch_load(path)
        load_head(self.method.net, self.run_dir / MODEL_FILE)
        self.optimizer.load_state_dict(state["optimizer"])
        self.step, self.cpu_s = state["step"], state["cpu_s"]
        self.best_f1, self.best_step = state["best_f1"], state["best_step"]

    # ---- steps

    def batch(self) -> tuple[Sample, torch.Tensor]:
        """The step's crops: each key ``(B, C, S/f, S/f)``, labels ``(B, S, S)`` int64."""
        tc, m = self.cfg.train, self.method
        idx = batch_indices(len(self.samples), tc.batch_size, self.step, tc.seed).tolist()
        gen = torch.Generator().manual_seed(step_seed(tc.seed, self.step) ^ 3)
        parts: dict[str, list[torch.Tensor]] = {k: [] for k in m.factors}
        labels = []
        for i in idx:
            h, w = self.labels[i].shape
            crop = draw_crop(h, w, self.cfg.data, gen, align=m.align)
            for key, factor in m.factors.items():
                parts[key].append(apply_crop(self.samples[i][key], crop, factor))
            labels.append(apply_crop(self.labels[i], crop))
        device = m.device
        return {k: torch.stack(v).to(device) for k, v in parts.items()}, torch.stack(labels).to(device)

    def train_step(self) -> float:
        batch, labels = self.batch()
        torch.manual_seed(step_seed(self.cfg.train.seed, self.step))  # dropout draws from the global generator
        self.method.net.train()
        loss = F.cross_entropy(self.method.logits(batch), labels, weight=self.weight)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.step += 1
        return loss.item()

    def evaluate(self) -> None:
        if not self.val_pairs:
            return
        f1 = validation_f1(self.method, self.val_pairs)
        self.log.write({"step": self.step, "val_f1": f1})
        if f1 > self.best_f1:
            self.best_f1, self.best_step = f1, self.step
            meta = {"step": str(self.step), "val_f1": repr(f1), "method": self.method.name}
            save_head(self.method.net, self.run_dir / BEST_FILE, meta)

    def run(self) -> TrainSummary:
        """Train to ``train.max_steps`` or ``train.cpu_minutes``; evaluate, save and return a summary."""
        tc = self.cfg.train
        budget = tc.cpu_minutes * 60 if tc.cpu_minutes else math.inf
        stopped_by, losses = "max_steps", []
        bar = tqdm(total=tc.max_steps, initial=self.step, desc=f"{self.method.name}: training", unit="step",
                   disable=not self.progress)
        try:
            while self.step < tc.max_steps:
                if self.cpu_s >= budget:
                    stopped_by = "cpu_minutes"
                    break
                t0 = time.process_time()
                losses.append(self.train_step())
                self.cpu_s += time.process_time() - t0
                bar.update(1)
                self._periodic(losses)
        except KeyboardInterrupt:
            self.save()
            raise
        finally:
            bar.close()
        if self.step % tc.eval_every or self.best_step < 0:
            self.evaluate()
        if self.best_step < 0:  # no validation split: the last weights are the best
            save_head(self.method.net, self.run_dir / BEST_FILE)
        self.save()
        return TrainSummary(self.step, self.cpu_s, self.best_f1, self.best_step, stopped_by)

    def _periodic(self, losses: list[float]) -> None:
        tc = self.cfg.train
        if self.step % tc.log_every == 0:
            window = losses[-tc.log_every:]
            self.log.write({"step": self.step, "loss": float(np.mean(window)), "lr": tc.lr,
                            "elapsed_s": self.cpu_s, "cpu_s": self.cpu_s})
        if self.step % tc.eval_every == 0:
            self.evaluate()
        if self.step % tc.save_every == 0:
            self.save()


def load_head(net: torch.nn.Module, path: Path) -> None:
    """Head weights from a safetensors file (keys and shapes checked)."""
    load_state_into(net, read_safetensors(path), str(path))


def load_best(method: Method, run_dir: Path, last: bool = False) -> None:
    """Load the run's best (or ``last``) head weights into ``method.net``."""
    load_head(method.net, Path(run_dir) / (MODEL_FILE if last else BEST_FILE))
