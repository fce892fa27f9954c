"""control-dynamics: likelihood and uncertainty formulas, and the claim on growing data."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from bayesdrop.uncertainty import mc_sampling
from bayesdrop_reproduce.datasets.cartpole import cartpole_transitions
from bayesdrop_reproduce.experiments.control_dynamics import (
    DynamicsModel,
    _gaussian_nll,
    _inputs,
    epistemic,
    fit_dynamics,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def test_gaussian_nll_is_the_isotropic_normal_density() -> None:
    model = DynamicsModel(8, noise_std=0.3)
    out, target = torch.randn(6, 4), torch.randn(6, 4)
    ref = -torch.distributions.Normal(out, 0.3).log_prob(target).sum(-1)
    torch.testing.assert_close(_gaussian_nll(model)(out, target), ref)


def test_noise_is_fixed_or_learned() -> None:
    fixed = DynamicsModel(8, noise_std=0.1)
    assert "log_tau" not in dict(fixed.named_parameters())
    assert float(fixed.log_tau.exp()) == pytest.approx(100.0, rel=1e-5)
    learned = DynamicsModel(8, noise_std=None)
    assert isinstance(learned.log_tau, nn.Parameter)
    with pytest.raises(ValueError, match="noise_std"):
        DynamicsModel(8, noise_std=0.0)


def test_epistemic_matches_explicit_passes() -> None:
    # The model variance and the mutual-information bound from S explicit stochastic passes.
    torch.manual_seed(0)
    model = DynamicsModel(16, init_p=0.3, noise_std=0.2).double()
    x = torch.randn(30, 5, dtype=torch.float64)
    y = torch.randn(30, 4, dtype=torch.float64)
    s = 4000
    out = epistemic(model, x, y, s, torch.Generator().manual_seed(1))
    torch.manual_seed(5)
    with mc_sampling(model), torch.no_grad():
        passes = torch.stack([model(x) for _ in range(s)])
    var = passes.var(0, unbiased=False)
    tau = 1 / 0.2**2
    mi = (0.5 * torch.log1p(tau * var).sum(-1)).mean()
    assert out["noise_std"] == pytest.approx(0.2)
    # two independent MC estimates of the same quantities: a few per cent apart at S = 4000
    assert out["model_variance"] == pytest.approx(float(var.mean()), rel=0.06)
    assert out["mutual_information"] == pytest.approx(float(mi), rel=0.06)
    assert out["test_rmse"] == pytest.approx(
        float((passes.mean(0) - y).pow(2).mean().sqrt()), rel=0.02
    )
    assert math.isfinite(out["mutual_information"]) and out["mutual_information"] > 0


def test_rates_and_uncertainty_fall_with_more_transitions() -> None:
    pool = cartpole_transitions(1000, seed=0, simulator="equations")
    test = cartpole_transitions(400, seed=1, simulator="equations")
    x_all = _inputs(pool.states, pool.actions)
    y_all = pool.next_states - pool.states
    xm, xs, ym, ys = x_all.mean(0), x_all.std(0), y_all.mean(0), y_all.std(0)
    xt = (_inputs(test.states, test.actions) - xm) / xs
    yt = (test.next_states - test.states - ym) / ys
    scores = {}
    for n in (30, 1000):
        model = fit_dynamics(
            (x_all[:n] - xm) / xs,
            (y_all[:n] - ym) / ys,
            steps=500,
            batch_size=128,
            lr=3e-3,
            generator=torch.Generator().manual_seed(3),
        )
        scores[n] = {"rate": sum(model.rates()) / 2, **epistemic(model, xt, yt, 50, None)}
    small, large = scores[30], scores[1000]
    assert large["rate"] < 0.8 * small["rate"]
    assert large["model_variance"] < 0.7 * small["model_variance"]
    assert large["mutual_information"] < 0.8 * small["mutual_information"]
    assert large["test_rmse"] < 0.5 * small["test_rmse"]


def test_fit_dynamics_tracks_the_rates_at_every_step() -> None:
    pool = cartpole_transitions(200, seed=0, simulator="equations")
    x = _inputs(pool.states, pool.actions)
    y = pool.next_states - pool.states
    x, y = (x - x.mean(0)) / x.std(0), (y - y.mean(0)) / y.std(0)
    trackers: list = []
    model = fit_dynamics(
        x,
        y,
        steps=30,
        batch_size=64,
        lr=3e-3,
        generator=torch.Generator().manual_seed(3),
        trackers=trackers,
    )
    (tracker,) = trackers
    assert tracker.steps == list(range(31))
    hist = list(tracker.history.values())
    assert [float(h[0, 0]) for h in hist] == pytest.approx([0.3, 0.3], abs=1e-6)  # init_p
    assert [float(h[-1, 0]) for h in hist] == pytest.approx(model.rates(), abs=1e-6)
    # 31 records: the last quarter starts at record int(31 * 0.75) = 23
    for h, d in zip(hist, tracker.drift().values()):
        assert d == pytest.approx(float((h[-1, 0] - h[23, 0]).abs()))
