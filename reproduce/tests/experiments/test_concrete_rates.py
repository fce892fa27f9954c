"""concrete-rates: the rate of every layer falls as the training set grows (cheap setting)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from bayesdrop_reproduce.experiments._common import image_split
from bayesdrop_reproduce.experiments._framework import RunConfig
from bayesdrop_reproduce.experiments.concrete_rates import INIT_P, build, layer_rates, rates_vs_size

CFG = RunConfig(quick=False, tiny=True, seed=0, device="cpu", out=Path("."), progress=False)


pytestmark = pytest.mark.usefixtures("one_thread")


def test_build_has_one_rate_per_linear_layer_at_init_p() -> None:
    model = build(64, 16)
    assert layer_rates(model) == pytest.approx([INIT_P] * 4)
    assert model(torch.zeros(3, 64)).shape == (3, 10)


def test_rates_fall_as_the_training_set_grows() -> None:
    # 150 versus 1,500 scikit-learn digits, 300 steps each from the same initialisation: the
    # entropy term (weight 1/N) holds every rate near 0.2 at N = 150 and lets it fall to ~0.03
    # at N = 1,500 (seeds 0-3 checked: the gap is 0.15-0.22 in every layer).
    data = image_split(CFG, tiny="digits")
    res = rates_vs_size(
        data.x_train, data.y_train, data.x_test, data.y_test, (0.1, 1.0), CFG, hidden=32, steps=300
    )
    small, large = res["0.1"], res["1"]
    assert (small["n_train"], large["n_train"]) == (150, 1500)
    for p_small, p_large in zip(small["rates"], large["rates"]):
        assert p_small > p_large + 0.05
    assert large["test_accuracy"] > small["test_accuracy"]
    # the trace starts at the initial rate and the tail statistics are finite
    assert large["rate_trace"][0] == pytest.approx([INIT_P] * 4)
    assert all(0 <= s < 0.1 for s in large["rates_tail_std"])
    # the tracker's drift (settling criterion) from the per-step trace (stride 1 at 300 steps):
    # mean |p(end) - p(start)| with start the first record of the last quarter
    trace = torch.tensor(large["rate_trace"], dtype=torch.float64)
    assert large["trace_steps"] == list(range(301))
    start = int(301 * 0.75)
    for k, (name, d) in enumerate(large["tracker_drift"].items()):
        assert d == pytest.approx(float((trace[-1, k] - trace[start, k]).abs()), abs=1e-6), name


def test_rates_vs_size_rejects_bad_fractions_and_steps() -> None:
    x, y = torch.zeros(10, 4), torch.zeros(10, dtype=torch.long)
    with pytest.raises(ValueError, match="fractions"):
        rates_vs_size(x, y, x, y, (0.0, 1.0), CFG, hidden=4, steps=2)
    with pytest.raises(ValueError, match="steps"):
        rates_vs_size(x, y, x, y, (1.0,), CFG, hidden=4, steps=0)
