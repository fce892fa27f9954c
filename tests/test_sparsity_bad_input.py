"""Bad inputs to bayesdrop.sparsity and the pruning rules: each refused clearly, nothing changed.

23 bad inputs: 6 to ``prune``, 6 to ``compression_report``, 6 to ``compress``, 1 to a module's own
``prune`` and 4 to the pruning-rule arguments (each tried on both sparse families).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from bayesdrop.nn import ARDDropout, SparseVariationalDropout
from bayesdrop.sparsity import compress, compression_report, prune


def _model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        SparseVariationalDropout(nn.Linear(4, 3)), nn.ReLU(), ARDDropout(nn.Linear(3, 2))
    )


@pytest.mark.parametrize("bad", [None, "model", torch.zeros(3)], ids=["None", "str", "tensor"])
def test_prune_refuses_non_modules(bad: object) -> None:
    with pytest.raises(TypeError, match=r"model must be a torch.nn.Module, but got"):
        prune(bad)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "where, value",
    [("weight", float("nan")), ("log_sigma2", float("nan")), ("weight", float("inf"))],
    ids=["nan-weight", "nan-log_sigma2", "inf-weight"],
)
def test_prune_refuses_non_finite_weights_before_changing_anything(
    where: str, value: float
) -> None:
    model = _model()
    with torch.no_grad():
        model[0].log_sigma2[0, 0] = 8.0  # would be pruned by the first module
        target = model[2].layer.weight if where == "weight" else model[2].log_sigma2
        target[1, 1] = value  # a NaN is not a compressed weight
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=rf"2 \(ARDDropout\) has 1 NaN or infinite {where}"):
        prune(model)
    for k, v in model.state_dict().items():  # nothing pruned, not even in the healthy module
        assert torch.equal(v, before[k]) or (v.isnan() == before[k].isnan()).all(), k
    assert bool(model[0].weight_mask.all())


def test_module_prune_refuses_nan() -> None:
    m = SparseVariationalDropout(nn.Linear(3, 2))
    with torch.no_grad():
        m.layer.weight[0, 0] = float("nan")
    with pytest.raises(ValueError, match="weight has 1 NaN or infinite"):
        m.prune()
    assert bool(m.weight_mask.all())


@pytest.mark.parametrize("bad", [None, [nn.Linear(2, 2)], 3.0], ids=["None", "list", "float"])
def test_compression_report_refuses_non_modules(bad: object) -> None:
    with pytest.raises(TypeError, match=r"model must be a torch.nn.Module, but got"):
        compression_report(bad)  # type: ignore[arg-type]


def test_compression_report_refuses_non_bool_include_dense() -> None:
    with pytest.raises(TypeError, match="include_dense must be a bool, but got str"):
        compression_report(_model(), include_dense="yes")  # type: ignore[arg-type]


def test_compression_report_refuses_nan_weights() -> None:
    model = nn.Sequential(_model(), nn.Linear(2, 2))
    with torch.no_grad():
        model[1].weight[0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"1 \(Linear\) has 1 NaN or infinite weight"):
        compression_report(model)
    assert compression_report(model, include_dense=False).weights == 18  # dense one not counted
    with torch.no_grad():
        model[0][0].layer.weight[0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"0.0 \(SparseVariationalDropout\) has 1 NaN"):
        compression_report(model, include_dense=False)


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        (
            {"prune_rule": "theta"},
            ValueError,
            r"prune_rule must be one of \['log_alpha', 'magnitude'\]",
        ),
        ({"magnitude_threshold": 0.0}, ValueError, "magnitude_threshold must be > 0"),
        ({"magnitude_threshold": float("nan")}, ValueError, "magnitude_threshold must be"),
        ({"magnitude_threshold": "0.01"}, TypeError, "magnitude_threshold must be a float"),
    ],
)
@pytest.mark.parametrize("cls", [SparseVariationalDropout, ARDDropout])
def test_bad_pruning_rule_arguments(cls: type, kwargs: dict, exc: type, match: str) -> None:
    with pytest.raises(exc, match=match):
        cls(nn.Linear(2, 2), **kwargs)


@pytest.mark.parametrize("bad", [None, "model", torch.zeros(3)], ids=["None", "str", "tensor"])
def test_compress_refuses_non_modules(bad: object) -> None:
    with pytest.raises(TypeError, match=r"model must be a torch.nn.Module, but got"):
        compress(bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("form", ["csr", "Dense", None], ids=["csr", "case", "None"])
def test_compress_refuses_unknown_forms(form: object) -> None:
    with pytest.raises(ValueError, match=r"form must be one of 'dense', 'sparse', but got"):
        compress(_model(), form=form)  # type: ignore[arg-type]


def test_compress_refuses_nan_and_leaves_the_model_alone() -> None:
    model = _model()
    with torch.no_grad():
        model[2].log_sigma2[0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"2 \(ARDDropout\) has 1 NaN or infinite log_sigma2"):
        compress(model)
    assert isinstance(model[2], ARDDropout) and bool(model[2].weight_mask.all())
