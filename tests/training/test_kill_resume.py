"""kill -9 at many moments, then resume: every resumed run ends bit-identical to the uninterrupted run.

Each run is a forked child process (torch is imported once, by the test process, so a moment costs a few
training steps, not an interpreter start). A child counts the file operations of the run directory (each
checkpoint file written, fsync, rename, link, replace, directory removal) and sends itself SIGKILL just
before the k-th one, right after a torn (half-written) file, or inside a training step; a second child then
resumes the run to its end.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import traceback
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch._dynamo  # noqa: F401 - what AdamW imports on first use (4 s): imported once here, not per child
from conftest import tiny_config
from safetensors.torch import load_file

from diffsat import rundir
from diffsat.config import parse_config
from diffsat.data import ImageDataset, load_dataset
from diffsat.training.runs import make_trainer
from diffsat.training.trainer import Trainer

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="forks a child process per run (POSIX only)")

CONFIG = parse_config(tiny_config(data={"limit": 16}, batch_size=4, max_steps=5, save_every=1, keep_checkpoints=2,
                                  log_every=1, threads=1, ema_decay=0.9))
WRITES = ("save_file", "save")  # the calls that write a checkpoint file (safetensors, torch.save)
FILE_OPS = ((rundir.writing, "save_file"), (torch, "save"), (rundir.writing, "fsync_path"), (os, "rename"),
            (os, "replace"), (os, "link"), (shutil, "rmtree"))


def in_child(body: Callable[[], None]) -> int:
    """Run ``body`` in a forked child (one CPU thread: OpenMP's pool does not survive a fork); returns the
    wait status. The child never returns into pytest."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            torch.set_num_threads(1)
            body()
            code = 0
        except BaseException:  # noqa: BLE001 - report anything, then leave the child
            traceback.print_exc()
        finally:
            os._exit(code)
    return os.waitpid(pid, 0)[1]


def watch_file_ops(log: list[str], kill_at: int | None, torn: bool) -> None:
    """Wrap every file operation of a run: append its name to ``log``; at operation ``kill_at`` (1-based)
    SIGKILL this process before it runs, or, with ``torn``, after writing only half of the file. An fsync
    is a moment but is not performed: it guards against power loss, and a killed process's writes survive."""
    for module, name in FILE_OPS:
        real = (lambda path: None) if name == "fsync_path" else getattr(module, name)

        def op(*args, _real=real, _name=name, **kwargs):
            log.append(_name)
            if len(log) != kill_at:
                return _real(*args, **kwargs)
            if torn:
                _real(*args, **kwargs)
                path = Path(args[1])
                path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
            os.kill(os.getpid(), signal.SIGKILL)

        setattr(module, name, op)


def train(run_dir: Path, data: ImageDataset, resume: bool) -> Trainer:
    resume = resume and bool(rundir.committed_checkpoints(run_dir))  # killed before the first commit: start again
    return make_trainer(CONFIG, run_dir, resume=resume, dataset=data)


def killed_run(run_dir: Path, data: ImageDataset, resume: bool, kill_at: int | None = None, torn: bool = False,
               mid_step: int | None = None, log_to: Path | None = None) -> int:
    """Train (or resume) ``run_dir`` in a child that kills itself at file operation ``kill_at`` or inside
    training step ``mid_step`` (after the backward pass, before the optimiser step)."""
    def body() -> None:
        log: list[str] = []
        watch_file_ops(log, kill_at, torn)
        Trainer.measure_flops = lambda self: 0.0  # only for logging; 1 s a run
        trainer = train(run_dir, data, resume)
        if mid_step is not None:
            real_step = trainer.optimizer.step

            def step(*args, **kwargs):
                if trainer.step == mid_step:
                    os.kill(os.getpid(), signal.SIGKILL)
                return real_step(*args, **kwargs)

            trainer.optimizer.step = step
        trainer.run(progress=False)
        if log_to is not None:
            log_to.write_text(json.dumps(log))

    return in_child(body)


def final_state(run_dir: Path) -> dict[str, torch.Tensor]:
    """Weights, EMA and optimiser tensors of the run's newest checkpoint, flattened to one dict."""
    newest = rundir.committed_checkpoints(run_dir)[0]
    tensors = {f"model.{k}": v for k, v in load_file(newest.file(rundir.MODEL_FILE)).items()}
    tensors |= {f"ema.{k}": v for k, v in load_file(newest.file(rundir.EMA_FILE)).items()}
    state = torch.load(newest.file(rundir.STATE_FILE), weights_only=True)
    for index, slots in state["optimizer"]["state"].items():
        tensors |= {f"optimizer.{index}.{k}": torch.as_tensor(v) for k, v in slots.items()}
    tensors["ema_updates"] = torch.tensor(state["ema_updates"])
    tensors["step"] = torch.tensor(state["step"])
    return tensors


def moments(ops: list[str]) -> list[dict]:
    """The kills: before every file operation of the third checkpoint (its first with a pruning of the
    oldest) and of the run's first save, torn writes of the second checkpoint's files, inside three training
    steps, and a kill of a resumed run while it tidies up before training."""
    saves = [i for i, name in enumerate(ops, start=1) if name == "save_file" and ops[i - 2] != "save_file"]
    third = range(saves[2], saves[3])
    second_writes = [i for i in range(saves[1], saves[2]) if ops[i - 1] in WRITES]
    kills = [{"kill_at": k} for k in (saves[0], *third)]
    kills += [{"kill_at": k, "torn": True} for k in second_writes]
    kills += [{"mid_step": s} for s in (0, 2, 4)]
    kills += [{"kill_at": saves[1] + 7, "then_kill_resume_at": n} for n in (1, 2, 3)]  # after commit 2, in export
    return kills


@pytest.fixture(scope="module")
def data() -> ImageDataset:
    return load_dataset(CONFIG.data)


def test_resume_after_sigkill_at_any_moment_is_bit_identical(tmp_path: Path, data: ImageDataset) -> None:
    log = tmp_path / "ops.json"
    assert in_child(lambda: None) == 0
    assert killed_run(tmp_path / "straight", data, resume=False, log_to=log) == 0
    ops = json.loads(log.read_text())
    expected = final_state(tmp_path / "straight")
    kills = moments(ops)
    assert len(kills) >= 20
    for n, moment in enumerate(kills):
        run_dir = tmp_path / f"run{n}"
        then = moment.pop("then_kill_resume_at", None)
        status = killed_run(run_dir, data, resume=False, **moment)
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, (moment, status)
        if then is not None:  # the resumed run is killed too, while it removes leftovers and re-exports
            status = killed_run(run_dir, data, resume=True, kill_at=then)
            assert os.WIFSIGNALED(status), (moment, then, status)
        assert killed_run(run_dir, data, resume=True) == 0, moment
        state = final_state(run_dir)
        assert state.keys() == expected.keys(), moment
        different = [k for k in expected if not torch.equal(state[k], expected[k])]
        assert not different, (moment, different[:3])
        assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["step-0000004", "step-0000005"]
        assert not [p for p in run_dir.rglob("*") if p.name.endswith(".tmp")], moment
        for name in (rundir.MODEL_FILE, rundir.EMA_FILE):  # the exported weights are the newest checkpoint's
            exported, newest = load_file(run_dir / name), load_file(run_dir / "checkpoints" / "step-0000005" / name)
            assert all(torch.equal(exported[k], newest[k]) for k in newest), (moment, name)
