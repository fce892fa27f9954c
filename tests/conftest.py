"""Shared fixtures and helpers for the test suite."""

from __future__ import annotations

import itertools

import pytest
import torch


def all_masks(d: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """All 2^d binary vectors as a ``(2^d, d)`` tensor."""
    return torch.tensor(list(itertools.product([0.0, 1.0], repeat=d)), dtype=dtype)


def bernoulli_log_prob(z: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """log P(z) under independent Bernoulli(sigmoid(logits)), summed over the last dim."""
    return (
        z * torch.nn.functional.logsigmoid(logits)
        + (1 - z) * torch.nn.functional.logsigmoid(-logits)
    ).sum(-1)


def assert_within_se(
    estimates: torch.Tensor, exact: torch.Tensor, k: float = 4.5, atol: float = 1e-9
) -> None:
    """Assert the mean of i.i.d. ``estimates`` (first dim) is within k standard errors of ``exact``."""
    n = estimates.shape[0]
    mean = estimates.mean(0)
    se = estimates.std(0) / n**0.5
    err = (mean - exact).abs()
    bad = err > k * se + atol
    assert not bool(bad.any()), f"mean {mean} vs exact {exact}: |err| {err} > {k}·SE {k * se}"


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
