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


def antithetic_regions(keep_logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Integrate the uniforms of the ARM/DisARM antithetic pair exactly.

    For a keep logit phi the unit interval splits at min/max(sigmoid(phi), sigmoid(-phi)) into
    three regions in which both masks ``z1 = 1[u > sigmoid(-phi)]`` and ``z2 = 1[u < sigmoid(phi)]``
    are constant. ARM's coefficient ``u - 1/2`` is linear in u and DisARM's is constant there, so
    the expectation of either estimator over u is the probability-weighted sum of its values at
    the regions' midpoints. Returns ``(u, prob)``: ``u`` of shape ``(3^n, n)`` (every combination
    of regions of the n flattened units, at the midpoints) and its probability ``(3^n,)``.
    """
    k = keep_logits.detach().reshape(-1).double()
    s = torch.sigmoid(k)
    lo, hi = torch.minimum(s, 1 - s), torch.maximum(s, 1 - s)
    edges = torch.stack([torch.zeros_like(lo), lo, hi, torch.ones_like(lo)], -1)  # (n, 4)
    mids = (edges[:, 1:] + edges[:, :-1]) / 2  # (n, 3)
    widths = edges[:, 1:] - edges[:, :-1]
    idx = torch.tensor(list(itertools.product(range(3), repeat=k.numel())), dtype=torch.long)
    rows = torch.arange(k.numel())
    u = mids[rows, idx]  # (3^n, n)
    prob = widths[rows, idx].prod(-1)
    keep = prob > 0
    return u[keep], prob[keep]


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
