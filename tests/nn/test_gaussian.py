"""GaussianDropout module: arguments, train/eval, moments, placements, state_dict."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from bayesdrop.nn import GaussianDropout
from tests.conftest import assert_within_se

DT = torch.float64


def test_p_property_and_repr() -> None:
    m = GaussianDropout(nn.Linear(3, 2), p=0.2, noise="B")
    torch.testing.assert_close(m.p, torch.tensor([0.2]))
    assert m.alpha == pytest.approx(0.25)
    assert "p=0.2" in repr(m) and "noise='B'" in repr(m)
    assert float(GaussianDropout(p=0.5).kl()) == 0.0


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(p=1.0), ValueError, "p must be in"),
        (dict(p=-0.1), ValueError, "p must be in"),
        (dict(p="0.1"), TypeError, "p must be a float"),
        (dict(noise="C"), ValueError, "noise must be one of"),
        (dict(noise="B"), ValueError, "must wrap an nn.Linear"),
        (dict(layer=nn.LSTM(3, 4), noise="B"), ValueError, "must wrap an nn.Linear"),
        (dict(layer=nn.Linear(3, 2), num_features=4), ValueError, "num_features"),
        (dict(layer=0.3), TypeError, "keyword argument p="),
        (dict(generator=1), TypeError, "generator"),
    ],
)
def test_bad_arguments(kwargs: dict, error: type, match: str) -> None:
    layer = kwargs.pop("layer", None)
    with pytest.raises(error, match=match):
        GaussianDropout(layer, **kwargs)


def test_bad_input_shape() -> None:
    with pytest.raises(ValueError, match="input must have shape"):
        GaussianDropout(nn.Linear(3, 2), noise="B")(torch.randn(4, 5))
    with pytest.raises(ValueError, match="channels"):
        GaussianDropout(nn.Conv2d(3, 2, 3))(torch.randn(1, 4, 5, 5))
    with pytest.raises(ValueError, match="input must have shape"):
        GaussianDropout(num_features=3)(torch.randn(2, 4))


@pytest.mark.parametrize("kind", ["A", "B"])
def test_eval_is_deterministic_mean_weights(kind: str) -> None:
    layer = nn.Linear(4, 3)
    m = GaussianDropout(layer, p=0.4, noise=kind).eval()
    x = torch.randn(5, 4)
    assert torch.equal(m(x), layer(x))
    m.mc_sampling = True
    assert not torch.equal(m(x), layer(x))
    assert torch.equal(GaussianDropout(p=0.0)(x), x)


@pytest.mark.parametrize("kind", ["A", "B"])
def test_train_moments_linear(kind: str) -> None:
    # Per output unit both kinds give mean W x + b and variance alpha (W^2)(x^2).
    layer = nn.Linear(3, 2).double()
    m = GaussianDropout(layer, p=0.3, noise=kind, generator=torch.Generator().manual_seed(0))
    x = torch.tensor([[1.0, -2.0, 0.5]], dtype=DT).expand(20000, 3)
    with torch.no_grad():
        out = m(x)
        mean = layer(x[:1])[0]
        var = (0.3 / 0.7) * (layer.weight**2 * x[:1] ** 2).sum(1)
    assert_within_se(out, mean)
    assert_within_se((out - mean) ** 2, var)


def test_type_b_conv_moments() -> None:
    layer = nn.Conv2d(2, 3, 3, padding=1, padding_mode="reflect").double()
    m = GaussianDropout(layer, p=0.5, noise="B", generator=torch.Generator().manual_seed(1))
    x = torch.randn(1, 2, 4, 4, dtype=DT)
    with torch.no_grad():
        out = torch.cat([m(x.expand(500, -1, -1, -1)) for _ in range(8)])
        mean = layer(x)[0]
        # Variance: the same convolution with squared weights on squared inputs (reflect padding).
        sq = nn.Conv2d(2, 3, 3, padding=1, padding_mode="reflect", bias=False).double()
        sq.weight.copy_(layer.weight**2)
        var = sq(x**2)[0]
    assert_within_se(out, mean)
    assert_within_se((out - mean) ** 2, var)


def test_type_a_conv_noise_is_per_channel_and_rnn_per_sequence() -> None:
    seen: list[torch.Tensor] = []
    conv = nn.Conv2d(3, 2, 1)
    conv.register_forward_pre_hook(lambda mod, args: seen.append(args[0]))
    GaussianDropout(conv, p=0.5)(torch.ones(2, 3, 4, 4))
    noisy = seen[-1]
    assert torch.equal(noisy, noisy[..., :1, :1].expand_as(noisy))
    rnn = nn.GRU(3, 4, batch_first=True)
    rnn.register_forward_pre_hook(lambda mod, args: seen.append(args[0]))
    out, _ = GaussianDropout(rnn, p=0.5)(torch.ones(2, 5, 3))
    assert out.shape == (2, 5, 4)
    noisy = seen[-1]
    assert torch.equal(noisy, noisy[:, :1].expand_as(noisy))  # shared over time steps


def test_generator_reproducible_and_state_dict() -> None:
    x = torch.randn(4, 3)
    outs = []
    for _ in range(2):
        torch.manual_seed(5)
        layer = nn.Linear(3, 2)
        m = GaussianDropout(layer, p=0.3, noise="B", generator=torch.Generator().manual_seed(7))
        outs.append(m(x))
    assert torch.equal(outs[0], outs[1])
    m2 = GaussianDropout(nn.Linear(3, 2), p=0.3, noise="B")
    m2.load_state_dict(m.state_dict())
    assert torch.equal(m2.eval()(x), m.eval()(x))


def test_zero_weights_and_inputs_no_nan() -> None:
    layer = nn.Linear(3, 2)
    nn.init.zeros_(layer.weight)
    m = GaussianDropout(layer, p=0.5, noise="B")
    x = torch.zeros(4, 3, requires_grad=True)
    out = m(x)
    out.sum().backward()
    assert torch.isfinite(out).all() and torch.isfinite(layer.weight.grad).all()
    assert torch.isfinite(x.grad).all()


def test_noise_is_the_only_name_of_the_noise_type() -> None:
    m = GaussianDropout(nn.Linear(3, 2), p=0.2, noise="B")
    assert m.noise == "B" and not hasattr(m, "kind")
    with pytest.raises(TypeError, match="kind"):
        GaussianDropout(nn.Linear(3, 2), p=0.2, kind="B")  # type: ignore[call-arg]


def test_p_follows_the_module_dtype_and_is_not_state() -> None:
    m = GaussianDropout(nn.Linear(3, 2), p=0.25).double()
    assert m.p.dtype == torch.float64 and m.p.device == m.layer.weight.device
    assert "_p" not in m.state_dict()
    m.p.fill_(0.9)  # a copy: the module's rate is unchanged
    assert float(m.p) == 0.25


@pytest.mark.cuda
def test_p_lives_on_the_module_device() -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    m = GaussianDropout(nn.Linear(3, 2), p=0.25).cuda()
    assert m.p.device.type == "cuda"
