"""estimator-variance: the four weight-noise estimators and the ordering of Table 1, small."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from bayesdrop_reproduce.experiments._weight_noise import WeightNoiseLinear
from bayesdrop_reproduce.experiments.estimator_variance import (
    RunningMoments,
    estimator_moments,
    gradient_variance,
    mlp,
)

REPEATS = 200


def _problem(
    seed: int = 0, n: int = 64, d: int = 12
) -> tuple[nn.Sequential, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=gen, dtype=torch.float64)
    y = (x @ torch.randn(d, 4, generator=gen, dtype=torch.float64)).argmax(1)
    torch.manual_seed(seed)
    return mlp(d, 16, classes=4).double(), x, y


@pytest.fixture(scope="module")
def moments() -> dict:
    model, x, y = _problem()
    return estimator_moments(
        model,
        x,
        y,
        batch_size=32,
        repeats=REPEATS,
        generator=torch.Generator().manual_seed(1),
        groups=8,
    )


def test_running_moments_match_two_pass_variance_despite_large_offset() -> None:
    gen = torch.Generator().manual_seed(0)
    samples = 1e6 + torch.randn(50, 3, 4, generator=gen, dtype=torch.float64)
    acc = RunningMoments()
    for s in samples:
        acc.add(s)
    assert acc.mean is not None
    torch.testing.assert_close(acc.mean, samples.mean(0), rtol=0, atol=1e-9)
    centred = samples - 1e6  # exact: the offset is representable
    torch.testing.assert_close(acc.variance(), centred.var(0), rtol=1e-9, atol=0)
    with pytest.raises(ValueError, match="at least 2"):
        RunningMoments().variance()


@pytest.mark.parametrize("mode", ["lrt", "per-example", "per-batch"])
def test_preactivations_have_the_closed_form_marginal(mode: str) -> None:
    # b = W x + c with W ~ N(theta, alpha theta^2): E b = theta x + c, Var b = alpha theta^2 x^2.
    torch.manual_seed(0)
    layer = nn.Linear(5, 3).double()
    m = WeightNoiseLinear(layer, init_p=0.3, mode=mode, generator=torch.Generator().manual_seed(2))
    x = torch.randn(2, 5, dtype=torch.float64)
    samples = 4000
    with torch.no_grad():
        out = torch.stack([m(x) for _ in range(samples)])  # (S, 2, 3)
        alpha = 0.3 / 0.7
        mean = layer(x)
        var = (alpha * layer.weight**2) @ (x**2).T  # (3, 2)
    se_mean = (var.T / samples).sqrt()
    assert bool(((out.mean(0) - mean).abs() < 4.5 * se_mean).all())
    # the sample variance of a Gaussian has standard error var * sqrt(2 / (S - 1))
    se_var = var.T * (2 / (samples - 1)) ** 0.5
    assert bool(((out.var(0) - var.T).abs() < 4.5 * se_var).all())


def test_per_batch_noise_is_shared_and_per_example_noise_independent() -> None:
    torch.manual_seed(0)
    x = torch.randn(1, 6).expand(2, 6)  # the same example twice in one minibatch
    corr = {}
    for mode in ("per-batch", "per-example", "lrt"):
        m = WeightNoiseLinear(
            nn.Linear(6, 1), mode=mode, generator=torch.Generator().manual_seed(3)
        )
        with torch.no_grad():
            out = torch.stack([m(x)[:, 0] for _ in range(2000)])
        corr[mode] = torch.corrcoef(out.T)[0, 1].item()
    assert corr["per-batch"] == pytest.approx(1.0)
    # independent examples: the sample correlation is ~N(0, 1/2000); 4.5 SE is 0.1
    assert abs(corr["per-example"]) < 0.1 and abs(corr["lrt"]) < 0.1


def test_estimators_share_their_expectation_and_differ_from_the_mean_network(moments) -> None:
    def z2(a: str, b: str, layer: str) -> float:
        ma, mb = moments[a][layer].total, moments[b][layer].total
        z = (ma.mean - mb.mean) / ((ma.variance() + mb.variance()) / REPEATS).sqrt()
        return (z**2).mean().item()

    for layer in ("top", "bottom"):
        # The same minibatches make the differences positively correlated, so mean z^2 <~ 1.
        for a, b in (("lrt", "per-example"), ("lrt", "per-batch"), ("per-example", "per-batch")):
            assert z2(a, b, layer) < 2.0, (a, b, layer)
        # The noise-free network has a different expected gradient: detectably so.
        assert z2("lrt", "none", layer) > 5.0


def test_variance_ordering_of_table_1(moments) -> None:
    order = ("none", "lrt", "per-example", "per-batch")
    for layer in ("top", "bottom"):
        s = {mode: moments[mode][layer].summary() for mode in order}
        for a, b in zip(order, order[1:]):
            gap = s[b]["variance"] - s[a]["variance"]
            se = (s[a]["se"] ** 2 + s[b]["se"] ** 2) ** 0.5
            assert gap > 3 * se, (layer, a, b, s)


def test_gradient_variance_summary_and_bad_input() -> None:
    model, x, y = _problem(n=16)
    out = gradient_variance(
        model, x, y, batch_size=8, repeats=4, generator=torch.Generator().manual_seed(0), groups=2
    )
    assert set(out) == {"lrt", "per-example", "per-batch", "none"}
    for layers in out.values():
        for cell in layers.values():
            assert cell["variance"] > 0 and cell["se"] >= 0
    with pytest.raises(ValueError, match="repeats"):
        gradient_variance(model, x, y, batch_size=8, repeats=1, generator=torch.Generator())
    with pytest.raises(ValueError, match="mode"):
        WeightNoiseLinear(nn.Linear(2, 2), mode="per-layer")
    with pytest.raises(ValueError, match="init_p"):
        WeightNoiseLinear(nn.Linear(2, 2), init_p=0.7)
