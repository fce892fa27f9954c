"""The shared wrapper forward: RNN initial states, PackedSequence inputs, lazy layers refused."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from bayesdrop.nn import (
    ConcreteDropout,
    GaussianDropout,
    LearnableBernoulliDropout,
    VariationalDropout,
)
from bayesdrop.nn.wrapped_layers import drop_packed

Factory = Callable[..., nn.Module]

FAMILIES: dict[str, Factory] = {
    "lbd": lambda layer, **kw: LearnableBernoulliDropout(layer, init_p=0.3, **kw),
    "concrete": lambda layer, **kw: ConcreteDropout(layer, init_p=0.3, **kw),
    "gaussian": lambda layer, **kw: GaussianDropout(layer, p=0.3, **kw),
    "variational": lambda layer, **kw: VariationalDropout(layer, init_p=0.3, **kw),
}
RNNS = {
    "lstm": lambda bf: nn.LSTM(3, 4, num_layers=2, batch_first=bf),
    "gru": lambda bf: nn.GRU(3, 4, batch_first=bf, bidirectional=True),
    "rnn": lambda bf: nn.RNN(3, 4, batch_first=bf),
}
LENGTHS = torch.tensor([5, 2, 4])


def state(rnn: nn.RNNBase, batch: int) -> tuple[torch.Tensor, ...] | torch.Tensor:
    g = torch.Generator().manual_seed(7)
    layers = rnn.num_layers * (2 if rnn.bidirectional else 1)
    h0 = torch.randn(layers, batch, rnn.hidden_size, generator=g)
    if isinstance(rnn, nn.LSTM):
        return (h0, torch.randn(layers, batch, rnn.hidden_size, generator=g))
    return h0


def inputs(batch_first: bool) -> torch.Tensor:
    x = torch.randn(3, 5, 3, generator=torch.Generator().manual_seed(1))
    return x if batch_first else x.transpose(0, 1).contiguous()


def assert_same(a: object, b: object) -> None:
    if isinstance(a, tuple):
        assert isinstance(b, tuple) and len(a) == len(b)
        for u, v in zip(a, b):
            assert_same(u, v)
    elif isinstance(a, nn.utils.rnn.PackedSequence):
        assert isinstance(b, nn.utils.rnn.PackedSequence)
        torch.testing.assert_close(a.data, b.data, rtol=0, atol=0)
        torch.testing.assert_close(a.batch_sizes, b.batch_sizes, rtol=0, atol=0)
    else:
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("kind", sorted(RNNS))
@pytest.mark.parametrize("batch_first", [True, False])
def test_eval_equals_the_plain_rnn_with_state_and_packed(family, kind, batch_first):
    """Dropout off (eval): the wrapper is the RNN, with h0 and with PackedSequence inputs."""
    torch.manual_seed(0)
    rnn = RNNS[kind](batch_first)
    wrapped = FAMILIES[family](rnn).eval()
    x = inputs(batch_first)
    h0 = state(rnn, 3)
    assert_same(wrapped(x, h0), rnn(x, h0))
    assert_same(wrapped(x, hx=h0), rnn(x, hx=h0))
    packed = pack_padded_sequence(x, LENGTHS, batch_first=batch_first, enforce_sorted=False)
    assert_same(wrapped(packed), rnn(packed))
    assert_same(wrapped(packed, h0), rnn(packed, h0))


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("batch_first", [True, False])
def test_packed_is_dropped_like_the_padded_batch(family, batch_first):
    """Sampling with the same random numbers: packed and padded inputs get the same masks.

    The packed output at every valid position equals the padded output there (an RNN's output
    at step t depends only on steps <= t), for every sequence, with the initial state given.
    """
    torch.manual_seed(0)
    rnn = nn.LSTM(3, 4, batch_first=batch_first)
    x = inputs(batch_first)
    h0 = state(rnn, 3)
    outs = []
    for packed in (False, True):
        wrapped = FAMILIES[family](rnn, generator=torch.Generator().manual_seed(3)).train()
        arg = (
            pack_padded_sequence(x, LENGTHS, batch_first=batch_first, enforce_sorted=False)
            if packed
            else x
        )
        out, _ = wrapped(arg, h0)
        if packed:
            out, lengths = pad_packed_sequence(out, batch_first=batch_first)
            assert lengths.tolist() == LENGTHS.tolist()
        outs.append(out if batch_first else out.transpose(0, 1))
    padded, packed_out = outs
    for i, n in enumerate(LENGTHS.tolist()):
        torch.testing.assert_close(packed_out[i, :n], padded[i, :n], rtol=1e-6, atol=1e-6)
    # the noise really was on: the same wrapper in eval mode gives another output
    plain, _ = rnn(x, h0)
    plain = plain if batch_first else plain.transpose(0, 1)
    assert not torch.allclose(padded, plain)


def test_drop_packed_one_mask_per_sequence_shared_over_time():
    """Every row of a sequence gets that sequence's noise; noise drawn in the original order."""
    rnn = nn.GRU(2, 2, batch_first=True)
    x = torch.ones(3, 4, 2)
    packed = pack_padded_sequence(
        x, torch.tensor([2, 4, 3]), batch_first=True, enforce_sorted=False
    )
    noise = torch.tensor([[[1.0, 2.0]], [[3.0, 4.0]], [[5.0, 6.0]]])  # (B, 1, F), sequence order

    def drop(t: torch.Tensor) -> torch.Tensor:
        assert t.shape == (3, 1, 2)
        return t * noise

    out = drop_packed(packed, rnn, drop)
    padded, _ = pad_packed_sequence(out, batch_first=True)
    for i, n in enumerate([2, 4, 3]):
        torch.testing.assert_close(padded[i, :n], noise[i].expand(n, 2))
        assert (padded[i, n:] == 0).all()


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_refusals(family):
    make = FAMILIES[family]
    with pytest.raises(TypeError, match=r"lazy module \(LazyLinear\).*first forward"):
        make(nn.LazyLinear(3))
    with pytest.raises(TypeError, match=r"lazy module \(LazyConv2d\)"):
        make(nn.LazyConv2d(3, 3))
    lazy = nn.LazyLinear(3)
    lazy(torch.randn(2, 5))  # materialised: accepted
    assert make(lazy).units == 5
    packed = pack_padded_sequence(torch.randn(2, 3, 5), torch.tensor([3, 1]), batch_first=True)
    with pytest.raises(TypeError, match="PackedSequence input needs a wrapped nn.LSTM/GRU/RNN"):
        make(nn.Linear(5, 2))(packed)
