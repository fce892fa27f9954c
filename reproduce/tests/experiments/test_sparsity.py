"""sparsity: the experiment's counting against independent counts, and the paper's orderings
at small scale (Sparse VD and ARD compress alike; the Gamma hyperprior prunes more as a grows)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bayesdrop.nn import ARDDropout
from bayesdrop.sparsity import compression_report
from bayesdrop_reproduce.experiments._common import image_split
from bayesdrop_reproduce.experiments._framework import RunConfig
from bayesdrop_reproduce.experiments.sparsity import (
    comparable,
    fit,
    init_log_sigma2,
    layer_labels,
    lenet5,
    lenet_300_100,
    mlp,
    trimmed,
)

CFG = RunConfig(quick=False, tiny=True, seed=0, device="cpu", out=Path("."), progress=False)


pytestmark = pytest.mark.usefixtures("one_thread")


def test_networks_have_the_papers_weight_counts() -> None:
    # LeNet-300-100: 784*300 + 300*100 + 100*10; LeNet-5-Caffe: 20*25 + 50*20*25 + 800*500 + 5000
    assert compression_report(lenet_300_100("Dense")).weights == 266_200
    assert compression_report(lenet5("ARD")).weights == 430_500
    assert list(layer_labels(lenet5("Sparse VD")).values()) == [
        "conv 1→20 5×5",
        "conv 20→50 5×5",
        "fc 800→500",
        "fc 500→10",
    ]


def test_init_log_sigma2_matches_appendix_a() -> None:
    model = lenet_300_100("ARD")
    init_log_sigma2(model, torch.Generator().manual_seed(0))
    ls = torch.cat([m.log_sigma2.flatten() for m in model if isinstance(m, ARDDropout)])
    n = ls.numel()
    assert abs(ls.mean().item() + 10.0) < 5 * 0.2 / n**0.5
    assert abs(ls.std().item() - 0.2) < 5 * 0.2 / (2 * n) ** 0.5


def test_trimmed_counts_and_evaluates_like_a_hand_trimmed_network() -> None:
    torch.manual_seed(0)
    model = mlp("ARD", 6, (5,))
    dense = mlp("Dense", 6, (5,))
    with torch.no_grad():
        for m, d in zip(model, dense):
            if isinstance(m, ARDDropout):
                assert isinstance(d, nn.Linear) and isinstance(m.layer, nn.Linear)
                m.theta.copy_(torch.randn_like(m.theta) * 0.02)
                m.log_sigma2.fill_(0.0)  # log alpha > 3 everywhere: eval mode would drop all
                d.weight.copy_(m.theta * (m.theta.abs() >= 1e-2))
                d.bias.copy_(m.layer.bias)
    before = [p.clone() for p in model.parameters()]
    x, y = torch.randn(200, 6), torch.randint(0, 10, (200,))
    out = trimmed(model, x, y)
    kept = sum(int((m.theta.abs() >= 1e-2).sum()) for m in model if isinstance(m, ARDDropout))
    assert out["compression"] == (6 * 5 + 5 * 10) / kept
    acc = (dense(x).argmax(1) == y).double().mean().item()
    assert abs(out["error"] - (1 - acc)) < 1e-12
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert all(m.threshold == 3.0 for m in model if isinstance(m, ARDDropout))
    assert compression_report(model).nonzero == 0  # log alpha rule untouched: all dropped
    assert F.cross_entropy(model.eval()(x), y).isfinite()


def test_orderings_of_tables_1_and_2_on_digits() -> None:
    # 64-64-10 on 1,500 scikit-learn digits, 30 epochs on Appendix A's schedule. Seeds 0-2:
    # Sparse VD 15.3-15.8x vs ARD 14.8-15.2x; Gamma a=0.505 1.4x vs a=0.52 1.8-1.9x.
    data = image_split(CFG, tiny="digits")
    res = {}
    for method in ("Sparse VD", "ARD", "Gamma a=0.505", "Gamma a=0.52"):
        torch.manual_seed(0)
        model = mlp(method, 64, (64,))
        init_log_sigma2(model, CFG.generator(17))
        res[method] = fit(
            model, data.x_train, data.y_train, data.x_test, data.y_test, CFG, epochs=30
        )
    svd, ard = res["Sparse VD"], res["ARD"]
    assert svd["compression"] > 5 and ard["compression"] > 5
    assert comparable(
        {"error": 0.0, "compression": svd["compression"]},
        {"error": 0.0, "compression": ard["compression"]},
    )
    low, high = res["Gamma a=0.505"]["trimmed"], res["Gamma a=0.52"]["trimmed"]
    assert high["compression"] > 1.15 * low["compression"] > 1.15


def test_fit_records_the_per_weight_rates_at_every_step() -> None:
    from bayesdrop import RateTracker, dropout_rates

    data = image_split(CFG, tiny="digits")
    torch.manual_seed(0)
    model = mlp("ARD", 64, (16,))
    init_log_sigma2(model, CFG.generator(17))
    tracker = RateTracker(model, max_rates=500, seed=0)
    res = fit(
        model, data.x_train, data.y_train, data.x_test, data.y_test, CFG, epochs=2, tracker=tracker
    )
    steps_per_epoch = -(-len(data.y_train) // 100)
    assert tracker.steps == list(range(2 * steps_per_epoch + 1))
    hist = tracker.history
    # the first layer has 64 * 16 = 1024 > 500 weights: a fixed subset of 500 is recorded
    first, last = list(hist)
    assert hist[first].shape == (len(tracker.steps), 500)
    assert hist[last].shape == (len(tracker.steps), 16 * 10)
    final = dropout_rates(model)[last].reshape(-1).float()
    torch.testing.assert_close(hist[last][-1], final)
    start = int(len(tracker.steps) * 0.75)
    for name, d in res["rate_drift_last_quarter"].items():
        assert d == pytest.approx(float((hist[name][-1] - hist[name][start]).abs().mean()))
