"""Local reparameterisation moments against explicit weight sampling (Monte Carlo within SE)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from bayesdrop.functional import VAR_FLOOR, lrt_conv, lrt_linear, sample_gaussian
from tests.conftest import assert_within_se

DT = torch.float64


def _weights(shape: tuple[int, ...], g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    mean = torch.randn(shape, generator=g, dtype=DT)
    var = torch.rand(shape, generator=g, dtype=DT) * 0.5 + 0.05
    return mean, var


def _check_moments(outs: torch.Tensor, mean: torch.Tensor, var: torch.Tensor) -> None:
    """``outs``: i.i.d. samples (first dim) of a Gaussian with the given mean and variance."""
    assert_within_se(outs, mean)
    # (b - mean)^2 are i.i.d. with expectation var.
    assert_within_se((outs - mean).pow(2), var)


def test_linear_against_sampled_weights() -> None:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4, 5, generator=g, dtype=DT)
    w, w_var = _weights((3, 5), g)
    b = torch.randn(3, generator=g, dtype=DT)
    samples = 20000
    ws = w + w_var.sqrt() * torch.randn(samples, 3, 5, generator=g, dtype=DT)
    outs = torch.einsum("bi,soi->sbo", x, ws) + b
    mean, var = lrt_linear(x, w, w_var, b)
    assert mean.shape == var.shape == (4, 3)
    _check_moments(outs, mean, var)


@pytest.mark.parametrize(
    "opts", [dict(), dict(stride=2, padding=1), dict(groups=2, dilation=2, padding=2)]
)
def test_conv2d_against_sampled_weights(opts: dict) -> None:
    g = torch.Generator().manual_seed(2)
    groups = opts.get("groups", 1)
    x = torch.randn(2, 4, 5, 5, generator=g, dtype=DT)
    w, w_var = _weights((6, 4 // groups, 3, 3), g)
    b = torch.randn(6, generator=g, dtype=DT)
    samples = 2000
    ws = w + w_var.sqrt() * torch.randn(samples, *w.shape, generator=g, dtype=DT)
    # One convolution per weight sample, vectorised with groups: (batch, samples * C, H, W).
    xs = x.repeat(1, samples, 1, 1)
    stacked_opts = {**opts, "groups": samples * groups}
    outs = F.conv2d(xs, ws.reshape(-1, *w.shape[1:]), b.repeat(samples), **stacked_opts)
    outs = outs.reshape(2, samples, 6, *outs.shape[2:]).transpose(0, 1)
    mean, var = lrt_conv(x, w, w_var, b, **opts)
    assert mean.shape == outs.shape[1:]
    _check_moments(outs, mean, var)


@pytest.mark.parametrize("conv", [F.conv1d, F.conv3d])
def test_conv1d_conv3d_agree_with_conv2d(conv) -> None:
    # A 1d (3d) convolution equals a 2d one with a trailing singleton (a leading 1-kernel) dim.
    g = torch.Generator().manual_seed(3)
    if conv is F.conv1d:
        x = torch.randn(2, 3, 7, generator=g, dtype=DT)
        w, w_var = _weights((4, 3, 3), g)
        m, v = lrt_conv(x, w, w_var, stride=2, padding=1)
        m2, v2 = lrt_conv(
            x[..., None], w[..., None], w_var[..., None], stride=(2, 1), padding=(1, 0)
        )
        m2, v2 = m2[..., 0], v2[..., 0]
    else:
        x = torch.randn(2, 3, 1, 5, 5, generator=g, dtype=DT)
        w, w_var = _weights((4, 3, 1, 3, 3), g)
        m, v = lrt_conv(x, w, w_var, padding=(0, 1, 1))
        m2, v2 = lrt_conv(x[:, :, 0], w[:, :, 0], w_var[:, :, 0], padding=1)
        m, v = m[:, :, 0], v[:, :, 0]
    torch.testing.assert_close(m, m2)
    torch.testing.assert_close(v, v2)


def test_bias_never_enters_the_variance() -> None:
    x, w, wv = torch.randn(3, 4), torch.randn(2, 4), torch.rand(2, 4)
    _, v0 = lrt_linear(x, w, wv)
    _, v1 = lrt_linear(x, w, wv, torch.full((2,), 1e3))
    assert torch.equal(v0, v1)
    _, c0 = lrt_conv(torch.randn(1, 4, 5, 5), torch.randn(2, 4, 3, 3), torch.rand(2, 4, 3, 3))
    assert c0.min() >= 0


def test_broadcast_weight_var() -> None:
    # One variance per output unit (shape (out, 1)) or per layer (shape (1,)) broadcasts.
    x, w = torch.randn(3, 4, dtype=DT), torch.randn(2, 4, dtype=DT)
    per_out = torch.tensor([[0.5], [2.0]], dtype=DT)
    _, v = lrt_linear(x, w, per_out)
    _, v_full = lrt_linear(x, w, per_out.expand(2, 4))
    torch.testing.assert_close(v, v_full)


def test_gradcheck() -> None:
    g = torch.Generator().manual_seed(4)
    x = torch.randn(3, 4, generator=g, dtype=DT, requires_grad=True)
    w, wv = _weights((2, 4), g)
    w.requires_grad_(True)
    wv.requires_grad_(True)
    b = torch.randn(2, dtype=DT, requires_grad=True)
    eps = torch.randn(3, 2, generator=g, dtype=DT)
    assert torch.autograd.gradcheck(
        lambda *a: sample_gaussian(*lrt_linear(*a), eps=eps), (x, w, wv, b)
    )
    xc = torch.randn(1, 2, 4, 4, generator=g, dtype=DT, requires_grad=True)
    wc, wvc = _weights((3, 2, 2, 2), g)
    wc.requires_grad_(True)
    wvc.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda *a: lrt_conv(*a, stride=2), (xc, wc, wvc))


def test_sample_gaussian_eps_generator_and_zero_variance() -> None:
    m, v = torch.tensor([1.0, -2.0]), torch.tensor([4.0, 9.0])
    assert torch.equal(
        sample_gaussian(m, v, eps=torch.tensor([1.0, -1.0])), torch.tensor([3.0, -5.0])
    )
    a = sample_gaussian(m, v, generator=torch.Generator().manual_seed(5))
    b = sample_gaussian(m, v, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b)
    # At var = 0 the value is the mean up to sqrt(VAR_FLOOR) and every gradient is finite (zero).
    var = torch.zeros(3, requires_grad=True)
    mean = torch.ones(3, requires_grad=True)
    out = sample_gaussian(mean, var, eps=torch.ones(3))
    assert torch.allclose(out, torch.ones(3), atol=VAR_FLOOR**0.5 * 1.01)
    out.sum().backward()
    assert var.grad is not None and torch.equal(var.grad, torch.zeros(3))


def test_zero_weights_no_nan() -> None:
    # theta = 0 with variance alpha * theta^2 = 0: the LRT variance is 0, gradients stay finite.
    w = torch.zeros(2, 4, requires_grad=True)
    log_alpha = torch.zeros(2, 4, requires_grad=True)
    out = sample_gaussian(*lrt_linear(torch.randn(3, 4), w, log_alpha.exp() * w**2))
    out.sum().backward()
    assert torch.isfinite(out).all() and torch.isfinite(w.grad).all()
    assert torch.isfinite(log_alpha.grad).all()


def test_bad_shapes() -> None:
    with pytest.raises(ValueError, match="x must have shape"):
        lrt_linear(torch.randn(3, 5), torch.randn(2, 4), torch.rand(2, 4))
    with pytest.raises(ValueError, match="3, 4 or 5 dims"):
        lrt_conv(torch.randn(3, 4), torch.randn(2, 4, 3), torch.rand(2, 4, 3))
    with pytest.raises(ValueError, match="weight must have 4 dims"):
        lrt_conv(torch.randn(1, 4, 5, 5), torch.randn(2, 4, 3), torch.rand(2, 4, 3))


# ------------------------------------------------------------------ lrt_moments / lrt_sample
@pytest.mark.parametrize(
    "padding, mode",
    [(1, "reflect"), ("same", "circular"), ((1, 2), "replicate"), ("valid", "zeros"), (2, "zeros")],
)
def test_lrt_moments_conv_padding_modes_match_the_layer(padding, mode) -> None:
    """The mean is the layer's own output; the variance is the same convolution (same padding
    mode) of x^2 with the weight variances, both in float64."""
    from torch import nn as tnn

    from bayesdrop.functional import layer_options, lrt_moments

    torch.manual_seed(0)
    conv = tnn.Conv2d(2, 3, (3, 5), padding=padding, padding_mode=mode).double()
    x = torch.randn(2, 2, 9, 11, dtype=torch.float64)
    w_var = torch.rand(conv.weight.shape, dtype=torch.float64)
    mean, var = lrt_moments(x, conv.weight, w_var, conv.bias, **layer_options(conv))
    torch.testing.assert_close(mean, conv(x))
    sq = tnn.Conv2d(2, 3, (3, 5), padding=padding, padding_mode=mode, bias=False).double()
    with torch.no_grad():
        sq.weight.copy_(w_var)
    torch.testing.assert_close(var, sq(x * x))


def test_lrt_sample_value_and_gradients_equal_the_formula() -> None:
    from bayesdrop.functional import lrt_sample

    g = torch.Generator().manual_seed(1)
    x = torch.randn(4, 3, dtype=torch.float64, generator=g, requires_grad=True)
    w = torch.randn(2, 3, dtype=torch.float64, generator=g, requires_grad=True)
    v = torch.rand(2, 3, dtype=torch.float64, generator=g).requires_grad_(True)
    b = torch.randn(2, dtype=torch.float64, generator=g, requires_grad=True)
    eps = torch.randn(4, 2, dtype=torch.float64, generator=g)
    got = lrt_sample(x, w, v, b, eps=eps)
    ref = x @ w.T + b + ((x * x) @ v.T).sqrt() * eps
    torch.testing.assert_close(got, ref)
    gg = torch.autograd.grad(got.square().sum(), (x, w, v, b))
    rr = torch.autograd.grad(ref.square().sum(), (x, w, v, b))
    for a, r in zip(gg, rr):
        torch.testing.assert_close(a, r)


def test_layer_options_refuses_other_layers() -> None:
    from torch import nn as tnn

    from bayesdrop.functional import layer_options, lrt_moments

    with pytest.raises(TypeError, match="layer must be an nn.Linear or nn.Conv1d/Conv2d/Conv3d"):
        layer_options(tnn.LSTM(2, 2))
    with pytest.raises(TypeError, match="a linear layer takes no options"):
        lrt_moments(torch.ones(1, 2), torch.ones(3, 2), torch.ones(3, 2), stride=2)
