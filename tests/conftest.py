"""Shared fixtures."""

import os
from pathlib import Path

import pytest

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
