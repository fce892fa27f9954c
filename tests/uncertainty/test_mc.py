"""mc_predict and mc_sampling: explicit-loop equality, tiling invariance, decomposition, errors."""

from __future__ import annotations

import math
import sys
import types

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import bayesdrop
from bayesdrop.nn import LearnableBernoulliDropout, MCDropout
from bayesdrop.uncertainty import (
    MCClassification,
    MCRegression,
    NoSamplingWarning,
    clear_tile_choices,
    mc_predict,
    mc_sampling,
    sample_seeds,
    tile_choice,
)
from bayesdrop.uncertainty.mc import _MARGIN, _TilePlan


# --------------------------------------------------------------------------- models
def mlp() -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(
        nn.Linear(4, 8),
        nn.ReLU(),
        nn.Dropout(0.5),
        LearnableBernoulliDropout(nn.Linear(8, 6), init_p=0.3),
        nn.BatchNorm1d(6),
        nn.ReLU(),
        MCDropout(0.2),
        nn.Linear(6, 3),
    ).double()


class NoisyOps(nn.Module):
    """Draws noise with many different random ops (what other families may use)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(5, 5)
        self.out = nn.Linear(5, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc(x)
        h = h * (1 + 0.3 * torch.randn(h.shape, dtype=h.dtype, device=h.device))  # factory randn
        h = h + 0.1 * torch.randn_like(h)
        h = h * torch.bernoulli(torch.full_like(h, 0.8))
        h = h + torch.empty_like(h).uniform_(-0.1, 0.1)
        h = h + torch.normal(torch.zeros_like(h), 0.05)
        h = F.dropout(h, 0.25, training=True)
        h = F.dropout(h, 0.1, training=True, inplace=True)
        mask = torch.rand(h.shape[0], 1, dtype=h.dtype, device=h.device) > 0.1
        return self.out(h * mask)


class SharedWeightNoise(nn.Module):
    """Noise without a batch dimension: one weight perturbation per forward pass."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        eps = torch.randn(self.fc.weight.shape, dtype=x.dtype, device=x.device)
        return F.linear(x, self.fc.weight * (1 + 0.5 * eps), self.fc.bias)


class SeqFirstRNN(nn.Module):
    """Sequence-first LSTM (batch dimension 1) with LBD on its inputs."""

    def __init__(self) -> None:
        super().__init__()
        self.rnn = LearnableBernoulliDropout(nn.LSTM(3, 5), init_p=0.4)
        self.drop = nn.Dropout(0.3)
        self.head = nn.Linear(5, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(x)
        return self.head(self.drop(out[-1]))


def segmenter() -> nn.Module:
    torch.manual_seed(2)
    return nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Dropout2d(0.3),
        LearnableBernoulliDropout(nn.Conv2d(4, 3, 1), init_p=0.2),
    ).double()


def explicit_loop(model, x, samples, seed, task="classification", batch_dim=0):
    """S forward passes written out, seeded as mc_predict documents."""
    seeds = sample_seeds(samples, torch.Generator().manual_seed(seed))
    outs = []
    with mc_sampling(model), torch.no_grad():
        for s in seeds:
            torch.manual_seed(s)
            outs.append(model(x))
    out = torch.stack(outs)
    return torch.softmax(out, dim=2) if task == "classification" else out


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def assert_same_passes(a: torch.Tensor, b: torch.Tensor) -> None:
    """Same noise in every pass: equal up to the rounding of batch-size-dependent matmuls.

    (Different dropout masks change outputs by orders of magnitude more than this tolerance.)
    """
    atol = 1e-12 if a.dtype == torch.float64 else 1e-5
    torch.testing.assert_close(a, b, rtol=0, atol=atol)


# --------------------------------------------------------------------------- mc_sampling
def test_mc_sampling_modes_and_restore():
    model = mlp().train()
    lbd, mcd = model[3], model[6]
    with mc_sampling(model) as m:
        assert m is model
        assert [type(x).__name__ for x in model if x.training] == ["Dropout"]
        assert lbd.mc_sampling and mcd.mc_sampling and lbd.sampling and not lbd.training
        assert not model.training
    assert all(x.training for x in model.modules())
    assert not lbd.mc_sampling and not mcd.mc_sampling

    model.eval()
    with pytest.raises(RuntimeError, match="boom"):
        with mc_sampling(model):
            raise RuntimeError("boom")
    assert not any(x.training for x in model.modules()) and not lbd.mc_sampling


def test_mc_sampling_keeps_batchnorm_statistics():
    model = mlp().train()
    bn = model[4]
    before = bn.running_mean.clone()
    mc_predict(model, torch.randn(6, 4, dtype=torch.float64), num_samples=3)
    assert torch.equal(bn.running_mean, before)
    assert model.training  # restored


# --------------------------------------------------------------------------- exact equalities
@pytest.mark.parametrize("max_batch", [None, 5, 10, 23])
def test_equals_explicit_loop_and_tiling_invariant(max_batch):
    model = mlp()
    x = torch.randn(5, 4, generator=gen(0), dtype=torch.float64)
    ref = explicit_loop(model, x, 7, seed=3)
    res = mc_predict(model, x, 7, generator=gen(3), max_batch=max_batch)
    assert isinstance(res, MCClassification)
    assert_same_passes(res.samples, ref)
    assert_same_passes(res.probs, ref.mean(0))
    # the passes really differ (dropout is on)
    assert (res.samples[0] - res.samples[1]).abs().max() > 1e-3


@pytest.mark.parametrize("model_fn", [mlp, segmenter], ids=["mlp", "segmenter"])
def test_one_pass_several_passes_all_passes_and_measured_tiles_agree(model_fn):
    """max_batch = one pass, several passes, all passes, and the measured tile: same passes."""
    model = model_fn()
    shape = (5, 4) if model_fn is mlp else (2, 2, 5, 6)
    x = torch.randn(*shape, generator=gen(0), dtype=torch.float64)
    b, S = shape[0], 9
    ref = explicit_loop(model, x, S, seed=3)
    results = [mc_predict(model, x, S, generator=gen(3), max_batch=m) for m in (b, 4 * b, S * b)]
    clear_tile_choices(model)
    for _ in range(40):  # the calls that measure the tile (each tries other tiles)
        results.append(mc_predict(model, x, S, generator=gen(3)))
        if tile_choice(model, x) is not None:
            break
    assert tile_choice(model, x) is not None
    results.append(mc_predict(model, x, S, generator=gen(3)))  # with the chosen tile
    for res in results:
        assert_same_passes(res.samples, ref)
        assert_same_passes(res.expected_entropy, results[0].expected_entropy)
        assert_same_passes(res.mutual_information, results[0].mutual_information)
    clear_tile_choices(model)
    assert tile_choice(model, x) is None


def _plan_choice(cost_per_pass, total=20, calls=20):
    """Run the tile search against a synthetic cost (seconds per pass at each tile)."""
    plan = _TilePlan()
    for _ in range(calls):
        done = 0
        while done < total:
            c, timed = plan.next(total - done, total)
            plan.record(c, cost_per_pass(c) * c if timed else None)
            done += c
        if plan.chosen is not None:
            return plan.chosen
    raise AssertionError("the tile search did not settle")


def test_tile_search_keeps_the_tile_that_is_fastest_per_pass():
    # a CPU and a large CNN: larger tiles are slower per pass -> one pass per call
    assert _plan_choice(lambda c: 1.0 + 0.3 * (c > 1) * math.log2(c)) == 1
    # a GPU or a tiny model: the cost of a call dominates -> all passes in one call
    assert _plan_choice(lambda c: 0.1 + 1.0 / c) == 20
    # a fixed cost per call plus a penalty beyond 8 passes -> 8
    assert _plan_choice(lambda c: 1.0 / c + (0.5 if c > 8 else 0.0)) == 8
    # no gain from 2 passes but a large one from 4 (two misses in a row end the search)
    assert _plan_choice(lambda c: 1.0 if c <= 2 else 0.5 / math.log2(c)) >= 4
    # a gain below the margin is not taken
    assert _plan_choice(lambda c: 1.0 - 0.5 * _MARGIN * (c > 1)) == 1
    # tiles never exceed the passes of a call
    assert _plan_choice(lambda c: 1.0 / c, total=6) == 6


def test_model_that_cannot_run_tiled_batches_gets_single_passes():
    """A model with the batch size built in fails on a tiled batch: one pass per call."""

    class FixedBatch(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = mlp()

        def forward(self, x):
            return self.net(x.view(5, 4))

    model = FixedBatch()
    x = torch.randn(5, 4, generator=gen(2), dtype=torch.float64)
    res = mc_predict(model, x, 6, generator=gen(4), max_batch=30)
    assert_same_passes(res.samples, explicit_loop(model, x, 6, seed=4))


def test_models_that_mix_rows_are_exact_with_one_pass_per_call():
    """Attention across the batch mixes the rows: tiling changes it, max_batch=B does not."""

    class BatchAttention(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = mlp()

        def forward(self, x):
            h = self.net(x)
            weights = torch.softmax(h @ h.T, dim=1)  # every row looks at every row of the call
            return weights @ h

    model = BatchAttention()
    x = torch.randn(5, 4, generator=gen(1), dtype=torch.float64)
    ref = explicit_loop(model, x, 6, seed=2)
    assert_same_passes(mc_predict(model, x, 6, generator=gen(2), max_batch=5).samples, ref)
    tiled = mc_predict(model, x, 6, generator=gen(2), max_batch=30).samples
    assert (tiled - ref).abs().max() > 1e-3  # as the documentation says


def test_binary_logits_of_shape_n():
    torch.manual_seed(8)
    model = nn.Sequential(nn.Linear(3, 3), nn.Dropout(0.5), nn.Linear(3, 1), nn.Flatten(0)).double()
    x = torch.randn(4, 3, dtype=torch.float64)
    res = mc_predict(model, x, 5, generator=gen(0), output="binary_logits")
    assert res.probs.shape == (4, 2) and res.class_dim == 1
    q = torch.sigmoid(explicit_loop(model, x, 5, seed=0, task="regression"))
    assert_same_passes(res.samples[..., 1], q)
    assert_same_passes(res.samples.sum(-1), torch.ones_like(q))
    # entropy of each pass from the logit, against the two-class formula
    h = -(q * q.log() + (1 - q) * (1 - q).log()).mean(0)
    torch.testing.assert_close(res.expected_entropy, h, rtol=1e-12, atol=1e-12)


def test_masked_classes_with_minus_inf_logits():
    class Masked(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = mlp()

        def forward(self, x):
            out = self.net(x).clone()
            out[:, 2] = float("-inf")
            return out

    x = torch.randn(5, 4, generator=gen(0), dtype=torch.float64)
    res = mc_predict(Masked(), x, 4, generator=gen(1))
    assert torch.isfinite(res.expected_entropy).all() and (res.probs[:, 2] == 0).all()
    p = res.samples[..., :2]
    torch.testing.assert_close(res.expected_entropy, -(p * p.log()).sum(-1).mean(0))


def test_many_random_ops_are_split_per_sample():
    torch.manual_seed(4)
    model = NoisyOps().double()
    x = torch.randn(4, 5, generator=gen(1), dtype=torch.float64)
    ref = explicit_loop(model, x, 6, seed=9)
    for max_batch in (None, 4, 8, 12):
        res = mc_predict(model, x, 6, generator=gen(9), max_batch=max_batch)
        assert_same_passes(res.samples, ref)


def test_noise_without_batch_dimension_falls_back_to_single_passes():
    torch.manual_seed(5)
    model = SharedWeightNoise().double()
    x = torch.randn(3, 4, generator=gen(2), dtype=torch.float64)
    ref = explicit_loop(model, x, 5, seed=1)
    res = mc_predict(model, x, 5, generator=gen(1))
    assert_same_passes(res.samples, ref)


def test_sequence_first_rnn_batch_dim_1():
    torch.manual_seed(6)
    model = SeqFirstRNN().double()
    x = torch.randn(7, 4, 3, generator=gen(3), dtype=torch.float64)  # (T, B, F)
    seeds = sample_seeds(5, gen(8))
    outs = []
    with mc_sampling(model), torch.no_grad():
        for s in seeds:
            torch.manual_seed(s)
            outs.append(torch.softmax(model(x), 1))
    ref = torch.stack(outs)
    for max_batch in (None, 8):
        res = mc_predict(
            model, x, 5, generator=gen(8), batch_dim=1, output_batch_dim=0, max_batch=max_batch
        )
        assert_same_passes(res.samples, ref)


def test_segmentation_output_and_conv_model():
    model = segmenter()
    x = torch.randn(2, 2, 5, 6, generator=gen(4), dtype=torch.float64)
    ref = explicit_loop(model, x, 4, seed=2)
    res = mc_predict(model, x, 4, generator=gen(2), max_batch=4)
    assert res.probs.shape == (2, 3, 5, 6)
    assert res.predictive_entropy.shape == (2, 5, 6)
    assert_same_passes(res.samples, ref)
    assert torch.equal(res.prediction, res.probs.argmax(1))


def test_global_seed_reproducibility_without_generator():
    model = mlp()
    x = torch.randn(3, 4, dtype=torch.float64)
    torch.manual_seed(11)
    a = mc_predict(model, x, 4)
    torch.manual_seed(11)
    b = mc_predict(model, x, 4, max_batch=3)
    assert_same_passes(a.samples, b.samples)


def test_module_generators_are_overridden():
    model = mlp()
    model[3].generator = torch.Generator().manual_seed(123)
    x = torch.randn(3, 4, dtype=torch.float64)
    a = mc_predict(model, x, 4, generator=gen(0))
    model[3].generator = torch.Generator().manual_seed(999)
    b = mc_predict(model, x, 4, generator=gen(0))
    assert_same_passes(a.samples, b.samples)
    assert model[3].generator.initial_seed() == 999  # restored


def test_out_of_memory_halves_the_tiling():
    model = mlp()
    calls = []

    class Limited(nn.Module):
        def __init__(self, inner: nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, x):
            calls.append(x.shape[0])
            if x.shape[0] > 6:
                raise RuntimeError("CUDA out of memory. Tried to allocate 1 GiB")
            return self.inner(x)

    x = torch.randn(3, 4, generator=gen(0), dtype=torch.float64)
    res = mc_predict(Limited(model), x, 5, generator=gen(6), max_batch=15)
    assert_same_passes(res.samples, explicit_loop(model, x, 5, seed=6))
    assert calls[0] == 15 and max(calls[1:]) <= 6


# --------------------------------------------------------------------------- decomposition
def np_entropy(p: np.ndarray, axis: int) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return -np.where(p > 0, p * np.log(p), 0.0).sum(axis)


def test_entropy_decomposition_against_numpy():
    model = mlp()
    x = torch.randn(6, 4, generator=gen(5), dtype=torch.float64)
    res = mc_predict(model, x, 9, generator=gen(0))
    s = res.samples.numpy()
    mean = s.mean(0)
    np.testing.assert_allclose(res.probs.numpy(), mean, rtol=1e-12)
    np.testing.assert_allclose(res.predictive_entropy.numpy(), np_entropy(mean, 1), rtol=1e-12)
    np.testing.assert_allclose(res.expected_entropy.numpy(), np_entropy(s, 2).mean(0), rtol=1e-12)
    # MI as the mean KL to the mean (an independent formula)
    kl = (s * (np.log(s) - np.log(mean)[None])).sum(2).mean(0)
    np.testing.assert_allclose(res.mutual_information.numpy(), kl, rtol=1e-9, atol=1e-14)
    assert (res.mutual_information > 1e-4).all()


def test_keep_samples_false_gives_same_statistics():
    model = mlp()
    x = torch.randn(6, 4, generator=gen(5), dtype=torch.float64)
    a = mc_predict(model, x, 9, generator=gen(0), max_batch=12)
    b = mc_predict(model, x, 9, generator=gen(0), max_batch=12, keep_samples=False)
    assert b.samples is None
    for name in ("probs", "predictive_entropy", "expected_entropy", "mutual_information"):
        torch.testing.assert_close(getattr(a, name), getattr(b, name), rtol=1e-12, atol=1e-12)


def test_mutual_information_nonnegative_and_zero_when_deterministic():
    torch.manual_seed(7)
    noisy = nn.Sequential(nn.Linear(3, 16), nn.Dropout(0.9), nn.Linear(16, 4))
    x = torch.randn(50, 3)
    res = mc_predict(noisy, x, 3, generator=gen(1))
    assert (res.mutual_information >= 0).all()

    deterministic = nn.Sequential(nn.Linear(3, 16), nn.ReLU(), nn.Linear(16, 4)).double()
    with pytest.warns(NoSamplingWarning):
        res = mc_predict(deterministic, x.double(), 7, generator=gen(1))
    assert (res.samples == res.samples[0]).all()
    assert float(res.mutual_information.abs().max()) <= 1e-12
    torch.testing.assert_close(res.predictive_entropy, res.expected_entropy, rtol=0, atol=1e-12)


def test_probs_and_binary_outputs():
    torch.manual_seed(8)
    x = torch.randn(4, 3, dtype=torch.float64)
    soft = nn.Sequential(nn.Linear(3, 3), nn.Dropout(0.5), nn.Linear(3, 2), nn.Softmax(-1)).double()
    a = mc_predict(soft, x, 5, generator=gen(0), output="probs")
    logits = nn.Sequential(*list(soft)[:3])
    b = mc_predict(logits, x, 5, generator=gen(0))
    torch.testing.assert_close(a.samples, b.samples)

    binary = nn.Sequential(nn.Linear(3, 3), nn.Dropout(0.5), nn.Linear(3, 1)).double()
    c = mc_predict(binary, x, 5, generator=gen(0), output="binary_logits")
    assert c.probs.shape == (4, 2)
    with torch.no_grad(), mc_sampling(binary):
        seeds = sample_seeds(5, gen(0))
        torch.manual_seed(seeds[0])
        q = torch.sigmoid(binary(x)).squeeze(-1)
    torch.testing.assert_close(c.samples[0, :, 1], q)


# --------------------------------------------------------------------------- regression
def test_regression_mean_and_variance():
    torch.manual_seed(9)
    model = nn.Sequential(nn.Linear(2, 8), nn.ReLU(), nn.Dropout(0.4), nn.Linear(8, 1)).double()
    x = torch.randn(5, 2, dtype=torch.float64)
    ref = explicit_loop(model, x, 8, seed=4, task="regression").numpy()
    res = mc_predict(model, x, 8, generator=gen(4), task="regression", noise_precision=4.0)
    assert isinstance(res, MCRegression)
    np.testing.assert_allclose(res.mean.numpy(), ref.mean(0), rtol=1e-12)
    np.testing.assert_allclose(res.model_variance.numpy(), ref.var(0), rtol=1e-10)
    np.testing.assert_allclose(res.variance.numpy(), ref.var(0) + 0.25, rtol=1e-10)
    assert res.noise_variance == 0.25
    lean = mc_predict(model, x, 8, generator=gen(4), task="regression", keep_samples=False)
    torch.testing.assert_close(lean.model_variance, res.model_variance, rtol=1e-9, atol=1e-12)


# --------------------------------------------------------------------------- moment models
class MomentModel(nn.Module):
    def __init__(self, mean: torch.Tensor, var: torch.Tensor) -> None:
        super().__init__()
        self.m, self.v = mean, var

    def forward(self, x):  # pragma: no cover - must not be called
        raise AssertionError("moment models are answered without sampling")

    def output_moments(self, x):
        return self.m, self.v


def _sigma_point_softmax(mean, var, method="unscented"):
    k = mean.shape[-1]
    step = torch.diag_embed((k * var).sqrt())
    pts = torch.cat([mean.unsqueeze(-2) + step, mean.unsqueeze(-2) - step], -2)
    return torch.softmax(pts, -1).mean(-2)


@pytest.fixture
def fast_dropout_functional(monkeypatch):
    try:
        from bayesdrop.functional import fast_dropout  # noqa: F401
    except ImportError:
        fake = types.ModuleType("bayesdrop.functional.fast_dropout")
        fake.expected_softmax = _sigma_point_softmax
        monkeypatch.setitem(sys.modules, "bayesdrop.functional.fast_dropout", fake)


def test_moment_models_answer_without_sampling(fast_dropout_functional):
    mean = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 0.0]], dtype=torch.float64)
    res = mc_predict(MomentModel(mean, torch.zeros_like(mean)), torch.zeros(2, 1), 10)
    assert res.samples is None and res.num_samples == 0
    torch.testing.assert_close(res.probs, torch.softmax(mean, 1))
    assert float(res.mutual_information.abs().max()) <= 1e-12

    var = torch.tensor([[4.0, 0.1, 1.0], [0.2, 3.0, 0.5]], dtype=torch.float64)
    res = mc_predict(MomentModel(mean, var), torch.zeros(2, 1), 10)
    torch.testing.assert_close(res.probs.sum(1), torch.ones(2, dtype=torch.float64))
    # probabilities and entropy terms come from the same 2K sigma points
    torch.testing.assert_close(
        res.predictive_entropy, res.expected_entropy + res.mutual_information
    )
    assert (res.mutual_information > 0).all()
    # sigma-point expected entropy, written out for the first row
    k = 3
    pts = [
        mean[0] + s * math.sqrt(k * float(var[0, j])) * torch.eye(3, dtype=torch.float64)[j]
        for j in range(3)
        for s in (1, -1)
    ]
    eh = sum(float(-(torch.softmax(p, 0) * torch.log_softmax(p, 0)).sum()) for p in pts) / 6
    assert abs(float(res.expected_entropy[0]) - eh) < 1e-12

    reg = mc_predict(
        MomentModel(mean, var), torch.zeros(2, 1), task="regression", noise_precision=2.0
    )
    torch.testing.assert_close(reg.variance, var + 0.5)
    torch.testing.assert_close(reg.mean, mean)


# --------------------------------------------------------------------------- errors
def test_bad_arguments():
    model = mlp()
    x = torch.randn(3, 4, dtype=torch.float64)
    with pytest.raises(ValueError, match="samples must be >= 1"):
        mc_predict(model, x, 0)
    with pytest.raises(TypeError, match="samples must be an int"):
        mc_predict(model, x, 2.5)
    with pytest.raises(ValueError, match="task must be one of"):
        mc_predict(model, x, 2, task="ranking")
    with pytest.raises(ValueError, match="output must be one of"):
        mc_predict(model, x, 2, output="softmax")
    with pytest.raises(ValueError, match="noise_precision is only meaningful"):
        mc_predict(model, x, 2, noise_precision=1.0)
    with pytest.raises(ValueError, match="noise_precision must be finite and > 0"):
        mc_predict(model, x, 2, task="regression", noise_precision=0.0)
    with pytest.raises(ValueError, match="max_batch must be >= 1"):
        mc_predict(model, x, 2, max_batch=0)
    with pytest.raises(TypeError, match="x must be a Tensor"):
        mc_predict(model, [1, 2], 2)
    with pytest.raises(ValueError, match="share the batch size"):
        mc_predict(nn.Bilinear(4, 4, 2), (x, x[:2]), 2)
    with pytest.raises(TypeError, match="generator must be"):
        mc_predict(model, x, 2, generator=0)
    with pytest.raises(ValueError, match="summing to one"):
        mc_predict(model, x, 2, output="probs")
    with pytest.raises(ValueError, match="at least 2 classes"):
        mc_predict(nn.Linear(4, 1).double(), x, 2)

    class Words(nn.Module):
        def forward(self, x):
            return "logits"

    with pytest.raises(TypeError, match="must return a Tensor"):
        mc_predict(Words(), x, 2)
    with pytest.raises(ValueError, match="output_batch_dim"):
        mc_predict(nn.Flatten(0), x, 2)


def test_top_level_exports():
    assert bayesdrop.mc_predict is mc_predict
    assert bayesdrop.uncertainty.mc_sampling is mc_sampling


@pytest.mark.parametrize(
    "name", ["mc", "lbd", "concrete", "gaussian", "variational", "sparse", "ard"]
)
def test_every_family_is_tiling_invariant(name):
    """Each bayesdrop family (converted from nn.Dropout) gives the explicit loop's passes exactly."""
    from bayesdrop.conversion import convert, resolve_family

    try:
        resolve_family(name)
    except ValueError:
        pytest.skip(f"family {name!r} is not in bayesdrop.nn yet")
    torch.manual_seed(10)
    base = nn.Sequential(nn.Linear(3, 6), nn.ReLU(), nn.Dropout(0.3), nn.Linear(6, 4)).double()
    model, _ = convert(base, name)
    x = torch.randn(4, 3, generator=gen(7), dtype=torch.float64)
    ref = explicit_loop(model, x, 5, seed=5)
    for max_batch in (None, 8):
        res = mc_predict(model, x, 5, generator=gen(5), max_batch=max_batch)
        assert_same_passes(res.samples, ref)
    assert (ref[0] - ref[1]).abs().max() > 0  # the family samples under MC prediction


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_tiling_invariant_on_cuda():
    """Philox streams on the GPU: tiled, chunked and the explicit loop agree exactly."""
    from bayesdrop.conversion import convert

    dev = torch.device("cuda")
    torch.manual_seed(4)
    noisy = NoisyOps().to(dev)
    base = nn.Sequential(
        nn.Linear(5, 16),
        nn.ReLU(),
        nn.Dropout(0.3),
        nn.Linear(16, 16),
        nn.ReLU(),
        nn.Dropout(0.3),
        nn.Linear(16, 3),
    )
    models = [noisy, mlp().float().to(dev), segmenter().float().to(dev)]
    inputs = [
        torch.randn(4, 5, device=dev),
        torch.randn(5, 4, device=dev),
        torch.randn(2, 2, 5, 6, device=dev),
    ]
    for name in ("mc", "lbd", "concrete", "gaussian", "variational", "sparse", "ard"):
        models.append(convert(base, name)[0].to(dev))
        inputs.append(torch.randn(6, 5, device=dev))
    for model, x in zip(models, inputs):
        seeds = sample_seeds(6, gen(3))
        outs = []
        with mc_sampling(model), torch.no_grad():
            for s in seeds:
                torch.manual_seed(s)
                outs.append(torch.softmax(model(x), 1))
        ref = torch.stack(outs)
        for max_batch in (None, 2 * x.shape[0]):
            res = mc_predict(model, x, 6, generator=gen(3), max_batch=max_batch)
            assert_same_passes(res.samples, ref)


def test_fast_dropout_mlp_answers_from_its_moments():
    fd = pytest.importorskip("bayesdrop.nn.fast_dropout")
    torch.manual_seed(0)
    model = fd.FastDropoutMLP(4, [8], 3, p=0.5).double()
    x = torch.randn(5, 4, dtype=torch.float64)
    res = mc_predict(model, x, 10)
    assert res.samples is None and res.num_samples == 0
    torch.testing.assert_close(res.probs, model.predict_proba(x))
    assert (res.mutual_information > 0).all()
    torch.testing.assert_close(
        res.predictive_entropy, res.expected_entropy + res.mutual_information
    )


def test_inexact_mode_is_reproducible_and_keeps_passes_independent():
    model = mlp()
    x = torch.randn(5, 4, generator=gen(0), dtype=torch.float64)
    a = mc_predict(model, x, 6, generator=gen(2), exact=False)
    b = mc_predict(model, x, 6, generator=gen(2), exact=False)
    assert torch.equal(a.samples, b.samples)
    exact = mc_predict(model, x, 6, generator=gen(2))
    assert (a.samples - exact.samples).abs().max() > 1e-3  # other noise, same distribution
    assert (a.samples[0] - a.samples[1]).abs().max() > 1e-3
    # one sample per call: the chunk's stream is that sample's stream, so it is exact again
    c = mc_predict(model, x, 6, generator=gen(2), exact=False, max_batch=5)
    assert_same_passes(c.samples, exact.samples)
    # noise without a batch dimension still falls back to independent single passes
    torch.manual_seed(5)
    shared = SharedWeightNoise().double()
    ref = explicit_loop(shared, x[:, :4], 5, seed=1)
    assert_same_passes(mc_predict(shared, x[:, :4], 5, generator=gen(1), exact=False).samples, ref)


class PerExampleNoise(nn.Module):
    """Noise whose distribution parameters differ per example and per pass (they follow an
    earlier draw): Bernoulli(sigmoid(h)) masks and Normal(mu, sigma) with tensor mu and sigma."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(5, 6)
        self.out = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.dropout(self.fc(x), 0.3, training=True)  # the parameters below differ per pass
        h = h * torch.bernoulli(torch.sigmoid(3 * h))
        h = torch.normal(h, F.softplus(h) + 0.05)  # tensor mean and tensor std
        h = h + torch.normal(torch.tanh(h), 0.2)  # tensor mean, scalar std
        h = h + torch.normal(0.0, torch.sigmoid(h))  # scalar mean, tensor std
        h = h * h.sigmoid().bernoulli()  # the Tensor method
        return self.out(h)


def test_tiling_splits_per_example_distribution_parameters():
    """Each pass's draws must use that pass's own rows of the parameter tensors (sigmoid(h), mu,
    sigma): tiled calls of 2, 4 and all 6 passes equal the explicit loop of single passes."""
    torch.manual_seed(3)
    model = PerExampleNoise().double()
    x = torch.randn(4, 5, generator=gen(1), dtype=torch.float64)
    ref = explicit_loop(model, x, 6, seed=9)
    assert (ref[0] - ref[1]).abs().max() > 1e-3  # the passes differ
    for max_batch in (None, 8, 16, 24):
        res = mc_predict(model, x, 6, generator=gen(9), max_batch=max_batch)
        assert_same_passes(res.samples, ref)
