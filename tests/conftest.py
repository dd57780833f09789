"""Shared test fixtures: where the real data next to the repository lives."""

import os
from pathlib import Path

import pytest
import torch

SHARED = Path(__file__).resolve().parents[2] / "shared"
ACASXU = SHARED / "benchmarks" / "acasxu"
MNIST = SHARED / "datasets" / "mnist"

torch.set_num_threads(1)
# A developer's running `vfnn server` must not serve the tests' `vfnn verify` calls (test_warm_server starts its own).
os.environ["VFNN_SERVER_SOCKET"] = "/nonexistent/vfnn-tests/server.sock"


@pytest.fixture
def acasxu() -> Path:
    if not ACASXU.is_dir():
        pytest.skip(f"ACAS Xu benchmark not found at {ACASXU}")
    return ACASXU
