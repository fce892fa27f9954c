"""ood-detection: the data split, the metrics against hand computation, and a tiny run."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib.pyplot as plt
import pytest
import torch

from bayesdrop import metrics
from bayesdrop_reproduce.datasets.images import load_fashion_mnist
from bayesdrop_reproduce.experiments import ALL, load
from bayesdrop_reproduce.experiments._framework import RunConfig
from bayesdrop_reproduce.experiments.ood_detection import (
    FAMILIES,
    LEARNED,
    METRICS,
    NAME,
    SCORES,
    build,
    evaluate,
    load_sets,
    run,
    scores,
    summarize,
)


def _fashion_installed() -> bool:
    try:
        load_fashion_mnist("test")
    except FileNotFoundError:
        return False
    return True


needs_data = pytest.mark.skipif(
    not _fashion_installed(),
    reason="Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist)",
)


def _hand_auroc(a: torch.Tensor, b: torch.Tensor) -> float:
    """P(out score > in score) + P(tie) / 2 over every (in, out) pair."""
    a, b = a.double()[:, None], b.double()[None, :]
    return ((b > a).double() + 0.5 * (b == a).double()).mean().item()


def _hand_fpr(a: torch.Tensor, b: torch.Tensor, tpr: float) -> float:
    """Smallest share of in-distribution scores >= t over thresholds t flagging >= tpr of out."""
    best = 1.0
    for t in torch.cat([a, b]).unique():
        if (b >= t).double().mean().item() >= tpr:
            best = min(best, (a >= t).double().mean().item())
    return best


def test_registered() -> None:
    assert NAME in ALL and load(NAME).NAME == NAME


def test_missing_fashion_mnist_reports_skip_and_install(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("BAYESDROP_FASHION_MNIST", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="ood-detection skipped.*apt-get"):
        load_sets(10, 10, 10, seed=0)


def test_build_rejects_unknown_family() -> None:
    with pytest.raises(ValueError, match="family must be one of"):
        build("dropconnect", 8)


def test_evaluate_matches_hand_computation() -> None:
    gen = torch.Generator().manual_seed(3)
    probs = torch.softmax(2 * torch.randn(40, 10, generator=gen, dtype=torch.float64), 1)
    y = torch.randint(0, 10, (40,), generator=gen)
    s = {"probs_in": probs}
    for name in SCORES:  # rounded so that ties occur, within and across the sets
        s[f"{name}_in"] = (torch.rand(40, generator=gen, dtype=torch.float64) * 8).round() / 8
        s[f"{name}_out"] = (torch.rand(30, generator=gen, dtype=torch.float64) * 8 + 2).round() / 8
    row = evaluate(s, y)
    assert set(row) == set(METRICS)
    assert row["accuracy"] == pytest.approx((probs.argmax(1) == y).double().mean().item())
    nll = -probs[torch.arange(40), y].log().mean().item()
    assert row["nll"] == pytest.approx(nll, rel=1e-9)
    for name in SCORES:
        a, b = s[f"{name}_in"], s[f"{name}_out"]
        assert row[f"auroc_{name}"] == pytest.approx(_hand_auroc(a, b), abs=1e-12)
        assert row[f"fpr95_{name}"] == pytest.approx(_hand_fpr(a, b, 0.95), abs=1e-12)


def test_summarize_mean_and_standard_error() -> None:
    rows = [{m: float(k + i) for i, m in enumerate(METRICS)} for k in (1.0, 2.0, 6.0)]
    out = summarize(rows)
    # values 1, 2, 6 (+ i): mean 3 + i, sample sd sqrt(7), SE sqrt(7 / 3)
    for i, m in enumerate(METRICS):
        assert out[m][0] == pytest.approx(3.0 + i)
        assert out[m][1] == pytest.approx(math.sqrt(7 / 3))
    assert math.isnan(summarize(rows[:1])["ece"][1])


@needs_data
def test_sets_are_disjoint_seeded_and_in_range() -> None:
    x, y, x_in, y_in, x_out = load_sets(300, 100, 50, seed=1)
    assert x.shape == (300, 784) and x_in.shape == (100, 784) and x_out.shape == (50, 784)
    assert y.shape == (300,) and y_in.shape == (100,)
    train_rows = {tuple(r.tolist()) for r in x}
    assert not any(tuple(r.tolist()) in train_rows for r in x_in)
    again = load_sets(300, 100, 50, seed=1)
    assert all(torch.equal(a, b) for a, b in zip((x, y, x_in, y_in, x_out), again, strict=True))
    assert not torch.equal(load_sets(300, 100, 50, seed=2)[4], x_out)
    for t in (x, x_in, x_out):
        assert 0.0 <= float(t.min()) and float(t.max()) <= 1.0


@needs_data
def test_scores_are_the_mc_prediction_entropy_and_mutual_information() -> None:
    x, y, x_in, y_in, x_out = load_sets(50, 20, 15, seed=0)
    model = build("lbd", 8)
    s = scores(model, x_in, x_out, samples=6, seed=4)
    assert s["probs_in"].shape == (20, 10) and s["entropy_out"].shape == (15,)
    p = s["probs_in"]
    torch.testing.assert_close(s["entropy_in"], -(p * p.log()).sum(1), rtol=1e-5, atol=1e-6)
    # MI = H[mean] - mean H >= 0, and at most the entropy
    assert bool((s["mi_in"] >= -1e-6).all()) and bool((s["mi_in"] <= s["entropy_in"] + 1e-6).all())
    again = scores(model, x_in, x_out, samples=6, seed=4)
    for k in s:  # seeded: the same masks (float32 rounding may differ with the batch tiling)
        torch.testing.assert_close(s[k], again[k], rtol=1e-5, atol=1e-6)


@needs_data
def test_tiny_run(tmp_path: Path, one_thread) -> None:
    cfg = RunConfig(quick=False, seed=0, device="cpu", out=tmp_path, tiny=True, progress=False)
    result = run(cfg)
    assert result.name == NAME
    assert [row["family"] for row in result.table] == list(FAMILIES.values())
    summary, per_seed = result.metrics["summary"], result.metrics["per_seed"]
    seeds = result.settings["seeds"]
    for f in FAMILIES:
        assert set(summary[f]) == set(METRICS)
        assert len(per_seed[f]) == seeds
        for m in METRICS:
            mean, se = summary[f][m]
            assert mean == pytest.approx(sum(r[m] for r in per_seed[f]) / seeds)
            assert math.isfinite(se) and se >= 0
        # the reported AUROC, AUPR and FPR95 are the library's metrics on the returned scores
        kept = {
            k: torch.tensor(v, dtype=torch.float64)
            for k, v in result.metrics["scores_seed0"][f].items()
        }
        for name in SCORES:
            a, b = kept[f"{name}_in"], kept[f"{name}_out"]
            row = per_seed[f][0]
            assert row[f"auroc_{name}"] == pytest.approx(float(metrics.ood_auroc(a, b)), abs=1e-12)
            assert row[f"auroc_{name}"] == pytest.approx(_hand_auroc(a, b), abs=1e-12)
            assert row[f"aupr_{name}"] == pytest.approx(float(metrics.ood_aupr(a, b)), abs=1e-12)
            assert row[f"fpr95_{name}"] == pytest.approx(
                float(metrics.fpr_at_tpr(a, b, 0.95)), abs=1e-12
            )
            assert 0.0 <= row[f"auroc_{name}"] <= 1.0
    assert set(result.metrics["rates_settled"]) == {"all", *LEARNED}
    assert result.rates is not None and "settled" in result.rates
    assert "skipped" not in result.verdict and "AUROC" in result.verdict
    assert result.figure is not None
    plt.close(result.figure)
