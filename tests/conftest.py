"""Shared fixtures."""

import os
from pathlib import Path

import pytest
import torch

# `pytest -n 2` runs two worker processes on the two cores: one torch thread each (and in the processes they
# start), since two workers of two threads each would oversubscribe the cores.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)

REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` beside the repository (real MNIST / UC Merced / LEVIR samples), or skip."""
    path = REPO_ROOT.parent / "shared" / "data"
    if not path.is_dir():
        pytest.skip("../shared/data not found: real-data tests need the shared data folder beside the repo")
    return path


# Tests never reach the network: the MNIST default source skips its download attempt (tests of the download
# path set DIFFSAT_OFFLINE=0 and patch the fetch themselves).
os.environ["DIFFSAT_OFFLINE"] = "1"


def tiny_config(*, data: dict | None = None, diffusion: dict | None = None, model: dict | None = None,
                **train: object) -> dict:
    """A config (as the JSON dict) for a seconds-long CPU run on 28 px digits from the bundled offline MNIST:
    base 8, mults [1, 2], attention at 14 px, a 100-step schedule, 32 images, 4 steps of batch 8. ``data``,
    ``diffusion`` and ``model`` update those sections; keyword arguments update ``train``."""
    return {
        "model": {"base_channels": 8, "channel_mults": [1, 2], "res_blocks": 1, "attn_resolutions": [14],
                  "norm_groups": 4, "image_size": 28, **(model or {})},
        "diffusion": {"timesteps": 100, **(diffusion or {})},
        "data": {"limit": 32, **(data or {})},
        "train": {"batch_size": 8, "max_steps": 4, "warmup_steps": 1, "log_every": 2, "sample_every": 1000,
                  "save_every": 2, "sample_steps": 3, "device": "cpu", **train},
    }


def train_tiny_run(root: Path, config: dict) -> Path:
    """Write ``config`` to ``root/tiny.json`` and train it with ``diffsat train --no-progress``; returns the
    run directory ``root/run``."""
    import json

    from diffsat.cli import main

    path = root / "tiny.json"
    path.write_text(json.dumps(config))
    assert main(["train", str(path), "--out", str(root / "run"), "--no-progress"]) == 0
    return root / "run"


@pytest.fixture(autouse=True)
def precision_cache(tmp_path_factory, monkeypatch) -> Path:
    """``precision auto`` measurements of the tests go to a cache file of the test session, never to the
    user's cache (``diffsat.precision.precision_cache_file``)."""
    from diffsat import precision

    path = tmp_path_factory.getbasetemp() / "precision.json"
    monkeypatch.setattr(precision, "precision_cache_file", lambda: path)
    return path
