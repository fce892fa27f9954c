"""Shared fixtures of the reproduction suite's tests."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture
def one_thread():
    """One torch intra-op thread for the test (small models: a second thread only adds
    synchronisation, and OpenMP waiting on a shared CPU); the previous count is restored."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
