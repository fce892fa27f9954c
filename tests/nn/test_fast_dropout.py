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
