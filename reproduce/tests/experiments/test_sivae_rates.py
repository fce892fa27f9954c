"""sivae-rates: per-user metrics, paired standard errors, the tracked training loop, bookkeeping."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import scipy.sparse as sp

from bayesdrop.recsys.baselines import EASE, Popularity
from bayesdrop.recsys.data import prepare_liang, synthetic_interactions
from bayesdrop.recsys.trainer import TrainConfig, evaluate
from bayesdrop_reproduce.experiments._framework import RunConfig
from bayesdrop_reproduce.experiments.sivae_rates import (
    METRICS,
    SETTLE_TOL,
    fit,
    paired,
    per_user_metrics,
    run,
)


@pytest.fixture(scope="module")
def split():
    return prepare_liang(synthetic_interactions(200, 60, rank=4, mean_items=12, seed=3), 25)


def test_per_user_metrics_by_hand():
    """Popularity ranks items 0 > 1 > 2 > 3 (column counts 4, 3, 2, 1)."""
    train = sp.csr_matrix(np.array([[1, 1, 1, 1], [1, 1, 1, 0], [1, 1, 0, 0], [1, 0, 0, 0]]))
    model = Popularity().fit(train)
    fold_in = sp.csr_matrix(np.array([[1, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 1]]))
    held = sp.csr_matrix(np.array([[0, 0, 1, 0], [0, 0, 0, 0], [0, 1, 0, 0]]))
    got = per_user_metrics(model, fold_in, held)
    # user 0: item 0 excluded, ranking 1, 2, 3 -> held-out item 2 at rank 2; user 1 has no
    # held-out item and is left out; user 2: ranking 0, 1, 2 -> item 1 at rank 2.
    assert got.shape == (3, 2)
    np.testing.assert_allclose(got[0], [1.0, 1.0])  # Recall@20 (k capped at the 4 items)
    np.testing.assert_allclose(got[1], [1.0, 1.0])
    np.testing.assert_allclose(got[2], [1 / math.log2(3)] * 2)


def test_per_user_metrics_average_to_the_trainers_evaluate(split):
    model = EASE(50.0).fit(split.train)
    ours = per_user_metrics(model, split.test_fold_in, split.test_heldout)
    ref = evaluate(model, split.test_fold_in, split.test_heldout, shard=False)
    assert ours.shape[1] == ref["users"]
    for j, (name, _, _) in enumerate(METRICS):
        assert ours[j].mean() == pytest.approx(ref[name], rel=1e-12)
        assert ours[j].std(ddof=1) / math.sqrt(ours.shape[1]) == pytest.approx(
            ref[f"{name}_se"], rel=1e-9
        )


def test_paired_standard_errors_by_hand():
    a = [np.array([[1.0, 2.0, 3.0]]), np.array([[2.0, 2.0, 5.0]])]
    b = [np.array([[0.0, 1.0, 1.0]]), np.array([[1.0, 2.0, 2.0]])]
    out = paired(a, b)
    # per-seed differences: mean(1, 1, 2) = 4/3 and mean(1, 0, 3) = 4/3 -> se over seeds 0
    assert out["mean"] == pytest.approx([4 / 3])
    assert out["se_seeds"] == pytest.approx([0.0])
    # per-user differences averaged over seeds: 1, 0.5, 2.5
    d = np.array([1.0, 0.5, 2.5])
    assert out["se_users"] == pytest.approx([d.std(ddof=1) / math.sqrt(3)])
    # a deterministic model (one array) is paired with every seed
    one = paired(a, [b[0]])
    assert one["mean"] == pytest.approx([(4 / 3 + 7 / 3) / 2])
    with pytest.raises(ValueError, match="as many seeds"):
        paired(a, b + b[:1])


def test_rate_step_moves_the_rates_and_the_tracker_sees_every_update(split, one_thread):
    base = TrainConfig(
        model="sivae-lbd", epochs=3, batch_size=40, hidden=16, latent=4, n_extra=1, progress=False
    )
    slow = fit(split, replace(base, rate_lr=1e-3), track=True)
    fast = fit(split, replace(base, rate_lr=1e-1), track=True)
    for r in (slow, fast):
        tracker = r["tracker"]
        assert tracker.steps == list(range(r["updates"] + 1))  # initial rates, then every update
        np.testing.assert_allclose(tracker.history["rates"][0].numpy(), 0.5, atol=1e-6)
        np.testing.assert_allclose(tracker.final()["rates"].double().numpy(), r["rates"], 1e-6)
        assert r["val_ndcg"] == max(r["val_curve"])
        assert r["best_epoch"] == 1 + int(np.argmax(r["val_curve"]))
    # Adam moves a logit by at most lr * (1 - b1) / sqrt(1 - b2) ~ 3.17 lr per step, and p by at
    # most a quarter of that: the bound the rate step of the weights (1e-3) cannot exceed.
    bound = slow["updates"] * 1e-3 * 3.17 / 4
    assert np.abs(slow["rates"] - 0.5).max() <= bound
    assert np.abs(fast["rates"] - 0.5).max() > 5 * bound


def test_tiny_run_bookkeeping(tmp_path):
    res = run(RunConfig(quick=False, seed=0, device="cpu", out=tmp_path, tiny=True, progress=False))
    for key, d in res.metrics["datasets"].items():
        sel = d["rate_lr_selection"]
        best = max(sel, key=lambda k: sel[k]["val_ndcg@100"])
        assert float(best) == d["chosen_rate_lr"]
        assert d["summary"]["ease"]["seeds"] == 1 and d["summary"]["sivae-lbd"]["seeds"] == 2
        for row in sel.values():
            assert row["settled"] == (row["drift_last_quarter"] < SETTLE_TOL)
        r = d["rates"]
        assert 0.0 < r["min"] <= r["mean"] <= r["max"] < 1.0
        assert -1.0 <= r["spearman_vs_log_popularity"] <= 1.0
        # paired difference of one seed-averaged metric equals the difference of the averages
        p = d["paired_sivae_lbd_minus"]["mult-vae"]["ndcg@100"]["mean"]
        s = d["summary"]
        assert p == pytest.approx(s["sivae-lbd"]["ndcg@100"] - s["mult-vae"]["ndcg@100"])
        assert any(row["quantity"].startswith(f"{key} learned item rates") for row in res.table)
    datasets = res.metrics["datasets"].values()
    assert res.rates is not None
    assert res.rates["settled"] == all(d["rates"]["settled_seeds"] == 2 for d in datasets)
    drifts = [x for d in datasets for x in d["rates"]["drift_last_quarter_per_seed"]]
    assert res.rates["max_drift"] == pytest.approx(max(drifts))
    assert res.figure is not None and len(res.figure.axes) >= 6
    assert "settle" in res.verdict
