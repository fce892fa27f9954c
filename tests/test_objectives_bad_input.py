"""Bad input to objective, kl_divergence, dropout_rates and the rate/coupling helpers.

Every case must raise a TypeError/ValueError naming the argument before any work starts (no NaN,
no traceback from deep inside torch). Good inputs of unusual types (NumPy integers) must work.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from bayesdrop import LearnableBernoulliDropout, dropout_rates, kl_divergence, objective
from bayesdrop.objectives import (
    batch_coupled_modules,
    rate_param_groups,
    rate_parameters,
    register_batch_coupled,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def sq_err(out, y):
    return (out.squeeze(-1) - y) ** 2


def net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), LearnableBernoulliDropout(nn.Linear(4, 1)))


X, Y = torch.randn(6, 3), torch.randn(6)

#: (id, keyword overrides of objective(model=net(), inputs=X, targets=Y, nll=sq_err, n_data=100),
#:  exception type, message fragment that names the argument)
OBJECTIVE_CASES = [
    ("model-None", {"model": None}, TypeError, "model must be an nn.Module"),
    ("model-str", {"model": "mlp"}, TypeError, "model must be an nn.Module"),
    ("model-function", {"model": lambda x: x}, TypeError, "model must be an nn.Module"),
    ("model-class", {"model": nn.Linear}, TypeError, "model must be an nn.Module"),
    ("n_data-zero", {"n_data": 0}, ValueError, "n_data"),
    ("n_data-negative", {"n_data": -5}, ValueError, "n_data"),
    ("n_data-numpy-zero", {"n_data": np.int64(0)}, ValueError, "n_data"),
    ("n_data-float", {"n_data": 100.0}, TypeError, "n_data"),
    ("n_data-numpy-float", {"n_data": np.float64(100)}, TypeError, "n_data"),
    ("n_data-bool", {"n_data": True}, TypeError, "n_data"),
    ("n_data-str", {"n_data": "100"}, TypeError, "n_data"),
    ("n_data-None", {"n_data": None}, TypeError, "n_data"),
    ("n_data-float-tensor", {"n_data": torch.tensor(100.0)}, TypeError, "n_data"),
    ("n_data-vector-tensor", {"n_data": torch.tensor([100])}, TypeError, "n_data"),
    ("empty-batch", {"inputs": torch.randn(0, 3), "targets": torch.randn(0)}, ValueError, "empty"),
    (
        "empty-batch-seq-first",
        {"inputs": torch.randn(5, 0, 3), "targets": torch.randn(0), "batch_dim": 1},
        ValueError,
        "empty",
    ),
    ("empty-tuple-inputs", {"inputs": ()}, TypeError, "inputs"),
    ("inputs-list-of-floats", {"inputs": [1.0, 2.0]}, TypeError, "inputs"),
    ("inputs-None", {"inputs": None}, TypeError, "inputs"),
    ("batch_dim-too-large", {"batch_dim": 2}, ValueError, "no batch dimension batch_dim=2"),
    ("batch_dim-negative", {"batch_dim": -1}, ValueError, "batch_dim"),
    ("batch_dim-bool", {"batch_dim": True}, ValueError, "batch_dim"),
    ("batch_dim-float", {"batch_dim": 0.0}, ValueError, "batch_dim"),
    ("kl_weight-negative", {"kl_weight": -0.1}, ValueError, "kl_weight"),
    ("kl_weight-nan", {"kl_weight": float("nan")}, ValueError, "kl_weight"),
    ("kl_weight-inf", {"kl_weight": float("inf")}, ValueError, "kl_weight"),
    ("kl_weight-str", {"kl_weight": "1"}, TypeError, "kl_weight"),
    ("pair-unknown", {"pair": "both"}, ValueError, "pair"),
    ("nll-not-callable", {"nll": "mse"}, TypeError, "nll must be callable"),
    ("nll-returns-float", {"nll": lambda o, t: 1.0}, TypeError, "nll must return a Tensor"),
    (
        "nll-returns-mean",
        {"nll": lambda o, t: sq_err(o, t).mean()},
        ValueError,
        "per-example losses",
    ),
    (
        "nll-returns-2d",
        {"nll": lambda o, t: (o - t[:, None]) ** 2},
        ValueError,
        "per-example losses",
    ),
    ("coupled-str", {"coupled": "yes"}, TypeError, "coupled"),
    ("coupled-int", {"coupled": 1}, TypeError, "coupled"),
    ("crn-int", {"common_random_numbers": 1}, TypeError, "common_random_numbers"),
    ("split-one-callable", {"split": (lambda x: x,)}, TypeError, "split"),
    ("split-not-callables", {"split": (1, 2)}, TypeError, "split"),
    ("split-True", {"split": True}, TypeError, "split"),
    (
        "concat-targets-wrong-size",
        {"pair": "concat", "targets": torch.randn(5)},
        ValueError,
        "batch size 6",
    ),
    (
        "concat-with-batchnorm",
        {
            "model": nn.Sequential(
                LearnableBernoulliDropout(nn.Linear(3, 4)), nn.BatchNorm1d(4), nn.Linear(4, 1)
            ),
            "pair": "concat",
        },
        ValueError,
        "pair='concat' cannot be used with batch-coupled layers",
    ),
    (
        "concat-with-declared-coupling",
        {"pair": "concat", "coupled": True},
        ValueError,
        "coupled=True",
    ),
    (
        "module-cannot-see-the-batch",
        {
            "model": nn.Sequential(
                nn.Flatten(0, 1),
                LearnableBernoulliDropout(nn.Linear(3, 1)),
                nn.Unflatten(0, (6, 2)),
            ),
            "inputs": torch.randn(6, 2, 3),
            "nll": lambda o, t: sq_err(o.mean(1), t),
        },
        ValueError,
        "batch_dim",
    ),
]


@pytest.mark.parametrize(
    ("overrides", "exc", "match"),
    [c[1:] for c in OBJECTIVE_CASES],
    ids=[c[0] for c in OBJECTIVE_CASES],
)
def test_objective_refuses_bad_input(overrides, exc, match):
    kw = {"model": net(), "inputs": X, "targets": Y, "nll": sq_err, "n_data": 100}
    kw.update(overrides)
    before = (
        {k: v.clone() for k, v in kw["model"].state_dict().items()}
        if isinstance(kw["model"], nn.Module)
        else {}
    )
    with pytest.raises(exc, match=match):
        objective(**kw)
    if isinstance(kw["model"], nn.Module):  # nothing was changed (no BatchNorm update etc.)
        for k, v in kw["model"].state_dict().items():
            assert torch.equal(v, before[k]), k


HELPER_CASES = [
    ("kl_divergence-None", lambda: kl_divergence(None), TypeError, "model must be an nn.Module"),
    ("kl_divergence-str", lambda: kl_divergence("mlp"), TypeError, "model must be an nn.Module"),
    (
        "kl_divergence-parameters",
        lambda: kl_divergence(list(net().parameters())),
        TypeError,
        "model must be an nn.Module",
    ),
    ("dropout_rates-None", lambda: dropout_rates(None), TypeError, "model must be an nn.Module"),
    ("dropout_rates-dict", lambda: dropout_rates({}), TypeError, "model must be an nn.Module"),
    ("rate_parameters-None", lambda: rate_parameters(None), TypeError, "model"),
    ("rate_param_groups-None", lambda: rate_param_groups(None), TypeError, "model"),
    ("batch_coupled_modules-None", lambda: batch_coupled_modules(None), TypeError, "model"),
    ("register-int", lambda: register_batch_coupled(int), TypeError, "module_types"),
    (
        "register-instance",
        lambda: register_batch_coupled(nn.BatchNorm1d(3)),
        TypeError,
        "module_types",
    ),
    ("register-str", lambda: register_batch_coupled("BatchNorm1d"), TypeError, "module_types"),
]


@pytest.mark.parametrize(
    ("call", "exc", "match"), [c[1:] for c in HELPER_CASES], ids=[c[0] for c in HELPER_CASES]
)
def test_helpers_refuse_bad_input(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


@pytest.mark.parametrize(
    "n_data", [np.int64(100), np.int32(100), np.uint16(100), torch.tensor(100)], ids=str
)
def test_any_integral_n_data_is_accepted(n_data):
    model = net().eval()
    loss = objective(model, X, Y, sq_err, n_data)
    assert torch.allclose(loss, objective(model, X, Y, sq_err, 100))


def test_numpy_kl_weight_is_accepted():
    model = net().eval()
    a = objective(model, X, Y, sq_err, 100, kl_weight=np.float32(0.5))
    assert torch.allclose(a, objective(model, X, Y, sq_err, 100, kl_weight=0.5))


def test_count_of_bad_inputs_tried():
    """The README's reliability section quotes this count."""
    assert len(OBJECTIVE_CASES) + len(HELPER_CASES) == 53
