"""ARDDropout: its two priors (eq. (3) and the Gamma hyperprior of Appendix B).

The behaviour it shares with SparseVariationalDropout (LRT moments, eval zeroing, clamping,
pruning, state_dict, gradcheck) is tested for both in tests/nn/test_sparse_variational.py.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from bayesdrop import ARDDropout, SparseVariationalDropout
from bayesdrop.nn.ard import GAMMA_MAX_LOG_SIGMA2


def posterior(m: nn.Module, seed: int, lo: float = -6.0, hi: float = 1.0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        m.layer.weight.copy_(torch.randn(m.layer.weight.shape, generator=g))
        m.log_sigma2.uniform_(lo, hi, generator=g)


def test_ard_kl_is_half_log1p_inverse_alpha_summed() -> None:
    m = ARDDropout(nn.Linear(5, 4))
    posterior(m, 0)
    theta = m.layer.weight.detach().double().numpy()
    sigma2 = np.exp(m.log_sigma2.detach().double().numpy())
    log_alpha = np.clip(np.log(sigma2 / theta**2), -10, 10)
    expected = np.sum(0.5 * np.log1p(np.exp(-log_alpha)))
    assert float(m.kl().detach()) == pytest.approx(expected, rel=1e-5)


def test_gamma_kl_is_the_appendix_b_formula_with_the_default_clip() -> None:
    a, b = 0.6, 1e-3
    m = ARDDropout(nn.Linear(4, 3), prior="gamma", a=a, b=b)
    posterior(m, 1, lo=-12.0, hi=-4.0)  # partly above the default clip log sigma^2 <= -8
    assert m.max_log_sigma2 == GAMMA_MAX_LOG_SIGMA2 == -8.0
    theta = m.layer.weight.detach().double().numpy()
    log_sigma2 = np.minimum(m.log_sigma2.detach().double().numpy(), -8.0)
    c = 1 - a + a * math.log(b) - math.lgamma(a) + 0.5 * (2 * a - 1) * math.log(2 * a - 1)
    per_weight = -0.5 * log_sigma2 + (a - 0.5) * np.log(np.exp(log_sigma2) + theta**2 + 2 * b) - c
    assert float(m.kl().detach()) == pytest.approx(per_weight.sum(), rel=1e-5)


def test_gamma_clip_limits_the_sampled_variance() -> None:
    m = ARDDropout(
        nn.Linear(3, 1, bias=False), prior="gamma", generator=torch.Generator().manual_seed(0)
    )
    with torch.no_grad():
        m.layer.weight.zero_()
        m.log_sigma2.fill_(0.0)  # clipped to -8
    s = 20000
    draws = m(torch.ones(s, 3)).detach().double()
    var = 3 * math.exp(-8.0)
    se = var * math.sqrt(2 / (s - 1))
    assert abs(float(draws.var()) - var) < 4.5 * se


def test_sparse_vd_objective_lower_bounds_ard() -> None:
    """Paper, after eq. (4): the Sparse VD KL is >= the ARD KL and meets it as alpha -> infinity."""
    lin = nn.Linear(50, 1)
    svd, ard = SparseVariationalDropout(lin), ARDDropout(lin)
    with torch.no_grad():
        lin.weight.fill_(1.0)
        svd.log_sigma2.copy_(torch.linspace(-10, 10, 50).reshape(1, 50))
        ard.log_sigma2.copy_(svd.log_sigma2)
    gap = (svd.kl_per_weight() - ard.kl_per_weight()).detach()[0]
    assert bool((gap > 0).all())
    assert bool((gap[1:] < gap[:-1]).all())  # shrinks as alpha grows
    assert float(gap[-1]) < 1e-6  # log alpha = 10
    assert float(gap[0]) == pytest.approx(0.63576, rel=1e-4)  # alpha -> 0: the constant k1


def test_gamma_a1_b_small_matches_ard_up_to_a_constant() -> None:
    lin = nn.Linear(6, 2)
    ard = ARDDropout(lin, init_log_sigma2=-3.0)
    gam = ARDDropout(lin, prior="gamma", a=1.0, b=1e-12, max_log_sigma2=20.0, init_log_sigma2=-3.0)
    with torch.no_grad():
        lin.weight.copy_(torch.linspace(-1, 1, 12).reshape(2, 6) + 0.05)
    c = math.log(1e-12)  # C = 1 - a + a log b - log Gamma(a) + 0 = log b at a = 1
    diff = (gam.kl_per_weight() - ard.kl_per_weight()).detach()
    torch.testing.assert_close(diff, torch.full_like(diff, -c), rtol=0, atol=1e-4)


def test_extra_repr_and_defaults() -> None:
    m = ARDDropout(nn.Conv2d(1, 2, 3))
    assert repr(m).startswith("ARDDropout(\n  prior='ard', threshold=3.0\n")
    assert m.max_log_sigma2 == 20.0 and m.p.shape == (2, 1, 3, 3)
    g = ARDDropout(nn.Linear(2, 2), prior="gamma", a=0.52, b=1e-8, max_log_sigma2=-6.0)
    assert "prior='gamma', a=0.52, b=1e-08, threshold=3.0, max_log_sigma2=-6.0" in repr(g)


@pytest.mark.parametrize(
    "kwargs,exc,match",
    [
        ({"prior": "laplace"}, ValueError, r"prior must be one of \['ard', 'gamma'\]"),
        ({"prior": "gamma", "a": 0.5}, ValueError, "a must be finite and > 1/2"),
        ({"prior": "gamma", "b": 0.0}, ValueError, "b must be finite and > 0"),
        ({"prior": "gamma", "b": "1"}, TypeError, "b must be a float"),
        ({"prior": "gamma", "init_log_sigma2": -5.0}, ValueError, "init_log_sigma2"),
    ],
)
def test_bad_arguments(kwargs: dict, exc: type, match: str) -> None:
    with pytest.raises(exc, match=match):
        ARDDropout(nn.Linear(2, 2), **kwargs)


@pytest.mark.parametrize("cls", [ARDDropout, SparseVariationalDropout])
def test_both_pruning_rules_against_a_hand_count(cls: type) -> None:
    """log alpha > threshold (Molchanov et al. 2017) and |theta| < 1e-2 (the ARD paper's trim)."""
    m = cls(nn.Linear(4, 2), prune_rule="magnitude")
    theta = torch.tensor([[0.5, -0.005, 0.02, 1e-3], [-0.0099, 0.01, -2.0, 0.3]])
    log_alpha = torch.tensor([[4.0, -1.0, 0.0, 2.5], [1.0, 3.5, 5.0, -2.0]])
    with torch.no_grad():
        m.layer.weight.copy_(theta)
        m.log_sigma2.copy_(log_alpha + theta.square().log())
    # |theta| < 0.01: -0.005, 1e-3, -0.0099 -> 3 dropped (0.01 itself is kept)
    magnitude_keep = torch.tensor([[True, False, True, False], [False, True, True, True]])
    assert torch.equal(m.keep_mask(), magnitude_keep)
    assert "prune_rule='magnitude', magnitude_threshold=0.01" in repr(m)
    # log alpha > 3: 4.0, 3.5, 5.0 -> 3 dropped, different weights
    m.prune_rule = "log_alpha"
    alpha_keep = torch.tensor([[False, True, True, True], [True, False, False, True]])
    assert torch.equal(m.keep_mask(), alpha_keep)
    m.prune_rule = "magnitude"
    assert m.prune() == 3
    assert torch.equal(m.layer.weight != 0, magnitude_keep)
    assert torch.equal(
        m.eval()(torch.eye(4)), torch.eye(4) @ (theta * magnitude_keep).T + m.layer.bias
    )
