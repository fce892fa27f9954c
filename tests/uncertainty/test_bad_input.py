"""Bad input to the uncertainty API: each case refused before any work, in the caller's terms.

Every case names the argument and what was expected; errors about the model's output use the
shapes of one pass (the batch size of ``x``, the caller's ``class_dim``), never the shapes of a
tiled call of several passes.
"""

from __future__ import annotations

import re
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bayesdrop.uncertainty import (
    NoSamplingWarning,
    mc_predict,
    mc_sampling,
    sample_seeds,
    tile_choice,
)

B = 3  # batch size of x in every case; a tiled call of 20 passes would have 60 rows


def classifier(out: int = 3) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.5), nn.Linear(8, out)).double()


X = torch.randn(B, 4, dtype=torch.float64)


class Words(nn.Module):
    def forward(self, x):
        return "logits"


class Hidden(nn.Module):
    def forward(self, x):
        return {"hidden_states": x}


class IntOut(nn.Module):
    def forward(self, x):
        return F.dropout(x, 0.5, True).long()


class NaNOut(nn.Module):
    def forward(self, x):
        return F.dropout(x, 0.5, True)[:, :3] * float("nan")


class InfOut(nn.Module):
    def forward(self, x):
        return F.dropout(x, 0.5, True)[:, :1] + float("inf")


class BadLayer(nn.Module):
    """Fails on any input: a 5-feature layer fed 4 features."""

    def __init__(self) -> None:
        super().__init__()
        self.drop = nn.Dropout(0.5)
        self.fc = nn.Linear(5, 3).double()

    def forward(self, x):
        return self.fc(self.drop(x))


# (case id, call, exception, regex the message must match)
CASES = [
    (
        "model not a module",
        lambda: mc_predict(lambda x: x, X, 2),
        TypeError,
        "model must be an nn.Module",
    ),
    (
        "num_samples 0",
        lambda: mc_predict(classifier(), X, 0),
        ValueError,
        "num_samples must be >= 1, but got 0",
    ),
    (
        "num_samples float",
        lambda: mc_predict(classifier(), X, 2.5),
        TypeError,
        "num_samples must be an int",
    ),
    (
        "num_samples bool",
        lambda: mc_predict(classifier(), X, True),
        TypeError,
        "num_samples must be an int",
    ),
    (
        "samples= is not a keyword (the name is num_samples)",
        lambda: mc_predict(classifier(), X, samples=3),  # type: ignore[call-arg]
        TypeError,
        "samples",
    ),
    (
        "task",
        lambda: mc_predict(classifier(), X, 2, task="ranking"),
        ValueError,
        "task must be one of",
    ),
    (
        "output",
        lambda: mc_predict(classifier(), X, 2, output="softmax"),
        ValueError,
        "output must be one of",
    ),
    (
        "class_dim type",
        lambda: mc_predict(classifier(), X, 2, class_dim=1.0),
        TypeError,
        "class_dim must be an int",
    ),
    (
        "batch_dim type",
        lambda: mc_predict(classifier(), X, 2, batch_dim="0"),
        TypeError,
        "batch_dim must be an int",
    ),
    (
        "output_batch_dim type",
        lambda: mc_predict(classifier(), X, 2, output_batch_dim=0.0),
        TypeError,
        "output_batch_dim must be an int or None",
    ),
    (
        "noise_precision for classification",
        lambda: mc_predict(classifier(), X, 2, noise_precision=1.0),
        ValueError,
        "noise_precision is only meaningful",
    ),
    (
        "noise_precision zero",
        lambda: mc_predict(classifier(1), X, 2, task="regression", noise_precision=0.0),
        ValueError,
        "noise_precision must be finite and > 0",
    ),
    (
        "noise_precision nan",
        lambda: mc_predict(classifier(1), X, 2, task="regression", noise_precision=float("nan")),
        ValueError,
        "noise_precision must be finite",
    ),
    (
        "generator type",
        lambda: mc_predict(classifier(), X, 2, generator=0),
        TypeError,
        "generator must be a torch.Generator",
    ),
    (
        "max_batch zero",
        lambda: mc_predict(classifier(), X, 2, max_batch=0),
        ValueError,
        "max_batch must be >= 1",
    ),
    (
        "max_batch float",
        lambda: mc_predict(classifier(), X, 2, max_batch=10.0),
        TypeError,
        "max_batch must be an int",
    ),
    (
        "x list of numbers",
        lambda: mc_predict(classifier(), [1, 2], 2),
        TypeError,
        "x must be a Tensor, a non-empty tuple/list",
    ),
    (
        "x empty tuple",
        lambda: mc_predict(classifier(), (), 2),
        TypeError,
        "x must be a Tensor, a non-empty tuple/list",
    ),
    (
        "x numpy array",
        lambda: mc_predict(classifier(), X.numpy(), 2),
        TypeError,
        "x must be a Tensor",
    ),
    (
        "x scalar",
        lambda: mc_predict(classifier(), torch.tensor(1.0), 2),
        ValueError,
        "x has no batch dimension batch_dim=0",
    ),
    (
        "x batch_dim out of range",
        lambda: mc_predict(classifier(), X, 2, batch_dim=2),
        ValueError,
        r"x has no batch dimension batch_dim=2: shape \(3, 4\)",
    ),
    (
        "x empty batch",
        lambda: mc_predict(classifier(), X[:0], 2),
        ValueError,
        "x must hold at least one example",
    ),
    (
        "x with NaN",
        lambda: mc_predict(classifier(), X * float("nan"), 2),
        ValueError,
        "x must be finite",
    ),
    (
        "x parts with other batch sizes",
        lambda: mc_predict(nn.Bilinear(4, 4, 2).double(), (X, X[:2]), 2),
        ValueError,
        "share the batch size",
    ),
    (
        "x part with NaN",
        lambda: mc_predict(nn.Bilinear(4, 4, 2).double(), (X, X / 0.0), 2),
        ValueError,
        r"x\[1\] must be finite",
    ),
    (
        "probs that are logits",
        lambda: mc_predict(classifier(), X, 2, output="probs"),
        ValueError,
        "summing to one along class_dim=1",
    ),
    (
        "logits with one class",
        lambda: mc_predict(classifier(1), X, 20),
        ValueError,
        r"at least 2 classes along class_dim=1, but the model returned shape \(3, 1\)",
    ),
    (
        "probs with one class",
        lambda: mc_predict(classifier(1), X, 2, output="probs"),
        ValueError,
        r"output='probs' needs at least 2 classes",
    ),
    (
        "binary_logits on two logits",
        lambda: mc_predict(classifier(2), X, 20, output="binary_logits"),
        ValueError,
        r"one logit per example, shape \(3,\) or \(3, 1\) .* returned \(3, 2\)",
    ),
    (
        "binary_logits on (N, 1, 1)",
        lambda: mc_predict(
            nn.Sequential(classifier(1), nn.Unflatten(1, (1, 1))), X, 2, output="binary_logits"
        ),
        ValueError,
        r"returned \(3, 1, 1\)",
    ),
    (
        "class_dim out of range",
        lambda: mc_predict(classifier(), X, 20, class_dim=2),
        ValueError,
        r"class_dim=2 is not a dimension of the model output, whose shape is \(3, 3\)",
    ),
    (
        "class_dim is the batch dimension",
        lambda: mc_predict(classifier(), X, 20, class_dim=0),
        ValueError,
        r"class_dim=0 is the batch dimension of the model output \(3, 3\)",
    ),
    (
        "model returns a string",
        lambda: mc_predict(Words(), X, 20),
        TypeError,
        "model must return a Tensor, a mapping .* but it returned str",
    ),
    (
        "mapping output without the key",
        lambda: mc_predict(Hidden(), X, 20),
        ValueError,
        r"without an entry 'logits'; its entries are \['hidden_states'\]",
    ),
    (
        "output_key not a string",
        lambda: mc_predict(classifier(), X, 20, output_key=1),
        TypeError,
        "output_key must be a string",
    ),
    (
        "model returns integers",
        lambda: mc_predict(IntOut(), X, 20),
        TypeError,
        "must return a floating tensor",
    ),
    (
        "output without the batch",
        lambda: mc_predict(nn.Flatten(0), X, 20),
        ValueError,
        r"for x with 3 examples along batch_dim=0 the model returned shape \(12,\)",
    ),
    (
        "output_batch_dim wrong",
        lambda: mc_predict(classifier(4), X, 20, output_batch_dim=1),
        ValueError,
        r"returned shape \(3, 4\), which does not hold them along output_batch_dim=1",
    ),
    ("model fails on x", lambda: mc_predict(BadLayer(), X, 20), RuntimeError, r"\(3x4 and 5x3\)"),
    (
        "NaN logits",
        lambda: mc_predict(NaNOut(), X, 20, max_batch=3 * B),
        ValueError,
        r"pass 0 gives non-finite probabilities",
    ),
    (
        "inf regression output",
        lambda: mc_predict(InfOut(), X, 4, task="regression"),
        ValueError,
        "returned NaN or inf",
    ),
    (
        "mc_sampling on a non-module",
        lambda: mc_sampling(3).__enter__(),
        TypeError,
        "model must be an nn.Module",
    ),
    ("sample_seeds 0", lambda: sample_seeds(0), ValueError, "num_samples must be >= 1"),
    ("sample_seeds without a count", lambda: sample_seeds(), TypeError, "missing .*num_samples"),
    (
        "tile_choice on a non-tensor",
        lambda: tile_choice(classifier(), "x"),
        TypeError,
        "x must be a Tensor",
    ),
]


@pytest.mark.parametrize("call, exc, match", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_refused_clearly(call, exc, match):
    with pytest.raises(exc, match=match) as info:
        call()
    # never the rows of a tiled call (20 passes x 3 examples = 60) in a message
    assert not re.search(r"\b(60|20 x 3)\b", str(info.value)), str(info.value)


def test_number_of_cases():
    """The README's reliability section quotes this count."""
    assert len(CASES) == 45


class FunctionalDropout(nn.Module):
    """Dropout written as F.dropout(x, p, self.training): off in eval mode, so off in MC."""

    def __init__(self, training_flag: bool = True) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(4, 8), nn.Linear(8, 3)
        self.flag = training_flag

    def forward(self, x):
        on = self.training if self.flag else True
        return self.fc2(F.dropout(torch.relu(self.fc1(x)), 0.5, on))


@pytest.mark.parametrize(
    "model, says",
    [
        (nn.Sequential(nn.Linear(4, 3)), "it has no layer that samples"),
        (FunctionalDropout(), r"F\.dropout\(x, p, self\.training\) is off"),
        (nn.Sequential(nn.Linear(4, 3), nn.Dropout(0.0)), r"its sampling layers \(1\) drew noise"),
    ],
    ids=["no dropout", "functional dropout off in eval", "zero rate"],
)
def test_passes_that_did_not_sample_are_reported(model, says):
    x = torch.randn(5, 4)
    with pytest.warns(NoSamplingWarning, match=says):
        res = mc_predict(model.float(), x, 6)
    assert float(res.mutual_information.abs().max()) <= 1e-6  # what the warning explains
    with pytest.warns(NoSamplingWarning):
        mc_predict(model.float(), x, 6, task="regression", output_batch_dim=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error", NoSamplingWarning)
        with pytest.raises(NoSamplingWarning):  # users can make it an error
            mc_predict(model.float(), x, 6)


def test_models_that_sample_are_not_reported():
    with warnings.catch_warnings():
        warnings.simplefilter("error", NoSamplingWarning)
        mc_predict(FunctionalDropout(training_flag=False), torch.randn(5, 4), 6)
        mc_predict(classifier(), X, 6)
        mc_predict(nn.Sequential(nn.Linear(4, 3)), torch.randn(5, 4), 1)  # one pass: no claim


def test_num_samples_that_cannot_fit_is_refused_before_allocating(monkeypatch):
    """10**12 passes need 44 TB of seeds alone: refused with the memory needed and free, before
    the seeds are drawn; with 1 GiB free, 20,000 passes (0.9 MB of seeds) still run."""
    import bayesdrop.uncertainty.mc as mc
    from bayesdrop.nn import MCDropout

    model = nn.Sequential(MCDropout(0.5), nn.Linear(3, 2))
    x = torch.randn(4, 3)

    def no_seeds(*a, **k):
        raise AssertionError("allocated the seeds before refusing")

    monkeypatch.setattr(mc, "_available_bytes", lambda device: 2**30)
    with monkeypatch.context() as m:
        m.setattr(mc, "sample_seeds", no_seeds)
        with pytest.raises(
            ValueError,
            match=r"num_samples=1000000000000 cannot fit: .* 4\.1e\+04 GiB .* but 1 GiB are free",
        ):
            mc_predict(model, x, num_samples=10**12, keep_samples=False)
        with pytest.raises(ValueError, match="or keep_samples=False"):
            mc_predict(model, x, num_samples=10**12)
        # 44 bytes of seed + 16 bytes kept per pass: 2**30 / 60 passes fit, one more does not
        fits = 2**30 // 60
        with pytest.raises(ValueError, match="cannot fit"):
            mc_predict(model, x, num_samples=fits + 1)
    res = mc_predict(model, x, num_samples=20_000, generator=torch.Generator().manual_seed(0))
    assert res.num_samples == 20_000 and res.samples.shape[0] == 20_000
