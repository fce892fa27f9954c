"""classification-uncertainty: proper MC probabilities, PAvPU recomputed by hand, a tiny run."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import pytest
import torch

from bayesdrop import metrics
from bayesdrop.uncertainty import mc_sampling, sample_seeds
from bayesdrop_reproduce.experiments._framework import RunConfig
from bayesdrop_reproduce.experiments.classification_uncertainty import (
    LEARNED,
    METHODS,
    build,
    evaluate,
    predict,
    run,
)

TS = torch.linspace(0, 1, 11, dtype=torch.float64)


def _data(n: int = 120, d: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(n, d, generator=gen)
    y = (x[:, :4] @ torch.randn(4, 10, generator=gen)).argmax(1)
    return x, y


def _hand_mean_pavpu(probs: torch.Tensor, y: torch.Tensor, ts: torch.Tensor) -> float:
    p = probs.double()
    entropy = -(p * p.clamp_min(1e-300).log()).sum(1)
    accurate = p.argmax(1) == y
    lo, hi = entropy.min(), entropy.max()
    values = []
    for t in ts:
        uncertain = entropy > lo + t * (hi - lo)
        n_ac = (accurate & ~uncertain).sum().item()
        n_iu = (~accurate & uncertain).sum().item()
        values.append((n_ac + n_iu) / len(y))
    return sum(values) / len(values)


@pytest.mark.parametrize("method", METHODS)
def test_predictions_are_distributions_and_metrics_match_hand_computation(method: str) -> None:
    x, y = _data()
    torch.manual_seed(0)
    model = build(method, x.shape[1], 16)
    probs = predict(model, method, x, samples=10, seed=3)
    assert probs.shape == (len(y), 10)
    assert bool((probs >= 0).all())
    torch.testing.assert_close(probs.sum(1), torch.ones(len(y)), rtol=0, atol=1e-5)
    row = evaluate(probs, y, TS)
    for key in ("accuracy", "mean_pavpu", "ece"):
        assert 0.0 <= row[key] <= 1.0
    assert all(0.0 <= v <= 1.0 for v in row["pavpu_curve"])
    assert row["mean_pavpu"] == pytest.approx(_hand_mean_pavpu(probs, y, TS), abs=1e-12)
    assert row["accuracy"] == pytest.approx((probs.argmax(1) == y).double().mean().item())
    nll = -probs.double()[torch.arange(len(y)), y].log().mean().item()
    assert row["nll"] == pytest.approx(nll, rel=1e-9)
    # the PAvPU at each threshold is bayesdrop.metrics.pavpu at that entropy threshold
    ent = metrics.predictive_entropy(probs.double())
    for t, value in zip(TS, row["pavpu_curve"]):
        thr = float(ent.min() + t * (ent.max() - ent.min()))
        assert value == pytest.approx(float(metrics.pavpu(probs.double(), y, thr)), abs=1e-12)


@pytest.mark.parametrize("method", ["LBD", "MC Dropout", "Concrete", "Gaussian"])
def test_mc_probabilities_average_ten_stochastic_passes(method: str) -> None:
    x, _ = _data(n=20)
    torch.manual_seed(0)
    model = build(method, x.shape[1], 16)
    probs = predict(model, method, x, samples=10, seed=5)
    seeds = sample_seeds(10, torch.Generator().manual_seed(5))
    passes = []
    with mc_sampling(model), torch.no_grad():
        for s in seeds:
            torch.manual_seed(s)
            passes.append(torch.softmax(model(x), dim=1))
    manual = torch.stack(passes)
    torch.testing.assert_close(probs, manual.mean(0), rtol=1e-5, atol=1e-6)
    assert float(manual.std(0).max()) > 1e-4  # the passes really differ


def test_regular_dropout_is_one_deterministic_pass_and_bad_method_raises() -> None:
    x, _ = _data(n=20)
    torch.manual_seed(0)
    model = build("Regular Dropout", x.shape[1], 16)
    a = predict(model, "Regular Dropout", x, samples=10, seed=0)
    b = predict(model, "Regular Dropout", x, samples=10, seed=1)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    with pytest.raises(ValueError, match="method"):
        predict(model, "Bayes by backprop", x, samples=10, seed=0)
    with pytest.raises(ValueError, match="method"):
        build("Bayes by backprop", 4, 4)


def test_tiny_run_summary_is_consistent(tmp_path: Path) -> None:
    cfg = RunConfig(quick=True, seed=0, device="cpu", out=tmp_path, tiny=True, progress=False)
    res = run(cfg)
    plt.close(res.figure)
    summary, per_seed = res.metrics["summary"], res.metrics["per_seed"]
    for m in METHODS:
        for key in ("accuracy", "mean_pavpu", "ece"):
            mean, _ = summary[m][key]
            assert 0.0 <= mean <= 1.0
            values = [r[key] for r in per_seed[m]]
            assert mean == pytest.approx(sum(values) / len(values))
        for r in per_seed[m]:
            assert r["mean_pavpu"] == pytest.approx(sum(r["pavpu_curve"]) / len(r["pavpu_curve"]))
        assert len(summary[m]["drop_rates"]) == 2
        assert all(0.0 < p < 1.0 for p in summary[m]["drop_rates"])
    for m in ("Regular Dropout", "MC Dropout"):
        assert summary[m]["drop_rates"] == pytest.approx([0.5, 0.5])
    # the learned methods' rates were tracked from the initial 0.5; the settling verdict is
    # the largest drift over the last quarter against the stated threshold
    drifts = [
        d for m in LEARNED for r in per_seed[m] for d in r["rate_drift_last_quarter"].values()
    ]
    assert len(drifts) == 2 * len(LEARNED)
    assert res.rates is not None and res.rates["max_drift"] == pytest.approx(max(drifts))
    assert res.rates["settled"] == (max(drifts) < res.rates["tol"])
    assert "rate_drift_last_quarter" not in per_seed["MC Dropout"][0]
