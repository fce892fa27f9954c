"""Gaussian dropout (types A and B) against closed forms, enumeration and Monte Carlo."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from bayesdrop.functional import (
    alpha_from_p,
    gaussian_dropout,
    gaussian_dropout_lrt,
    lrt_conv,
    lrt_linear,
)
from tests.conftest import assert_within_se

DT = torch.float64


def test_alpha_from_p_matches_inverted_bernoulli_variance() -> None:
    # Enumerate z in {0, 1}: the inverted-dropout factor z / (1 - p) has mean 1, variance alpha.
    for p in (0.1, 0.5, 0.8):
        values = torch.tensor([0.0, 1.0 / (1 - p)], dtype=DT)
        probs = torch.tensor([p, 1 - p], dtype=DT)
        mean = (probs * values).sum()
        var = (probs * (values - mean) ** 2).sum()
        assert float(mean) == pytest.approx(1.0)
        assert alpha_from_p(p) == pytest.approx(float(var))
        assert float(torch.sigmoid(torch.tensor(math.log(alpha_from_p(p))))) == pytest.approx(p)


def test_type_b_moments_equal_bernoulli_dropout_moments_by_enumeration() -> None:
    # Wang & Manning: the Gaussian of type B has the exact mean and variance of the pre-activation
    # under inverted Bernoulli dropout of the inputs; enumerate all 2^5 masks.
    g = torch.Generator().manual_seed(0)
    p = 0.3
    x = torch.randn(2, 5, generator=g, dtype=DT)
    w = torch.randn(3, 5, generator=g, dtype=DT)
    b = torch.randn(3, generator=g, dtype=DT)
    masks = torch.tensor(list(itertools.product([0.0, 1.0], repeat=5)), dtype=DT)
    probs = ((1 - p) ** masks.sum(1)) * (p ** (5 - masks.sum(1)))
    outs = F.linear(x[None] * masks[:, None] / (1 - p), w, b)  # (32, 2, 3)
    mean = torch.einsum("m,mbo->bo", probs, outs)
    var = torch.einsum("m,mbo->bo", probs, (outs - mean) ** 2)
    m, v = lrt_linear(x, w, alpha_from_p(p) * w**2, b)
    torch.testing.assert_close(m, mean)
    torch.testing.assert_close(v, var)


def test_type_a_and_b_share_marginals_but_not_covariances() -> None:
    g = torch.Generator().manual_seed(1)
    alpha = 0.6
    x = torch.tensor([[1.0, -1.0, 2.0, 0.5]], dtype=DT)
    w = torch.tensor([[1.0, 0.5, -0.5, 1.0], [1.0, 1.0, -0.5, 0.5]], dtype=DT)
    b = torch.randn(2, generator=g, dtype=DT)
    n = 20000
    xs = x.expand(n, 4)
    out_a = F.linear(gaussian_dropout(xs, alpha, generator=g), w, b)
    out_b = gaussian_dropout_lrt(xs, w, b, alpha, generator=g)
    mean = F.linear(x, w, b)[0]
    var = alpha * (w**2 * x**2).sum(1)
    cov_a = alpha * (w[0] * w[1] * x[0] ** 2).sum()
    for out, cov in ((out_a, cov_a), (out_b, torch.zeros((), dtype=DT))):
        assert_within_se(out, mean)
        centred = out - mean
        assert_within_se(centred**2, var)
        products = centred[:, :1] * centred[:, 1:]
        assert_within_se(products, cov.reshape(1))
        # The covariance check can tell A from B: they differ by > 10 standard errors.
        assert float(cov_a) > 10 * float(products.std() / n**0.5)


def test_type_a_noise_shape_and_explicit_eps() -> None:
    x = torch.ones(2, 3, 4, 4)
    out = gaussian_dropout(
        x, 1.0, noise_shape=(2, 3, 1, 1), generator=torch.Generator().manual_seed(0)
    )
    assert torch.equal(out, out[..., :1, :1].expand_as(out))  # one draw per channel
    assert not torch.equal(out[0, 0], out[0, 1])
    eps = torch.tensor([1.0, -2.0])
    torch.testing.assert_close(
        gaussian_dropout(torch.tensor([2.0, 3.0]), 4.0, eps=eps), torch.tensor([6.0, -9.0])
    )


def test_lrt_conv_options_pass_through() -> None:
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 4, 6, 6, generator=g)
    w = torch.randn(6, 2, 3, 3, generator=g)
    opts = dict(stride=2, padding=1, dilation=1, groups=2)
    m, v = lrt_conv(x, w, 0.5 * w**2, None, **opts)
    eps = torch.randn(m.shape, generator=g)
    out = gaussian_dropout_lrt(x, w, None, 0.5, eps=eps, **opts)
    torch.testing.assert_close(out, m + v.sqrt() * eps)


def test_gradcheck() -> None:
    g = torch.Generator().manual_seed(3)
    x = torch.randn(3, 4, generator=g, dtype=DT, requires_grad=True)
    alpha = torch.rand(4, generator=g, dtype=DT).add(0.1).requires_grad_(True)
    eps = torch.randn(3, 4, generator=g, dtype=DT)
    assert torch.autograd.gradcheck(lambda a, b: gaussian_dropout(a, b, eps=eps), (x, alpha))
    w = torch.randn(2, 4, generator=g, dtype=DT, requires_grad=True)
    bias = torch.randn(2, generator=g, dtype=DT, requires_grad=True)
    a_out = torch.rand(2, 1, generator=g, dtype=DT).add(0.1).requires_grad_(True)
    eps2 = torch.randn(3, 2, generator=g, dtype=DT)
    assert torch.autograd.gradcheck(
        lambda *t: gaussian_dropout_lrt(*t, eps=eps2), (x, w, bias, a_out)
    )
