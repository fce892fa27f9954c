"""lrt-speed: the variants compute the same network; the cost ratio is computed, never timed."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib.pyplot as plt
import pytest
import torch

from bayesdrop_reproduce.experiments._framework import RunConfig
from bayesdrop_reproduce.experiments._weight_noise import noise_draws
from bayesdrop_reproduce.experiments.lrt_speed import VARIANTS, build, noise_per_step, run


def test_noise_draws_by_hand() -> None:
    # layers 4 -> 3 -> 2, batch 5
    sizes, batch = [4, 3, 2], 5
    assert noise_per_step("lrt", sizes, batch) == 5 * 3 + 5 * 2
    assert noise_per_step("VariationalDropout (LRT)", sizes, batch) == 25
    assert noise_per_step("per-example", sizes, batch) == 5 * 3 * 4 + 5 * 2 * 3
    assert noise_per_step("per-batch", sizes, batch) == 3 * 4 + 2 * 3
    assert noise_per_step("no noise", sizes, batch) == 0
    # per example / LRT is the input width of each layer, weighted by its outputs: > 1
    assert noise_draws("per-example", 7, 784, 256) / noise_draws("lrt", 7, 784, 256) == 784
    with pytest.raises(ValueError, match="variant"):
        noise_per_step("dropconnect", sizes, batch)
    with pytest.raises(ValueError, match="batch"):
        noise_draws("lrt", 0, 3, 2)


def test_variants_share_the_mean_network() -> None:
    x = torch.randn(6, 20)
    outputs = {}
    for variant in VARIANTS:
        torch.manual_seed(0)
        model = build(variant, 20, 8).eval()
        with torch.no_grad():
            outputs[variant] = model(x)
    for variant in VARIANTS:
        torch.testing.assert_close(outputs[variant], outputs["no noise"])
    # and in training mode the noisy variants are stochastic, the plain one is not
    for variant in VARIANTS:
        torch.manual_seed(0)
        model = build(variant, 20, 8).train()
        same = torch.equal(model(x), model(x))
        assert same == (variant == "no noise"), variant
    with pytest.raises(ValueError, match="variant"):
        build("dropconnect", 20, 8)


def test_tiny_run_computes_consistent_ratios(tmp_path: Path) -> None:
    cfg = RunConfig(quick=True, seed=0, device="cpu", out=tmp_path, tiny=True, progress=False)
    res = run(cfg)
    plt.close(res.figure)
    m = res.metrics
    sec, per_step = m["seconds_per_epoch"], m["seconds_per_step"]
    steps_per_epoch = res.settings["steps_per_epoch"]
    assert set(sec) == set(VARIANTS)
    for v in VARIANTS:
        assert math.isfinite(sec[v]) and sec[v] > 0
        assert sec[v] == pytest.approx(per_step[v] * steps_per_epoch)
        rounds = m["seconds_per_step_rounds"][v]
        assert min(rounds) <= per_step[v] <= max(rounds)
    # the reported ratio is the ratio of the reported times (no assertion on its size: timing)
    assert m["ratio_per_example_over_lrt"] == pytest.approx(
        sec["per-example"] / sec["VariationalDropout (LRT)"]
    )
    assert m["ratio_plain"] == pytest.approx(sec["per-example"] / sec["lrt"])
    sizes = res.settings["layers"]
    assert m["draw_ratio_per_example_over_lrt"] == pytest.approx(
        sum(a * b for a, b in zip(sizes, sizes[1:])) / sum(sizes[1:])
    )
    assert m["draw_ratio_per_example_over_lrt"] > 1
