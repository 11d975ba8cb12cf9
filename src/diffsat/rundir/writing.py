"""Writing checkpoints: each one whole, committed by one atomic rename; exporting its weights; keeping N.

A checkpoint is written into ``checkpoints/step-XXXXXXX.tmp-<pid>/``, fsync'ed, and committed by renaming
the directory to ``step-XXXXXXX``, so a kill, a full disk or a power cut leaves either the whole new
checkpoint or none of it beside the previous ones. A failed save is one :class:`CheckpointError` line.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import save_file
from torch import nn

from ..ddpmcd import StateDict
from ..errors import CheckpointError
from ..fileio import atomic_write, fsync_path
from .checkpoints import Checkpoint, _old_layout, committed_checkpoints, step_dir
from .names import CHECKPOINT_FILES, CHECKPOINT_FORMAT, EMA_FILE, MANIFEST_FILE, MODEL_FILE, STATE_FILE, WEIGHTS_FORMAT


def _weights_of(module: nn.Module) -> StateDict:
    return {k: v.detach().contiguous().cpu() for k, v in module.state_dict().items()}


def _tensor_bytes(obj: Any) -> int:
    """Bytes of all tensors in a nest of dicts, lists and tuples."""
    if isinstance(obj, torch.Tensor):
        return obj.nbytes
    if isinstance(obj, Mapping):
        return sum(_tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_tensor_bytes(v) for v in obj)
    return 0


def _mib(n: float) -> str:
    return f"{n / 2**20:.1f} MiB"


def _io_failure(err: BaseException) -> str:
    """One line of an OSError / safetensors / torch write error (its first line, errno name included)."""
    if isinstance(err, OSError) and err.strerror:
        return f"{err.strerror} [{errno.errorcode.get(err.errno, err.errno)}]"
    return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__


def _save_error(err: BaseException, path: Path, step: int, needed: int, run_dir: Path) -> CheckpointError:
    try:
        free = f"; {_mib(shutil.disk_usage(run_dir).free)} free there"
    except OSError:
        free = ""
    last = (committed_checkpoints(run_dir) or [None])[0] or _old_layout(run_dir)
    intact = (f"the last committed checkpoint ({last.folder}) is intact, so fix the cause and run "
              f"diffsat train --resume --out {run_dir}") if last else "no earlier checkpoint exists"
    return CheckpointError(f"could not write the checkpoint of step {step}: {path}: {_io_failure(err)} (the "
                           f"checkpoint needs about {_mib(needed)}{free}); training stopped; {intact}")


def _write_step_dir(tmp: Path, model: StateDict, ema: StateDict, state: dict[str, Any],
                    on_file: Callable[[Path], None]) -> None:
    """Write and fsync the checkpoint files and then the manifest into the new directory ``tmp``;
    ``on_file`` is told each path before it is written (for error messages)."""
    meta = {"step": str(state["step"]), "format": WEIGHTS_FORMAT}
    tmp.mkdir(parents=True)
    for name, weights in ((MODEL_FILE, model), (EMA_FILE, ema)):
        on_file(tmp / name)
        save_file(weights, str(tmp / name), metadata=meta)
    on_file(tmp / STATE_FILE)
    torch.save(state, tmp / STATE_FILE)
    sizes = {name: (tmp / name).stat().st_size for name in CHECKPOINT_FILES}
    on_file(tmp / MANIFEST_FILE)
    manifest = {"format": CHECKPOINT_FORMAT, "step": state["step"], "files": sizes}
    (tmp / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    for name in (*CHECKPOINT_FILES, MANIFEST_FILE):
        fsync_path(tmp / name)
    fsync_path(tmp)


def _remove_dir(folder: Path) -> None:
    """Delete a directory so that a kill part-way leaves an uncommitted leftover, never half a checkpoint:
    first renamed to ``NAME.old-<pid>``, then removed."""
    aside = folder.with_name(f"{folder.name}.old-{os.getpid()}")
    os.rename(folder, aside)
    shutil.rmtree(aside)


def _commit(tmp: Path, final: Path) -> None:
    """The one atomic step: rename the complete directory ``tmp`` to ``final`` (replacing a checkpoint of
    the same step, which only an unreadable one set aside can be), then make the rename durable."""
    if final.exists():
        _remove_dir(final)
    os.rename(tmp, final)
    fsync_path(final.parent)


def _link_or_copy(src: Path, dst: str) -> None:
    """Make ``dst`` a hard link to ``src`` (no space, no time), or a copy where links are not possible."""
    Path(dst).unlink(missing_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def export_weights(run_dir: str | Path, checkpoint: Checkpoint) -> None:
    """Make the run's top-level ``model.safetensors`` / ``ema.safetensors`` (what users and other tools read)
    the weights of ``checkpoint``, each replaced atomically; a flat ``train_state.pt`` of the old layout,
    now superseded, is removed."""
    run_dir = Path(run_dir)
    if checkpoint.folder == run_dir:
        return
    for name in (MODEL_FILE, EMA_FILE):
        target = run_dir / name
        if target.is_file() and os.path.samefile(target, checkpoint.file(name)):
            continue  # linked already (a rename onto the same file would do nothing and leave the temporary)
        atomic_write(target, lambda tmp, n=name: _link_or_copy(checkpoint.file(n), tmp))
    (run_dir / STATE_FILE).unlink(missing_ok=True)


def _prune(run_dir: Path, keep: int) -> None:
    for old in committed_checkpoints(run_dir)[keep:]:
        _remove_dir(old.folder)


def save_checkpoint(run_dir: str | Path, model: nn.Module, ema: nn.Module, state: dict[str, Any],
                    keep: int = 2) -> Checkpoint:
    """Write a whole checkpoint and commit it by one atomic rename; then export the weights and keep only the
    newest ``keep`` checkpoints.

    ``state``: tensors and numbers with ``state["step"]``. The files go into ``checkpoints/step-XXXXXXX.tmp-<pid>``
    with a manifest of their sizes, are fsync'ed, and the directory is renamed to ``checkpoints/step-XXXXXXX``:
    a reader sees the whole checkpoint or none of it. Any I/O failure removes the partial directory and is one
    :class:`CheckpointError` line (the path, the cause, the space the checkpoint needs); the checkpoints
    committed before stay as they were.
    """
    run_dir, step = Path(run_dir), int(state["step"])
    final = step_dir(run_dir, step)
    tmp = final.with_name(f"{final.name}.tmp-{os.getpid()}")
    model_weights, ema_weights = _weights_of(model), _weights_of(ema)
    needed = _tensor_bytes((model_weights, ema_weights, state))
    current = [tmp]
    try:
        if tmp.exists():
            shutil.rmtree(tmp)
        _write_step_dir(tmp, model_weights, ema_weights, state, current.append)
        current.append(final)
        _commit(tmp, final)
    except (OSError, RuntimeError, SafetensorError) as err:  # torch.save reports write errors as RuntimeError
        shutil.rmtree(tmp, ignore_errors=True)
        raise _save_error(err, current[-1], step, needed, run_dir) from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    checkpoint = Checkpoint(step, final)
    try:
        export_weights(run_dir, checkpoint)
        _prune(run_dir, keep)
    except OSError as err:
        raise CheckpointError(f"the checkpoint of step {step} is committed in {final}, but updating "
                              f"{err.filename or run_dir} failed: {_io_failure(err)}; training stopped; fix the "
                              f"cause and run diffsat train --resume --out {run_dir}") from None
    return checkpoint
