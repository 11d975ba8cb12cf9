"""Starting and resuming a run: removing what killed saves left, setting aside unreadable checkpoints, and
refusing a fresh start over a run that holds one."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

from ..errors import CheckpointError
from ..fileio import remove_stray_tmp_files
from .checkpoints import Checkpoint, _old_layout, committed_checkpoints
from .names import CHECKPOINTS_DIR, SAMPLES_DIR

_UNCOMMITTED = re.compile(r"step-\d+\.(?:tmp|old)-\d+")


def remove_uncommitted(run_dir: str | Path) -> list[Path]:
    """Delete what killed saves left behind: ``checkpoints/step-*.tmp-<pid>`` / ``.old-<pid>`` directories
    and the temporary files of atomic writes in the run directory and ``samples/``; returns their paths.
    Only while no process writes into the run."""
    run_dir = Path(run_dir)
    folder = run_dir / CHECKPOINTS_DIR
    leftovers = [p for p in (folder.iterdir() if folder.is_dir() else ()) if _UNCOMMITTED.fullmatch(p.name)]
    for path in leftovers:
        shutil.rmtree(path, ignore_errors=True)
    return leftovers + remove_stray_tmp_files(run_dir) + remove_stray_tmp_files(run_dir / SAMPLES_DIR)


def set_aside_newer(run_dir: str | Path, resumed: Checkpoint) -> list[Path]:
    """Rename the committed checkpoints newer than ``resumed`` (those that did not read) to
    ``step-XXXXXXX.unreadable``, kept for inspection, so the resumed run's saves succeed them; returns the
    new paths."""
    moved = []
    for checkpoint in committed_checkpoints(run_dir):
        if checkpoint.step > resumed.step:
            target = checkpoint.folder.with_name(f"{checkpoint.folder.name}.unreadable")
            if target.exists():
                shutil.rmtree(target)
            os.rename(checkpoint.folder, target)
            moved.append(target)
    return moved


def check_fresh_start(run_dir: str | Path) -> None:
    """Refuse to start a new run over one that holds a checkpoint (it would mix the two runs' checkpoints)."""
    run_dir = Path(run_dir)
    held = (committed_checkpoints(run_dir) or [None])[0] or _old_layout(run_dir)
    if held is not None:
        raise CheckpointError(f"{run_dir} already holds a training checkpoint ({held.folder}): continue it with "
                              f"--resume, or train into another --out")
