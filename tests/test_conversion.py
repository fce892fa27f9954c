"""convert: nn.Dropout* layers of small MLP/CNN/LSTM models become bayesdrop families."""

from __future__ import annotations

import copy
import importlib

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import bayesdrop
from bayesdrop import convert
from bayesdrop.conversion import (
    FAMILIES,
    ChannelDropout,
    ChannelRateDropout,
    ConversionReport,
    DropoutMultiheadAttention,
    SingleRateDropout,
    StackedRNN,
    resolve_family,
)
from bayesdrop.nn import ConcreteDropout, DropoutModule, LearnableBernoulliDropout, MCDropout
from bayesdrop.nn.additive_gaussian import AdditiveGaussianDropout


def mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(4, 8),
        nn.ReLU(),
        nn.Dropout(0.3),
        nn.Linear(8, 8),
        nn.ReLU(),
        nn.Dropout(0.2),
        nn.Linear(8, 2),
    )


def cnn() -> nn.Sequential:
    torch.manual_seed(1)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.ReLU(),
        nn.Dropout2d(0.25),
        nn.Conv2d(4, 4, 3, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Dropout(0.5),
        nn.Linear(4 * 5 * 5, 3),
    )


class Tagger(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(2)
        self.encoder = nn.Sequential(nn.Dropout(0.4), nn.LSTM(3, 6, batch_first=True))
        self.head = nn.Linear(6, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.encoder(x)
        return self.head(out)


class Attr(nn.Module):
    """Dropout as an attribute: the data flow is not visible to convert."""

    def __init__(self) -> None:
        super().__init__()
        self.drop = nn.Dropout(0.3)
        self.fc = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.drop(x))


def available(name: str) -> type | None:
    try:
        return resolve_family(name)
    except ValueError:
        return None


def test_mlp_to_lbd_keeps_weights_and_rates():
    model = mlp()
    new, report = convert(model, "lbd")
    assert isinstance(report, ConversionReport) and len(report) == 2
    assert isinstance(new[3], LearnableBernoulliDropout) and isinstance(
        new[6], LearnableBernoulliDropout
    )
    assert isinstance(new[2], nn.Identity) and isinstance(new[5], nn.Identity)
    assert new[3].layer.weight.data_ptr() != model[3].weight.data_ptr()  # a copy
    torch.testing.assert_close(new[3].layer.weight, model[3].weight, rtol=0, atol=0)
    torch.testing.assert_close(new[3].p, torch.full((8,), 0.3))
    torch.testing.assert_close(new[6].p, torch.full((8,), 0.2))
    assert isinstance(model[2], nn.Dropout) and isinstance(
        model[3], nn.Linear
    )  # original untouched
    x = torch.randn(5, 4)
    torch.testing.assert_close(new.eval()(x), model.eval()(x))
    assert [r.name for r in report.replacements] == ["2", "5"]
    assert [r.wrapped for r in report.replacements] == ["3", "6"]
    assert "2: Dropout(p=0.3" in str(report)
    assert bayesdrop.convert is convert


def test_cnn_channel_and_element_dropout():
    model = cnn()
    new, report = convert(model, LearnableBernoulliDropout, estimator="arm")
    assert isinstance(new[3], LearnableBernoulliDropout) and new[3].layer_kind == "conv"
    assert isinstance(new[7], LearnableBernoulliDropout) and new[7].layer_kind == "linear"
    assert new[3].estimator == "arm"
    torch.testing.assert_close(new[3].p, torch.full((4,), 0.25))
    x = torch.randn(2, 1, 5, 5)
    torch.testing.assert_close(new.eval()(x), model.eval()(x))
    assert report.notes == []  # everything wrapped, nothing to say


def test_lstm_wrapped():
    model = Tagger()
    new, report = convert(model, "LBD", init_p=0.1)
    wrapped = new.encoder[1]
    assert isinstance(wrapped, LearnableBernoulliDropout) and wrapped.layer_kind == "rnn"
    torch.testing.assert_close(wrapped.p, torch.full((3,), 0.1))  # options override the carried p
    x = torch.randn(2, 5, 3)
    torch.testing.assert_close(new.eval()(x), model.eval()(x))
    assert report.replacements[0].name == "encoder.0"


def test_mc_family_is_bare_and_keeps_channelwise():
    model = cnn()
    new, report = convert(model, "mc")
    assert isinstance(new[2], MCDropout) and new[2].channelwise
    assert isinstance(new[6], MCDropout) and not new[6].channelwise
    assert float(new[2].p) == 0.25 and float(new[6].p) == 0.5
    assert isinstance(new[3], nn.Conv2d)  # nothing wrapped
    assert all(r.wrapped is None for r in report.replacements)


def test_bare_form_infers_num_features():
    new, report = convert(mlp(), "lbd", form="bare")
    assert isinstance(new[2], LearnableBernoulliDropout) and new[2].layer is None
    assert new[2].p.shape == (8,)
    assert [r.form for r in report.replacements] == ["bare", "bare"]
    # channel dropout in the bare form: whole channels, one rate per channel (from the conv)
    model = cnn()
    new, report = convert(model, "lbd", form="bare")
    assert isinstance(new[2], ChannelDropout) and new[2].dropout.p.shape == (4,)
    assert report.replacements[0].form == "bare, channels" and report.replacements[0].units == 4
    x = torch.randn(3, 1, 5, 5)
    torch.testing.assert_close(new.eval()(x), model.eval()(x), rtol=0, atol=0)


def test_channel_dropout_drops_whole_channels():
    """The bare channel form multiplies each (example, channel) by one noise value."""
    model = nn.Sequential(nn.Conv2d(1, 3, 1), nn.Dropout2d(0.5), nn.ReLU())
    new, _ = convert(model, "lbd", form="bare")
    new.train()
    x = torch.randn(64, 1, 4, 4)
    torch.manual_seed(0)
    y = new[1](x.expand(64, 3, 4, 4).contiguous())
    ratio = y / x.expand(64, 3, 4, 4)
    flat = ratio.reshape(64, 3, 16)
    # one value per (example, channel), either 0 or 1 / (1 - 0.5)
    torch.testing.assert_close(flat, flat[..., :1].expand_as(flat))
    assert set(flat[..., 0].unique().tolist()) == {0.0, 2.0}


def test_dtype_and_device_follow_the_model():
    new, _ = convert(mlp().double(), "lbd")
    assert new[3].logit_p.dtype == torch.float64
    x = torch.randn(3, 4, dtype=torch.float64)
    assert new.eval()(x).dtype == torch.float64


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_every_family_converts_an_mlp(name):
    cls = available(name)
    if cls is None:
        pytest.skip(f"{FAMILIES[name]} is not in bayesdrop.nn yet")
    model = mlp()
    new, report = convert(model, name)
    families = [m for m in new.modules() if isinstance(m, cls)]
    assert len(families) == 2 and len(report) == 2
    assert not any(isinstance(m, nn.Dropout) for m in new.modules())
    x = torch.randn(6, 4)
    torch.testing.assert_close(new.eval()(x), model.eval()(x), rtol=1e-5, atol=1e-6)
    new.train()(x)  # sampling forward works
    assert all(isinstance(m, DropoutModule) for m in families)


def test_refusals_are_clear():
    # without example inputs the feature count of an attribute dropout is unknown
    with pytest.raises(ValueError, match=r"'drop'.*not known.*example_inputs="):
        convert(Attr(), "lbd")
    new, _ = convert(Attr(), "mc")  # bare families without sizes work anywhere
    assert isinstance(new.drop, MCDropout)
    new, _ = convert(Attr(), "lbd", form="bare", num_features=4)
    assert new.drop.p.shape == (4,)
    # ... with them, the trace finds the layer it feeds
    new, report = convert(Attr(), "lbd", example_inputs=torch.randn(2, 4))
    assert isinstance(new.fc, LearnableBernoulliDropout) and isinstance(new.drop, nn.Identity)
    assert report.replacements[0].wrapped == "fc"

    # families without a bare form refuse a dropout that feeds no wrappable layer
    relu_after = nn.Sequential(nn.Linear(3, 3), nn.Dropout(0.2), nn.ReLU(), nn.Linear(3, 1))
    if available("sparse") is not None:
        with pytest.raises(ValueError, match=r"converting '1'.*no bare form.*exclude=\['1'\]"):
            convert(relu_after, "sparse")
    new, report = convert(relu_after, "lbd")  # the others fall back to the bare form
    assert isinstance(new[1], LearnableBernoulliDropout) and new[1].p.shape == (3,)
    assert report.replacements[0].form == "bare"
    assert "no weight term" in report.replacements[0].prior
    assert any("keep weight decay" in n for n in report.notes)

    selu = nn.Sequential(nn.Linear(3, 3), nn.SELU(), nn.AlphaDropout(0.1), nn.Linear(3, 1))
    with pytest.raises(ValueError, match="alpha dropout.*SELU"):
        convert(selu, "mc")
    new, report = convert(selu, "mc", exclude=["2"])
    assert isinstance(new[2], nn.AlphaDropout) and len(report) == 0

    with pytest.raises(ValueError, match=r"zero_p must be in \(0, 1\)"):
        convert(mlp(), "lbd", zero_p=1.0)
    with pytest.raises(TypeError, match="zero_p must be 'keep' or a float"):
        convert(mlp(), "lbd", zero_p="learn")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="form must be one of"):
        convert(mlp(), "lbd", form="inline")  # type: ignore[arg-type]


def test_exclude_and_single_rate_names_are_checked():
    with pytest.raises(ValueError, match=r"exclude names \['3'\].*dropout layers are \['2', '5'\]"):
        convert(mlp(), "lbd", exclude=["3"])
    with pytest.raises(ValueError, match=r"exclude names \['nope'\]"):
        convert(mlp(), "lbd", exclude="nope")
    with pytest.raises(ValueError, match=r"single_rate names \['0'\]"):
        convert(mlp(), "lbd", single_rate=["0"])
    with pytest.raises(ValueError, match=r"example_inputs: the model failed.*RuntimeError"):
        convert(mlp(), "lbd", example_inputs=torch.randn(2, 5))  # 5 features, not 4
    with pytest.raises(TypeError, match="exclude must be an iterable"):
        convert(mlp(), "lbd", exclude=3)  # type: ignore[arg-type]
    new, report = convert(mlp(), "lbd", exclude=["5"])
    assert isinstance(new[5], nn.Dropout) and [r.name for r in report.replacements] == ["2"]


def test_lazy_modules_are_refused():
    model = nn.Sequential(nn.LazyLinear(3), nn.Dropout(0.1), nn.Linear(3, 1))
    with pytest.raises(ValueError, match=r"'0' is a lazy module \(LazyLinear\).*forward pass"):
        convert(model, "lbd")
    model(torch.randn(2, 5))  # materialised: now it converts
    new, _ = convert(model, "lbd")
    assert isinstance(new[2], LearnableBernoulliDropout)


def test_convert_is_the_function_and_conversion_the_module():
    import bayesdrop.conversion as conversion

    assert bayesdrop.convert is conversion.convert  # the function, not a module
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module("bayesdrop.convert")


def test_family_resolution():
    assert resolve_family("mc") is MCDropout
    assert resolve_family("LearnableBernoulliDropout") is LearnableBernoulliDropout
    with pytest.raises(ValueError, match="family must be one of"):
        resolve_family("bernoulli-ish")
    with pytest.raises(TypeError, match="DropoutModule"):
        convert(mlp(), nn.Dropout)
    with pytest.raises(TypeError, match="model must be an nn.Module"):
        convert("model", "mc")


def test_not_by_class_name_text():
    class MyDropoutLikeLayer(nn.Module):  # a name that looks like dropout, but is not one
        def forward(self, x):
            return x

    class Unusual(nn.Dropout):  # a subclass with another name is still a dropout layer
        pass

    model = nn.Sequential(MyDropoutLikeLayer(), nn.Linear(2, 2), Unusual(0.1), nn.Linear(2, 2))
    new, report = convert(model, "lbd")
    assert isinstance(new[0], MyDropoutLikeLayer)
    assert [r.name for r in report.replacements] == ["2"]


def test_notes():
    lstm = nn.Sequential(nn.Dropout(0.1), nn.LSTM(3, 4, num_layers=2, dropout=0.2))
    _, report = convert(lstm, "lbd", rnn=False)
    assert "dropout=0.2" in report.fixed["1"] and "not learned" in report.fixed["1"]
    assert any("one mask per sequence" in n for n in report.notes)
    new, report = convert(lstm, "lbd")  # the dropout between the layers is converted too
    assert report.fixed == {} and len(report) == 2
    assert isinstance(new[1], StackedRNN) and isinstance(new[1].rnns[1], LearnableBernoulliDropout)
    assert report.replacements[1].original == "LSTM(dropout=0.2) between layers 0 and 1"
    _, report = convert(lstm, "lbd", exclude=["1"])
    assert "1" in report.fixed and len(report) == 1
    _, report = convert(nn.Sequential(nn.Linear(2, 2)), "lbd")
    assert len(report) == 0 and "no nn.Dropout" in report.notes[0]
    _, report = convert(nn.Sequential(nn.Dropout(0.1), nn.Conv1d(2, 2, 1)), "lbd")
    assert any("whole input channels" in n for n in report.notes)


class Attention(nn.Module):
    """Attention written in the common style: dropout on the softmax probabilities."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.qkv = nn.Linear(8, 24)
        self.attn_drop = nn.Dropout(0.1)
        self.proj = nn.Linear(8, 8)
        self.resid_drop = nn.Dropout(0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        att = torch.softmax(q @ k.transpose(-2, -1) / 8**0.5, dim=-1)
        y = self.attn_drop(att) @ v
        return x + self.resid_drop(self.proj(y))


def test_trace_residual_and_attention_probabilities():
    model = Attention()
    x = torch.randn(2, 5, 8)
    new, report = convert(model, "concrete", example_inputs=x)
    forms = {r.name: (r.form, r.units) for r in report.replacements}
    # probabilities over positions (a softmax output): one rate, elementwise
    assert forms["attn_drop"] == ("one rate", 1)
    assert isinstance(new.attn_drop, SingleRateDropout) and new.attn_drop.dropout.p.shape == (1,)
    # residual branch: bare, one rate per feature
    assert forms["resid_drop"] == ("bare", 8)
    torch.testing.assert_close(new.eval()(x), model.eval()(x), rtol=0, atol=0)
    # another sequence length works with the one-rate module
    new.train()(torch.randn(2, 7, 8))
    # forced one rate for a named dropout
    _, report = convert(model, "concrete", example_inputs=x, single_rate=["resid_drop"])
    assert {r.name: r.form for r in report.replacements}["resid_drop"] == "one rate"


class Shared(nn.Module):
    """One dropout module used twice, and a dropout whose output has two consumers."""

    def __init__(self) -> None:
        super().__init__()
        self.drop = nn.Dropout(0.2)
        self.a = nn.Linear(4, 4)
        self.b = nn.Linear(4, 4)
        self.skip_drop = nn.Dropout(0.3)
        self.c = nn.Linear(4, 4)
        self.unused = nn.Dropout(0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.a(self.drop(x)) + self.b(self.drop(x))
        d = self.skip_drop(h)
        return self.c(d) + d


def test_trace_shared_and_two_consumers():
    model = Shared()
    x = torch.randn(3, 4)
    # a layer the inputs never reach is left as it was and listed, never a refusal
    new, report = convert(model, "lbd", example_inputs=x)
    assert isinstance(new.unused, nn.Dropout) and "not called" in report.fixed["unused"]
    new, report = convert(model, "lbd", example_inputs=x, exclude=["unused"])
    assert "unused" not in report.fixed
    forms = {r.name: r.form for r in report.replacements}
    assert forms == {"drop": "bare", "skip_drop": "bare"}  # two layers / layer + addition
    assert isinstance(new.a, nn.Linear) and isinstance(new.c, nn.Linear)
    torch.testing.assert_close(new.eval()(x), model.eval()(x), rtol=0, atol=0)
    # the bare module is still one module (shared): one set of rates
    assert sum(isinstance(m, LearnableBernoulliDropout) for m in new.modules()) == 2
    assert isinstance(model.drop, nn.Dropout)  # the original is untouched


def test_trace_does_not_touch_the_original_or_the_rng():
    bn = nn.Sequential(nn.Conv2d(1, 2, 1), nn.BatchNorm2d(2), nn.Dropout2d(0.2), nn.Conv2d(2, 2, 1))
    state = {k: v.clone() for k, v in bn.state_dict().items()}
    x = torch.randn(4, 1, 3, 3)
    torch.manual_seed(5)
    before = torch.rand(())
    torch.manual_seed(5)
    new, report = convert(bn, "lbd", example_inputs=x)
    assert torch.rand(()) == before  # no random numbers drawn by the trace
    for k, v in bn.state_dict().items():
        torch.testing.assert_close(v, state[k], rtol=0, atol=0)
    for k, v in new.state_dict().items():
        if k in state:  # BatchNorm statistics of the copy are the original's
            torch.testing.assert_close(v, state[k], rtol=0, atol=0)
    assert report.replacements[0].wrapped == "3"
    assert bn.training  # modes restored / untouched


@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("kdim", [None, 5])
def test_dropout_attention_equals_torch_with_dropout_off(batch_first, kdim):
    """DropoutMultiheadAttention in eval mode is nn.MultiheadAttention, for every mask kind."""
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(8, 2, dropout=0.1, batch_first=batch_first, kdim=kdim, vdim=kdim)
    mha.eval()
    ours = DropoutMultiheadAttention.from_module(
        copy.deepcopy(mha), SingleRateDropout(ConcreteDropout(num_features=1))
    ).eval()
    tgt, src, n = 4, 6, 3
    q = torch.randn(n, tgt, 8) if batch_first else torch.randn(tgt, n, 8)
    k = torch.randn(n, src, kdim or 8) if batch_first else torch.randn(src, n, kdim or 8)
    pad = torch.zeros(n, src, dtype=torch.bool)
    pad[0, -2:] = True
    causal = torch.triu(torch.ones(tgt, src, dtype=torch.bool), 1)
    cases = [
        {},
        {"key_padding_mask": pad},
        {"key_padding_mask": torch.where(pad, -1e4, 0.0)},
        {"attn_mask": torch.randn(tgt, src)},
        {"attn_mask": causal, "key_padding_mask": pad, "is_causal": True},
        {"attn_mask": torch.randn(n * 2, tgt, src)},
        {"need_weights": False},
        {"average_attn_weights": False},
    ]
    with torch.no_grad():
        for kwargs in cases:
            want, got = mha(q, k, k, **kwargs), ours(q, k, k, **kwargs)
            torch.testing.assert_close(got[0], want[0], rtol=1e-5, atol=1e-6)
            if want[1] is None:
                assert got[1] is None
            else:
                torch.testing.assert_close(got[1], want[1], rtol=1e-5, atol=1e-6)
        q1, k1 = torch.randn(tgt, 8), torch.randn(src, kdim or 8)  # unbatched
        want, got = mha(q1, k1, k1), ours(q1, k1, k1)
        torch.testing.assert_close(got[0], want[0], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(got[1], want[1], rtol=1e-5, atol=1e-6)


def test_dropout_attention_drops_probabilities():
    """Training mode: the returned per-head weights are softmax probabilities times the mask."""
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(4, 1, dropout=0.5, batch_first=True)
    new, report = convert(nn.Sequential(mha), "mc", example_inputs=None)
    attn = new[0]
    assert isinstance(attn, DropoutMultiheadAttention) and report.replacements[0].units == 1
    x = torch.randn(2, 5, 4)
    with torch.no_grad():
        _, clean = attn.eval()(x, x, x, average_attn_weights=False)
        _, noisy = attn.train()(x, x, x, average_attn_weights=False)
    ratio = noisy[clean > 0] / clean[clean > 0]
    assert set(ratio.round(decimals=5).unique().tolist()) == {0.0, 2.0}  # 1 / (1 - 0.5)
    with pytest.raises(ValueError, match="add_bias_kv"):
        convert(nn.Sequential(nn.MultiheadAttention(4, 1, dropout=0.1, add_bias_kv=True)), "mc")


@pytest.mark.parametrize(
    ("rnn_type", "options"),
    [
        (nn.LSTM, {}),
        (nn.LSTM, {"proj_size": 3}),
        (nn.GRU, {"bidirectional": True}),
        (nn.RNN, {"nonlinearity": "relu"}),
    ],
)
@pytest.mark.parametrize("batch_first", [True, False])
def test_stacked_rnn_equals_the_multilayer_rnn(rnn_type, options, batch_first):
    """Dropout off: the stack of one-layer copies is the original, with states and packing."""
    torch.manual_seed(0)
    rnn = rnn_type(4, 6, num_layers=3, dropout=0.3, batch_first=batch_first, **options).eval()
    stack = StackedRNN(rnn).eval()
    x = torch.randn(2, 5, 4) if batch_first else torch.randn(5, 2, 4)
    d = 2 if rnn.bidirectional else 1
    h0 = torch.randn(3 * d, 2, options.get("proj_size", 6))
    state = (h0, torch.randn(3 * d, 2, 6)) if rnn_type is nn.LSTM else h0
    with torch.no_grad():
        for args in ((x,), (x, state)):
            want, got = rnn(*args), stack(*args)
            torch.testing.assert_close(got[0], want[0])
            torch.testing.assert_close(got[1], want[1])
        packed = nn.utils.rnn.pack_padded_sequence(x, torch.tensor([5, 3]), batch_first=batch_first)
        torch.testing.assert_close(stack(packed)[0].data, rnn(packed)[0].data)


def test_trace_sees_in_place_writes():
    """A dropout output written in place before the layer reads it is not the layer's alone."""

    class Write(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.drop = nn.Dropout(0.2)
            self.fc = nn.Linear(4, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            d = self.drop(x)
            d[:, 0] = 1.0
            return self.fc(d)

    _, report = convert(Write(), "lbd", example_inputs=torch.randn(3, 4))
    assert report.replacements[0].form == "bare"
    _, report = convert(Attr(), "lbd", example_inputs=torch.randn(3, 4))
    assert report.replacements[0].form == "wrapped"


@pytest.mark.parametrize("proj_size", [0, 3])
@pytest.mark.parametrize("batch_first", [True, False])
def test_stacked_bidirectional_lstm_with_initial_states_is_the_original(proj_size, batch_first):
    """A 3-layer bidirectional LSTM given (h0, c0): each layer and direction must take its own
    slice of both states (h0 has proj_size features, c0 hidden_size). Outputs, final states and
    the gradients with respect to the input, both initial states and every weight equal the
    original's; also on a packed, unsorted batch."""
    torch.manual_seed(0)
    layers, d, hidden = 3, 2, 6
    rnn = nn.LSTM(
        4,
        hidden,
        num_layers=layers,
        bidirectional=True,
        batch_first=batch_first,
        proj_size=proj_size,
        dropout=0.4,
    ).double()
    stack = StackedRNN(rnn).double()
    rnn.eval(), stack.eval()
    h_size = proj_size or hidden
    x = torch.randn(3, 5, 4, dtype=torch.float64) if batch_first else torch.randn(5, 3, 4).double()
    h0 = torch.randn(layers * d, 3, h_size, dtype=torch.float64)
    c0 = torch.randn(layers * d, 3, hidden, dtype=torch.float64)
    results = []
    for model in (rnn, stack):
        xs, hs, cs = (t.clone().requires_grad_() for t in (x, h0, c0))
        out, (hn, cn) = model(xs, (hs, cs))
        # a loss that weighs every output, final state and direction differently
        w = torch.linspace(-1, 2, out.numel(), dtype=torch.float64).reshape(out.shape)
        loss = (
            (w * out).sum()
            + (hn * hn.flip(0)).sum()
            + 0.5 * (cn**2 * torch.arange(1, 7).double().view(6, 1, 1)).sum()
        )
        model.zero_grad()
        loss.backward()
        results.append((out.detach(), hn.detach(), cn.detach(), xs.grad, hs.grad, cs.grad))
    for want, got in zip(*results):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    for i, one in enumerate(stack.rnns):
        for name, param in one.named_parameters():
            ref = getattr(rnn, name.replace("_l0", f"_l{i}"))
            torch.testing.assert_close(param.grad, ref.grad, rtol=1e-12, atol=1e-12)
    lengths = torch.tensor([3, 5, 2])
    packed = nn.utils.rnn.pack_padded_sequence(
        x, lengths, batch_first=batch_first, enforce_sorted=False
    )
    with torch.no_grad():
        (po, (ph, pc)), (qo, (qh, qc)) = rnn(packed, (h0, c0)), stack(packed, (h0, c0))
    torch.testing.assert_close(qo.data, po.data, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(qh, ph, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(qc, pc, rtol=1e-12, atol=1e-12)


# ------------------------------------------------------------------ models as libraries write them
class FusedAttention(nn.Module):
    """Attention that reads its dropout module's rate and passes it to a fused kernel (as BERT,
    GPT-2 and timm's ViT do), never calling the module."""

    def __init__(self) -> None:
        super().__init__()
        self.qkv = nn.Linear(8, 24)
        self.attn_drop = nn.Dropout(0.1)
        self.proj = nn.Linear(8, 8)
        self.proj_drop = nn.Dropout(0.2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert isinstance(self.attn_drop, nn.Dropout) and not self.attn_drop.inplace
        q, k, v = self.qkv(x).unflatten(-1, (3, 2, 4)).permute(2, 0, 3, 1, 4)
        p = self.attn_drop.p if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=p)
        return self.proj_drop(self.proj(out.transpose(1, 2).flatten(2)))


class Block(nn.Module):
    """Functional dropout, a drop path (timm-style ``drop_prob``), a rate-0 dropout, and code that
    reads the attributes of a layer the conversion wraps (as T5 reads ``wo.weight.dtype``)."""

    def __init__(self) -> None:
        super().__init__()
        self.attn = FusedAttention()
        self.fc1 = nn.Linear(8, 16)
        self.drop = nn.Dropout(0.3)
        self.fc2 = nn.Linear(16, 8)
        self.zero = nn.Dropout(0.0)
        self.drop_path = TimmDropPath(0.25)
        self.depth = VisionStochasticDepth(0.15)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.attn(x))
        h = self.drop(F.gelu(self.fc1(x)))
        assert h.dtype == self.fc2.weight.dtype and self.fc2.in_features == 16
        x = x + self.depth(self.fc2(h))
        x = F.dropout(x, 0.05, self.training) + F.dropout(x, 0.05, training=False)
        return self.zero(F.dropout(x, p=0.05, training=self.training))


class TimmDropPath(nn.Module):
    def __init__(self, drop_prob: float) -> None:
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return x
        keep = 1 - self.drop_prob
        return x * x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep) / keep


class VisionStochasticDepth(nn.Module):
    def __init__(self, p: float) -> None:
        super().__init__()
        self.p, self.mode = p, "row"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return x
        noise = torch.empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(1 - self.p)
        return x * noise / (1 - self.p)


def test_read_not_called_functional_and_drop_path_are_listed():
    torch.manual_seed(0)
    model = Block()
    x = torch.randn(3, 5, 8)
    new, report = convert(model, "lbd", example_inputs=x, drop_path="fixed")
    assert {r.name: r.module for r in report.replacements} == {
        "attn.proj_drop": "attn.proj_drop",
        "drop": "fc2",
    }
    assert isinstance(new.fc2, LearnableBernoulliDropout)
    # the dropout whose rate is read stays, and is listed; so does everything else that fires
    assert isinstance(new.attn.attn_drop, nn.Dropout) and isinstance(new.zero, nn.Dropout)
    fixed = report.fixed
    assert set(fixed) == {"attn.attn_drop", "attn", "drop_path", "depth", "zero", "<model>"}
    assert fixed["attn.attn_drop"].startswith("Dropout(p=0.1) read, not called")
    assert "F.scaled_dot_product_attention(dropout_p=0.1)" in fixed["attn"]
    assert "TimmDropPath (drop path, p=0.25)" in fixed["drop_path"]
    assert "bernoulli" not in fixed["drop_path"]  # the drop path's own mask is not listed twice
    assert "VisionStochasticDepth (drop path, p=0.15)" in fixed["depth"]
    # two F.dropout calls that drop; the one with training=False is not one of them
    assert fixed["<model>"].startswith("dropout(p=0.05) x2 fires in training")
    assert "p = 0, no dropout to learn" in fixed["zero"]
    assert "stays fixed: drop_path: TimmDropPath" in str(report)
    model.eval(), new.eval()
    torch.testing.assert_close(new(x), model(x), rtol=0, atol=0)


def test_excluded_layers_are_not_traced():
    class ExactType(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.drop = nn.Dropout(0.1)
            self.fc = nn.Linear(4, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if type(self.drop) is not nn.Dropout:
                raise TypeError("drop is not an nn.Dropout")
            return self.fc(F.dropout(x, self.drop.p, self.training))

    x = torch.randn(2, 4)
    with pytest.raises(ValueError, match="example_inputs: the model failed.*not an nn.Dropout"):
        convert(ExactType(), "lbd", example_inputs=x)
    new, report = convert(ExactType(), "lbd", example_inputs=x, exclude=["drop"])
    assert type(new.drop) is nn.Dropout and len(report) == 0
    assert "dropout(p=0.1) fires in training" in report.fixed["<model>"]


def test_converted_model_is_run_and_a_failure_names_the_layer():
    class NeedsLinear(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.drop = nn.Dropout(0.1)
            self.fc = nn.Linear(4, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if not isinstance(self.fc, nn.Linear):
                raise TypeError("fc must be an nn.Linear")
            return self.fc(self.drop(x))

    model = nn.Sequential(nn.Identity(), NeedsLinear())
    with pytest.raises(
        ValueError,
        match=r"converted model failed on example_inputs in training mode in '1' \(NeedsLinear\), "
        r"which is or holds the converted module\(s\) \['1.fc'\].*fc must be an nn.Linear",
    ):
        convert(model, "lbd", example_inputs=torch.randn(2, 4))
    new, _ = convert(model, "lbd", form="bare", example_inputs=torch.randn(2, 4))
    assert isinstance(new[1].fc, nn.Linear)


def test_wrapped_layer_reads_pass_through():
    model = nn.Sequential(nn.Dropout(0.2), nn.Conv2d(3, 4, 3, stride=2, bias=False))
    new, _ = convert(model, "concrete")
    w = new[1]
    assert isinstance(w, ConcreteDropout) and w.weight is w.layer.weight
    assert (w.in_channels, w.out_channels, w.kernel_size, w.stride) == (3, 4, (3, 3), (2, 2))
    assert w.bias is None and w.weight.dtype == torch.float32
    assert set(new.state_dict()) == {"1.logit_p", "1.layer.weight"}  # keys as before
    with pytest.raises(AttributeError, match="'ConcreteDropout' object .wrapping Conv2d. has no"):
        _ = w.in_features


def test_check_run_leaves_rng_buffers_and_modes_as_they_were():
    torch.manual_seed(3)
    model = nn.Sequential(
        nn.Conv2d(1, 2, 1), nn.BatchNorm2d(2), nn.Dropout(0.2), nn.Flatten(), nn.Linear(18, 2)
    )
    model[1].train()
    x = torch.randn(4, 1, 3, 3)
    torch.manual_seed(11)
    new, _ = convert(model, "lbd", example_inputs=x, generator=torch.Generator().manual_seed(5))
    after = torch.rand(3)
    torch.manual_seed(11)
    assert torch.equal(after, torch.rand(3))  # the global stream did not move
    for a, b in zip(new.buffers(), model.buffers()):
        assert torch.equal(a, b)
    assert all(m.training for m in new.modules())
    gen = new[2].dropout.generator
    assert torch.equal(gen.get_state(), torch.Generator().manual_seed(5).get_state())


def test_p_zero_is_left_and_listed_or_starts_at_zero_p():
    model = nn.Sequential(nn.Linear(4, 6), nn.Dropout(0.0), nn.Linear(6, 2))
    new, report = convert(model, "lbd")
    assert isinstance(new[1], nn.Dropout) and len(report) == 0
    assert "p = 0, no dropout to learn" in report.fixed["1"]
    new, report = convert(model, "lbd", zero_p=0.1)
    assert isinstance(new[2], LearnableBernoulliDropout) and "1" not in report.fixed
    torch.testing.assert_close(new[2].p, torch.full((6,), 0.1))
    x = torch.randn(3, 4)
    torch.testing.assert_close(new.eval()(x), model.eval()(x), rtol=0, atol=0)


# ------------------------------------------------------------------ rates per channel, granularity
class ConvMap(nn.Module):
    """nn.Dropout (elementwise) on a conv feature map, on a raw input, and channels-last."""

    def __init__(self) -> None:
        super().__init__()
        self.in_drop = nn.Dropout(0.1)
        self.conv = nn.Conv2d(3, 5, 3, padding=1)
        self.drop = nn.Dropout(0.2)
        self.fc = nn.Linear(5, 4)
        self.last_drop = nn.Dropout(0.3)
        self.head = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.drop(F.relu(self.conv(self.in_drop(x) + 1.0)))
        h = F.max_pool2d(h, 2).permute(0, 2, 3, 1)  # (N, H, W, C)
        h = self.last_drop(self.fc(h)) + 1.0
        return self.head(h).mean((1, 2))


def test_dropout_on_a_conv_map_gets_per_channel_rates():
    torch.manual_seed(0)
    model = ConvMap()
    x = torch.randn(4, 3, 6, 6)
    new, report = convert(model, "lbd", example_inputs=x)
    forms = {r.name: (r.form, r.granularity, r.rates) for r in report.replacements}
    assert forms == {
        "in_drop": ("one rate", "per layer", 1),  # 4-d input of unknown layout
        "drop": ("bare, channel rates", "per channel", 5),  # after a convolution
        "last_drop": ("bare", "per unit", 4),  # channels-last, after nn.Linear
    }
    assert isinstance(new.drop, ChannelRateDropout)
    with torch.no_grad():
        new.drop.dropout.logit_p.copy_(torch.tensor([-30.0, 30.0, -30.0, -30.0, -30.0]))
    masks = new.drop.train()(torch.ones(64, 5, 4, 4))
    assert bool((masks[:, 1] == 0).all()) and bool((masks[:, [0, 2, 3, 4]] != 0).all())
    # elementwise masks, as nn.Dropout's: one value per element, not per channel
    with torch.no_grad():
        new.drop.dropout.logit_p.fill_(0.0)
    masks = new.drop(torch.ones(64, 5, 4, 4))
    assert bool(((masks[:, :, :1, :1] == 0) != (masks == 0)).any())
    model.eval(), new.eval()
    torch.testing.assert_close(new(x), model(x), rtol=0, atol=0)


def test_report_states_granularity_for_every_family():
    expected = {
        "lbd": ("per unit", 8),
        "concrete": ("per layer", 1),
        "variational": ("per unit", 8),
        "gaussian": ("per layer, fixed", 1),
        "mc": ("per layer, fixed", 1),
        "sparse": ("per weight", 16),
    }
    model = nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.2), nn.Linear(8, 2))
    for family, (granularity, rates) in expected.items():
        _, report = convert(model, family)
        r = report.replacements[0]
        assert (r.granularity, r.rates) == (granularity, rates), family
        plural = "s" if rates > 1 else ""
        assert f"; {granularity}, {rates} rate{plural})" in str(report)


def test_layer_called_twice_is_not_wrapped():
    """A layer that reads the dropout's output in one call and other input in another."""

    class Twice(nn.Module):
        def __init__(self, dropout_first: bool) -> None:
            super().__init__()
            self.drop = nn.Dropout(0.5)
            self.fc = nn.Linear(4, 4)
            self.dropout_first = dropout_first

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if self.dropout_first:
                return self.fc(self.drop(x)) + self.fc(x * 2)
            return self.fc(x * 2) + self.fc(self.drop(x))

    x = torch.randn(3, 4)
    for first in (True, False):
        model = Twice(first)
        new, report = convert(model, "lbd", example_inputs=x)
        assert type(new.fc) is nn.Linear, first  # wrapping it would drop the other call's input
        assert isinstance(new.drop, LearnableBernoulliDropout)
        assert report.replacements[0].wrapped is None
        # the other call is not dropped: with every unit dropped, only fc(2x) is left
        with torch.no_grad():
            new.drop.logit_p.fill_(30.0)  # p = sigmoid(30): every unit dropped
        torch.testing.assert_close(new.train()(x), model.fc(x * 2) + model.fc.bias)


def test_keyword_batches_and_mapping_outputs():
    class Keywords(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Embedding(10, 4)
            self.drop = nn.Dropout(0.2)
            self.fc = nn.Linear(4, 2)

        def forward(self, input_ids: torch.Tensor, scale: float = 1.0) -> dict[str, torch.Tensor]:
            return {"logits": self.fc(self.drop(self.embed(input_ids))).mean(1) * scale}

    model = Keywords()
    batch = {"input_ids": torch.randint(0, 10, (3, 5)), "scale": 2.0}
    new, report = convert(model, "lbd", example_inputs=batch)
    assert isinstance(new.fc, LearnableBernoulliDropout) and report.replacements[0].wrapped == "fc"
    model.eval(), new.eval()
    torch.testing.assert_close(new(**batch)["logits"], model(**batch)["logits"], rtol=0, atol=0)


# ------------------------------------------------------------------ sparse families: eval unchanged
@pytest.mark.parametrize("family", ["sparse", "ard"])
@pytest.mark.parametrize("rule", ["log_alpha", "magnitude"])
def test_sparse_families_leave_eval_outputs_unchanged_until_trained(family, rule):
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(64, 40), nn.ReLU(), nn.Dropout(0.2), nn.Linear(40, 64), nn.Dropout(0.1)
    )
    model.append(nn.Linear(64, 3))
    with torch.no_grad():
        model[3].weight[0, :5] = torch.tensor([1e-3, -1e-4, 1e-6, 0.0, 5e-3])  # small weights
    x = torch.randn(16, 64)
    new, _ = convert(model, family, prune_rule=rule)
    wrapped = [new[3], new[5]]
    assert all(isinstance(m, AdditiveGaussianDropout) for m in wrapped)
    # with the papers' constant initialisation these would be dropped at once
    fresh = type(wrapped[0])(copy.deepcopy(model[3]), prune_rule=rule)
    assert int((~fresh.keep_mask()).sum()) > 0
    model.eval(), new.eval()
    torch.testing.assert_close(new(x), model(x), rtol=0, atol=0)
    for m in wrapped:
        assert bool(m.keep_mask().all()) and bool(m.dense_until_trained)
        nonzero = m.theta != 0
        assert float(m.log_alpha[nonzero].max()) <= min(0.0, m.threshold - 1.0) + 1e-5
    # state_dict round trip, and a checkpoint saved before the flag existed counts as trained
    state = new.state_dict()
    again, _ = convert(model, family, prune_rule=rule)
    again.load_state_dict(state)
    assert bool(again[3].dense_until_trained)
    old = {k: v for k, v in state.items() if not k.endswith("dense_until_trained")}
    again.load_state_dict(old)
    assert not bool(again[3].dense_until_trained)
    # one training step: the rule applies from then on
    new.train()
    loss = bayesdrop.objective(new, x, torch.zeros(16, dtype=torch.long), _ce, n_data=100)
    loss.backward()
    assert not any(bool(m.dense_until_trained) for m in wrapped)
    if rule == "magnitude":
        new.eval()
        assert not bool(new[3].keep_mask()[0, :5].any())  # the small weights are dropped now


def _ce(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(out, y, reduction="none")
