"""Shared fixtures: devices to run on, the ../shared folder, small grids."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

CUDA = torch.cuda.is_available()
requires_cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
SHARED = Path(__file__).resolve().parents[1].parent / "shared"


@pytest.fixture(params=["cpu", pytest.param("cuda", marks=[requires_cuda, pytest.mark.gpu])])
def device(request: pytest.FixtureRequest) -> torch.device:
    """Every device this machine has: CPU always, CUDA where present."""
    return torch.device(request.param)


@pytest.fixture
def shared_dir() -> Path:
    """``../shared`` beside the repository; skips the test where it is absent."""
    if not SHARED.is_dir():
        pytest.skip("../shared is not present on this machine")
    return SHARED
