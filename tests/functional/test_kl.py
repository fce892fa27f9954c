"""kl_log_uniform against numerical integration of E_q[log q - log p] (scipy.integrate.quad)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import integrate

from bayesdrop.functional import KL_LOG_ALPHA_MAX, KL_LOG_ALPHA_MIN, kl_log_uniform

#: The constant that makes KL(alpha) -> 0 as alpha -> infinity: (Euler's gamma + log 2) / 2.
LIMIT_CONSTANT = (np.euler_gamma + math.log(2.0)) / 2.0


def expected_log_abs(alpha: float) -> float:
    """E log|1 + sqrt(alpha) e|, e ~ N(0, 1), integrated on both sides of the log singularity."""
    s = math.sqrt(alpha)
    root = -1.0 / s

    def f(n: float) -> float:
        return math.log(abs(1.0 + s * n)) * math.exp(-0.5 * n * n) / math.sqrt(2.0 * math.pi)

    left, _ = integrate.quad(f, -np.inf, root, limit=200)
    right, _ = integrate.quad(f, root, np.inf, limit=200)
    return left + right


def kl_exact(alpha: float) -> float:
    """KL(N(theta, alpha theta^2) || log-uniform), normalised so that it -> 0 as alpha -> inf.

    With w = theta xi, xi ~ N(1, alpha): E_q log q(w) = -1/2 log(2 pi e alpha theta^2) and
    E_q log p(w) = -E log|w| + c = -log|theta| - E log|xi| + c, so the theta terms cancel.
    """
    return -0.5 * math.log(alpha) + expected_log_abs(alpha) + LIMIT_CONSTANT


def test_integration_reproduces_small_alpha_series() -> None:
    # Independent check of the reference itself: E log(1 + u) = -alpha/2 - 3 alpha^2/4 + O(alpha^3).
    for alpha in (1e-3, 1e-2):
        series = -alpha / 2 - 3 * alpha**2 / 4
        assert abs(expected_log_abs(alpha) - series) < 10 * alpha**3


def test_molchanov_matches_integral_over_all_alpha() -> None:
    # The sigmoid fit carries its own constant, so it is compared with the absolute KL.
    # Measured maximum error over log alpha in [-8, 8]: 0.0093 nats (at log alpha = -3.6).
    log_alpha = np.linspace(-8.0, 8.0, 81)
    exact = np.array([kl_exact(math.exp(la)) for la in log_alpha])
    approx = kl_log_uniform(torch.tensor(log_alpha), "molchanov").numpy()
    np.testing.assert_allclose(approx, exact, rtol=0, atol=0.01)


def test_molchanov_tends_to_zero_like_the_integral() -> None:
    # For large alpha both behave as 1/(2 alpha) -> 0: the relative error (0.39% at log alpha = 8)
    # shrinks as alpha grows, so the constant k1 is the one that makes the limit zero.
    log_alpha = np.array([8.0, 10.0, 12.0, 14.0])
    exact = np.array([kl_exact(math.exp(la)) for la in log_alpha])
    approx = kl_log_uniform(torch.tensor(log_alpha), "molchanov").numpy()
    rel = np.abs(approx - exact) / exact
    assert rel[0] < 5e-3 and bool(np.all(np.diff(rel) < 0)), rel
    np.testing.assert_allclose(exact, 0.5 * np.exp(-log_alpha), rtol=2e-3)
    assert (
        float(kl_log_uniform(torch.tensor(KL_LOG_ALPHA_MAX, dtype=torch.float64), "molchanov"))
        < 1e-8
    )


def test_kingma_matches_integral_up_to_a_constant() -> None:
    # The cubic is a fit to -KL on 0 < alpha <= 1 up to an unknown constant, so compare
    # differences KL(alpha) - KL(1) with the integrated differences. Measured maximum deviation:
    # 0.036 nats on alpha in [e^-6, 1] (the fit's slope at alpha -> 0 is c1 instead of 1/2), and
    # 0.011 on alpha in [0.05, 1].
    ref = kl_exact(1.0)
    ref_approx = float(kl_log_uniform(torch.tensor(0.0, dtype=torch.float64)))
    for lo, tol in ((-6.0, 0.04), (math.log(0.05), 0.012)):
        log_alpha = np.linspace(lo, 0.0, 61)
        exact = np.array([kl_exact(math.exp(la)) for la in log_alpha]) - ref
        approx = kl_log_uniform(torch.tensor(log_alpha)).numpy() - ref_approx
        np.testing.assert_allclose(approx, exact, rtol=0, atol=tol)


def test_kingma_closed_form_values() -> None:
    c1, c2, c3 = 1.16145124, -1.50204118, 0.58629921
    for alpha in (0.01, 0.3, 1.0):
        expected = -(0.5 * math.log(alpha) + c1 * alpha + c2 * alpha**2 + c3 * alpha**3)
        got = float(kl_log_uniform(torch.tensor(math.log(alpha), dtype=torch.float64)))
        assert got == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("approximation", ["kingma", "molchanov"])
def test_clamped_range_is_finite_with_zero_gradient_outside(approximation: str) -> None:
    la = torch.tensor([-1e6, KL_LOG_ALPHA_MIN - 1, KL_LOG_ALPHA_MAX + 1, 1e6], requires_grad=True)
    kl = kl_log_uniform(la, approximation)
    assert torch.isfinite(kl).all()
    kl.sum().backward()
    assert la.grad is not None and torch.equal(la.grad, torch.zeros(4))
    ends = kl_log_uniform(torch.tensor([KL_LOG_ALPHA_MIN, KL_LOG_ALPHA_MAX]), approximation)
    torch.testing.assert_close(kl[[0, 3]].detach(), ends)


@pytest.mark.parametrize("approximation", ["kingma", "molchanov"])
def test_gradcheck(approximation: str) -> None:
    la = torch.linspace(-5.0, 0.0 if approximation == "kingma" else 5.0, 7, dtype=torch.float64)
    la.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda t: kl_log_uniform(t, approximation), (la,))


def test_molchanov_decreasing_and_nonnegative() -> None:
    kl = kl_log_uniform(torch.linspace(-20, 20, 401, dtype=torch.float64), "molchanov")
    assert bool((kl >= 0).all()) and bool((kl[1:] < kl[:-1]).all())


def test_bad_approximation() -> None:
    with pytest.raises(ValueError, match="approximation"):
        kl_log_uniform(torch.zeros(2), "gauss")
