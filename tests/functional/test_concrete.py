"""Concrete relaxation and Gal's regulariser against closed forms, quadrature and gradcheck."""

from __future__ import annotations

import math

import pytest
import torch
from scipy import integrate

from bayesdrop.functional import (
    LOGIT_BOUND,
    concrete_dropout,
    concrete_keep_mask,
    concrete_regularizer,
    concrete_regularizers,
    gal_bernoulli_kl,
)
from tests.conftest import assert_within_se


def relaxed_cdf(z: float, p: float, t: float) -> float:
    """P(z̃ <= z) derived by hand: z̃ <= z  <=>  u >= sigmoid(-logit p - t logit z)."""
    a = math.log(p / (1 - p)) + t * math.log(z / (1 - z))
    return 1.0 / (1.0 + math.exp(-a))


def draw(p: float, t: float, n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    u = torch.rand(n, dtype=torch.float64, generator=g)
    logit_p = torch.tensor(math.log(p / (1 - p)), dtype=torch.float64)
    return concrete_keep_mask(logit_p, u, t)


@pytest.mark.parametrize("t", [0.1, 0.5, 1.0])
def test_empirical_cdf_matches_closed_form(t):
    p, n = 0.3, 40000
    z = draw(p, t, n)
    for q in (0.05, 0.3, 0.5, 0.7, 0.95):
        ind = (z <= q).double().unsqueeze(1)
        assert_within_se(ind, torch.tensor([relaxed_cdf(q, p, t)], dtype=torch.float64))
    # the median split is exact at every temperature: P(z̃ > 1/2) = 1 - p
    assert relaxed_cdf(0.5, p, t) == pytest.approx(p, abs=1e-15)


def test_mean_against_numerical_integration():
    p, t = 0.3, 0.5
    # E z̃ = ∫_0^1 P(z̃ > z) dz from the closed-form CDF, by quadrature in z-space
    mean_z, _ = integrate.quad(lambda z: 1.0 - relaxed_cdf(z, p, t), 0.0, 1.0, epsabs=1e-12)
    # ... and the same expectation as a quadrature of the function over u
    logit_p = torch.tensor(math.log(p / (1 - p)), dtype=torch.float64)

    def keep(u: float) -> float:
        return float(concrete_keep_mask(logit_p, torch.tensor(u, dtype=torch.float64), t))

    mean_u, _ = integrate.quad(keep, 0.0, 1.0, epsabs=1e-12, limit=200)
    assert mean_u == pytest.approx(mean_z, abs=1e-8)
    assert abs(mean_z - (1 - p)) > 0.02  # the relaxation's mean is not 1 - p at t = 0.5
    assert_within_se(draw(p, t, 100000).unsqueeze(1), torch.tensor([mean_z]).double())


def test_tends_to_bernoulli_as_temperature_goes_to_zero():
    p, n = 0.3, 40000
    spread = []
    for t in (1.0, 0.1, 0.01, 1e-3):
        z = draw(p, t, n, seed=1)
        inside = ((z > 0.01) & (z < 0.99)).double().unsqueeze(1)
        exact = relaxed_cdf(0.99, p, t) - relaxed_cdf(0.01, p, t)
        assert_within_se(inside, torch.tensor([exact], dtype=torch.float64))
        spread.append(exact)
    # the mass strictly inside (0.01, 0.99) shrinks to zero (≈ 2 t logit(0.99) p (1 - p))
    assert all(a > 3 * b for a, b in zip(spread, spread[1:]))
    assert spread[-1] < 2e-3
    z = draw(p, 1e-3, n, seed=2)
    bern = torch.bernoulli(torch.full((n,), 1 - p, dtype=torch.float64))
    # mean and second moment of the nearly-binary mask equal Bernoulli(1 - p)'s within SE
    assert_within_se(z.unsqueeze(1), torch.tensor([1 - p]).double())
    assert_within_se(z.pow(2).unsqueeze(1), torch.tensor([1 - p]).double())
    assert_within_se(bern.unsqueeze(1), torch.tensor([1 - p]).double())


def test_gradcheck_relaxation_wrt_logit_p():
    g = torch.Generator().manual_seed(0)
    u = torch.rand(5, 3, dtype=torch.float64, generator=g)
    x = torch.randn(5, 3, dtype=torch.float64, generator=g)
    logit_p = torch.tensor([-1.0, 0.3, 2.0], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda lp: concrete_keep_mask(lp, u, 0.7), (logit_p,))
    assert torch.autograd.gradcheck(lambda lp: concrete_dropout(x, lp, 0.7, u), (logit_p,))
    # closed form: d z̃ / d logit p = -z̃ (1 - z̃) / t
    z = concrete_keep_mask(logit_p, u, 0.7)
    (grad,) = torch.autograd.grad(z.sum(), logit_p)
    assert torch.allclose(grad, (-z * (1 - z) / 0.7).sum(0))


def test_concrete_dropout_is_inverted_scaling_of_the_mask():
    g = torch.Generator().manual_seed(0)
    u = torch.rand(4, 6, generator=g)
    x = torch.randn(4, 6, generator=g)
    logit_p = torch.tensor(-0.5)
    p = torch.sigmoid(logit_p)
    expected = x * concrete_keep_mask(logit_p, u, 0.1) / (1 - p)
    assert torch.allclose(concrete_dropout(x, logit_p, 0.1, u), expected, rtol=1e-6)


def keras_regularizer(w_sq_sum, p, wd, dd, k):
    """Gal's reference formula: wd·ΣW²/(1-p) + dd·K·(p log p + (1-p) log(1-p))."""
    return wd * w_sq_sum / (1 - p) + dd * k * (p * math.log(p) + (1 - p) * math.log(1 - p))


def test_regularizer_layer_rate_against_hand_formula():
    w = torch.randn(5, 4, dtype=torch.float64)
    p = 0.2
    logit_p = torch.tensor([math.log(p / (1 - p))], dtype=torch.float64)
    r = concrete_regularizer(logit_p, w.pow(2).sum(0), 3e-2, 0.7)
    assert float(r) == pytest.approx(keras_regularizer(float(w.pow(2).sum()), p, 3e-2, 0.7, 4))
    # bare form: only the entropy term, K units
    r = concrete_regularizer(logit_p, None, 3e-2, 0.7, num_units=6)
    assert float(r) == pytest.approx(keras_regularizer(0.0, p, 3e-2, 0.7, 6))


def test_regularizer_unit_rates_against_hand_formula():
    w = torch.randn(5, 3, dtype=torch.float64)
    ps = [0.1, 0.45, 0.8]
    logit_p = torch.tensor([math.log(q / (1 - q)) for q in ps], dtype=torch.float64)
    r = concrete_regularizer(logit_p, w.pow(2).sum(0), 0.3, 2.0)
    expected = sum(
        keras_regularizer(float(w[:, k].pow(2).sum()), ps[k], 0.3, 2.0, 1) for k in range(3)
    )
    assert float(r) == pytest.approx(expected)


@pytest.mark.parametrize("logit_p", [torch.tensor([0.4]), torch.tensor([-2.0, 0.1, 1.5])])
def test_regularizer_with_exact_kl_coefficients_is_gals_bernoulli_kl(logit_p):
    # precision=2 gives l²/2 and 1: the KL used by LearnableBernoulliDropout, derived separately
    wr, dr = concrete_regularizers(length_scale=0.7, precision=2.0)
    norms = torch.tensor([0.5, 2.0, 1.3])
    ours = concrete_regularizer(logit_p, norms, wr, dr)
    assert float(ours) == pytest.approx(float(gal_bernoulli_kl(logit_p, norms, 0.7)), rel=1e-6)


def test_concrete_regularizers_values():
    wr, dr = concrete_regularizers(length_scale=1e-2, precision=4.0)
    n = 1000
    # Gal et al.: wd = l²/(τN), dd = 2/(τN) per example; ours are those times N
    assert wr / n == pytest.approx(1e-4 / (4.0 * n))
    assert dr / n == pytest.approx(2.0 / (4.0 * n))
    assert concrete_regularizers(0.5)._asdict() == {
        "weight_regularizer": 0.25,
        "dropout_regularizer": 2.0,
    }


def test_extreme_logits_and_uniforms_stay_finite():
    logit_p = torch.tensor([-1e4, -LOGIT_BOUND, 0.0, LOGIT_BOUND, 1e4], requires_grad=True)
    u = torch.tensor([[0.0], [1e-30], [0.5], [1 - 1e-7], [1.0]]).expand(5, 5)
    x = torch.ones(5, 5)
    y = concrete_dropout(x, logit_p, 1e-3, u)
    r = concrete_regularizer(logit_p, torch.full((5,), 1e3), 1.0, 1.0)
    (y.sum() + r).backward()
    assert torch.isfinite(y).all() and torch.isfinite(r)
    assert torch.isfinite(logit_p.grad).all()
    z = concrete_keep_mask(logit_p, u, 1e-3)
    assert ((z >= 0) & (z <= 1)).all()


@pytest.mark.parametrize("t", [0.0, -0.1, float("nan"), float("inf")])
def test_bad_temperature(t):
    with pytest.raises(ValueError, match="temperature"):
        concrete_keep_mask(torch.zeros(1), torch.rand(3), t)


def test_bad_regularizer_arguments():
    with pytest.raises(ValueError, match="weight_regularizer"):
        concrete_regularizer(torch.zeros(1), torch.ones(3), -1.0, 1.0)
    with pytest.raises(ValueError, match="dropout_regularizer"):
        concrete_regularizer(torch.zeros(1), torch.ones(3), 1.0, float("nan"))
    with pytest.raises(ValueError, match="logit_p"):
        concrete_regularizer(torch.zeros(2), torch.ones(3), 1.0, 1.0)
    with pytest.raises(ValueError, match="length_scale"):
        concrete_regularizers(0.0, 1.0)
    with pytest.raises(ValueError, match="precision"):
        concrete_regularizers(1.0, -2.0)
    with pytest.raises(TypeError, match="precision"):
        concrete_regularizers(1.0, "2")  # type: ignore[arg-type]
