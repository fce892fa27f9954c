"""Fast-dropout network modules: the layer is its functional, the MLP composes exact moments.

The logistic-regression estimators are tested in tests/test_linear_model.py."""

from __future__ import annotations

import pytest
import torch

from bayesdrop.functional import fast_dropout_linear, relu_moments
from bayesdrop.nn import FastDropoutLinear, FastDropoutMLP

F64 = torch.float64


pytestmark = pytest.mark.usefixtures("one_thread")


def test_linear_layer_is_the_functional_and_train_equals_eval() -> None:
    layer = FastDropoutLinear(4, 3, p=0.3).double()
    x = torch.randn(5, 4, dtype=F64)
    m, v = layer.output_moments(x)
    m2, v2 = fast_dropout_linear(x, None, layer.weight, layer.bias, 0.3)
    torch.testing.assert_close(m, m2)
    torch.testing.assert_close(v, v2)
    torch.testing.assert_close(layer(x), m)
    layer.eval()
    torch.testing.assert_close(layer.output_moments(x).var, v)
    assert "p=0.3" in repr(layer)


def test_mlp_composes_exact_moments_and_is_plain_net_at_p0() -> None:
    mlp = FastDropoutMLP(4, [6, 5], 3, p=0.4, input_p=0.2).double()
    x = torch.randn(7, 4, dtype=F64)
    m, v = fast_dropout_linear(x, None, mlp.layers[0].weight, mlp.layers[0].bias, 0.2)
    for layer in mlp.layers[1:]:
        m, v = fast_dropout_linear(*relu_moments(m, v), layer.weight, layer.bias, 0.4)
    out = mlp.output_moments(x)
    torch.testing.assert_close(out.mean, m)
    torch.testing.assert_close(out.var, v)
    plain = FastDropoutMLP(4, [6, 5], 3, p=0.0, input_p=0.0).double()
    plain.load_state_dict(mlp.state_dict())
    h = x
    for layer in plain.layers[:-1]:
        h = torch.relu(h @ layer.weight.t() + layer.bias)
    ref = h @ plain.layers[-1].weight.t() + plain.layers[-1].bias
    torch.testing.assert_close(plain(x), ref)
    assert float(plain.output_moments(x).var.detach().abs().max()) == 0.0


def test_bad_input_is_rejected_clearly() -> None:
    with pytest.raises(ValueError, match=r"p must be in \[0, 1\)"):
        FastDropoutLinear(3, 2, p=1.5)
    with pytest.raises(ValueError, match=r"input_p must be in \[0, 1\)"):
        FastDropoutMLP(3, [4], 2, input_p=1.0)
    with pytest.raises(ValueError, match="mean must be finite"):
        FastDropoutMLP(3, [4], 2).output_moments(torch.tensor([[1.0, float("nan"), 0.0]]))
    with pytest.raises(ValueError, match="activation must be one of"):
        FastDropoutMLP(3, [4], 2, activation="tanh")


@pytest.mark.parametrize("activation", ["relu", "sigmoid"])
def test_huge_finite_inputs_give_no_nan(activation) -> None:
    """An input of 1e20 squares to 1e40, past float32's largest number (3.4e38): the variance of
    the first layer overflows and the next layer's means became NaN. float32 now refuses it
    naming the limit; float64 computes the same network's moments, finite and equal to the
    functional composition; 1e18 (whose square fits) is still computed in float32."""
    torch.manual_seed(0)
    mlp = FastDropoutMLP(4, [5], 3, activation=activation)
    x = torch.full((2, 4), 1e20)
    x[1] = -1e20
    with pytest.raises(ValueError, match=r"overflow torch.float32 \(largest \|input\| 1e\+20"):
        mlp.output_moments(x)
    with pytest.raises(ValueError, match="use float64"):
        mlp(x)
    with pytest.raises(ValueError, match="overflow"):
        FastDropoutLinear(4, 3).output_moments(x)
    mlp64 = mlp.double()
    mean, var = mlp64.output_moments(x.double())
    assert torch.isfinite(mean).all() and torch.isfinite(var).all()
    m1, v1 = fast_dropout_linear(
        x.double(), None, mlp64.layers[0].weight, mlp64.layers[0].bias, 0.2
    )
    act = (
        relu_moments
        if activation == "relu"
        else __import__("bayesdrop.functional", fromlist=["sigmoid_moments"]).sigmoid_moments
    )
    m2, v2 = fast_dropout_linear(*act(m1, v1), mlp64.layers[1].weight, mlp64.layers[1].bias, 0.5)
    assert torch.equal(mean, m2) and torch.equal(var, v2)
    ok = mlp.float().output_moments(torch.full((2, 4), 1e18))
    assert torch.isfinite(ok.mean).all() and torch.isfinite(ok.var).all()
