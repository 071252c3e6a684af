"""Shared test fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "assets" / "toybox_tiny"


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for a module's nerfstudio runs: faster than two on shared cores, and
    bit-for-bit reproducible (the CPU backward sums in a thread-dependent order)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
