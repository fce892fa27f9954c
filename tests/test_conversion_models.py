"""convert on the architectures people train: a Transformer text classifier, a residual CNN with
BatchNorm, an LSTM tagger. Each learned family converts with one call (traced on an example
batch), trains with ``objective`` (finite loss, every rate gets a gradient), predicts with
``mc_predict``, leaves the original untouched, and equals the original in eval mode."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import bayesdrop
from bayesdrop.conversion import (
    ChannelDropout,
    DropoutMultiheadAttention,
    SingleRateDropout,
    StackedRNN,
)
from bayesdrop.nn import DropoutModule, LearnableBernoulliDropout

LEARNED = ["lbd", "concrete", "variational"]
FAMILIES = [*LEARNED, "gaussian", "mc"]


class TextTransformer(nn.Module):
    """Embedding -> dropout -> TransformerEncoder (2 layers, dropout 0.1) -> mean -> Linear."""

    def __init__(self, vocab: int = 40, d: int = 16, classes: int = 3) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, d, padding_idx=0)
        self.drop = nn.Dropout(0.1)
        layer = nn.TransformerEncoderLayer(d, 2, 32, dropout=0.1, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(d, classes)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        pad = tokens == 0
        h = self.encoder(self.drop(self.embed(tokens)), src_key_padding_mask=pad)
        keep = (~pad).unsqueeze(-1).to(h.dtype)
        return self.head((h * keep).sum(1) / keep.sum(1))


class Residual(nn.Module):
    """conv-BN-ReLU -> Dropout2d -> conv-BN, plus the identity, then ReLU."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.drop = nn.Dropout2d(0.2)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.drop(F.relu(self.bn1(self.conv1(x))))
        return F.relu(x + self.bn2(self.conv2(y)))


class ResNet(nn.Module):
    def __init__(self, classes: int = 3) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(1, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.ReLU()
        )
        self.blocks = nn.Sequential(Residual(4), nn.Dropout2d(0.1), Residual(4))
        self.drop = nn.Dropout(0.3)
        self.fc = nn.Linear(4, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.drop(self.blocks(self.stem(x)).mean((2, 3))))


class LSTMClassifier(nn.Module):
    """Embedding dropout, a 2-layer LSTM with dropout between its layers, output dropout."""

    def __init__(self, vocab: int = 40, classes: int = 2) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, 8)
        self.embed_drop = nn.Dropout(0.2)
        self.lstm = nn.LSTM(8, 12, num_layers=2, dropout=0.25, batch_first=True)
        self.out_drop = nn.Dropout(0.4)
        self.fc = nn.Linear(12, classes)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(self.embed_drop(self.embed(tokens)))
        return self.fc(self.out_drop(out[:, -1]))


def data(name: str) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    if name == "transformer":
        x = torch.randint(1, 40, (8, 7), generator=g)
        x[:3, 5:] = 0  # padded sequences
        return TextTransformer(), x, torch.randint(0, 3, (8,), generator=g)
    if name == "resnet":
        return (
            ResNet(),
            torch.randn(8, 1, 6, 6, generator=g),
            torch.randint(0, 3, (8,), generator=g),
        )
    x = torch.randint(0, 40, (8, 6), generator=g)
    return LSTMClassifier(), x, torch.randint(0, 2, (8,), generator=g)


def nll(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(out, y, reduction="none")


MODELS = ["transformer", "resnet", "lstm"]


@pytest.mark.parametrize("model_name", MODELS)
@pytest.mark.parametrize("family", FAMILIES)
def test_convert_train_predict(model_name, family):
    model, x, y = data(model_name)
    before = copy.deepcopy(model.state_dict())
    types_before = [type(m) for m in model.modules()]
    new, report = bayesdrop.convert(model, family, example_inputs=x)

    # every nn.Dropout became the family; the original is untouched
    assert not any(isinstance(m, nn.modules.dropout._DropoutNd) for m in new.modules())
    assert [type(m) for m in model.modules()] == types_before
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, before[k], rtol=0, atol=0)
    n_dropouts = sum(isinstance(m, nn.modules.dropout._DropoutNd) for m in model.modules())
    n_attention = sum(isinstance(m, nn.MultiheadAttention) for m in model.modules())
    n_between = sum(m.num_layers - 1 for m in model.modules() if isinstance(m, nn.RNNBase))
    assert len(report) == n_dropouts + n_attention + n_between
    assert not any(isinstance(m, nn.RNNBase) and m.dropout for m in new.modules())
    assert not any(isinstance(m, nn.MultiheadAttention) and m.dropout for m in new.modules())

    # eval mode: the converted model is the original (inverted-dropout scaling)
    model.eval()
    new.eval()
    with torch.no_grad():
        torch.testing.assert_close(new(x), model(x), rtol=1e-5, atol=1e-6)

    # a few objective steps: finite loss, every learned rate gets a gradient
    new.train()
    rates = bayesdrop.rate_parameters(new)
    assert bool(rates) == (family in LEARNED)
    opt = torch.optim.Adam(bayesdrop.rate_param_groups(new, rate_lr=1e-2), lr=1e-3)
    got_grad = [False] * len(rates)
    for _ in range(3):
        opt.zero_grad()
        loss = bayesdrop.objective(new, x, y, nll, n_data=100)
        assert torch.isfinite(loss)
        loss.backward()
        for i, r in enumerate(rates):
            assert r.grad is not None and torch.isfinite(r.grad).all()
            got_grad[i] |= bool(r.grad.abs().sum() > 0)
        opt.step()
    assert all(got_grad)

    # MC prediction samples the converted modules
    res = bayesdrop.mc_predict(new, x, num_samples=6, generator=torch.Generator().manual_seed(2))
    assert torch.isfinite(res.probs).all()
    assert res.probs.shape == (8, 3 if model_name != "lstm" else 2)
    assert float(res.mutual_information.max()) > 0


def test_transformer_report_and_fast_path():
    model, x, _ = data("transformer")
    new, report = bayesdrop.convert(model, "lbd", example_inputs=x)
    forms = {r.name: (r.form, r.wrapped) for r in report.replacements}
    for i in range(2):
        pre = f"encoder.layers.{i}"
        # the feed-forward dropout feeds linear2 alone: wrapped, full prior
        assert forms[f"{pre}.dropout"] == ("wrapped", f"{pre}.linear2")
        # the residual-branch dropouts feed an addition: bare
        assert forms[f"{pre}.dropout1"] == ("bare", None)
        assert forms[f"{pre}.dropout2"] == ("bare", None)
        # attention-probability dropout: nn.MultiheadAttention's functional dropout becomes a module
        assert forms[f"{pre}.self_attn"] == ("one rate", None)
        attn = new.encoder.layers[i].self_attn
        assert isinstance(attn, DropoutMultiheadAttention) and attn.dropout == 0.0
        assert isinstance(attn.attn_drop, SingleRateDropout)
        assert isinstance(attn.attn_drop.dropout, LearnableBernoulliDropout)
        assert new.encoder.layers[i].activation_relu_or_gelu == 0
    assert report.fixed == {}
    # kept functional on request: then the report says it stays fixed, per layer
    _, report = bayesdrop.convert(model, "lbd", example_inputs=x, attention=False)
    assert set(report.fixed) == {"encoder.layers.0.self_attn", "encoder.layers.1.self_attn"}
    assert "not learned" in report.fixed["encoder.layers.0.self_attn"]
    assert "stays fixed: encoder.layers.0.self_attn" in str(report)
    _, report = bayesdrop.convert(
        model, "lbd", example_inputs=x, exclude=["encoder.layers.1.self_attn"]
    )
    assert set(report.fixed) == {"encoder.layers.1.self_attn"}
    # the original keeps torch's fast path (the copy alone is changed)
    assert model.encoder.layers[0].activation_relu_or_gelu == 1


def test_resnet_report():
    model, x, _ = data("resnet")
    new, report = bayesdrop.convert(model, "concrete", example_inputs=x)
    forms = {r.name: (r.form, r.wrapped, r.units) for r in report.replacements}
    # Dropout2d inside the block feeds conv2 alone: wrapped, whole channels
    assert forms["blocks.0.drop"] == ("wrapped", "blocks.0.conv2", 4)
    # Dropout2d between blocks feeds conv1 *and* the identity shortcut: bare, per channel
    assert forms["blocks.1"] == ("bare, channels", None, 4)
    assert isinstance(new.blocks[1], ChannelDropout)
    assert forms["drop"] == ("wrapped", "fc", 4)


def test_lstm_report():
    model, x, _ = data("lstm")
    new, report = bayesdrop.convert(model, "variational", example_inputs=x)
    forms = {r.name: (r.form, r.wrapped) for r in report.replacements}
    assert forms["embed_drop"] == ("wrapped", "lstm.rnns.0")  # input dropout of the LSTM
    assert forms["out_drop"] == ("wrapped", "fc")  # out[:, -1] is sliced before the dropout
    # the dropout between the LSTM's two layers: the input dropout of its second layer
    assert forms["lstm"] == ("wrapped", "lstm.rnns.1")
    assert isinstance(new.lstm, StackedRNN) and report.fixed == {}


def test_mc_prediction_samples_converted_transformer_layers():
    """Under mc_predict (eval mode, no grad) torch's fused path would skip the modules."""
    model, x, _ = data("transformer")
    new, _ = bayesdrop.convert(model, "mc", example_inputs=x)
    # only the layers inside the encoder sample: outputs must differ between passes
    new.embed.weight.requires_grad_(False)
    res = bayesdrop.mc_predict(new, x, num_samples=4, generator=torch.Generator().manual_seed(0))
    assert float(res.samples.std(0).max()) > 0
    assert sum(isinstance(m, DropoutModule) for m in new.modules()) == 9  # 7 + 2 attention
