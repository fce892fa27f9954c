"""VariationalDropout module: shapes, KL, moments of both kinds, clamping, train/eval, state."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import bayesdrop
from bayesdrop.functional import kl_log_uniform
from bayesdrop.nn import VariationalDropout
from tests.conftest import assert_within_se
from tests.functional.test_kl import kl_exact

DT = torch.float64


@pytest.mark.parametrize(
    "layer, kind, granularity, shape, per_alpha",
    [
        (nn.Linear(4, 3), "A", None, (4,), 3),
        (nn.Linear(4, 3), "A", "layer", (1,), 12),
        (nn.Conv2d(4, 6, 3, groups=2), "A", "unit", (4,), 27),  # 6 outputs / 2 groups * 9
        (nn.LSTM(4, 5), "A", "unit", (4,), 20),  # 4 gates * 5 hidden
        (nn.Linear(4, 3), "B", None, (3, 4), 1),
        (nn.Linear(4, 3), "B", "output", (3,), 4),
        (nn.Conv1d(4, 6, 3), "B", "output", (6,), 12),
        (nn.Conv3d(2, 3, 2), "B", "layer", (1,), 48),
    ],
)
def test_parameter_shapes_and_kl_multiplicity(layer, kind, granularity, shape, per_alpha) -> None:
    m = VariationalDropout(layer, noise=kind, granularity=granularity, init_p=0.2)
    assert tuple(m.log_alpha.shape) == shape
    torch.testing.assert_close(m.p, torch.full(shape, 0.2))
    assert m.weights_per_alpha() == per_alpha
    # One KL term per noise variable (Kingma et al. 2015, section 3.2): type A has one scale
    # variable per input unit, type B one per weight.
    n_weights = sum(p.numel() for name, p in layer.named_parameters() if "weight_ih" in name)
    n_weights = n_weights or layer.weight.numel()
    n_terms = m.units if kind == "A" else n_weights
    one = float(kl_log_uniform(torch.tensor(math.log(0.25), dtype=DT)))
    assert float(m.kl().detach()) == pytest.approx(n_terms * one, rel=1e-5)
    # The fan-out weighting counts every weight, for both types.
    w = VariationalDropout(
        layer, noise=kind, granularity=granularity, init_p=0.2, kl_terms="weight"
    )
    assert float(w.kl().detach()) == pytest.approx(n_weights * one, rel=1e-5)


@pytest.mark.parametrize(
    "layer, fan_out",
    [(nn.Linear(784, 1024), 1024), (nn.Conv2d(4, 6, 3, groups=2), 27), (nn.GRU(3, 5), 15)],
)
def test_type_a_wrapped_kl_equals_bare_kl_and_fan_out_option(
    layer: nn.Module, fan_out: int
) -> None:
    """The wrapped type-A module has the bare form's KL with the same alphas (closed form: one
    cubic per unit); kl_terms="weight" is exactly fan_out times it."""
    units = (
        layer.in_channels
        if isinstance(layer, nn.Conv2d)
        else (layer.input_size if isinstance(layer, nn.GRU) else layer.in_features)
    )
    log_alpha = torch.linspace(-6.0, 0.0, units, dtype=DT)
    wrapped = VariationalDropout(layer, noise="A").double()
    bare = VariationalDropout(num_features=units).double()
    fan = VariationalDropout(layer, noise="A", kl_terms="weight").double()
    for m in (wrapped, bare, fan):
        with torch.no_grad():
            m.log_alpha.copy_(log_alpha)
    c1, c2, c3 = 1.16145124, -1.50204118, 0.58629921
    a = log_alpha.exp()
    closed_form = float(-(0.5 * log_alpha + c1 * a + c2 * a**2 + c3 * a**3).sum())
    assert float(bare.kl().detach()) == pytest.approx(closed_form, rel=1e-12)
    assert float(wrapped.kl().detach()) == pytest.approx(closed_form, rel=1e-12)
    assert float(fan.kl().detach()) == pytest.approx(fan_out * closed_form, rel=1e-12)
    assert fan.weights_per_alpha() == fan_out and wrapped.kl_terms_per_alpha() == 1


def test_bare_form_counts_each_unit_once() -> None:
    m = VariationalDropout(num_features=5, init_p=0.5)
    assert float(m.kl().detach()) == pytest.approx(5 * float(kl_log_uniform(torch.tensor(0.0))))
    x = torch.randn(2, 5)
    assert torch.equal(m.eval()(x), x)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(noise="B"), ValueError, "must wrap an nn.Linear"),
        (dict(layer=nn.GRU(3, 2), noise="B"), ValueError, "must wrap an nn.Linear"),
        (dict(layer=nn.Linear(3, 2), granularity="weight"), ValueError, "granularity"),
        (dict(layer=nn.Linear(3, 2), noise="B", granularity="unit"), ValueError, "granularity"),
        (
            dict(num_features=3, init_p=0.6),
            ValueError,
            r"init_p must be <= max_alpha / \(1 \+ max_alpha\) = 0.5",
        ),
        (dict(num_features=3, init_p=1.0), ValueError, "init_p must be in"),
        (dict(num_features=3, max_alpha=0.0), ValueError, "max_alpha"),
        (dict(num_features=3, max_alpha=1e10), ValueError, "max_alpha"),
        (dict(num_features=3, noise="a"), ValueError, "noise must be one of"),
        (
            dict(num_features=3, max_alpha=1.5),
            ValueError,
            "max_alpha must be <= 1 with kl='kingma'",
        ),
        (dict(num_features=3, kl="gauss"), ValueError, "kl must be one of"),
        (dict(num_features=3, kl_terms="unit"), ValueError, "kl_terms must be one of"),
        (dict(num_features=3, kl_terms="weight"), ValueError, "needs a wrapped layer"),
        (dict(num_features=3, kl="molchanov", max_alpha=1e10), ValueError, "max_alpha"),
        (dict(), ValueError, "num_features"),
        (dict(layer=nn.ReLU()), TypeError, "layer must be one of"),
    ],
)
def test_bad_arguments(kwargs: dict, error: type, match: str) -> None:
    layer = kwargs.pop("layer", None)
    with pytest.raises(error, match=match):
        VariationalDropout(layer, **kwargs)


def test_max_alpha_configurable_and_enforced() -> None:
    m = VariationalDropout(nn.Linear(3, 2), noise="B", init_p=0.7, max_alpha=4.0, kl="molchanov")
    torch.testing.assert_close(m.p, torch.full((2, 3), 0.7))
    with torch.no_grad():
        m.log_alpha.fill_(10.0)
    torch.testing.assert_close(m.p, torch.full((2, 3), 0.8))  # alpha = 4 -> p = 4/5
    with torch.no_grad():
        m.log_alpha.fill_(-1e4)
    assert torch.isfinite(m.kl()) and bool((m.p > 0).all())


@pytest.mark.parametrize("kind", ["A", "B"])
def test_marginal_moments_match_and_covariance_tells_kinds_apart(kind: str) -> None:
    layer = nn.Linear(3, 2).double()
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1.0, 0.5, -1.0], [1.0, 1.0, -0.5]]))
    m = VariationalDropout(
        layer, noise=kind, init_p=0.4, generator=torch.Generator().manual_seed(3)
    )
    x = torch.tensor([[1.0, 2.0, 1.0]], dtype=DT)
    with torch.no_grad():
        out = m(x.expand(20000, 3))
        w, alpha = layer.weight, 0.4 / 0.6
        mean = layer(x)[0]
        var = alpha * (w**2 * x**2).sum(1)
        cov = alpha * (w[0] * w[1] * x[0] ** 2).sum() if kind == "A" else torch.zeros((), dtype=DT)
    c = out - mean
    assert_within_se(out, mean)
    assert_within_se(c**2, var)
    assert_within_se(c[:, :1] * c[:, 1:], cov.reshape(1))


def test_type_b_output_granularity_conv_moments() -> None:
    layer = nn.Conv2d(2, 3, 3, stride=2, padding=1).double()
    m = VariationalDropout(layer, noise="B", granularity="output", init_p=0.3)
    m.generator = torch.Generator().manual_seed(4)
    with torch.no_grad():
        m.log_alpha.copy_(torch.tensor([-2.0, -1.0, 0.0]))
    x = torch.randn(1, 2, 5, 5, dtype=DT)
    with torch.no_grad():
        out = m(x.expand(4000, -1, -1, -1))
        mean = layer(x)[0]
        w_var = (
            torch.tensor([-2.0, -1.0, 0.0], dtype=DT).exp()[:, None, None, None] * layer.weight**2
        )
        var = F.conv2d(x**2, w_var, stride=2, padding=1)[0]
    assert_within_se(out, mean)
    assert_within_se((out - mean) ** 2, var)


def test_train_samples_eval_uses_mean_weights() -> None:
    for kind in ("A", "B"):
        layer = nn.Conv1d(3, 2, 3)
        m = VariationalDropout(layer, noise=kind)
        x = torch.randn(4, 3, 7)
        assert not torch.equal(m(x), layer(x))
        m.eval()
        assert torch.equal(m(x), layer(x)) and torch.equal(m(x), m(x))


def test_gradcheck_through_the_module() -> None:
    layer = nn.Linear(3, 2).double()
    m = VariationalDropout(layer, noise="B", init_p=0.3)
    x = torch.randn(4, 3, dtype=DT)

    def f(log_alpha: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        m.generator = torch.Generator().manual_seed(0)  # same noise at every evaluation
        return torch.func.functional_call(m, {"log_alpha": log_alpha, "layer.weight": weight}, (x,))

    la = torch.full((2, 3), -0.7, dtype=DT, requires_grad=True)
    w = layer.weight.detach().clone().requires_grad_(True)
    assert torch.autograd.gradcheck(f, (la, w))


def test_extremes_no_nan() -> None:
    layer = nn.Linear(4, 3)
    nn.init.zeros_(layer.weight)  # theta = 0: LRT variance 0
    m = VariationalDropout(layer, noise="B")
    with torch.no_grad():
        m.log_alpha.copy_(torch.tensor([-1e4, -30.0, 0.0, 1e4]).repeat(3, 1))
    out = m(torch.randn(5, 4))
    (out.sum() + m.kl()).backward()
    assert torch.isfinite(out).all()
    assert torch.isfinite(m.log_alpha.grad).all() and torch.isfinite(layer.weight.grad).all()
    a = VariationalDropout(nn.Linear(4, 3), noise="A")
    with torch.no_grad():
        a.log_alpha.copy_(torch.tensor([-1e4, -30.0, 0.0, 1e4]))
    out = a(torch.randn(5, 4))
    (out.sum() + a.kl()).backward()
    assert torch.isfinite(out).all() and torch.isfinite(a.log_alpha.grad).all()


def test_state_dict_round_trip() -> None:
    m = VariationalDropout(nn.Linear(3, 2), noise="B", granularity="output", init_p=0.1)
    with torch.no_grad():
        m.log_alpha.copy_(torch.tensor([-1.0, -0.5]))
    assert set(m.state_dict()) == {"log_alpha", "layer.weight", "layer.bias"}
    m2 = VariationalDropout(nn.Linear(3, 2), noise="B", granularity="output")
    m2.load_state_dict(m.state_dict())
    torch.testing.assert_close(m2.p, m.p)
    x = torch.randn(4, 3)
    m.generator = torch.Generator().manual_seed(0)
    m2.generator = torch.Generator().manual_seed(0)
    assert torch.equal(m(x), m2(x))


def test_rates_learn_through_objective() -> None:
    # Inputs 0 and 1 carry the signal, input 2 is one the target ignores: training through
    # bayesdrop.objective lowers the drop rates of the useful inputs well below the initial 0.3
    # and leaves the useless one far higher (measured over seeds 0-2: 24x to 68x higher).
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 3, generator=g)
    y = x[:, 0] - 2 * x[:, 1]
    m = VariationalDropout(nn.Linear(3, 1), noise="A", init_p=0.3, generator=g)
    opt = torch.optim.Adam(m.parameters(), lr=0.05)

    def nll(out: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return (out[:, 0] - t) ** 2 / (2 * 0.5**2)

    for _ in range(200):
        opt.zero_grad()
        bayesdrop.objective(m, x, y, nll, n_data=64).backward()
        opt.step()
    p = m.p
    assert float(p[:2].max()) < 0.05 and float(p[2]) > 10 * float(p[:2].max()), p


def test_noise_is_the_only_name_of_the_noise_type() -> None:
    m = VariationalDropout(nn.Linear(3, 2), noise="B", granularity="output")
    assert m.noise == "B" and "noise='B'" in repr(m) and not hasattr(m, "kind")
    with pytest.raises(TypeError, match="kind"):
        VariationalDropout(nn.Linear(3, 2), kind="B")  # type: ignore[call-arg]


# ------------------------------------------------------------------ KL against quadrature
# The true KL(N(theta, alpha theta^2) || log-uniform) = -1/2 log alpha + E log|1 + sqrt(alpha) e|
# + C, with the expectation integrated by scipy.integrate.quad (tests/functional/test_kl.py).
ALPHA_GRID = [math.exp(v) for v in np.linspace(-6.0, 0.0, 13)]


def _module_kl(alphas: list[float], **kw) -> float:
    m = VariationalDropout(num_features=len(alphas), **kw).double()
    with torch.no_grad():
        m.log_alpha.copy_(torch.tensor([math.log(a) for a in alphas], dtype=DT))
    return float(m.kl())


def test_kingma_kl_matches_quadrature_up_to_its_constant() -> None:
    """kl="kingma" on alpha in [e^-6, 1]: KL(alpha) - KL(1) against the integral's difference.

    Measured maximum deviation 0.036 nats (the cubic's slope at alpha -> 0 is c1, not 1/2)."""
    ref_exact, ref_module = kl_exact(1.0), _module_kl([1.0])
    deviations = [(_module_kl([a]) - ref_module) - (kl_exact(a) - ref_exact) for a in ALPHA_GRID]
    assert max(abs(d) for d in deviations) < 0.04, deviations


@pytest.mark.parametrize("max_alpha", [1.0, 10.0, 1e3])
def test_molchanov_kl_matches_quadrature_absolutely(max_alpha: float) -> None:
    """kl="molchanov": absolute KL on alpha in [e^-6, max_alpha], within 0.01 nats per unit
    (measured maximum 0.0093 on log alpha in [-8, 8])."""
    grid = [a for a in ALPHA_GRID + [2.0, 10.0, 100.0, 1e3] if a <= max_alpha]
    for a in grid:
        got = _module_kl([a], kl="molchanov", max_alpha=max_alpha)
        assert got == pytest.approx(kl_exact(a), abs=0.01), (a, got, kl_exact(a))


def test_kingma_cubic_diverges_above_one_and_is_refused() -> None:
    """At alpha = 10 the cubic gives -449 where the true KL is 0.0492 (quadrature; Molchanov's
    approximation gives 0.0508): max_alpha > 1 is refused with it, and kl="molchanov" is used."""
    cubic = float(kl_log_uniform(torch.tensor(math.log(10.0), dtype=DT)))
    assert cubic == pytest.approx(-448.9, abs=0.1)
    assert kl_exact(10.0) == pytest.approx(0.0492, abs=5e-5)
    with pytest.raises(ValueError, match="max_alpha"):
        VariationalDropout(num_features=1, max_alpha=10.0)
    assert _module_kl([10.0], kl="molchanov", max_alpha=10.0) == pytest.approx(
        kl_exact(10.0), abs=0.005
    )


def test_molchanov_kl_rate_gradient_matches_quadrature() -> None:
    """d KL / d log alpha (what training uses) against central differences of the integral."""
    m = VariationalDropout(num_features=5, kl="molchanov", max_alpha=100.0).double()
    log_alpha = torch.tensor([-4.0, -2.0, 0.0, 2.0, 4.0], dtype=DT)
    with torch.no_grad():
        m.log_alpha.copy_(log_alpha)
    m.kl().backward()
    h = 1e-3
    numeric = [(kl_exact(math.exp(v + h)) - kl_exact(math.exp(v - h))) / (2 * h) for v in log_alpha]
    np.testing.assert_allclose(m.log_alpha.grad.numpy(), numeric, atol=0.01)
