"""Temperature scaling against closed forms, a brute-force grid, SciPy's bounded minimiser and
the stationarity condition d NLL / dT = 0 (computed by autograd, in float64)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.optimize import minimize_scalar

from bayesdrop.calibration import TemperatureScaling, fit_temperature, temperature_scale

F64 = torch.float64


def _nll(logits: torch.Tensor, labels: torch.Tensor, t: torch.Tensor | float) -> torch.Tensor:
    return torch.nn.functional.cross_entropy(logits / t, labels)


def _data(seed: int, n: int = 400, c: int = 5, sharp: float = 3.0):  # type: ignore[no-untyped-def]
    """Logits whose confidence is off by the factor ``sharp`` (over-confident if > 1)."""
    g = torch.Generator().manual_seed(seed)
    true = torch.randn(n, c, generator=g, dtype=F64) * 2
    labels = torch.multinomial(torch.softmax(true, -1), 1, generator=g)[:, 0]
    return true * sharp, labels


def test_closed_form_binary_temperature() -> None:
    """Margin m on every example, a fraction q right: sigmoid(m / T) = q, T = m / logit(q)."""
    m, q = 4.0, 0.8
    logits = torch.tensor([[m, 0.0]] * 10 + [[0.0, m]] * 10, dtype=F64)
    labels = torch.tensor([0] * 8 + [1] * 2 + [1] * 8 + [0] * 2)
    want = m / math.log(q / (1 - q))
    assert fit_temperature(logits, labels) == pytest.approx(want, rel=1e-12)


@pytest.mark.parametrize("seed, sharp", [(0, 3.0), (1, 0.4), (2, 1.0)])
def test_matches_grid_and_scipy_and_is_stationary(seed: int, sharp: float) -> None:
    logits, labels = _data(seed, sharp=sharp)
    t_fit = fit_temperature(logits, labels)
    # SciPy's bounded Brent on log T, to its tightest tolerance
    res = minimize_scalar(
        lambda s: float(_nll(logits, labels, math.exp(s))),
        bounds=(math.log(1e-2), math.log(1e2)),
        method="bounded",
        options={"xatol": 1e-10},
    )
    assert t_fit == pytest.approx(math.exp(res.x), rel=1e-6)
    # brute force: the grid's best point is within one grid step of T*
    grid = np.exp(np.linspace(math.log(0.05), math.log(20), 4001))
    values = [float(_nll(logits, labels, float(t))) for t in grid]
    step = math.log(grid[1] / grid[0])
    assert abs(math.log(grid[int(np.argmin(values))]) - math.log(t_fit)) <= step
    assert float(_nll(logits, labels, t_fit)) <= min(values) + 1e-12
    # stationarity: d NLL / dT by autograd, and its analytic form (1/T^2) mean(z_y - E_p[z])
    t = torch.tensor(t_fit, dtype=F64, requires_grad=True)
    _nll(logits, labels, t).backward()
    p = torch.softmax(logits / t_fit, -1)
    analytic = ((logits.gather(1, labels[:, None])[:, 0] - (p * logits).sum(1)).mean()) / t_fit**2
    assert float(t.grad) == pytest.approx(float(analytic), abs=1e-13)
    assert abs(float(analytic)) < 1e-10
    # over-confident logits are cooled, under-confident ones sharpened
    if sharp > 1.5:
        assert t_fit > 1.5
    if sharp < 0.7:
        assert t_fit < 0.7


def test_predictions_unchanged_and_nll_not_worse() -> None:
    logits, labels = _data(3, sharp=4.0)
    scaler = TemperatureScaling().fit(logits, labels)
    probs = scaler(logits)
    assert torch.equal(probs.argmax(1), logits.argmax(1))
    assert float(_nll(logits, labels, scaler.temperature)) < float(_nll(logits, labels, 1.0))
    torch.testing.assert_close(scaler.log_probs(logits).exp(), probs)
    assert "temperature=" in repr(scaler)


def test_bounds_flat_and_separable_cases() -> None:
    # all right with growing margins: the NLL keeps falling as T -> 0, the lower bound is returned
    logits = torch.tensor([[3.0, 0.0], [0.0, 2.0]], dtype=F64)
    assert fit_temperature(logits, torch.tensor([0, 1]), bounds=(0.1, 10.0)) == 0.1
    # all wrong: the NLL keeps falling as T grows
    assert fit_temperature(logits, torch.tensor([1, 0]), bounds=(0.1, 10.0)) == 10.0
    # constant rows: T does not matter
    assert fit_temperature(torch.zeros(3, 4), torch.tensor([0, 1, 2])) == 1.0


def test_log_of_mc_averaged_probabilities() -> None:
    """Applied to log(mean probs), T = 1 is the MC average itself; exact zeros (-inf) stay 0."""
    probs = torch.tensor([[0.7, 0.3, 0.0], [0.2, 0.5, 0.3], [0.1, 0.1, 0.8]], dtype=F64)
    log_probs = probs.log()
    torch.testing.assert_close(temperature_scale(log_probs, 1.0), probs)
    labels = torch.tensor([1, 1, 2])
    t_fit = fit_temperature(log_probs, labels)
    scaled = temperature_scale(log_probs, t_fit)
    assert float(scaled[0, 2]) == 0.0 and bool(torch.isfinite(scaled).all())
    p = torch.softmax(torch.where(probs > 0, log_probs / t_fit, -math.inf), -1)
    z = torch.where(probs > 0, log_probs, 0.0)
    slope = (z.gather(1, labels[:, None])[:, 0] - (p * z).sum(1)).mean()
    assert abs(float(slope)) < 1e-10
    with pytest.raises(ValueError, match="true label"):
        fit_temperature(log_probs, torch.tensor([2, 1, 2]))


def test_numpy_inputs_and_float32() -> None:
    logits, labels = _data(4)
    t64 = fit_temperature(logits, labels)
    assert fit_temperature(logits.numpy(), labels.numpy()) == t64
    t32 = fit_temperature(logits.float(), labels)
    assert t32 == pytest.approx(t64, rel=1e-5)
    assert temperature_scale(logits.float(), t32).dtype == torch.float32


def test_bad_input_is_rejected_clearly() -> None:
    logits, labels = torch.randn(4, 3), torch.tensor([0, 1, 2, 0])
    with pytest.raises(ValueError, match=r"shape \(N, C\)"):
        fit_temperature(torch.randn(4), labels)
    with pytest.raises(ValueError, match=r"shape \(N, C\)"):
        fit_temperature(torch.randn(4, 1), labels)
    with pytest.raises(TypeError, match="floating-point"):
        fit_temperature(torch.ones(4, 3, dtype=torch.long), labels)
    with pytest.raises(TypeError, match="torch.Tensor or a numpy array"):
        fit_temperature([[0.0, 1.0]], [1])
    with pytest.raises(ValueError, match="labels must have shape"):
        fit_temperature(logits, labels[:3])
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        fit_temperature(logits, torch.tensor([0, 1, 3, 0]))
    with pytest.raises(TypeError, match="class indices"):
        fit_temperature(logits, labels.float())
    with pytest.raises(ValueError, match="NaN"):
        fit_temperature(torch.tensor([[0.0, math.nan]]), torch.tensor([0]))
    with pytest.raises(ValueError, match=r"\+inf"):
        fit_temperature(torch.tensor([[0.0, math.inf]]), torch.tensor([0]))
    with pytest.raises(ValueError, match="all -inf"):
        fit_temperature(torch.tensor([[-math.inf, -math.inf]]), torch.tensor([0]))
    with pytest.raises(ValueError, match="bounds"):
        fit_temperature(logits, labels, bounds=(2.0, 1.0))
    with pytest.raises(ValueError, match="temperature must be finite and > 0"):
        temperature_scale(logits, 0.0)
    with pytest.raises(TypeError, match="temperature must be a number"):
        temperature_scale(logits, None)  # type: ignore[arg-type]
    with pytest.raises(RuntimeError, match="not fitted"):
        TemperatureScaling()(logits)
