"""The NumPy fast-dropout loss of the linear estimators: its value against the torch objective
(the functional expectations on the exact logit moments), its gradient against autograd of that
objective and against central finite differences, all in float64."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse
import torch

pytest.importorskip("sklearn")

from bayesdrop import _linear_loss  # noqa: E402
from bayesdrop._linear_loss import FastDropoutLinearLoss  # noqa: E402
from bayesdrop.functional.fast_dropout import DesignMatrix  # noqa: E402
from bayesdrop.linear_model import FastDropoutLogisticRegression  # noqa: E402

F64 = torch.float64

CASES = [  # (classes, objective, covariance)
    (2, "closed_form", "full"),
    (2, "unscented", "full"),
    (3, "unscented", "full"),
    (5, "unscented", "full"),
    (4, "unscented", "diagonal"),
]


def _problem(k: int, sparse: bool, seed: int = 0, n: int = 30, d: int = 6):  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d))
    x[rng.random((n, d)) < 0.3] = 0.0
    y = rng.integers(0, k, n)
    y[:k] = np.arange(k)
    return (scipy.sparse.csr_matrix(x) if sparse else x), x, y, rng


def _torch_objective(x, y, k, p, l2, objective, covariance, theta):  # type: ignore[no-untyped-def]
    """The estimator's torch objective (functional expectations, autograd) at ``theta``."""
    est = FastDropoutLogisticRegression(p=p, objective=objective, covariance=covariance)
    rows = 1 if k == 2 else k
    d = x.shape[1]
    w = theta[: rows * d].reshape(rows, d)
    b = theta[rows * d :]
    nll = est._nll(DesignMatrix(x, F64), torch.as_tensor(y), w, b, k, torch.Generator())
    return nll.mean() + 0.5 * l2 * (w * w).sum()


@pytest.mark.parametrize("sparse", [False, True])
@pytest.mark.parametrize("k, objective, covariance", CASES)
def test_value_and_gradient_match_autograd_of_the_torch_objective(
    k: int, objective: str, covariance: str, sparse: bool
) -> None:
    xs, x, y, rng = _problem(k, sparse)
    p, l2 = 0.4, 0.1
    loss = FastDropoutLinearLoss(xs, y, k, p, l2, objective, covariance)
    for scale in (0.3, 1.5):
        theta = rng.normal(size=loss.size) * scale
        value, grad = loss(theta)
        t = torch.tensor(theta, requires_grad=True)
        ref = _torch_objective(x, y, k, p, l2, objective, covariance, t)
        ref.backward()
        assert value == pytest.approx(float(ref.detach()), rel=1e-13, abs=1e-13)
        np.testing.assert_allclose(grad, t.grad.numpy(), rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("k, objective, covariance", CASES)
def test_gradient_matches_central_finite_differences(
    k: int, objective: str, covariance: str
) -> None:
    xs, _, y, rng = _problem(k, sparse=False, seed=1)
    loss = FastDropoutLinearLoss(xs, y, k, 0.3, 0.05, objective, covariance)
    theta = rng.normal(size=loss.size)
    _, grad = loss(theta)
    h = 1e-5
    fd = np.empty_like(theta)
    for i in range(theta.size):
        e = np.zeros_like(theta)
        e[i] = h
        fd[i] = (loss(theta + e)[0] - loss(theta - e)[0]) / (2 * h)
    # central differences: truncation O(h^2 f''') ~ 1e-10, rounding ~ eps f / h ~ 1e-11
    np.testing.assert_allclose(grad, fd, rtol=1e-7, atol=1e-8)


@pytest.mark.parametrize("covariance", ["full", "diagonal"])
def test_factorised_softmax_equals_the_per_point_stable_one(
    covariance: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """exp(mu + offset) = exp(mu) exp(offset) (used while the offsets are at most 300) gives the
    same loss and gradient as stabilising every point's softmax by its own maximum."""
    xs, _, y, rng = _problem(4, sparse=False, seed=2)
    loss = FastDropoutLinearLoss(xs, y, 4, 0.5, 0.0, "unscented", covariance)
    theta = rng.normal(size=loss.size) * 2
    value, grad = loss(theta)
    monkeypatch.setattr(_linear_loss, "_SEPARABLE_MAX", -1.0)
    value_direct, grad_direct = loss(theta)
    assert value == pytest.approx(value_direct, rel=1e-13)
    np.testing.assert_allclose(grad, grad_direct, rtol=1e-11, atol=1e-14)


def test_huge_logit_variances_stay_finite() -> None:
    """Offsets far beyond exp's range (logit standard deviations ~1e4) take the stable path."""
    xs, _, y, rng = _problem(3, sparse=False, seed=3)
    for covariance in ("full", "diagonal"):
        loss = FastDropoutLinearLoss(xs * 1e4, y, 3, 0.5, 0.0, "unscented", covariance)
        value, grad = loss(rng.normal(size=loss.size))
        assert np.isfinite(value) and bool(np.isfinite(grad).all())
