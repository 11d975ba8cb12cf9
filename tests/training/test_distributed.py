"""Data-parallel training with 2 CPU processes (gloo): the ranks hold identical weights, and the result
equals one process training on the same global batch (to float tolerance)."""

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from conftest import tiny_config
from safetensors.torch import load_file

from diffsat.config import parse_config
from diffsat.rundir import committed_checkpoints
from diffsat.training.runs import make_trainer

TINY = tiny_config(
    model={"dropout": 0.0}, diffusion={"min_snr_gamma": 5.0}, data={"limit": 40, "hflip": True}, batch_size=4,
    max_steps=5, log_every=1, save_every=1000, sample_steps=2, lr=1e-3, threads=1,
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank(rank: int, world: int, port: int, config: dict, out: str) -> None:
    """One torchrun-like rank: the environment torchrun would set, then the public ``train``."""
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port), DIFFSAT_OFFLINE="1")
    from diffsat.training.runs import train

    train(parse_config(config), Path(out) / "run", progress=False)


CONDITIONAL = json.loads(json.dumps(TINY))
CONDITIONAL["model"]["num_classes"] = 10
CONDITIONAL["train"]["label_dropout"] = 0.3


@pytest.mark.parametrize("config", [TINY, CONDITIONAL], ids=["unconditional", "class-conditional"])
def test_two_ranks_equal_one_process_with_the_global_batch(tmp_path: Path, config: dict) -> None:
    mp.spawn(_rank, args=(2, free_port(), config, str(tmp_path / "ddp")), nprocs=2, join=True)
    single = json.loads(json.dumps(config))
    single["train"]["batch_size"] = 8  # = 4 per rank x 2 ranks
    trainer = make_trainer(parse_config(single), tmp_path / "single")
    trainer.run(progress=False)
    ddp = load_file(tmp_path / "ddp" / "run" / "model.safetensors")
    ours = trainer.model.state_dict()
    worst = max(float((ddp[k] - ours[k]).abs().max()) for k in ours)
    assert worst < 1e-5, worst
    metrics = (tmp_path / "ddp" / "run" / "metrics.csv").read_text().splitlines()
    assert len(metrics) == 1 + 5  # rank 0 alone logs: a header and one row per step


def _weights_rank(rank: int, world: int, port: int, config: dict, out: str) -> None:
    """Each rank trains, noting after each checkpoint whether it sees that checkpoint committed (rank 0
    commits slowly), saves the weights it holds, and resumes the run again."""
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port), DIFFSAT_OFFLINE="1")
    from diffsat import rundir
    from diffsat.training.distributed import setup, teardown

    if rank == 0:
        real_commit = rundir.writing._commit
        rundir.writing._commit = lambda tmp, final: (time.sleep(0.5), real_commit(tmp, final))
    dist = setup("cpu")
    trainer = make_trainer(parse_config(config), Path(out) / "run", dist=dist)
    seen, real_save = [], trainer.save

    def save(wait: bool = True) -> None:
        real_save(wait)
        seen.append([trainer.step, rundir.step_dir(trainer.run_dir, trainer.step).is_dir()])

    trainer.save = save
    trainer.run(progress=False)
    torch.save(trainer.model.state_dict(), Path(out) / f"rank{rank}.pt")
    torch.save(trainer.ema.model.state_dict(), Path(out) / f"ema{rank}.pt")
    resumed = make_trainer(parse_config(config), Path(out) / "run", resume=True, dist=dist)
    same = all(torch.equal(a, b) for a, b in zip(resumed.model.state_dict().values(), trainer.model.state_dict().values()))
    (Path(out) / f"seen{rank}.json").write_text(json.dumps({"saves": seen, "resumed": [resumed.step, same]}))
    teardown(dist)


def test_ranks_hold_identical_weights_and_wait_for_rank_0s_commit(tmp_path: Path) -> None:
    config = json.loads(json.dumps(TINY))
    config["train"]["save_every"] = 2
    mp.spawn(_weights_rank, args=(2, free_port(), config, str(tmp_path)), nprocs=2, join=True)
    for prefix in ("rank", "ema"):
        a = torch.load(tmp_path / f"{prefix}0.pt", weights_only=True)
        b = torch.load(tmp_path / f"{prefix}1.pt", weights_only=True)
        assert all(torch.equal(a[k], b[k]) for k in a), prefix
    for rank in (0, 1):  # every rank goes on only once the checkpoint is committed, and resumes the same step
        seen = json.loads((tmp_path / f"seen{rank}.json").read_text())
        assert seen == {"saves": [[2, True], [4, True], [5, True]], "resumed": [5, True]}, rank
    assert [c.step for c in committed_checkpoints(tmp_path / "run")] == [5, 4]


def test_torchrun_command_line(tmp_path: Path) -> None:
    config = tmp_path / "tiny.json"
    config.write_text(json.dumps(TINY))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
           str(free_port()), "-m", "diffsat", "train", str(config), "--out", str(tmp_path / "run"), "--no-progress"]
    env = dict(os.environ, DIFFSAT_OFFLINE="1", OMP_NUM_THREADS="1")
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=240)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count("trained 5 steps") == 1  # rank 0 alone reports; one run directory
    assert (tmp_path / "run" / "ema.safetensors").is_file()
