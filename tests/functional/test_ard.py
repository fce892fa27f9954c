"""ARD KLs against numerical integration and numerical optimisation of the prior precision."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import integrate, optimize, stats

from bayesdrop.functional import ard_gamma_constant, kl_ard, kl_ard_gamma

LOG_ALPHAS = np.linspace(-7.0, 7.0, 8)


def kl_gauss_quad(mu: float, sigma2: float, prior_var: float) -> float:
    """E_q[log q(w) - log p(w)] for q = N(mu, sigma2), p = N(0, prior_var), by quadrature."""
    q = stats.norm(mu, math.sqrt(sigma2))
    p = stats.norm(0.0, math.sqrt(prior_var))
    s = math.sqrt(sigma2)

    def integrand(w: float) -> float:
        return q.pdf(w) * (q.logpdf(w) - p.logpdf(w))

    val, _ = integrate.quad(integrand, mu - 14 * s, mu + 14 * s, epsabs=1e-13, epsrel=1e-11)
    return val


@pytest.mark.parametrize("mu", [1.0, -0.3])
@pytest.mark.parametrize("log_alpha", LOG_ALPHAS)
def test_kl_ard_is_gaussian_kl_at_the_optimal_prior_variance(mu: float, log_alpha: float) -> None:
    sigma2 = math.exp(log_alpha) * mu**2
    expected = kl_gauss_quad(mu, sigma2, prior_var=mu**2 + sigma2)
    got = float(kl_ard(torch.tensor(log_alpha, dtype=torch.float64)))
    assert got == pytest.approx(expected, rel=1e-7, abs=1e-10)


@pytest.mark.parametrize("log_alpha", LOG_ALPHAS[::2])
def test_kl_ard_is_the_minimum_over_the_prior_precision(log_alpha: float) -> None:
    mu = 0.7
    sigma2 = math.exp(log_alpha) * mu**2

    def kl_at(log_tau: float) -> float:  # closed Gaussian KL(q || N(0, 1/tau))
        tau = math.exp(log_tau)
        return 0.5 * (tau * (sigma2 + mu**2) - 1.0 - math.log(tau * sigma2))

    res = optimize.minimize_scalar(
        kl_at, bounds=(-30, 30), method="bounded", options={"xatol": 1e-10}
    )
    assert float(kl_ard(torch.tensor(log_alpha, dtype=torch.float64))) == pytest.approx(
        res.fun, rel=1e-8, abs=1e-12
    )
    assert math.exp(res.x) == pytest.approx(1.0 / (mu**2 + sigma2), rel=1e-4)


def test_kl_ard_extremes_and_dtype() -> None:
    la = torch.tensor([-1e4, -100.0, 0.0, 100.0, 1e4])
    kl = kl_ard(la)
    assert kl.dtype == torch.float32 and bool(torch.isfinite(kl).all())
    assert float(kl[0]) == pytest.approx(5e3)  # ~ -log(alpha)/2 for small alpha
    assert float(kl[-1]) == 0.0
    assert bool((kl[1:] <= kl[:-1]).all())  # decreasing in alpha


def test_kl_ard_gradcheck() -> None:
    la = torch.linspace(-6, 6, 7, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(kl_ard, (la,))


GAMMA_CASES = [
    # mu, sigma2, a, b
    (1.0, 0.25, 1.0, 0.5),
    (0.3, 1e-3, 0.75, 1e-2),
    (-0.05, 1e-4, 0.51, 1e-4),
    (2.0, 4.0, 3.0, 2.0),
    (0.0, 0.1, 1.5, 0.3),
]


@pytest.mark.parametrize("mu,sigma2,a,b", GAMMA_CASES)
def test_kl_ard_gamma_is_the_negated_map2_objective(
    mu: float, sigma2: float, a: float, b: float
) -> None:
    """-R = -max_tau [log Gamma(tau | a, rate b) - KL(q || N(0, 1/tau))], KL by quadrature."""
    hyper = stats.gamma(a, scale=1.0 / b)

    def neg_objective(log_tau: float) -> float:
        tau = math.exp(log_tau)
        return -(hyper.logpdf(tau) - kl_gauss_quad(mu, sigma2, prior_var=1.0 / tau))

    tau_star = (2 * a - 1) / (sigma2 + mu**2 + 2 * b)
    lo, hi = math.log(tau_star) - 3, math.log(tau_star) + 3
    res = optimize.minimize_scalar(
        neg_objective, bounds=(lo, hi), method="bounded", options={"xatol": 1e-9}
    )
    got = float(
        kl_ard_gamma(
            torch.tensor(mu, dtype=torch.float64),
            torch.tensor(math.log(sigma2), dtype=torch.float64),
            a,
            b,
        )
    )
    assert got == pytest.approx(res.fun, rel=1e-6, abs=1e-8)
    assert math.exp(res.x) == pytest.approx(tau_star, rel=1e-3)


def test_kl_ard_gamma_constant_from_its_parts() -> None:
    a, b = 0.8, 0.02
    expected = 1 - a + a * math.log(b) - math.lgamma(a) + 0.5 * (2 * a - 1) * math.log(2 * a - 1)
    assert ard_gamma_constant(a, b) == pytest.approx(expected, rel=1e-12)


def test_kl_ard_gamma_reduces_to_ard_for_a_1_b_to_0() -> None:
    mu = torch.tensor([0.5, -1.0, 2e-3], dtype=torch.float64)
    log_sigma2 = torch.tensor([-2.0, 1.0, -15.0], dtype=torch.float64)
    b = 1e-14
    got = kl_ard_gamma(mu, log_sigma2, 1.0, b) + ard_gamma_constant(1.0, b)
    expected = kl_ard(log_sigma2 - mu.square().log())
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-8)


def test_kl_ard_gamma_finite_and_broadcast() -> None:
    mu = torch.tensor([[0.0], [1e-30], [1e3]])
    log_sigma2 = torch.tensor([-40.0, 0.0, 20.0])
    out = kl_ard_gamma(mu, log_sigma2, 0.51, 1e-8)
    assert out.shape == (3, 3) and out.dtype == torch.float32
    assert bool(torch.isfinite(out).all())


def test_kl_ard_gamma_gradcheck() -> None:
    mu = torch.tensor([0.0, 0.4, -1.2], dtype=torch.float64, requires_grad=True)
    ls = torch.tensor([-3.0, -1.0, 0.5], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda m, s: kl_ard_gamma(m, s, 0.7, 0.05), (mu, ls))


@pytest.mark.parametrize(
    "a,b,exc,match",
    [
        (0.5, 1.0, ValueError, "a must be"),
        (0.2, 1.0, ValueError, "a must be"),
        (float("nan"), 1.0, ValueError, "a must be"),
        (1.0, 0.0, ValueError, "b must be"),
        (1.0, -1.0, ValueError, "b must be"),
        (1.0, float("inf"), ValueError, "b must be"),
        ("1", 1.0, TypeError, "a must be"),
        (1.0, True, TypeError, "b must be"),
    ],
)
def test_kl_ard_gamma_bad_arguments(a: object, b: object, exc: type, match: str) -> None:
    with pytest.raises(exc, match=match):
        kl_ard_gamma(torch.zeros(1), torch.zeros(1), a, b)  # type: ignore[arg-type]
