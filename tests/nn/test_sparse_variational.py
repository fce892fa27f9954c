"""SparseVariationalDropout, and the contract it shares with ARDDropout (the additive base).

The contract tests run for every per-weight Gaussian family through a factory; ARD-specific
checks live in tests/nn/test_ard.py.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bayesdrop.functional.additive_gaussian import (
    ADDITIVE_LOG_ALPHA_MAX,
    ADDITIVE_LOG_ALPHA_MIN,
    KL_CHUNK,
    LOG_SIGMA2_MAX,
    LOG_SIGMA2_MIN,
)
from bayesdrop.nn import ARDDropout, SparseVariationalDropout
from bayesdrop.nn.additive_gaussian import AdditiveGaussianDropout

Factory = Callable[..., AdditiveGaussianDropout]
FACTORIES: dict[str, Factory] = {
    "svd": SparseVariationalDropout,
    "ard": lambda layer, **kw: ARDDropout(layer, prior="ard", **kw),
    # no variance clip here, so that the contract tests can set any log_sigma2 (the Gamma
    # prior's default clip is tested in test_ard.py)
    "gamma": lambda layer, **kw: ARDDropout(
        layer, prior="gamma", a=0.75, b=1e-3, **{"max_log_sigma2": LOG_SIGMA2_MAX, **kw}
    ),
}
families = pytest.mark.parametrize("make", list(FACTORIES.values()), ids=list(FACTORIES))


def set_posterior(
    m: AdditiveGaussianDropout, theta: torch.Tensor, log_sigma2: torch.Tensor
) -> None:
    with torch.no_grad():
        m.layer.weight.copy_(theta)
        m.log_sigma2.copy_(log_sigma2)


def assert_same_moments(a: torch.Tensor, b: torch.Tensor, k: float = 4.5) -> None:
    """Two independent Gaussian sample sets (first dim) have equal means and variances within k SE."""
    na, nb = a.shape[0], b.shape[0]
    ma, mb = a.mean(0), b.mean(0)
    va, vb = a.var(0), b.var(0)
    se_mean = (va / na + vb / nb).sqrt()
    assert bool(((ma - mb).abs() <= k * se_mean).all()), f"means {ma} vs {mb}"
    # Var of a Gaussian sample variance: 2 sigma^4 / (n - 1).
    se_var = (2 * va.square() / (na - 1) + 2 * vb.square() / (nb - 1)).sqrt()
    assert bool(((va - vb).abs() <= k * se_var).all()), f"variances {va} vs {vb}"


# ---------------------------------------------------------------------------- local reparam.
def test_lrt_linear_moments_match_explicit_weight_sampling() -> None:
    g = torch.Generator().manual_seed(1)
    m = SparseVariationalDropout(nn.Linear(5, 3), generator=g).double()
    theta = torch.randn(3, 5, generator=g, dtype=torch.float64)
    log_sigma2 = torch.empty(3, 5, dtype=torch.float64).uniform_(-3.0, 0.0, generator=g)
    set_posterior(m, theta, log_sigma2)
    x = torch.randn(2, 5, generator=g, dtype=torch.float64)
    s = 4000
    with torch.no_grad():
        lrt = m(x.expand(s, 2, 5).reshape(s * 2, 5)).reshape(s, 2, 3)
        w = theta + log_sigma2.mul(0.5).exp() * torch.randn(
            s, 3, 5, generator=g, dtype=torch.float64
        )
        explicit = torch.einsum("bi,soi->sbo", x, w) + m.layer.bias
    assert_same_moments(lrt, explicit)


def test_lrt_conv2d_moments_match_explicit_weight_sampling() -> None:
    g = torch.Generator().manual_seed(2)
    conv = nn.Conv2d(2, 3, 3, padding=1, stride=2)
    m = SparseVariationalDropout(conv, generator=g).double()
    theta = torch.randn(3, 2, 3, 3, generator=g, dtype=torch.float64)
    log_sigma2 = torch.empty(3, 2, 3, 3, dtype=torch.float64).uniform_(-3.0, 0.0, generator=g)
    set_posterior(m, theta, log_sigma2)
    x = torch.randn(1, 2, 5, 5, generator=g, dtype=torch.float64)
    s = 3000
    with torch.no_grad():
        lrt = m(x.expand(s, 2, 5, 5).contiguous())  # (s, 3, 3, 3)
        w = theta + log_sigma2.mul(0.5).exp() * torch.randn(
            s, 3, 2, 3, 3, generator=g, dtype=torch.float64
        )
        # one sampled weight tensor per draw: a single conv over the stacked filters
        explicit = F.conv2d(x, w.reshape(s * 3, 2, 3, 3), stride=2, padding=1).reshape(s, 3, 3, 3)
        explicit = explicit + m.layer.bias.reshape(3, 1, 1)
    assert lrt.shape == explicit.shape
    assert_same_moments(lrt, explicit)


@pytest.mark.parametrize("cls", [nn.Conv1d, nn.Conv3d])
def test_conv1d_conv3d_moments_closed_form(cls: type[nn.Module]) -> None:
    """Mean and variance of the LRT draws against conv(x, theta) + b and conv(x^2, sigma^2)."""
    g = torch.Generator().manual_seed(3)
    m = SparseVariationalDropout(cls(2, 2, 2), generator=g).double()
    d = 1 if cls is nn.Conv1d else 3
    shape = (2, 2) + (2,) * d
    set_posterior(
        m, torch.randn(shape, dtype=torch.float64), torch.full(shape, -1.0, dtype=torch.float64)
    )
    x = torch.randn((1, 2) + (3,) * d, dtype=torch.float64)
    conv = {1: F.conv1d, 3: F.conv3d}[d]
    mean = conv(x, m.layer.weight, m.layer.bias).detach()
    var = conv(x.square(), m.log_sigma2.exp()).detach()
    s = 4000
    with torch.no_grad():
        draws = m(x.expand((s,) + x.shape[1:]).contiguous())
    se = (var / s).sqrt()
    assert bool(((draws.mean(0) - mean[0]).abs() <= 4.5 * se[0]).all())
    se_var = var * math.sqrt(2 / (s - 1))
    assert bool(((draws.var(0) - var[0]).abs() <= 4.5 * se_var[0]).all())


@families
def test_bias_never_enters_the_standard_deviation(make: Factory) -> None:
    lin = nn.Linear(4, 3)
    m1 = make(lin, generator=torch.Generator().manual_seed(0))
    m2 = make(nn.Linear(4, 3), generator=torch.Generator().manual_seed(0))
    m2.load_state_dict(m1.state_dict())
    with torch.no_grad():
        m2.layer.bias.fill_(1e6)
        m1.log_sigma2.fill_(-1.0)
        m2.log_sigma2.fill_(-1.0)
    x = torch.randn(6, 4)
    torch.testing.assert_close(m2(x) - m2.layer.bias, m1(x) - m1.layer.bias, rtol=0, atol=0.2)
    # exact in float64
    m1, m2 = m1.double(), m2.double()
    m1.generator, m2.generator = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    xd = x.double()
    torch.testing.assert_close(m2(xd) - m2.layer.bias, m1(xd) - m1.layer.bias, rtol=0, atol=1e-9)


# ---------------------------------------------------------------------------- KL and p
def test_svd_kl_is_the_molchanov_formula_summed() -> None:
    m = SparseVariationalDropout(nn.Linear(6, 4))
    g = torch.Generator().manual_seed(4)
    set_posterior(m, torch.randn(4, 6, generator=g), torch.empty(4, 6).uniform_(-6, 2, generator=g))
    theta = m.layer.weight.detach().double().numpy()
    la = np.clip(m.log_sigma2.detach().double().numpy() - np.log(theta**2), -10, 10)
    k1, k2, k3 = 0.63576, 1.87320, 1.48695
    expected = np.sum(k1 - k1 / (1 + np.exp(-(k2 + k3 * la))) + 0.5 * np.log1p(np.exp(-la)))
    assert float(m.kl().detach()) == pytest.approx(expected, rel=1e-5)
    assert m.kl().shape == ()


@families
def test_p_is_alpha_over_one_plus_alpha(make: Factory) -> None:
    m = make(nn.Linear(5, 2))
    g = torch.Generator().manual_seed(6)
    set_posterior(m, torch.randn(2, 5, generator=g), torch.empty(2, 5).uniform_(-5, 1, generator=g))
    theta = m.layer.weight.detach().double()
    sigma2 = m.log_sigma2.detach().double().clamp(max=m.max_log_sigma2).exp()  # documented clip
    alpha = sigma2 / theta.square()
    torch.testing.assert_close(m.p.double(), alpha / (1 + alpha), rtol=1e-5, atol=1e-7)
    assert m.p.shape == m.layer.weight.shape and not m.p.requires_grad


@families
def test_log_alpha_is_clamped(make: Factory) -> None:
    m = make(nn.Linear(3, 1))
    set_posterior(
        m, torch.tensor([[1e-20, 100.0, 0.5]]), torch.tensor([[0.0, -40.0, math.log(0.25)]])
    )
    la = m.log_alpha.detach()
    torch.testing.assert_close(
        la, torch.tensor([[ADDITIVE_LOG_ALPHA_MAX, ADDITIVE_LOG_ALPHA_MIN, 0.0]])
    )
    assert float(m.p[0, 0]) == pytest.approx(1 / (1 + math.exp(-ADDITIVE_LOG_ALPHA_MAX)))
    # log_sigma2 itself is clamped before use: no inf from exp
    with torch.no_grad():
        m.log_sigma2.fill_(1e4)
    assert bool(torch.isfinite(m.train()(torch.ones(2, 3))).all())


@families
def test_no_nan_at_theta_zero(make: Factory) -> None:
    m = make(nn.Conv2d(2, 2, 3))
    with torch.no_grad():
        m.layer.weight.zero_()
        m.layer.weight[0, 0, 0, 0] = 1e-30
    x = torch.randn(2, 2, 4, 4)
    out = m.train()(x)
    loss = out.square().sum() + m.kl()
    loss.backward()
    assert bool(torch.isfinite(out).all()) and bool(torch.isfinite(loss))
    for p in m.parameters():
        assert p.grad is not None and bool(torch.isfinite(p.grad).all())
    # zero input as well: variance 0 -> finite gradient
    m.zero_grad()
    m(torch.zeros(1, 2, 4, 4)).sum().backward()
    assert all(bool(torch.isfinite(p.grad).all()) for p in m.parameters() if p.grad is not None)
    assert bool((m.eval()(x) == m.layer.bias.reshape(1, 2, 1, 1)).all())


# ---------------------------------------------------------------------------- gradients
@families
def test_fused_kl_in_chunks_matches_autograd(make: Factory) -> None:
    """A layer larger than two KL_CHUNKs takes the chunked CPU path; same value and gradients."""
    m = make(nn.Linear(400, 400)).double()
    assert m.layer.weight.numel() > 2 * KL_CHUNK
    g = torch.Generator().manual_seed(11)
    theta = torch.randn(400, 400, generator=g, dtype=torch.float64) * 0.1
    log_sigma2 = torch.empty(400, 400, dtype=torch.float64).uniform_(-14.0, -2.0, generator=g)
    set_posterior(m, theta, log_sigma2)
    with torch.no_grad():
        m.weight_mask[::7] = False
    reference = torch.where(m.weight_mask, m.kl_per_weight(), 0.0).sum()
    ref_grads = torch.autograd.grad(reference, (m.layer.weight, m.log_sigma2))
    fused = m.kl()
    grads = torch.autograd.grad(fused, (m.layer.weight, m.log_sigma2))
    torch.testing.assert_close(fused, reference, rtol=1e-12, atol=1e-8)
    for got, ref in zip(grads, ref_grads):
        torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-12)


@families
@pytest.mark.parametrize("pruned", [False, True])
def test_fused_kl_matches_autograd_through_the_functional_kl(make: Factory, pruned: bool) -> None:
    """kl() (closed-form gradient) against autograd through kl_per_weight(), clamps included."""
    m = make(nn.Linear(8, 6)).double()
    g = torch.Generator().manual_seed(10)
    theta = torch.randn(6, 8, generator=g, dtype=torch.float64)
    theta[0, :3] = 0.0  # log alpha clamped at the top
    theta[1, :2] = 1e3  # log alpha clamped at the bottom
    log_sigma2 = torch.empty(6, 8, dtype=torch.float64).uniform_(-12.0, 2.0, generator=g)
    log_sigma2[2, :2] = torch.tensor([-60.0, 30.0])  # log_sigma2 itself clamped
    set_posterior(m, theta, log_sigma2)
    if pruned:
        with torch.no_grad():
            m.weight_mask[3:5] = False
    reference = torch.where(m.weight_mask, m.kl_per_weight(), 0.0).sum()
    ref_grads = torch.autograd.grad(reference, (m.layer.weight, m.log_sigma2))
    fused = m.kl()
    grads = torch.autograd.grad(2.5 * fused, (m.layer.weight, m.log_sigma2))
    torch.testing.assert_close(fused, reference, rtol=1e-12, atol=1e-10)
    for got, ref in zip(grads, ref_grads):
        torch.testing.assert_close(got, 2.5 * ref, rtol=1e-10, atol=1e-12)
    with torch.no_grad():
        torch.testing.assert_close(m.kl(), reference.detach(), rtol=1e-12, atol=1e-10)


@families
def test_gradcheck_sampled_forward_and_kl(make: Factory) -> None:
    m = make(nn.Linear(3, 2)).double()
    theta = torch.tensor(
        [[0.8, -0.5, 1.2], [0.3, -1.1, 0.6]], dtype=torch.float64, requires_grad=True
    )
    log_sigma2 = torch.tensor(
        [[-2.0, -1.0, -0.5], [-1.5, -2.5, -0.2]], dtype=torch.float64, requires_grad=True
    )
    bias = torch.tensor([0.1, -0.2], dtype=torch.float64, requires_grad=True)
    x = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)

    def fn(theta, log_sigma2, bias, x):
        m.generator = torch.Generator().manual_seed(0)  # the same noise at every call
        params = {"layer.weight": theta, "log_sigma2": log_sigma2, "layer.bias": bias}
        out = torch.func.functional_call(m, params, (x,))
        kl = torch.func.functional_call(_KL(m), {f"inner.{k}": v for k, v in params.items()}, ())
        return out, kl

    assert torch.autograd.gradcheck(fn, (theta, log_sigma2, bias, x))


class _KL(nn.Module):
    """Exposes ``inner.kl()`` as ``forward`` so ``functional_call`` can substitute parameters."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self) -> torch.Tensor:
        return self.inner.kl()


# ---------------------------------------------------------------------------- eval mode
@families
def test_eval_zeroes_weights_above_threshold(make: Factory) -> None:
    m = make(nn.Linear(4, 3), threshold=1.0)
    theta = torch.randn(3, 4, generator=torch.Generator().manual_seed(7))
    log_alpha = torch.tensor(
        [[-3.0, 0.5, 1.5, 4.0], [2.0, -1.0, 0.99, 1.01], [9.0, 0.0, -8.0, 3.0]]
    )
    set_posterior(m, theta, log_alpha + theta.square().log())
    keep = log_alpha <= 1.0
    x = torch.randn(5, 4)
    m.eval()
    expected = F.linear(x, theta * keep, m.layer.bias)
    torch.testing.assert_close(m(x), expected)
    assert torch.equal(m(x), m(x))  # deterministic
    assert torch.equal(m.keep_mask(), keep)
    m.threshold = 3.0
    torch.testing.assert_close(m(x), F.linear(x, theta * (log_alpha <= 3.0), m.layer.bias))
    # training mode and MC sampling sample from the full posterior
    m.mc_sampling = True
    assert not torch.equal(m(x), m(x))
    m.mc_sampling = False
    assert not torch.equal(m.train()(x), m(x))


@families
def test_state_dict_round_trip(make: Factory) -> None:
    g = torch.Generator().manual_seed(8)
    m = make(nn.Conv2d(2, 3, 3, padding=1))
    set_posterior(
        m,
        torch.randn(3, 2, 3, 3, generator=g),
        torch.empty(3, 2, 3, 3).uniform_(-6, 0, generator=g),
    )
    m.prune()
    state = m.state_dict()
    assert set(state) == {"log_sigma2", "weight_mask", "layer.weight", "layer.bias"}
    fresh = make(nn.Conv2d(2, 3, 3, padding=1))
    fresh.load_state_dict(state)
    x = torch.randn(2, 2, 5, 5)
    torch.testing.assert_close(fresh.eval()(x), m.eval()(x), rtol=0, atol=0)
    assert torch.equal(fresh.weight_mask, m.weight_mask)
    torch.testing.assert_close(fresh.kl(), m.kl())
    torch.testing.assert_close(fresh.p, m.p)


@families
def test_prune_is_permanent_under_further_training(make: Factory) -> None:
    m = make(nn.Linear(6, 4), generator=torch.Generator().manual_seed(9))
    theta = torch.randn(4, 6, generator=torch.Generator().manual_seed(9))
    la = torch.full((4, 6), -2.0)
    la[:, :2] = 7.0
    set_posterior(m, theta, la + theta.square().log())
    opt = torch.optim.Adam(m.parameters(), lr=0.01)
    for _ in range(3):  # build up optimiser momentum before pruning
        opt.zero_grad()
        (m(torch.randn(8, 6)).square().mean() + m.kl()).backward()
        opt.step()
    kept_before = m.keep_mask()
    n = m.prune()
    assert n == int((~kept_before).sum()) and n >= 8
    assert bool((m.layer.weight[~kept_before] == 0).all())
    assert bool((m.log_sigma2[~kept_before] == LOG_SIGMA2_MIN).all())
    kl_after_prune = m.kl()
    for _ in range(5):
        opt.zero_grad()
        (m(torch.randn(8, 6)).square().mean() + m.kl()).backward()
        assert bool((m.log_sigma2.grad[~kept_before] == 0).all())
        assert bool((m.layer.weight.grad[~kept_before] == 0).all())
        opt.step()
    assert bool((m.sparse_weight()[~kept_before] == 0).all())
    assert bool((m.p[~kept_before] > 0.9999).all())
    assert torch.isfinite(kl_after_prune)


# ---------------------------------------------------------------------------- training
def test_trains_through_objective() -> None:
    import bayesdrop

    torch.manual_seed(0)
    model = nn.Sequential(
        SparseVariationalDropout(nn.Linear(4, 8)), nn.ReLU(), ARDDropout(nn.Linear(8, 1))
    )
    x, y = torch.randn(32, 4), torch.randn(32, 1)

    def nll(out: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return (out - t).square().sum(-1)

    def loss(kl_weight: float) -> torch.Tensor:
        model[0].generator = torch.Generator().manual_seed(1)
        model[2].generator = torch.Generator().manual_seed(2)
        return bayesdrop.objective(model, x, y, nll, n_data=1000, kl_weight=kl_weight)

    kl = (model[0].kl() + model[2].kl()).detach()
    assert float(bayesdrop.kl_divergence(model).detach()) == pytest.approx(float(kl))
    assert float((loss(1.0) - loss(0.0)).detach()) == pytest.approx(float(kl) / 1000, rel=1e-4)
    loss(1.0).backward()
    for p in model.parameters():
        assert p.grad is not None and bool(torch.isfinite(p.grad).all()) and bool(p.grad.any())


# ---------------------------------------------------------------------------- arguments
@families
@pytest.mark.parametrize(
    "kwargs,exc,match",
    [
        ({"threshold": float("nan")}, ValueError, "threshold"),
        ({"threshold": 11.0}, ValueError, r"threshold must be in \[-10.0, 10.0\]"),
        ({"threshold": "3"}, TypeError, "threshold"),
        ({"init_log_sigma2": -41.0}, ValueError, "init_log_sigma2"),
        ({"init_log_sigma2": float("inf")}, ValueError, "init_log_sigma2"),
        ({"max_log_sigma2": 25.0}, ValueError, "max_log_sigma2"),
        ({"generator": 0}, TypeError, "generator"),
    ],
)
def test_bad_arguments(make: Factory, kwargs: dict, exc: type, match: str) -> None:
    with pytest.raises(exc, match=match):
        make(nn.Linear(2, 2), **kwargs)


@families
@pytest.mark.parametrize("layer", [nn.LSTM(2, 2), nn.ReLU(), nn.ConvTranspose2d(2, 2, 3), None])
def test_unsupported_layers(make: Factory, layer: object) -> None:
    with pytest.raises(TypeError, match="layer must be an nn.Linear or nn.Conv1d/Conv2d/Conv3d"):
        make(layer)


def test_init_log_sigma2_above_clip_rejected() -> None:
    with pytest.raises(ValueError, match="init_log_sigma2"):
        SparseVariationalDropout(nn.Linear(2, 2), init_log_sigma2=-5.0, max_log_sigma2=-8.0)


def test_wrong_input_shape_names_the_problem() -> None:
    m = SparseVariationalDropout(nn.Linear(3, 2))
    with pytest.raises(ValueError, match=r"shape \(\*, 3\)"):
        m(torch.zeros(2, 4))


def test_extra_repr() -> None:
    m = SparseVariationalDropout(nn.Linear(3, 2), threshold=2.5)
    assert "threshold=2.5" in repr(m) and "Linear(in_features=3" in repr(m)
