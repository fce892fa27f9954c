"""uci-benchmark: the protocol's pieces against independent computations, at a tiny scale."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

from bayesdrop.nn import ConcreteDropout, LearnableBernoulliDropout, MCDropout, VariationalDropout
from bayesdrop_reproduce.experiments import ALL, load
from bayesdrop_reproduce.experiments import uci_benchmark as ub


def test_registered_in_the_suite() -> None:
    assert "uci-benchmark" in ALL and load("uci-benchmark") is ub


def test_log_likelihood_and_rmse_against_scipy() -> None:
    """LL = mean_i log mean_t N(y_i; yhat_ti, 1/tau), computed here with scipy's density."""
    gen = torch.Generator().manual_seed(0)
    samples = torch.randn(7, 5, generator=gen, dtype=torch.float64) * 2 + 3
    y = torch.randn(5, generator=gen, dtype=torch.float64) + 3
    tau = 0.37
    out = ub.mc_scores(samples, y, tau)
    dens = stats.norm.pdf(y.numpy()[None], loc=samples.numpy(), scale=1 / math.sqrt(tau))
    assert out["log_likelihood"] == pytest.approx(np.log(dens.mean(0)).mean(), rel=1e-12)
    rmse = np.sqrt(((samples.numpy().mean(0) - y.numpy()) ** 2).mean())
    assert out["rmse"] == pytest.approx(rmse, rel=1e-12)


def test_log_likelihood_stays_finite_far_from_every_sample() -> None:
    """logsumexp: a target 1e3 noise sd away from every pass gives a finite, exact value."""
    samples = torch.zeros(3, 1, dtype=torch.float64)
    out = ub.mc_scores(samples, torch.tensor([1000.0], dtype=torch.float64), tau=1.0)
    assert out["log_likelihood"] == pytest.approx(-0.5 * 1000.0**2 - 0.5 * math.log(2 * math.pi))


def test_random_splits_are_seeded_permutations() -> None:
    a, b = ub.random_splits(50, 3, seed=4), ub.random_splits(50, 3, seed=4)
    assert all(torch.equal(p, q) for p, q in zip(a, b))
    for p in a:
        assert sorted(p.tolist()) == list(range(50))
    assert not torch.equal(a[0], a[1])


@pytest.mark.parametrize(
    ("family", "kind"),
    [
        ("mc", MCDropout),
        ("concrete", ConcreteDropout),
        ("lbd", LearnableBernoulliDropout),
        ("variational", VariationalDropout),
    ],
)
def test_network_drops_inputs_and_hidden_units(family, kind) -> None:
    net = ub.build(family, 6, hidden=50, p=0.05)
    drops = [m for m in net.modules() if isinstance(m, kind)]
    assert len(drops) == 2
    assert net(torch.zeros(4, 6)).shape == (4, 1)
    linears = [m for m in net.modules() if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(6, 50), (50, 1)]
    assert all(float(m.bias.detach().abs().max()) == 0.0 for m in linears)  # Keras' zero biases
    if family == "concrete":
        assert drops[0].weight_regularizer == pytest.approx(ub.LENGTH_SCALE**2 / 2)
    if family == "lbd":
        assert drops[0].length_scale == ub.LENGTH_SCALE


def test_unknown_family_is_rejected() -> None:
    with pytest.raises(ValueError, match="family must be one of"):
        ub.build("gaussian", 3)


def test_grid_search_keeps_the_best_validation_pair_and_learns() -> None:
    """On a noisy linear target the chosen pair is the validation argmax, and the test RMSE
    beats predicting the training mean."""
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(200, 4, generator=gen)
    y = x @ torch.tensor([2.0, -1.0, 0.5, 0.0]) + 0.3 * torch.randn(200, generator=gen) + 5
    perm = ub.random_splits(200, 1, seed=2)[0]
    r = ub.run_split(
        x,
        y,
        perm,
        "mc",
        (1.0, 10.0),
        hidden=16,
        epochs=30,
        samples_val=20,
        samples_test=50,
        seed=0,
        drop_grid=(0.01, 0.1),
    )
    best = max(r["val_ll"], key=r["val_ll"].get)
    assert best == f"p={r['p']:g}, tau={r['tau']:g}"
    assert len(r["val_ll"]) == 4
    test = perm[:20]
    assert r["rmse"] < 0.5 * float((y[test] - y[perm[20:]].mean()).pow(2).mean().sqrt())


def test_published_table_is_complete() -> None:
    assert list(ub.PUBLISHED) == [
        "boston",
        "concrete",
        "energy",
        "kin8nm",
        "naval",
        "power",
        "protein",
        "wine",
        "yacht",
    ]
    for pub in ub.PUBLISHED.values():
        assert len(pub["gal40"]) == 4 and len(pub["grid"]) == 4
    assert set(ub.AVAILABLE) <= set(ub.PUBLISHED) and set(ub.AVAILABLE) == set(ub.TAU_GRID)
